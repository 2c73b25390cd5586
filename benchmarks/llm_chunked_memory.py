"""Peak memory of the chunked token-divergence loss vs the naive full-logit loss (CPU).

Run: .venv/bin/python benchmarks/llm_chunked_memory.py     (about 1 min, needs ~4 GB RAM)

Setting: vocabulary 49,152 and hidden size 576 (SmolLM2's), 4,096 tokens per step, a teacher given
as top-64 log-probabilities (as from a cache), forward KL at T = 1, loss + backward. Each variant
runs in a fresh process; its peak is the growth of the process's maximum resident set during the
loss and backward, over what the inputs already hold. Value and gradients of the two are compared
in a third process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

TOKENS, VOCAB, HIDDEN, TOPK, CHUNK = 4096, 49152, 576, 64, 512


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, HIDDEN, generator=g, requires_grad=True)
    weight = (0.02 * torch.randn(VOCAB, HIDDEN, generator=g)).requires_grad_()
    t_lp = torch.randn(TOKENS, TOPK, generator=g).log_softmax(-1) - 0.05  # top-k mass ≈ 0.95
    t_idx = torch.randint(0, VOCAB, (TOKENS, TOPK), generator=g)
    return hidden, weight, t_lp, t_idx


def _loss(variant: str, hidden, weight, t_lp, t_idx) -> torch.Tensor:
    from distill.losses.divergences import chunked_token_divergence, token_divergence

    teacher = {"teacher_topk_logprobs": t_lp, "teacher_topk_indices": t_idx}
    if variant == "naive":
        return token_divergence(hidden @ weight.T, **teacher)
    return chunked_token_divergence(hidden, weight, chunk_size=CHUNK, **teacher)


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def child(variant: str) -> None:
    torch.set_num_threads(2)
    inputs = _inputs()
    before = _rss_kb()
    _loss(variant, *inputs).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (peak - before) / 1024}))


def compare() -> None:
    inputs = _inputs()
    naive = _loss("naive", *inputs)
    g_naive = torch.autograd.grad(naive, inputs[:2])
    chunked = _loss("chunked", *inputs)
    g_chunked = torch.autograd.grad(chunked, inputs[:2])
    diffs = [abs(float(chunked - naive)) / abs(float(naive))]
    diffs += [float((a - b).abs().max() / b.abs().max()) for a, b in zip(g_chunked, g_naive)]
    print(json.dumps({"max_rel_diff": max(diffs)}))


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=["naive", "chunked", "compare"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.child == "compare":
        return compare()
    if args.child:
        return child(args.child)
    import statistics

    from common import write_result

    peaks = {v: statistics.median(_run("--child", v)["peak_mb"] for _ in range(args.repeats))
             for v in ("naive", "chunked")}
    write_result("llm_chunked_memory", {
        "memory_ratio": peaks["chunked"] / peaks["naive"],
        "max_rel_diff": _run("--child", "compare")["max_rel_diff"],
        "naive_peak_mb": peaks["naive"], "chunked_peak_mb": peaks["chunked"],
        "tokens": TOKENS, "vocab": VOCAB, "chunk": CHUNK,
    })


if __name__ == "__main__":
    main()
