"""The fused full-vocabulary KL against the written-out one: forward + backward seconds, side by side.

    .venv/bin/python benchmarks/fused_kl.py      # ≈ 1 min, on an otherwise idle machine

Student and teacher logits of `TOKENS` positions over SmolLM2's 49,152-token vocabulary (what one
on-policy step of 8 answers × 64 tokens scores), float32, 2 threads. Written out: log-softmaxes and
`distill.losses.divergences.divergence` (floors, exponential, difference, product, sum) through
autograd; fused: `distill.losses.fused_kl.full_kl`. Arms alternate; medians of `REPEATS` timings
each. Keys: `<direction>_written_s`, `<direction>_fused_s`, `<direction>_speedup` (written ÷ fused).
"""

from __future__ import annotations

import statistics
import time

import torch
from common import write_result

from distill.losses.divergences import divergence
from distill.losses.fused_kl import full_kl

TOKENS, VOCAB, REPEATS = 512, 49_152, 7


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    student, teacher = torch.randn(TOKENS, VOCAB), torch.randn(TOKENS, VOCAB)

    def written(x: torch.Tensor, kind: str) -> torch.Tensor:
        return divergence(torch.log_softmax(teacher, -1), torch.log_softmax(x, -1), kind=kind).sum()

    def fused(x: torch.Tensor, kind: str) -> torch.Tensor:
        return full_kl(x, teacher, reverse=kind == "reverse_kl").sum()

    metrics: dict[str, float] = {}
    for kind in ("forward_kl", "reverse_kl"):
        times: dict[str, list[float]] = {"written": [], "fused": []}
        for _ in range(REPEATS + 1):  # the first round warms up
            for arm, fn in (("written", written), ("fused", fused)):
                x = student.clone().requires_grad_()
                start = time.perf_counter()
                fn(x, kind).backward()
                times[arm].append(time.perf_counter() - start)
        written_s, fused_s = (statistics.median(times[a][1:]) for a in ("written", "fused"))
        metrics.update({f"{kind}_written_s": written_s, f"{kind}_fused_s": fused_s,
                        f"{kind}_speedup": written_s / fused_s})
    write_result("fused_kl", {**metrics, "tokens": TOKENS, "vocab": VOCAB, "repeats": REPEATS})


if __name__ == "__main__":
    main()
