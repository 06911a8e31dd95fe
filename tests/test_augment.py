"""The guide's shared augmentations of a VLR/HR pair."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tune_dsr.training.augment import augment_pair


def _smooth_pairs(batch: int, hr: int = 64, vlr: int = 16, seed: int = 0) -> tuple[torch.Tensor,
                                                                                    torch.Tensor]:
    """Smooth, asymmetric colour images and their area-downsampled VLR versions."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g) * 0.6 + 0.2
    high = F.interpolate(coarse, size=(hr, hr), mode="bicubic", align_corners=False).clamp(0, 1)
    return F.interpolate(high, size=(vlr, vlr), mode="area"), high


def test_augment_shapes_range_and_determinism() -> None:
    vlr, hr = torch.rand(32, 3, 16, 16), torch.rand(32, 3, 64, 64)
    a_vlr, a_hr = augment_pair(vlr, hr, torch.Generator().manual_seed(0))
    assert a_vlr.shape == vlr.shape and a_hr.shape == hr.shape
    assert a_vlr.dtype == vlr.dtype
    for out in (a_vlr, a_hr):
        assert out.min() >= 0 and out.max() <= 1
    b_vlr, b_hr = augment_pair(vlr, hr, torch.Generator().manual_seed(0))
    assert torch.equal(a_vlr, b_vlr) and torch.equal(a_hr, b_hr)
    c_vlr, _ = augment_pair(vlr, hr, torch.Generator().manual_seed(1))
    assert not torch.equal(a_vlr, c_vlr)
    assert not torch.equal(a_vlr, vlr)  # something happened
    assert torch.equal(vlr, vlr.clone())  # inputs untouched


def test_augment_is_resumable_from_generator_state() -> None:
    vlr, hr = torch.rand(8, 3, 8, 8), torch.rand(8, 3, 32, 32)
    g = torch.Generator().manual_seed(3)
    augment_pair(vlr, hr, g)
    state = g.get_state()
    first = augment_pair(vlr, hr, g)
    g.set_state(state)
    again = augment_pair(vlr, hr, g)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_augment_applies_the_same_transform_to_both_sizes() -> None:
    vlr, hr = _smooth_pairs(64)
    a_vlr, a_hr = augment_pair(vlr, hr, torch.Generator().manual_seed(7))
    down = F.interpolate(a_hr, size=(16, 16), mode="area")
    error = (down - a_vlr).abs().mean(dim=(1, 2, 3))
    changed = (a_vlr - vlr).abs().mean(dim=(1, 2, 3))
    assert error.max() < 0.01, error.max()
    # The check has teeth: many samples changed far more than the mismatch tolerated.
    assert (changed > 0.03).sum() > 10, changed
    # Augmenting the two sizes with different random numbers would not pass.
    _, other_hr = augment_pair(vlr, hr, torch.Generator().manual_seed(8))
    mismatch = (F.interpolate(other_hr, size=(16, 16), mode="area") - a_vlr).abs()
    assert mismatch.mean(dim=(1, 2, 3)).max() > 0.03


def test_augment_probabilities_and_ranges() -> None:
    n = 4000
    g = torch.Generator().manual_seed(0)
    # A left-to-right ramp: after a flip it runs right-to-left (±5° cannot reverse it).
    ramp = torch.linspace(0.2, 0.8, 8).expand(n, 3, 8, 8).contiguous()
    out, _ = augment_pair(ramp, ramp.clone(), g)
    flipped = (out[..., -1] - out[..., 0]).mean(dim=(1, 2)) < 0
    assert 0.46 < flipped.float().mean() < 0.54
    rotated = ((out - torch.where(flipped.view(-1, 1, 1, 1), ramp.flip(-1), ramp)).abs()
               .amax(dim=(1, 2, 3)) > 1e-3)
    # Changed beyond the flip by a rotation (p 0.6) or a colour jitter (p 0.25): 1 - 0.4 * 0.75.
    assert 0.66 < rotated.float().mean() < 0.74
    # A flat colour is only changed by the colour jitter: p 0.25, within ±5 % / ±3 %.
    flat = torch.tensor([0.6, 0.4, 0.3]).view(1, 3, 1, 1).expand(n, 3, 4, 4).contiguous()
    out, _ = augment_pair(flat, flat.clone(), g)
    jittered = (out - flat).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert 0.22 < jittered.float().mean() < 0.28
    ratio = out / flat
    assert ratio.min() > 0.9 and ratio.max() < 1.1


def test_augment_rejects_bad_input() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match="differ"):
        augment_pair(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 32, 32), g)
    with pytest.raises(ValueError, match="float"):
        augment_pair(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.rand(2, 3, 32, 32), g)
