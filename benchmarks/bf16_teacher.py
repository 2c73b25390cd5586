"""How long a teacher forward takes in bfloat16 against float32 on this machine (`teacher.dtype: auto`).

    python benchmarks/bf16_teacher.py [--rounds 5]

SmolLM2-135M-Instruct, one batch of 8 × 105 tokens (a `distill task` on-policy batch: prompt and
answer), no grad, 2 threads, on an otherwise idle machine; the two precisions alternate within each
round after one warm-up call each, and each figure is the median over rounds. Keys: `fp32_s`, `bf16_s`,
`bf16_over_fp32` (the share of the float32 time), `fp32_spread`, `bf16_spread` ((max − min) / median),
`fast_bfloat16` (1 when `distill.core.distributed.fast_bfloat16` says this CPU multiplies bf16 fast).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    from distill.core.distributed import fast_bfloat16
    from distill.models import causal_lm as lm_models

    source = "builtin:smollm2-135m-instruct"
    models = {"fp32": lm_models.load_causal_lm(source).eval(),
              "bf16": lm_models.load_causal_lm(source, dtype=torch.bfloat16).eval()}
    x = torch.randint(0, 49152, (8, 105), generator=torch.Generator().manual_seed(0))
    seconds: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for model in models.values():
            model(x)
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                seconds[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    write_result("bf16_teacher", {
        "fp32_s": med["fp32"], "bf16_s": med["bf16"], "bf16_over_fp32": med["bf16"] / med["fp32"],
        **{f"{k}_spread": (max(v) - min(v)) / med[k] for k, v in seconds.items()},
        "fast_bfloat16": float(fast_bfloat16("cpu")), "rounds": args.rounds})


if __name__ == "__main__":
    main()
