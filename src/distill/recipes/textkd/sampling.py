"""The examples a textkd run uses (labelled, evaluation and unlabelled-pool rows sampled from the
source) and the prompts built from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.core.errors import DataError
from distill.data.prompts import render
from distill.recipes.textkd.config import PromptConfig, TextKDConfig
from distill.teachers.generate import (
    PromptRow,
)


def has_pool(cfg: TextKDConfig) -> bool:
    return bool(cfg.data.unlabeled_examples) or cfg.data.unlabeled_path is not None


def sample_examples(cfg: TextKDConfig, with_pool: bool = True) -> dict[str, list[dict[str, Any]]]:
    d = cfg.data
    if d.source == "jsonl":
        from distill.data.corpora import read_json_lines

        rows = read_json_lines(d.path, "data.path")  # type: ignore[arg-type]
        for n, r in enumerate(rows, 1):
            if not {"id", "input", "label"} <= set(r):
                raise DataError(f"{d.path}, row {n}: needs `id`, `input` and `label` fields (has {sorted(r)}).")
        items = [(str(r["id"]), str(r["input"]), str(r["label"])) for r in rows]
    else:
        from distill.data.corpora import read_bbc_news

        items = [(a.id, a.text, a.label) for a in read_bbc_news(d.path)]
    from distill.data.corpora import LabelledText, stratified_split

    texts = [LabelledText(i, _cut(t, d.max_words), lab) for i, t, lab in items]
    parts = stratified_split(texts, {"train": d.train_examples, "eval": d.eval_examples}, seed=d.seed)
    out = {k: [{"id": x.id, "input": x.text, "label": x.label} for x in v] for k, v in parts.items()}
    if not with_pool:
        return out
    if d.unlabeled_examples:
        out["pool"] = _random_pool(texts, out, d.unlabeled_examples, d.seed)
    elif d.unlabeled_path is not None:
        out["pool"] = _pool_file(d.unlabeled_path, d.max_words, {r["id"] for rows in out.values() for r in rows})
    return out


def _cut(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def _random_pool(texts: list[Any], taken: dict[str, list[dict[str, Any]]], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` inputs drawn at random (not label-balanced: a real pool is not) from those no split holds."""
    import random

    used = {r["id"] for rows in taken.values() for r in rows}
    rest = [x for x in texts if x.id not in used]
    if n > len(rest):
        raise DataError(f"data.unlabeled_examples={n}, but only {len(rest)} examples are left after the "
                        f"{len(used)} labelled ones; lower it.")
    picked = random.Random(seed + 1).sample(rest, n)
    return [{"id": x.id, "input": x.text, "gold": x.label} for x in sorted(picked, key=lambda x: x.id)]


def _pool_file(path: Path, words: int, labelled_ids: set[str]) -> list[dict[str, Any]]:
    from distill.data.corpora import read_json_lines

    rows = read_json_lines(path, "data.unlabeled_path")
    out, seen = [], set()
    for n, r in enumerate(rows, 1):
        if "input" not in r or not str(r["input"]).strip():
            raise DataError(f"{path}, row {n}: needs a non-empty `input` field (has {sorted(r)}).")
        rid = str(r.get("id", f"pool-{n}"))
        if rid in seen or rid in labelled_ids:
            raise DataError(f"{path}, row {n}: id {rid!r} is already used (by an earlier pool row or a labelled "
                            "example); give every row its own `id`.")
        seen.add(rid)
        out.append({"id": rid, "input": _cut(str(r["input"]), words), "gold": r.get("label")})
    if not out:
        raise DataError(f"{path} (data.unlabeled_path) has no rows.")
    return out


def prompts_for(cfg: TextKDConfig, path: Path | None, split: str) -> tuple[list[PromptRow], str]:
    """`distill generate`'s prompts: a JSONL file (rows with `messages`, or template fields), or a
    split of the config's labelled dataset; and the template used."""
    template = template_for(cfg.prompt, split)
    if path is None:
        return prompt_rows(cfg.prompt, sample_examples(cfg, with_pool=False)[split], split), template
    from distill.data.corpora import read_json_lines

    rows = [{**r, "id": str(r.get("id", f"row-{n}"))} for n, r in enumerate(read_json_lines(path, "--prompts"), 1)]
    plain = [r for r in rows if "messages" not in r]
    with_messages = [PromptRow(id=r["id"], messages=r["messages"], fields={k: v for k, v in r.items()
                                                                          if k not in ("id", "messages")})
                     for r in rows if "messages" in r]
    return with_messages + prompt_rows(cfg.prompt, plain, str(path)), template


def template_for(p: PromptConfig, split: str) -> str:
    """The train template may name the gold label (rationalisation); eval and the pool never see it."""
    return p.eval_template if split in ("eval", "pool") and p.eval_template else p.template


def prompt_rows(p: PromptConfig, rows: list[dict[str, Any]], split: str) -> list[PromptRow]:
    """System message, few-shot turns and the filled template, per example."""
    template = template_for(p, split)
    head = [{"role": "system", "content": p.system}] if p.system else []
    for n, shot in enumerate(p.shots, 1):
        fields = shot.model_dump()
        head += [{"role": "user", "content": render(template, fields, f"prompt.shots[{n}]", "prompt.template")},
                 {"role": "assistant", "content": render(p.response_format, fields, f"prompt.shots[{n}]",
                                                         "prompt.response_format")}]
    return [PromptRow(id=r["id"], fields={k: v for k, v in r.items() if k != "id"}, messages=head + [
        {"role": "user", "content": render(template, r, f"{split} example {r['id']!r}", "prompt.template")}])
        for r in rows]


@dataclass
class Pool:
    """The teacher's answers on the unlabelled pool that parse to a label, and how good they are."""

    kept: list[dict[str, Any]]
    counts: dict[str, int]
    label_accuracy: float | None  # of the kept answers against the held-back gold labels, when known
