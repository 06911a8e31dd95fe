import math

import pytest
import torch

from tune_dsr.metrics import psnr, psnr_y, recognition, ssim


def test_psnr_and_ssim_values():
    hr = torch.rand(2, 3, 32, 32)
    noisy = (hr + 0.1).clamp(0, 1)
    mse = (noisy - hr).pow(2).flatten(1).mean(1)
    assert torch.allclose(psnr(noisy, hr), 10 * torch.log10(1 / mse))
    assert psnr(hr, hr).min() > 90  # identical: capped, finite
    assert psnr_y(noisy, hr).shape == (2,)
    assert ssim(hr, hr) == pytest.approx(torch.ones(2), abs=1e-5)
    assert (ssim(torch.rand(2, 3, 32, 32), hr) < 0.5).all()


def _embeddings():
    """Three subjects, two faces each, on three orthogonal directions."""
    subjects = torch.tensor([0, 0, 1, 1, 2, 2])
    hr = torch.eye(3)[subjects] + 0.01 * torch.randn(6, 3)
    return hr, subjects


def test_recognition_perfect_wrong_and_unknown():
    torch.manual_seed(0)
    hr, subjects = _embeddings()
    assert recognition(hr, hr, subjects) == {"rank1": 1.0, "accuracy": 1.0, "unknown_rate": 0.0}
    swapped = hr[[2, 3, 0, 1, 4, 5]]  # subjects 0 and 1 look like each other
    found = recognition(swapped, hr, subjects)
    assert found["rank1"] == pytest.approx(2 / 6) and found["accuracy"] == pytest.approx(2 / 6)
    # Right subject but only weakly similar: counted as unknown above the threshold.
    weak = 0.3 * hr + torch.tensor([0.0, 0.0, 0.0]) + 0.9 * torch.tensor([[1.0, 1.0, 1.0]])
    found = recognition(weak, hr, subjects, threshold=0.99)
    assert found["unknown_rate"] == 1.0 and found["accuracy"] == 0.0
    assert math.isclose(found["rank1"], 1.0)
