"""Batch augmentation: shifts move content within bounds, mixup gives convex combinations."""

from __future__ import annotations

import pytest
import torch

from distill.data.augment import AugmentConfig, augment_batch, mixup, random_shift


def _dots(batch: int, size: int = 9) -> torch.Tensor:
    x = torch.zeros(batch, 1, size, size)
    x[:, 0, size // 2, size // 2] = 1.0
    return x


@pytest.mark.parametrize("shift", [1, 2])
def test_random_shift_moves_a_pixel_by_at_most_shift_and_fills_zeros(shift):
    x = _dots(256)
    out = random_shift(x, shift, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    moves = set()
    for img in out:
        assert img.sum() == 1.0 and set(img.unique().tolist()) == {0.0, 1.0}  # one pixel, zero fill
        r, c = (int(v) for v in torch.nonzero(img[0])[0])
        dr, dc = r - 4, c - 4
        assert abs(dr) <= shift and abs(dc) <= shift
        moves.add((dr, dc))
    assert len(moves) == (2 * shift + 1) ** 2  # 256 images cover every offset


def test_random_shift_at_the_border_drops_content():
    x = torch.zeros(32, 1, 4, 4)
    x[:, 0, 0, 0] = 1.0
    out = random_shift(x, 1, torch.Generator().manual_seed(0))
    kept = out.sum(dim=(1, 2, 3))
    assert set(kept.tolist()) == {0.0, 1.0}  # shifted out of the frame sometimes, never duplicated


def test_random_shift_is_deterministic_for_a_generator_seed():
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    a = random_shift(x, 2, torch.Generator().manual_seed(1))
    b = random_shift(x, 2, torch.Generator().manual_seed(1))
    c = random_shift(x, 2, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_shift_moves_all_channels_together():
    x = _dots(8).repeat(1, 3, 1, 1)
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_mixup_gives_convex_combinations_and_distribution_targets():
    b = 12
    # one-hot inputs equal to one-hot labels: the mixed inputs must equal the mixed targets
    x, labels = torch.eye(b), torch.arange(b)
    inputs, targets = mixup(x, labels, b, alpha=0.4, generator=torch.Generator().manual_seed(0))
    assert targets.shape == (b, b)
    torch.testing.assert_close(targets.sum(-1), torch.ones(b))
    assert (targets >= 0).all() and (targets <= 1).all()
    torch.testing.assert_close(inputs, targets)
    assert ((targets > 0).sum(-1) <= 2).all()  # each row mixes at most two examples
    assert not torch.equal(inputs, x)  # something was mixed


def test_mixup_is_deterministic_and_leaves_global_rng_alone():
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 3
    before = torch.get_rng_state()
    a = mixup(x, y, 3, 0.2, torch.Generator().manual_seed(7))
    b = mixup(x, y, 3, 0.2, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_augment_batch_without_options_is_identity():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out_x, out_y = augment_batch(x, y, 4, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out_x is x and out_y is y


def test_augment_batch_flip_and_flat_inputs():
    x = torch.arange(4.0).reshape(1, 1, 1, 4).repeat(32, 1, 1, 1)
    out, _ = augment_batch(x, torch.zeros(32, dtype=torch.long), 2, AugmentConfig(flip=True),
                           torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0] == torch.tensor([3.0, 2.0, 1.0, 0.0])).all(-1)
    unchanged = (out[:, 0, 0] == torch.tensor([0.0, 1.0, 2.0, 3.0])).all(-1)
    assert (flipped | unchanged).all() and flipped.any() and unchanged.any()
    flat = torch.randn(5, 6)  # image-only augmentations skip non-image inputs
    same, _ = augment_batch(flat, torch.zeros(5, dtype=torch.long), 2, AugmentConfig(shift=2, flip=True),
                            torch.Generator().manual_seed(0))
    assert torch.equal(same, flat)
