"""The paired tests behind every verdict: a win is claimed only when the data support it."""

from __future__ import annotations

import math

import pytest
import torch

from distill.eval.verdict import compare_bits, compare_classifiers, mcnemar_exact


def test_mcnemar_is_the_exact_two_sided_binomial_tail_of_the_discordant_pairs():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 2 ** 10)
    assert mcnemar_exact(7, 3) == pytest.approx(2 * sum(math.comb(10, i) for i in range(4)) / 2 ** 10)
    assert mcnemar_exact(3, 7) == mcnemar_exact(7, 3) and mcnemar_exact(5, 5) == 1.0


def _pair(n: int, only_a: int, only_b: int, both: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.zeros(n, dtype=torch.bool)
    b = torch.zeros(n, dtype=torch.bool)
    a[:both] = b[:both] = True
    a[both:both + only_a] = True
    b[both + only_a:both + only_a + only_b] = True
    return a, b


def test_a_small_difference_on_a_small_test_set_is_no_detectable_difference():
    a, b = _pair(1000, only_a=20, only_b=29, both=800)  # +0.9 points: the "beats" from one seed
    v = compare_classifiers(a, b)
    assert v.outcome == "no detectable difference" and v.difference == pytest.approx(0.9)
    assert v.low < 0 < v.high and v.p_value > 0.05 and v.n == 1000 and v.seeds == 1
    assert v.sentence("distilled", "plain").startswith("No detectable difference between distilled and plain: +0.90")


def test_a_clear_difference_beats_and_the_reverse_is_worse():
    a, b = _pair(500, only_a=5, only_b=40, both=400)
    v = compare_classifiers(a, b)
    assert v.outcome == "beats" and v.low > 0 and v.p_value < 1e-5
    assert v.sentence("distilled", "plain").startswith("distilled beats plain: +7.00 points (95% interval +")
    assert compare_classifiers(b, a).outcome == "worse"


def test_several_seeds_also_weigh_the_seed_to_seed_spread():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(3, 800, generator=gen) < 0.8
    flips = torch.rand(3, 800, generator=gen)
    # B is 3 points better on one seed and 3 points worse on another: no consistent gain
    b = base.clone()
    b[0] |= flips[0] < 0.15
    b[1] &= flips[1] > 0.04
    v = compare_classifiers(base, b)
    assert v.seeds == 3 and v.outcome == "no detectable difference"
    consistent = base | (flips < 0.15)  # better on every seed
    assert compare_classifiers(base, consistent).outcome == "beats"
    with pytest.raises(ValueError, match="different examples"):
        compare_classifiers(base, base[:, :10])


def test_a_and_a_rarely_beats():
    """Two models that differ only by chance (each example right with the same probability): at most
    about 2.5% of comparisons may claim a win (the one-sided share of a 5% two-sided test)."""
    gen = torch.Generator().manual_seed(1)
    skill = torch.rand(500, generator=gen)  # per-example difficulty, shared by both
    wins = 0
    for _ in range(200):
        a = torch.rand(500, generator=gen) < skill
        b = torch.rand(500, generator=gen) < skill
        wins += compare_classifiers(a, b).outcome == "beats"
    assert wins / 200 <= 0.05


def test_bits_per_byte_are_compared_per_document_and_lower_is_better():
    gen = torch.Generator().manual_seed(0)
    nbytes = torch.randint(200, 2000, (40,), generator=gen).double()
    bits_a = nbytes * 1.5 * (1 + 0.05 * torch.randn(40, generator=gen, dtype=torch.float64))
    better = bits_a * 0.9
    v = compare_bits(bits_a, better, nbytes)
    assert v.outcome == "beats" and v.difference == pytest.approx(-0.1 * float(bits_a.sum() / nbytes.sum()))
    assert v.high < 0 and v.unit == "bits per byte" and v.n == 40
    assert compare_bits(better, bits_a, nbytes).outcome == "worse"
    noisy = bits_a * (1 + 0.05 * torch.randn(40, generator=gen, dtype=torch.float64))
    assert compare_bits(bits_a, noisy, nbytes).outcome == "no detectable difference"
    few = compare_bits(bits_a[:2], better[:2], nbytes[:2])  # 2 documents: 10% better on both, yet no evidence
    assert few.n == 2 and few.outcome == "no detectable difference"
