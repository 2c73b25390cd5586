"""The README's command blocks, run as documented, in order, in a scratch directory.

Each ```bash block of README.md is a command block; an info string may add `exit=0,3` (the exit codes
the block documents as a normal outcome, e.g. a monitor's alert) or `background` (a server: started,
waited on until its port answers, and stopped after the next block, which uses it). ```text blocks
are usage lines and launch forms for hardware CI lacks, not commands; `test_readme.py` checks their
options against the parser instead.

The blocks run with DISTILL_SMOKE=1 (every job on its smoke budget, under the names the README gives,
so a later block finds an earlier run's files) in a directory holding the repository's .venv, configs
and tests (linked) and scripts (copied, so they treat the scratch directory as the checkout), plus the
files the README asks the reader to bring, made from real data that ships in packages:
requests.jsonl (MNIST-5k test images), recorded.jsonl and held_out.jsonl (BBC News articles and their
topics as chat turns), prompts.jsonl (articles to answer) and task.jsonl (additions with answers).
`bash scripts/test.sh` sets up and collects the suite (PYTEST_ADDOPTS=--collect-only): running the
whole suite inside one of its own tests would run it twice.

Used by tests/test_readme.py and benchmarks/first_hour.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    line: int
    text: str
    exit_codes: frozenset[int] = frozenset({0})
    background: bool = False


def command_blocks(readme: Path = REPO / "README.md") -> list[Block]:
    source = readme.read_text()
    out = []
    for m in FENCE.finditer(source):
        if m.group(1) != "bash":
            continue
        info = m.group(2)
        codes = re.search(r"exit=([\d,]+)", info)
        out.append(Block(line=source.count("\n", 0, m.start()) + 1, text=m.group(3),
                         exit_codes=frozenset(int(c) for c in codes.group(1).split(",")) if codes else frozenset({0}),
                         background="background" in info))
    return out


def usage_blocks(readme: Path = REPO / "README.md") -> list[str]:
    return [m.group(3) for m in FENCE.finditer(readme.read_text()) if m.group(1) == "text"]


def prepare(root: Path) -> None:
    """The scratch checkout: the repository's environment and configs, the scripts, the user's files."""
    root.mkdir(parents=True, exist_ok=True)
    for name in (".venv", "configs", "tests", "src", "pyproject.toml"):
        if not (root / name).exists():
            (root / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "scripts", root / "scripts", dirs_exist_ok=True)
    _user_files(root)


def _user_files(root: Path) -> None:
    from distill.data.config import DataConfig
    from distill.data.corpora import read_bbc_news
    from distill.data.datasets import load_data

    test = load_data(DataConfig(name="mnist5k")).test
    with open(root / "requests.jsonl", "w") as f:
        for i in range(200):
            f.write(json.dumps({"inputs": test[i]["inputs"].tolist()}) + "\n")
    articles = read_bbc_news()
    articles = articles[:: max(1, len(articles) // 200)][:200]

    def chat(a) -> dict:
        words = " ".join(a.text.split()[:40])
        return {"messages": [{"role": "user", "content": f"Which news section is this from? {words}"},
                             {"role": "assistant", "content": a.label}]}

    _jsonl(root / "recorded.jsonl", [chat(a) for a in articles[:100]])
    _jsonl(root / "held_out.jsonl", [chat(a) for a in articles[100:]])  # a 0.2 sample: about 20 conversations
    _jsonl(root / "prompts.jsonl", [{"messages": chat(a)["messages"][:1]} for a in articles[:8]])
    _jsonl(root / "task.jsonl", [{"prompt": f"What is {a} + {b}? Answer with the number.", "answer": str(a + b)}
                                  for a, b in zip(range(11, 131, 3), range(40, 0, -1))])


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def environment() -> dict[str, str]:
    env = {**os.environ, "DISTILL_SMOKE": "1", "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
           "PYTEST_ADDOPTS": "--collect-only -q", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("VIRTUAL_ENV", None)
    return env


@dataclass
class Outcome:
    line: int
    ok: bool
    seconds: float
    code: int | None
    tail: str


def run_blocks(root: Path, blocks: list[Block], timeout_s: float = 900) -> list[Outcome]:
    """Every block in order; a server block runs until the block after it has finished."""
    prepare(root)
    env, outcomes, server = environment(), [], None
    for block in blocks:
        started = time.perf_counter()
        if block.background:
            server = _start_server(block, root, env)
            ok, code, tail = server[1], None, server[2]
            outcomes.append(Outcome(block.line, ok, time.perf_counter() - started, code, tail))
            continue
        try:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=timeout_s)
            code, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
        except subprocess.TimeoutExpired as exc:
            code, tail = None, f"timed out after {timeout_s:.0f} s: {str(exc.output or '')[-2000:]}"
        outcomes.append(Outcome(block.line, code in block.exit_codes, time.perf_counter() - started, code, tail))
        if server is not None:
            _stop(server[0])
            server = None
    if server is not None:
        _stop(server[0])
    return outcomes


def _start_server(block: Block, root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, bool, str]:
    port = int(re.search(r"--port (\d+)", block.text).group(1))  # type: ignore[union-attr]
    log = open(root / f"server-{block.line}.log", "w")
    proc = subprocess.Popen(["bash", "-c", f"exec {block.text.strip()}"], cwd=root, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, True, ""
        time.sleep(0.5)
    _stop(proc)
    return proc, False, (root / f"server-{block.line}.log").read_text()[-3000:]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
