"""The guide's shared augmentations of a VLR/HR pair, on float batches on any device.

Random numbers come from a CPU generator, a fixed amount per sample, so an epoch seeded by
(seed, epoch) is the same whether the run went straight through or was resumed before it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["augment_pair"]

# The guide's shared augmentations (docs/background.md, "Training").
FLIP_P = 0.5
ROTATE_P = 0.6
MAX_DEGREES = 5.0
JITTER_P = 0.25
BRIGHTNESS = 0.05
CONTRAST = 0.05
SATURATION = 0.03


def _grey(images: Tensor) -> Tensor:
    """ITU-R BT.601 luma, [B,1,h,w]: the grey level contrast and saturation are taken around."""
    r, g, b = images.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _apply(images: Tensor, flip: Tensor, rotate: Tensor, angle: Tensor, jitter: Tensor,
           factors: Tensor) -> Tensor:
    """One size of the pair; the masks and parameters are [B] CPU tensors shared by both sizes."""
    device = images.device
    out = torch.where(_per_sample(flip.to(device)), images.flip(-1), images)

    rows = rotate.nonzero().squeeze(1)
    if rows.numel():
        # Rotation about the centre in normalised coordinates: the same angle on either size
        # (the images are square, so normalised and pixel angles agree).
        cos, sin = angle[rows].cos(), angle[rows].sin()
        theta = torch.zeros(rows.numel(), 2, 3, dtype=torch.float32)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        rows_dev = rows.to(device)
        selected = out.index_select(0, rows_dev)
        grid = F.affine_grid(theta.to(device=device, dtype=out.dtype), list(selected.shape),
                             align_corners=False)
        rotated = F.grid_sample(selected, grid, mode="bilinear", padding_mode="border",
                                align_corners=False)
        out = out.index_copy(0, rows_dev, rotated)

    rows = jitter.nonzero().squeeze(1)
    if rows.numel():
        rows_dev = rows.to(device)
        f = factors[rows].to(device=device, dtype=out.dtype)
        x = out.index_select(0, rows_dev)
        x = (x * _per_sample(f[:, 0])).clamp(0.0, 1.0)  # brightness
        mean = _grey(x).mean(dim=(-2, -1), keepdim=True)
        x = ((x - mean) * _per_sample(f[:, 1]) + mean).clamp(0.0, 1.0)  # contrast
        grey = _grey(x)
        x = ((x - grey) * _per_sample(f[:, 2]) + grey).clamp(0.0, 1.0)  # saturation
        out = out.index_copy(0, rows_dev, x)
    return out.clamp(0.0, 1.0)


def augment_pair(vlr: Tensor, hr: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The guide's augmentations, the same per pair on both sizes: horizontal flip (p 0.5),
    rotation uniform in ±5° (p 0.6, border padding), colour jitter (p 0.25: brightness and contrast
    ±5 %, saturation ±3 %). Returns new tensors clamped to [0, 1].

    `vlr` [B,3,s,s] and `hr` [B,3,H,H] are float batches in [0, 1] on any device. The random
    numbers come from `generator`, a CPU generator, and a call always draws the same amount
    (7 numbers per sample), so a run seeded per epoch is reproducible and resumable.
    """
    for label, images in (("vlr", vlr), ("hr", hr)):
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"{label} must be a float batch [B, 3, h, w], but got "
                             f"{images.dtype} {list(images.shape)}")
    if vlr.shape[0] != hr.shape[0]:
        raise ValueError(f"vlr and hr batches differ in size: {vlr.shape[0]} vs {hr.shape[0]}")
    if generator.device.type != "cpu":
        raise ValueError(f"augment_pair needs a CPU torch.Generator (reproducible on any "
                         f"device), but got one on {generator.device}")
    batch = vlr.shape[0]
    u = torch.rand(batch, 7, generator=generator)
    flip = u[:, 0] < FLIP_P
    rotate = u[:, 1] < ROTATE_P
    angle = (2.0 * u[:, 2] - 1.0) * math.radians(MAX_DEGREES)
    jitter = u[:, 3] < JITTER_P
    factors = 1.0 + (2.0 * u[:, 4:7] - 1.0) * torch.tensor([BRIGHTNESS, CONTRAST, SATURATION])
    return (_apply(vlr, flip, rotate, angle, jitter, factors),
            _apply(hr, flip, rotate, angle, jitter, factors))
