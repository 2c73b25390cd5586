"""Fault tolerance: SIGKILL at random moments, resume, compare with an uninterrupted run; and
disk-full / permission errors end in a clear `OutputError`, never a traceback.

    pytest tests/test_faults.py              # fast: a few kills per job, forked attempts (about a minute)
    pytest tests/test_faults.py -m slow      # longer loops, real `python -m distill.cli` processes
    python benchmarks/faults.py              # the counted version (benchmarks/results/faults.json)

A kill loop starts a job, SIGKILLs it after a seeded random delay, repeats, then lets it finish.
The result must equal an uninterrupted run's *exactly* (same code, seeds and one CPU thread, so
there is nothing for a tolerance to absorb; only timings and dates are left out of the
comparison), and after every kill every file must be whole: each .safetensors loads, each
.json / .yaml parses, each .jsonl line parses, each .png ends with its IEND chunk. Two leftovers
are documented and allowed: the temp names of `distill.core.files` (`.NAME.<12 hex>.tmp`, left when a
kill lands inside an atomic write; never read, safe to delete), and a last line without its
newline in a `distill generate` journal (trimmed by the next run).

Fast attempts are forked from this process, which has already imported torch, sklearn and
matplotlib (about 20 s of imports on a busy 2-core machine, more than the work itself); the
child runs exactly what `python -m distill.cli ARGS` runs. Slow attempts exec the real command.
"""

from __future__ import annotations

import errno
import faulthandler
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from distill.core.errors import OutputError

TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # distill.core.files._temp_path
PNG_HEAD, PNG_TAIL = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
LOGS = "logs"  # each root's child output; not scanned

# --------------------------------------------------------------------------- launching and killing


