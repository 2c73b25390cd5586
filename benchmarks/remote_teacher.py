"""Building the LM teacher cache through an endpoint vs in process: tokens/s and agreement.

Run: .venv/bin/python benchmarks/remote_teacher.py          (about 3 min on 2 cores)

The teacher is SmolLM2-135M-Instruct; the data 48 blocks of 128 tokens of BBC News text (6,144
tokens); k = 64. The same top-k cache is built three ways, each twice, in interleaved order (the
median of the two is kept): in this process (the teacher loaded here, batches of 8 blocks), and
through `distill serve` running in its own process on this machine (`EndpointTopK`: one scoring
request per block, echo + logprobs + token ids) with 1 and with 4 requests in flight. Both
processes may use both cores; only one of the three builds runs at a time. Agreement compares the
in-process cache with the one built through the server over every position that has a next token.
Writes benchmarks/results/remote_teacher.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from common import WORK, write_result

from distill.data.corpora import read_bbc_news
from distill.data.tokens import blocks_subset, pack_text
from distill.models.causal_lm import load_causal_lm, load_tokenizer
from distill.teachers.endpoint import EndpointTopK
from distill.teachers.tokens import TopKCache

MODEL = "builtin:smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    distill = Path(sys.executable).with_name("distill")
    proc = subprocess.Popen([str(distill), "serve", MODEL, "--port", str(port), "--model-name", "teacher",
                             "--max-batch", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("distill serve did not start")


def timed_build(teacher, blocks, directory: Path, identity: dict) -> tuple[float, TopKCache]:
    shutil.rmtree(directory, ignore_errors=True)
    start = time.perf_counter()
    cache = TopKCache.build_or_open(teacher, blocks, directory, identity=identity, batch_size=8, quiet=True)
    return time.perf_counter() - start, cache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=48)
    p.add_argument("--k", type=int, default=64)
    args = p.parse_args()
    tok = load_tokenizer(MODEL)
    blocks = pack_text([row.text for row in read_bbc_news()[:200]], tok, seq_len=128, max_blocks=args.blocks)
    identity = {"teacher": MODEL, "tokenizer": "smollm2", "k": args.k, "vocab": len(tok)}
    local = load_causal_lm(MODEL).eval()
    port = free_port()
    server = start_server(port)
    root = Path(tempfile.mkdtemp(dir=WORK if WORK.is_dir() else None))
    try:
        url = f"http://127.0.0.1:{port}/v1"
        remotes = {c: EndpointTopK(url, "teacher", k=args.k, vocab=len(tok), concurrency=c) for c in (1, 4)}
        timed_build(remotes[4], blocks_subset(blocks, torch.arange(8)), root / "warm", identity)  # warm-up
        times: dict[str, list[float]] = {"local": [], "c1": [], "c4": []}
        caches = {}
        for _ in range(2):
            for name, teacher in (("local", local), ("c1", remotes[1]), ("c4", remotes[4])):
                seconds, caches[name] = timed_build(teacher, blocks, root / name, identity)
                times[name].append(seconds)
        batch = blocks.batch(torch.arange(len(blocks)))
        mask = batch["loss_mask"]
        a, b = caches["local"].signal(batch), caches["c4"].signal(batch)
        tokens = blocks.input_ids.numel()
        rate = {name: tokens / statistics.median(t) for name, t in times.items()}
        metrics = {"tokens": tokens, "k": args.k, "local_tokens_per_s": rate["local"],
                   "remote_c1_tokens_per_s": rate["c1"], "remote_c4_tokens_per_s": rate["c4"],
                   "remote_vs_local_ratio": rate["c4"] / rate["local"], "concurrency_speedup": rate["c4"] / rate["c1"],
                   "top1_identical": float((a.topk_indices[..., 0] == b.topk_indices[..., 0])[mask].float().mean()),
                   "max_abs_logprob_diff": float((a.topk_logprobs.float() - b.topk_logprobs.float())[mask].abs().max()),
                   "max_abs_tail_diff": float((a.tail_logprob.float() - b.tail_logprob.float())[mask].abs().max()),
                   "max_abs_tail_mass_diff": float((a.tail_logprob.float().exp()
                                                    - b.tail_logprob.float().exp())[mask].abs().max())}
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    write_result("remote_teacher", metrics, {"notes": f"{MODEL} fp32 CPU, {args.blocks} blocks x 128 tokens of BBC "
                                             f"News, k={args.k}; server: distill serve in its own process; "
                                             f"torch threads here {torch.get_num_threads()}, {os.cpu_count()} cores"})


if __name__ == "__main__":
    main()
