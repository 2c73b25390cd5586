"""Resumability of `distill generate` against a real server: SIGKILL it mid-run (several times),
re-run the same command, and count what the JSONL holds.

    python benchmarks/generate_resume.py        # ≈ 5 min on 2 CPU cores

`distill serve` runs SmolLM2-135M-Instruct on 127.0.0.1 in its own process; `distill generate`
asks it for short answers to BBC News prompts and is killed (SIGKILL) each time a few more records
have landed, then finally runs to the end. Writes benchmarks/results/generate_resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import WORK, write_result

BIN = Path(sys.executable).parent / "distill"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--kills", type=int, default=3)
    args = ap.parse_args()
    work = WORK / "generate_resume"
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"out-{time.time_ns()}.jsonl"
    port = _free_port()
    server = subprocess.Popen([str(BIN), "serve", "builtin:smollm2-135m-instruct", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port)
        cmd = [str(BIN), "generate", "--output", str(out), "teacher.backend=openai", "teacher.model=smollm2",
               f"teacher.base_url=http://127.0.0.1:{port}/v1", 
               f"data.train_examples={args.prompts}", "data.eval_examples=1", "sampling.max_tokens=8",
               "concurrency=4", "--quiet"]
        kills = 0
        for k in range(args.kills):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            target = (k + 1) * args.prompts // (args.kills + 1)
            while _lines(out) < target and proc.poll() is None:
                time.sleep(0.01)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in records]
    write_result("generate_resume", {"prompts": args.prompts, "records": len(records), "kills": kills,
                                     "duplicates": len(ids) - len(set(ids)),
                                     "missing": args.prompts - len(set(ids))})


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("distill serve did not come up")


if __name__ == "__main__":
    main()
