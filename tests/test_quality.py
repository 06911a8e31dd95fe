
import pytest
import torch

from tune_dsr.quality import psnr, psnr_y, ssim


def test_psnr_and_ssim_values():
    hr = torch.rand(2, 3, 32, 32)
    noisy = (hr + 0.1).clamp(0, 1)
    mse = (noisy - hr).pow(2).flatten(1).mean(1)
    assert torch.allclose(psnr(noisy, hr), 10 * torch.log10(1 / mse))
    assert psnr(hr, hr).min() > 90  # identical: capped, finite
    assert psnr_y(noisy, hr).shape == (2,)
    assert ssim(hr, hr).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert (ssim(torch.rand(2, 3, 32, 32), hr) < 0.5).all()
