"""Verdicts that account for noise: does model B beat model A on the same held-out examples?

A win is claimed only when a paired test supports it. Per example, both models are scored on the same
inputs (correct or not for classifiers; bits and bytes per document for language models), so the
difference is measured against the example-to-example spread, and, when several seeds ran, against
the seed-to-seed spread too:

- **classifiers**: McNemar's exact test on the examples where exactly one model is right (two-sided,
  α = 0.05, pooled over seeds), and a 95% interval of the accuracy difference whose variance is the
  paired bootstrap's (examples, and seeds when several ran) plus the seed-to-seed variance of the two
  models' accuracies: measured over the seeds, and never below the test set's own binomial variance
  (`compare_classifiers` says why);
- **language models**: a paired bootstrap over held-out documents of the difference in bits per
  byte (the ratio of summed bits to summed bytes, so long documents weigh by their length); with
  fewer than `MIN_DOCUMENTS` documents no claim is made.

The answer is *beats* (the difference and its 95% interval), *no detectable difference* or *worse*.
SciPy's tests are not used: scipy is not a dependency, and the exact binomial tail and a bootstrap are
a few lines of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

ALPHA = 0.05
Z95 = 1.959964  # the two-sided 95% normal quantile
RESAMPLES = 2000
MIN_DOCUMENTS = 5  # fewer held-out documents (or blocks) than this: no claim either way


@dataclass(frozen=True)
class Verdict:
    """B against A: `outcome` beats | no detectable difference | worse."""

    outcome: str
    difference: float  # B − A: accuracy points, or bits per byte (negative is better)
    low: float  # 95% interval of the difference
    high: float
    p_value: float | None  # McNemar's exact test (classifiers)
    n: int  # examples (or documents) per seed
    seeds: int
    unit: str  # "points" | "bits per byte"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def reversed(self) -> Verdict:
        """A against B: the same test read the other way round."""
        flip = {"beats": "worse", "worse": "beats"}.get(self.outcome, self.outcome)
        return Verdict(flip, -self.difference, -self.high, -self.low, self.p_value, self.n, self.seeds, self.unit)

    def sentence(self, b: str, a: str) -> str:
        """E.g. "distilled beats plain: +2.10 points (95% interval +0.80 to +3.40; McNemar p = 0.002; 500 test examples, 1 seed)"."""
        if self.outcome == "beats":
            return f"{b} beats {a}: {self.measured()}."
        if self.outcome == "worse":
            return f"{b} is worse than {a}: {self.measured()}."
        return f"No detectable difference between {b} and {a}: {self.measured()}."

    def measured(self) -> str:
        """The difference with its interval and what it rests on, e.g. "+2.10 points (95% interval …)"."""
        fmt = (lambda v: f"{v:+.2f}") if self.unit == "points" else (lambda v: f"{v:+.4f}")
        detail = f"95% interval {fmt(self.low)} to {fmt(self.high)}"
        if self.p_value is not None:
            detail += f"; McNemar p = {self.p_value:.3g}"
        what = "test examples" if self.unit == "points" else "held-out documents"
        detail += f"; {self.n:,} {what}, {self.seeds} seed{'s' if self.seeds != 1 else ''}"
        unit = " points" if self.unit == "points" else " bits per byte"
        return f"{fmt(self.difference)}{unit} ({detail})"


def compare_classifiers(correct_a: torch.Tensor, correct_b: torch.Tensor, seed: int = 0, *,
                        seed_variance: bool = True) -> Verdict:
    """B against A from per-example correctness, (N,) for one seed or (S, N) for S seeds (row s of
    each from the same seed's pair of runs, the same N examples).

    The interval is about the recipes, not only these models: besides the example-to-example spread
    (the paired bootstrap), it allows for seed-to-seed variation of each model's accuracy, estimated
    from the seeds when several ran and never taken below the test set's own sampling variance
    p(1 − p)/N, which is what a model's accuracy varies by between seeds when only one ran (measured
    in `benchmarks/verdict_calibration.py`: A/A runs claim a win under 5% of the time with it, 12.5%
    without: `seed_variance=False`, the paired test over examples alone)."""
    a, b = _as_runs(correct_a).float(), _as_runs(correct_b).float()
    if a.shape != b.shape:
        raise ValueError(f"the two models were scored on different examples: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (b - a).float()  # (S, N): +1 where only B is right, −1 where only A is
    s, n = diff.shape
    estimate = 100 * float(diff.mean())
    boot = 100 * _bootstrap_means(diff, seed)
    paired_var = float(boot.double().var())
    p_bar = float((a.mean() + b.mean()) / 2)
    floor = 2 * (100 ** 2) * p_bar * (1 - p_bar) / n  # seed variance of a difference of two accuracies, at least
    seed_var = float((100 * diff.mean(1)).double().var()) if s > 1 else 0.0
    half = Z95 * math.sqrt(paired_var + (max(seed_var, floor) / s if seed_variance else 0.0))
    low, high = estimate - half, estimate + half
    only_b, only_a = int((diff > 0).sum()), int((diff < 0).sum())
    p = mcnemar_exact(only_b, only_a)
    outcome = _outcome(low, high, p, higher_is_better=True)
    return Verdict(outcome, estimate, low, high, p, n, s, "points")


def compare_bits(bits_a: torch.Tensor, bits_b: torch.Tensor, nbytes: torch.Tensor, seed: int = 0) -> Verdict:
    """B against A from each held-out document's total bits under each model ((D,) or (S, D)) and its
    bytes (D,): the difference in bits per byte (lower is better) with a bootstrap over documents."""
    a, b = _as_runs(bits_a).double(), _as_runs(bits_b).double()
    nbytes = nbytes.double().reshape(-1)
    if a.shape != b.shape or a.shape[1] != len(nbytes):
        raise ValueError("bits of both models and bytes must cover the same documents")
    estimate = float(((b - a).sum(1) / nbytes.sum()).mean())
    gen = torch.Generator().manual_seed(seed)
    s, d = a.shape
    seeds = torch.randint(0, s, (RESAMPLES, s), generator=gen) if s > 1 else torch.zeros(RESAMPLES, 1, dtype=torch.long)
    docs = torch.randint(0, d, (RESAMPLES, d), generator=gen)
    delta = (b - a)[:, docs]  # (S, R, D)
    per_run = delta.sum(-1) / nbytes[docs].sum(-1)  # (S, R)
    boot = per_run.gather(0, seeds.T).mean(0)  # (R,)
    low, high = _interval(boot)
    outcome = _outcome(-high, -low, None, higher_is_better=True)  # lower bits are better
    if d < MIN_DOCUMENTS:  # a bootstrap over a handful of documents has no spread to trust
        outcome = "no detectable difference"
    return Verdict(outcome, estimate, low, high, None, d, s, "bits per byte")


def mcnemar_exact(only_b: int, only_a: int) -> float:
    """Two-sided exact McNemar p-value: the binomial tail of the discordant pairs at 1/2."""
    n = only_b + only_a
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _as_runs(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.reshape(1, -1) if x.dim() == 1 else x


def _bootstrap_means(diff: torch.Tensor, seed: int) -> torch.Tensor:
    """The mean of `diff` (S, N) over resampled seeds and examples, `RESAMPLES` times."""
    gen = torch.Generator().manual_seed(seed)
    s, n = diff.shape
    rows = torch.randint(0, n, (RESAMPLES, n), generator=gen)
    per_seed = diff[:, rows].mean(-1)  # (S, R): each seed's mean over the same resampled examples
    if s == 1:
        return per_seed[0]
    seeds = torch.randint(0, s, (RESAMPLES, s), generator=gen)
    return per_seed.gather(0, seeds.T).mean(0)


def _interval(boot: torch.Tensor) -> tuple[float, float]:
    q = torch.quantile(boot.double(), torch.tensor([ALPHA / 2, 1 - ALPHA / 2], dtype=torch.double))
    return float(q[0]), float(q[1])


def _outcome(low: float, high: float, p: float | None, *, higher_is_better: bool) -> str:
    """beats when the whole interval is above 0 (and McNemar agrees, where it applies); worse when below."""
    significant = p is None or p < ALPHA
    if low > 0 and significant:
        return "beats"
    if high < 0 and significant:
        return "worse"
    return "no detectable difference"