class Proc:
    """One attempt: a forked child or an exec'd `python` process."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None):
        self.pid, self.popen, self.code = pid, popen, None

    def poll(self) -> int | None:
        if self.popen is not None:
            return self.popen.poll()
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, seconds: float) -> int | None:
        """The exit code, or None if still running after `seconds`."""
        deadline = time.monotonic() + seconds
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.poll()

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        while self.wait(5) is None:
            pass


CHILD_STALL_S = 300  # no attempt here runs this long: a forked child that does is stuck (its stacks go to its log)


def launch(argv: list[str], mode: str, log: Path, limit_bytes: int | None = None) -> Proc:
    """Start `python ARGV` ("exec"), or fork this process to run the same ("fork").

    `limit_bytes` caps the size of any file written (RLIMIT_FSIZE): writes past it fail with
    EFBIG in the kernel, as on a full disk, wherever they come from (Python, safetensors, zlib).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    if mode == "exec":
        with open(log, "ab") as out:
            p = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"},
                                 preexec_fn=(lambda: _limit(limit_bytes)) if limit_bytes else None)
        return Proc(p.pid, p)
    _warm()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return Proc(pid)
    code = 1
    try:  # the child: never return into pytest, never run its exit hooks
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout = sys.stderr = os.fdopen(fd, "w", buffering=1)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        torch.set_num_threads(1)
        _fresh_locks()
        faulthandler.dump_traceback_later(CHILD_STALL_S, exit=True)  # a stuck child says where, then ends
        if limit_bytes:
            _limit(limit_bytes)
        code = _as_python(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def _fresh_locks() -> None:
    """New locks for what the child inherited mid-use: a lock another thread of this process held at the
    fork stays held in the child forever (seen: tqdm's bar lock, taken by its monitor thread)."""
    from tqdm import tqdm
    from tqdm.std import TqdmDefaultWriteLock

    tqdm.set_lock(TqdmDefaultWriteLock())


def _warm() -> None:
    """Import here, once, what every forked child would otherwise import for itself."""
    import matplotlib
    import sklearn.datasets  # noqa: F401  (digits)

    import distill.cli  # noqa: F401
    import distill.recipes.classify.pipeline  # noqa: F401
    import distill.recipes.search  # noqa: F401

    matplotlib.use("Agg")  # as distill.eval.report does
    import matplotlib.pyplot  # noqa: F401

    torch.optim.AdamW(torch.nn.Linear(1, 1).parameters())  # its first use imports torch._dynamo


def _limit(limit_bytes: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def _as_python(argv: list[str]) -> int:
    """What `python ARGV` does, for `-m distill.cli ...` and `-c CODE ...`."""
    if argv[:2] == ["-m", "distill.cli"]:
        from distill.cli import main

        return main(argv[2:])
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<job>", "exec"), {"__name__": "__main__"})
        return 0
    raise ValueError(f"cannot run {argv}")


# --------------------------------------------------------------------------- files must be whole


def check_files(root: Path, journal: Path | None = None) -> dict[str, list[str]]:
    """Files under `root` that are not whole, and the documented leftovers, by kind."""
    found: dict[str, list[str]] = {"half_written": [], "stale_temp": [], "cut_line": []}
    files = (p for p in root.rglob("*") if p.is_file() and LOGS not in p.relative_to(root).parts)
    for path in sorted(files):
        if TEMP_NAME.match(path.name):
            found["stale_temp"].append(str(path))
            continue
        problem = _not_whole(path)
        if problem == "cut" and journal is not None and path == journal:
            found["cut_line"].append(str(path))
        elif problem:
            found["half_written"].append(f"{path}: {problem}")
    return found


def _not_whole(path: Path) -> str | None:
    """Why `path` is not a whole file of its kind, or None."""
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            load_file(str(path))
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_text())
        elif path.suffix == ".jsonl":
            *lines, last = path.read_text().split("\n")
            for line in lines:
                json.loads(line)
            if last:
                return "cut"
        elif path.suffix == ".png":
            data = path.read_bytes()
            if not (data.startswith(PNG_HEAD) and data.endswith(PNG_TAIL)):
                return "not a whole PNG"
        elif path.suffix == ".md" and not path.read_text().strip():
            return "empty"
        elif path.suffix == ".tmp":
            return "a temp file not named by distill.core.files"
    except Exception as exc:  # noqa: BLE001  (any failure to read back is the finding)
        return f"{type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """A resumable command: its argv in a root directory, where it stands, and how to compare results."""

    name: str
    argv: Callable[[Path, bool], list[str]]  # (root, resume) → python argv
    point: Callable[[Path], str]  # where a run in `root` has got to
    compare: Callable[[Path, Path], tuple[list[str], int]]  # (ref, root) → (differences, records lost)
    journal: Callable[[Path], Path | None] = lambda root: None


RUN_ARGS = ["device=cpu", "data.name=digits", "data.limit=200", "data.label_fraction=1", "teacher.arch=cnn",
            "teacher.kwargs={widths: [4], convs: 1, fc: 16}", "teacher.train.batch_size=32",
            "student.arch=mlp", "student.kwargs={hidden: [16]}", "train.batch_size=32", "bench.repeats=3",
            "bench.throughput_batch=16"]
TIMING = ("latency", "throughput", "peak_memory", "speedup", "seconds", "timing")  # measured: never equal


def run_job(teacher_epochs: int = 8, student_epochs: int = 6) -> Job:
    """`distill run` on digits: teacher → baseline → teacher cache → distilled → evaluation → report.

    Each epoch writes best.safetensors, metrics.jsonl and last.safetensors, so more epochs put more
    of the kills inside training and its writes (evaluation and the report take a few seconds).
    """
    args = [*RUN_ARGS, f"teacher.train.epochs={teacher_epochs}", f"train.epochs={student_epochs}"]

    def argv(root: Path, resume: bool) -> list[str]:
        return ["-c", PINNED_STEP_COSTS, "run", "name=job", f"output_dir={root / 'runs'}",
                f"teacher.cache_dir={root / 'cache'}", *args, "--quiet", *(["--resume"] if resume else [])]

    return Job("run", argv, _run_point, _compare_runs)


# The pilot weighs candidates by their measured step costs: the one input two separate runs cannot
# share (a resumed run reuses its own first measurement). Pinned here, so that the reference and the
# killed run decide alike and any difference left is one resuming made.
PINNED_STEP_COSTS = """
import sys
import distill.recipes.classify.pilot as pilot
pilot.step_costs = lambda cands, *_: [2.0 if c.augment.enabled or c.signal == "live" else 1.0 for c in cands]
from distill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_point(root: Path) -> str:
    run = root / "runs" / "job"
    if not (run / "config.yaml").is_file():
        return "startup"
    for stage in ("teacher", "baseline"):
        if not (run / stage / "model.safetensors").is_file():
            return f"{stage} training"
    if not list((root / "cache").glob("*/manifest.json")):
        return "teacher cache"
    if not (run / "distilled" / "model.safetensors").is_file():
        return "distilled training"
    return "evaluation" if not (run / "report.json").is_file() else "report"


def _compare_runs(ref: Path, root: Path) -> tuple[list[str], int]:
    diffs, lost = [], 0
    a, b = ref / "runs" / "job", root / "runs" / "job"
    for stage in ("teacher", "baseline", "distilled"):
        diffs += _same_tensors(a / stage / "model.safetensors", b / stage / "model.safetensors")
        rows_diffs, rows_lost = _same_rows(a / stage / "metrics.jsonl", b / stage / "metrics.jsonl")
        diffs, lost = diffs + rows_diffs, lost + rows_lost
    ra, rb = (_without_timing(json.loads((d / "report.json").read_text())) for d in (a, b))
    if json.dumps(ra, sort_keys=True) != json.dumps(rb, sort_keys=True):
        diffs.append(f"report.json differs beyond timings: {_first_differences(ra, rb)}")
    for m in sorted((ref / "cache").glob("*/manifest.json")):
        other = root / "cache" / m.parent.name / "manifest.json"
        shards = json.loads(other.read_text())["shards"] if other.is_file() else None
        if shards != json.loads(m.read_text())["shards"]:
            diffs.append(f"teacher cache {m.parent.name} differs")
    return diffs, lost


def _first_differences(a: Any, b: Any, where: str = "", limit: int = 3) -> list[str]:
    """Up to `limit` paths where two JSON values differ, each with both values (cut short)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[str] = []
        for k in sorted(set(a) | set(b)):
            found += _first_differences(a.get(k), b.get(k), f"{where}.{k}", limit - len(found))
            if len(found) >= limit:
                break
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found = []
        for i, (x, y) in enumerate(zip(a, b)):
            found += _first_differences(x, y, f"{where}[{i}]", limit - len(found))
            if len(found) >= limit:
                break
        return found
    return [] if a == b else [f"{where}: {str(a)[:120]!r} vs {str(b)[:120]!r}"]


def _without_timing(report: dict[str, Any]) -> dict[str, Any]:
    def clean(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: clean(v) for k, v in d.items() if not any(t in k for t in TIMING)}
        if isinstance(d, list):
            return [clean(v) for v in d]
        return d

    return clean({k: v for k, v in report.items() if k not in ("date", "machine")})


CACHE_SCRIPT = """
import sys, time, torch
from pathlib import Path
from torch import nn
from distill.teachers import signals
from distill.data.datasets import ArrayDataset
signals.SHARD_ROWS = 128  # many small shards, so kills land between and inside shard writes
g = torch.Generator().manual_seed(0)
data = ArrayDataset(torch.randn(4096, 1, 8, 8, generator=g), torch.randint(0, 10, (4096,), generator=g))
torch.manual_seed(0)
teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
teacher.register_forward_pre_hook(lambda *_: time.sleep(0.02))  # a teacher slow enough to be caught
signals.CachedTeacher.build_or_load(teacher, data, Path(sys.argv[1]), batch_size=64, quiet=True)
"""


def cache_job() -> Job:
    """A teacher-logit cache of 32 shards, built (and resumed) by `CachedTeacher.build_or_load`."""

    def argv(root: Path, resume: bool) -> list[str]:
        return ["-c", CACHE_SCRIPT, str(root / "cache")]

    def point(root: Path) -> str:
        manifests = list((root / "cache").glob("*/manifest.json"))
        if manifests and json.loads(manifests[0].read_text()).get("complete"):
            return "verifying the finished cache"
        return f"{len(list((root / 'cache').glob('*/shard-*.safetensors')))}/32 shards"

    def compare(ref: Path, root: Path) -> tuple[list[str], int]:
        from safetensors.torch import load_file

        (ma,), mb = list((ref / "cache").glob("*/manifest.json")), root / "cache"
        mb = mb / ma.parent.name / "manifest.json"
        if not mb.is_file():
            return ["no manifest"], 4096
        diffs, lost = _same_shards(ma, mb)
        table = torch.cat([load_file(str(mb.parent / s["file"]))["logits"] for s in _shards(mb)])
        ref_table = torch.cat([load_file(str(ma.parent / s["file"]))["logits"] for s in _shards(ma)])
        return diffs if torch.equal(table, ref_table) else [*diffs, "cache tensors differ"], lost

    return Job("cache", argv, point, compare)


def generate_job(url: str, prompts: int = 500) -> Job:
    """`distill generate` of `prompts` prompts against an OpenAI-compatible endpoint at `url`."""

    def argv(root: Path, resume: bool) -> list[str]:
        file = root / "prompts.jsonl"
        if not file.is_file():
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text("".join(json.dumps({"id": f"p{i}", "messages": [
                {"role": "user", "content": f"Topic: t{i}"}]}) + "\n" for i in range(prompts)))
        return ["-m", "distill.cli", "generate", "--output", str(root / "out.jsonl"), "--prompts", str(file),
                "teacher.backend=openai", f"teacher.base_url={url}", "teacher.model=fake", "prompt.shots=[]",
                "prompt.system=null", "concurrency=2", "--quiet"]

    def point(root: Path) -> str:
        out = root / "out.jsonl"
        done = out.read_bytes().count(b"\n") if out.is_file() else 0
        return "startup" if not out.is_file() else f"generating ({done}/{prompts})"

    def compare(ref: Path, root: Path) -> tuple[list[str], int]:
        a, b = _records(ref / "out.jsonl"), _records(root / "out.jsonl")
        keys_b = [k for k, _ in b]
        twice = len(keys_b) - len(set(keys_b))
        diffs = [f"{twice} duplicate records"] if twice else []
        if dict(a) != dict(b):
            diffs.append("responses differ")
        return diffs, len(set(dict(a)) - set(keys_b))

    return Job("generate", argv, point, compare, journal=lambda root: root / "out.jsonl")


def search_job() -> Job:
    """`distill search` over two student sizes on digits: a teacher, two candidate runs, the ranking."""

    def argv(root: Path, resume: bool) -> list[str]:
        path = root / "search.yaml"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump({
                "name": "s", "output_dir": str(root / "runs"),
                "overrides": [a for a in RUN_ARGS if not a.startswith("student.kwargs")]
                + [f"teacher.cache_dir={root / 'cache'}", "teacher.train.epochs=20", "train.epochs=15"],
                "space": {"student.kwargs.hidden": [[8], [32]]},
                "requirements": {"max_accuracy_drop": 100.0, "min_speedup": 0.01}}))
        return ["-m", "distill.cli", "search", str(path), *(["--resume"] if resume else [])]

    def point(root: Path) -> str:
        s = root / "runs" / "s"
        if not (s / "teacher" / "teacher" / "model.safetensors").is_file():
            return "search: teacher training" if (s / "search.yaml").is_file() else "startup"
        done = len(list((s / "candidates").glob("*/report.md")))  # a candidate's last file
        return f"search: candidate {done + 1}/2" if done < 2 else "search: measuring and ranking"

    def compare(ref: Path, root: Path) -> tuple[list[str], int]:
        a, b = (json.loads((r / "runs" / "s" / "search.json").read_text()) for r in (ref, root))
        keep = ("name", "values", "accuracy", "params", "size_mb")
        rows_a, rows_b = ([{k: c[k] for k in keep} for c in r["candidates"]] for r in (a, b))
        diffs = [] if rows_a == rows_b else ["search.json candidates differ"]
        for c in rows_a:
            diffs += _same_tensors(*(r / "runs/s/candidates" / c["name"] / "distilled/model.safetensors"
                                     for r in (ref, root)))
        diffs += _same_tensors(*(r / "runs/s/teacher/teacher/model.safetensors" for r in (ref, root)))
        return diffs, sum(1 for c in rows_a if c not in rows_b)

    return Job("search", argv, point, compare)


LM_SCRIPT = """
import json, sys, time, torch
from pathlib import Path
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from distill.core.checkpoint import save_weights
from distill.core.files import atomic_write_text
from distill.teachers import tokens as signals
from distill.losses.config import TokenKDConfig
from distill.training.config import LMTrainConfig
from distill.models.causal_lm import tokenizer_fingerprint
from distill.data.tokens import blocks_subset, pack_text
from distill.training.lm import fit_lm
root, steps, resume = Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv
inputs, out = root / "inputs", root / "train"
signals.SHARD_ROWS = 8  # 7 shards, so kills land between and inside shard writes
tok = PreTrainedTokenizerFast.from_pretrained(inputs)
blocks = pack_text(json.loads((inputs / "corpus.json").read_text()), tok, seq_len=16)
teacher, student = (LlamaForCausalLM.from_pretrained(inputs / n) for n in ("teacher", "student"))
for model, pause in ((teacher, 0.05), (student, 0.1)):  # a job slow enough to be caught in every stage:
    model.model.register_forward_pre_hook(lambda *_, s=pause: time.sleep(s))  # caching, training, evaluation
identity = {"teacher": "tiny", "tokenizer": tokenizer_fingerprint(tok), "k": 8, "vocab": len(tok)}
cache = signals.TopKCache.build_or_open(teacher, blocks, root / "cache", identity=identity, quiet=True)
train = LMTrainConfig(steps=steps, batch_size=4, warmup_steps=2, eval_every=2, save_every=2, precision="no")
result = fit_lm(student, blocks, train=train, kd=TokenKDConfig(), vocab=len(tok), teacher=cache,
                val_data=blocks_subset(blocks, torch.arange(8)), val_teacher=cache, checkpoint_dir=out,
                resume=resume, device="cpu", quiet=True)
save_weights(out / "model.safetensors", result.model)
atomic_write_text(out / "history.json", json.dumps(result.history))
"""


def lm_job(steps: int = 16) -> Job:
    """`fit_lm` of a 1-layer Llama student for `steps` steps from a top-k cache of a 2-layer teacher, both
    built in the killed process (the cache in 7 shards), checkpointing and evaluating every 2 steps; then
    the final weights and history. The tokenizer, the two random models and the corpus are inputs,
    written before the first attempt."""

    def argv(root: Path, resume: bool) -> list[str]:
        _lm_inputs(root / "inputs")
        return ["-c", LM_SCRIPT, str(root), str(steps), *(["--resume"] if resume else [])]

    def point(root: Path) -> str:
        from distill.core.checkpoint import read_metadata

        manifest, last = root / "cache" / "manifest.json", root / "train" / "last.safetensors"
        if not manifest.is_file():
            return "startup"
        if not json.loads(manifest.read_text())["complete"]:
            return f"teacher cache ({len(_shards(manifest))}/7 shards)"
        if not last.is_file():
            return "training (no checkpoint yet)"
        done = read_metadata(last)["state"]["step"]
        return f"training (checkpoint at step {done}/{steps})" if done < steps else "writing the final model"

    def compare(ref: Path, root: Path) -> tuple[list[str], int]:
        from distill.core.checkpoint import read_metadata

        a, b = ref / "train", root / "train"
        diffs, lost = _same_shards(ref / "cache" / "manifest.json", root / "cache" / "manifest.json")
        rows_diffs, rows_lost = _same_rows(a / "metrics.jsonl", b / "metrics.jsonl")
        diffs += rows_diffs + _same_tensors(a / "model.safetensors", b / "model.safetensors")
        diffs += _same_tensors(a / "last.safetensors", b / "last.safetensors")  # + optimizer state, RNG
        if read_metadata(a / "last.safetensors") != read_metadata(b / "last.safetensors"):
            diffs.append("last.safetensors metadata (step, history, optimizer, scheduler) differs")
        if json.loads((a / "history.json").read_text()) != json.loads((b / "history.json").read_text()):
            diffs.append("history.json differs")
        return diffs, lost + rows_lost

    return Job("lm", argv, point, compare)


def _lm_inputs(directory: Path) -> None:
    """A word-level tokenizer, a random 2-layer teacher and 1-layer student, and the corpus; once per root."""
    if (directory / "corpus.json").is_file():
        return
    from lm_helpers import TEXT, make_llama, make_tokenizer

    import distill.training.lm  # noqa: F401  (here, so that forked attempts start with it imported)

    tok = make_tokenizer(directory)
    make_llama(directory / "teacher", tok, layers=2, seed=0)
    make_llama(directory / "student", tok, layers=1, seed=1)
    (directory / "corpus.json").write_text(json.dumps([TEXT] * 4))  # last: it marks the inputs complete


def _records(path: Path) -> list[tuple[tuple[str, int], str]]:
    return [((r["id"], r["sample"]), r["response"]) for r in _jsonl(path)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _same_rows(a: Path, b: Path) -> tuple[list[str], int]:
    """A .jsonl file against the reference's: the differences, and how many reference rows are missing."""
    rows_a, rows_b = _jsonl(a), _jsonl(b)
    return ([] if rows_a == rows_b else [f"{b} differs from {a}"]), sum(1 for r in rows_a if r not in rows_b)


def _shards(manifest: Path) -> list[dict[str, Any]]:
    return json.loads(manifest.read_text())["shards"] if manifest.is_file() else []


def _same_shards(a: Path, b: Path) -> tuple[list[str], int]:
    """A cache manifest's shards (file, rows, sha256) against the reference's: differences, rows missing."""
    shards_a, shards_b = _shards(a), _shards(b)
    lost = sum(s["stop"] - s["start"] for s in shards_a if s not in shards_b)
    return ([] if shards_a == shards_b else [f"{b} shards differ from {a}"]), lost


def _same_tensors(a: Path, b: Path) -> list[str]:
    from safetensors.torch import load_file

    if not b.is_file():
        return [f"{b} is missing"]
    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
        return [f"{b} differs from {a}"]
    return []


# --------------------------------------------------------------------------- the loop


@dataclass
class Timeline:
    """An uninterrupted run, in seconds from its start: when its first output files appeared (the
    second one marks the end of start-up: imports, data loading) and when it ended."""

    first_write: float
    startup: float
    end: float


@dataclass
class LoopResult:
    kills: int = 0
    resumed: int = 0  # runs that finished after at least one kill
    attempts: int = 0
    points: Counter = field(default_factory=Counter)
    records_lost: int = 0
    half_written: list[str] = field(default_factory=list)
    stale_temp: int = 0
    cut_lines: int = 0
    differences: list[str] = field(default_factory=list)


def reference_run(job: Job, root: Path, mode: str, timeout: float = 600) -> Timeline:
    """Run `job` once, uninterrupted, in `root`; when did it write first and when did it end."""
    argv = job.argv(root, False)  # may write the job's inputs (prompts, a search config)
    inputs = set(root.rglob("*"))
    proc = launch(argv, mode, root / LOGS / "log.txt")
    start, seen = time.monotonic(), []  # (seconds, path) of each output file's first appearance
    while proc.poll() is None and time.monotonic() - start < timeout:
        if len(seen) < 2:
            new = [p for p in set(root.rglob("*")) - inputs - {q for _, q in seen}
                   if p.is_file() and LOGS not in p.parts]
            seen += [(time.monotonic() - start, p) for p in new]
        time.sleep(0.02)
    assert proc.wait(1) == 0, _tail(root / LOGS / "log.txt")
    end = time.monotonic() - start
    times = [t for t, _ in seen] or [0.0]
    return Timeline(times[0], times[min(1, len(times) - 1)], end)


def kill_loop(job: Job, ref: Path, root: Path, timeline: Timeline, *, kills: int, seed: int, mode: str,
              timeout: float = 600) -> LoopResult:
    """Start `job` in `root`, SIGKILL it after a seeded random delay, up to `kills` times, then let it
    finish; check every file after each kill and the result against the reference run in `ref`."""
    rng, out = random.Random(seed), LoopResult()
    log = root / LOGS / "log.txt"
    work = timeline.end - timeline.startup
    reached = 0.0  # how far into the reference's work the killed attempts got (an estimate)
    for n in range(kills):
        proc = launch(job.argv(root, out.attempts > 0), mode, log)
        out.attempts += 1
        if rng.random() < 0.15:  # now and then during start-up: loading, checking what is done
            delay = rng.uniform(0, timeline.startup)
        else:  # kill n at a random point of the n-th of `kills` equal slices of the work, so
            target = (n + rng.random()) / kills * work  # kills spread over every stage, not the longest
            delay = timeline.startup + max(0.0, target - reached)
            reached = max(reached, target)
        code = proc.wait(delay)
        if code is not None:  # it finished before its kill was due
            assert code == 0, _tail(log)
            break
        out.points[job.point(root)] += 1
        proc.kill()
        out.kills += 1
        _scan(job, root, out)
    if not (out.attempts > out.kills):  # the last attempt was killed: finish the job
        proc = launch(job.argv(root, True), mode, log)
        out.attempts += 1
        assert proc.wait(timeout) == 0, _tail(log)
    out.resumed = int(out.kills > 0)
    _scan(job, root, out, final=True)
    out.differences, out.records_lost = job.compare(ref, root)
    return out


def _scan(job: Job, root: Path, out: LoopResult, final: bool = False) -> None:
    found = check_files(root, None if final else job.journal(root))
    out.half_written += found["half_written"]
    out.cut_lines += len(found["cut_line"])
    if final:
        out.stale_temp = len(found["stale_temp"])


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.is_file() else "(no log)"


def assert_survived(out: LoopResult) -> None:
    assert out.kills >= 1, f"no attempt was killed: {out}"
    assert not out.half_written, out.half_written
    assert not out.differences, out.differences
    assert out.records_lost == 0


# --------------------------------------------------------------------------- fast kill loops


def _loop(job: Job, tmp_path: Path, kills: int, seed: int, mode: str = "fork") -> LoopResult:
    timeline = reference_run(job, tmp_path / "ref", mode)
    out = kill_loop(job, tmp_path / "ref", tmp_path / "killed", timeline, kills=kills, seed=seed, mode=mode)
    assert_survived(out)
    return out


def test_run_killed_at_random_moments_resumes_to_the_same_models_metrics_and_report(tmp_path):
    _loop(run_job(), tmp_path, kills=3, seed=1)


def test_teacher_cache_build_killed_at_random_moments_resumes_to_the_same_shards(tmp_path):
    _loop(cache_job(), tmp_path, kills=4, seed=2)


def test_generate_killed_at_random_moments_keeps_every_record_exactly_once(tmp_path):
    from textkd_helpers import start_fake_endpoint

    server, url = start_fake_endpoint()
    try:
        _loop(generate_job(url), tmp_path, kills=4, seed=3)
    finally:
        server.shutdown()


def test_lm_training_killed_at_random_moments_resumes_to_the_same_weights_and_metrics(tmp_path):
    pytest.importorskip("transformers")
    _loop(lm_job(), tmp_path, kills=4, seed=4)


KILL_BEFORE_FINAL_METRICS = """
import os, signal, sys
import distill.training.engine
write = distill.training.engine.atomic_write_text
def killing(path, text):  # SIGKILL itself as it is about to write the last save's metrics.jsonl
    if path.name == "metrics.jsonl" and f'"step": {sys.argv[2]},' in text:
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, text)
distill.training.engine.atomic_write_text = killing
"""


def test_lm_training_killed_inside_its_final_save_still_ends_with_every_metrics_row(tmp_path):
    """A kill the random ones seldom hit: inside the last save, as metrics.jsonl is written. When the
    checkpoint was written first, the resumed run found nothing left to do and its last row was lost."""
    pytest.importorskip("transformers")
    job, root = lm_job(steps=4), tmp_path / "killed"
    reference_run(job, tmp_path / "ref", "fork")
    argv, log = job.argv(root, False), root / LOGS / "log.txt"
    killed = launch([argv[0], KILL_BEFORE_FINAL_METRICS + argv[1], *argv[2:]], "fork", log)
    assert killed.wait(120) == -signal.SIGKILL
    assert launch(job.argv(root, True), "fork", log).wait(120) == 0, _tail(log)
    assert not check_files(root)["half_written"]
    assert job.compare(tmp_path / "ref", root) == ([], 0)


def test_the_file_checker_finds_cut_files(tmp_path):
    (tmp_path / "a.json").write_text('{"a": 1')
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n{"a"')
    (tmp_path / "c.png").write_bytes(PNG_HEAD + b"...")
    (tmp_path / "d.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (tmp_path / ".e.json.0123456789ab.tmp").write_text("{")
    (tmp_path / "f.tmp").write_text("")
    found = check_files(tmp_path, journal=tmp_path / "b.jsonl")
    names = [Path(p.split(":")[0]).name for p in found["half_written"]]
    assert names == ["a.json", "c.png", "d.safetensors", "f.tmp"]
    assert len(found["stale_temp"]) == 1 and len(found["cut_line"]) == 1


# --------------------------------------------------------------------------- slow: longer loops, real processes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_run_survives_many_kills_in_real_processes(tmp_path, seed):
    _loop(run_job(), tmp_path, kills=6, seed=seed, mode="exec")


@pytest.mark.slow
def test_cache_and_generate_survive_many_kills_in_real_processes(tmp_path):
    from textkd_helpers import start_fake_endpoint

    _loop(cache_job(), tmp_path / "cache", kills=8, seed=21, mode="exec")
    server, url = start_fake_endpoint()
    try:
        _loop(generate_job(url, prompts=1500), tmp_path / "generate", kills=8, seed=22, mode="exec")
    finally:
        server.shutdown()


@pytest.mark.slow
def test_lm_training_survives_many_kills_in_real_processes(tmp_path):
    pytest.importorskip("transformers")
    _loop(lm_job(steps=40), tmp_path, kills=6, seed=31, mode="exec")


@pytest.mark.slow
def test_run_stopped_by_a_full_disk_resumes_once_space_is_back(tmp_path):
    """RLIMIT_FSIZE makes the kernel fail writes past 20 kB (EFBIG) as a full disk would."""
    job = run_job(teacher_epochs=2, student_epochs=2)
    reference_run(job, tmp_path / "ref", "fork")
    root = tmp_path / "full"
    log = root / LOGS / "log.txt"
    assert launch(job.argv(root, False), "fork", log, limit_bytes=20_000).wait(600) == 2
    assert re.search(r"error: Cannot write .*: the disk is full .*--resume", _tail(log)), _tail(log)
    assert not check_files(root)["half_written"]
    assert launch(job.argv(root, True), "fork", log).wait(600) == 0, _tail(log)
    assert _compare_runs(tmp_path / "ref", root) == ([], 0)


# --------------------------------------------------------------------------- disk full, no permission


def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_an_atomic_write_names_the_file_and_the_fix(tmp_path, monkeypatch):
    from distill.core import files

    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    monkeypatch.setattr(files.os, "fsync", _enospc)
    with pytest.raises(OutputError, match=r"(?s)Cannot write .*report\.json: the disk is full.*Free space"):
        files.atomic_write_text(target, "new")
    assert target.read_text() == "old"  # the old file is kept
    assert os.listdir(target.parent) == ["report.json"]  # and no temp file is left


def test_a_full_disk_inside_safetensors_names_the_file(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from distill.core import files

    def full(*args: Any, **kwargs: Any) -> None:  # the message safetensors gives for an OS write error
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(files, "save_file", full)
    with pytest.raises(OutputError, match=r"Cannot write .*last\.safetensors: the disk is full"):
        files.atomic_save_tensors(tmp_path / "last.safetensors", {"w": torch.zeros(2)}, {})
    assert os.listdir(tmp_path) == []


def test_a_size_limit_in_the_kernel_gives_the_same_clear_error(tmp_path):
    """A real EFBIG from the kernel (RLIMIT_FSIZE), through Python's writes and safetensors' Rust ones."""
    script = ("import sys, torch\nfrom pathlib import Path\nfrom distill.core.files import atomic_save_tensors\n"
              "atomic_save_tensors(Path(sys.argv[1]), {'w': torch.zeros(100_000)}, {})\n")
    log = tmp_path / LOGS / "log.txt"
    proc = launch(["-c", script, str(tmp_path / "out" / "w.safetensors")], "fork", log, limit_bytes=10_000)
    assert proc.wait(120) == 1
    assert "OutputError: Cannot write" in _tail(log) and "File too large" in _tail(log)
    assert not list((tmp_path / "out").iterdir())


def test_no_permission_to_create_the_file_names_the_directory(tmp_path, monkeypatch):
    from distill.core import files

    def denied(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.os, "open", denied)
    with pytest.raises(OutputError, match=r"(?s)permission denied.*Make .* writable"):
        files.atomic_write_text(tmp_path / "config.yaml", "a: 1")


def test_generate_on_a_full_disk_says_what_to_do(tmp_path, monkeypatch):
    from textkd_helpers import EchoTeacher

    from distill.teachers import generate as gen
    from distill.teachers.generate import PromptRow, generate
    from distill.teachers.text import Sampling

    rows = [PromptRow(id="a", messages=[{"role": "user", "content": "Topic: x"}], fields={})]
    generate(EchoTeacher(), [], tmp_path / "out.jsonl", sampling=Sampling(), quiet=True)  # the sidecar
    monkeypatch.setattr(gen.os, "fsync", _enospc)  # then the disk fills up
    with pytest.raises(OutputError, match=r"Cannot write .*out\.jsonl: the disk is full"):
        generate(EchoTeacher(), rows, tmp_path / "out.jsonl", sampling=Sampling(), quiet=True)


def test_cli_prints_the_error_not_a_traceback_when_the_disk_is_full(run_config, tmp_path, monkeypatch,
                                                                    capsys):
    from distill.cli import main
    from distill.core import files

    monkeypatch.setattr(files.os, "fsync", _enospc)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(run_config))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot write ") and "config.yaml" in err and "Traceback" not in err


def _read_only_attempt(directory: Path) -> BaseException | None:
    from distill.core.files import atomic_write_text

    try:
        atomic_write_text(directory / "sub" / "report.json", "{}")
    except BaseException as exc:  # noqa: BLE001
        return exc
    return None


def test_a_read_only_output_directory_gives_a_clear_error(tmp_path):
    """chmod does not stop root: as root, the write is tried in a child that drops to `nobody`
    (in a directory under /tmp that `nobody` can reach; pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="distill-ro-")) if os.geteuid() == 0 else tmp_path
    directory = root / "ro"
    directory.mkdir()
    root.chmod(0o755)
    directory.chmod(0o555)
    try:
        if os.geteuid() != 0:
            exc = _read_only_attempt(directory)
            assert isinstance(exc, OutputError), exc
            message = str(exc)
        else:
            message = _as_nobody(directory)
    finally:
        directory.chmod(0o755)
        if root != tmp_path:
            shutil.rmtree(root)
    assert f"Cannot write {directory / 'sub' / 'report.json'}: permission denied" in message
    assert "writable" in message


def _as_nobody(directory: Path) -> str:
    """Try the write in a child process running as `nobody`; its error type and message."""
    import pwd

    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("running as root and no `nobody` user to drop to: chmod cannot be tested")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setuid(nobody)
            exc = _read_only_attempt(directory)
            os.write(write, f"{type(exc).__name__}|{exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        kind, _, message = f.read().partition("|")
    os.waitpid(pid, 0)
    assert kind == "OutputError", f"{kind}: {message}"
    return message
