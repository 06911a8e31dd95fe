"""Image-quality metrics, per image, on tensors in [0, 1] (batch [B, 3, H, W])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "luma",
    "psnr",
    "psnr_y",
    "ssim",
]

_EPS = 1e-10


def psnr(sr: Tensor, hr: Tensor) -> Tensor:
    """Per image 10·log10(1 / MSE) over RGB (the guide's PSNR); shape [B]."""
    mse = (sr.float() - hr.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(_EPS))


def luma(images: Tensor) -> Tensor:
    """ITU-R BT.601 luma Y in [0, 1] (the usual SR convention), shape [B, 1, H, W]."""
    weights = images.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255.0
    return (images.float() * weights).sum(1, keepdim=True) + 16.0 / 255.0


def psnr_y(sr: Tensor, hr: Tensor) -> Tensor:
    """Per image PSNR on the Y channel; shape [B]."""
    return psnr(luma(sr), luma(hr))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(sr: Tensor, hr: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per image SSIM on Y (Gaussian window 11, σ 1.5, valid region, data range 1); shape [B]."""
    x, y = luma(sr), luma(hr)
    window = _gaussian_window(window_size, sigma, x.device)
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x.pow(2)
    var_y = F.conv2d(y * y, window) - mu_y.pow(2)
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)
