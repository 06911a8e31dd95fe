"""DSR ("DSRColor"): the face super-resolution network that tune_dsr trains.

conv 3→C → N residual blocks → one pixel-shuffle stage per upscale factor → conv C→3 →
antialiased resize to the exact HR size, clamped to [0, 1]. Optionally the network predicts the
residual over a bicubic upscale of its input (a global skip that SR practice finds easier to train).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from tune_dsr.config import ModelConfig

__all__ = [
    "DSR",
    "ResidualBlock",
    "upscale_factors",
]



def upscale_factors(vlr_size: int, hr_size: int) -> list[int]:
    """Pixel-shuffle factors for one VLR→HR scale.

    An integer scale made of 2s and 3s is reached exactly (4 → [2, 2], 6 → [2, 3]); any other scale
    is overshot with ×2 stages and brought to size by an antialiased *down*-resize, which loses
    nothing the network made (32 → 112 is 3.5×: [2, 2] to 128 px, then resize to 112).
    """
    if hr_size % vlr_size == 0:
        rest, factors = hr_size // vlr_size, []
        for f in (2, 3):
            while rest % f == 0:
                factors.append(f)
                rest //= f
        if rest == 1:
            return sorted(factors)
    return [2] * max(1, math.ceil(math.log2(hr_size / vlr_size)))


class ResidualBlock(nn.Module):
    """3×3 conv → PReLU → 3×3 conv, add the input, PReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.act1 = nn.PReLU(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.act2 = nn.PReLU(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(x + self.conv2(self.act1(self.conv1(x))))


class DSR(nn.Module):
    """Very-low-resolution face (vlr_size px) → HR face (hr_size px), RGB in [0, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vlr_size is None:
            raise ValueError("DSR needs a VLR size; an unset vlr_size means 'read it off the "
                             "data', which the trainer does before it builds DSR")
        self.config = config
        width = config.width
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(width) for _ in range(config.depth)))
        stages: list[nn.Module] = []
        for factor in upscale_factors(int(config.vlr_size), config.hr_size):
            stages += [nn.Conv2d(width, width * factor**2, 3, padding=1),
                       nn.PixelShuffle(factor), nn.PReLU(width)]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)
        if not config.bicubic_residual and self.tail.bias is not None:
            # Start at mid-grey: the output is clamped to [0, 1], and a clamp passes no gradient,
            # so a net whose first outputs sit around 0 would waste half its pixels' signal.
            nn.init.constant_(self.tail.bias, 0.5)

    def forward(self, vlr: Tensor) -> Tensor:
        size = self.config.hr_size
        out = self.tail(self.upsample(self.body(self.head(vlr))))
        if out.shape[-1] != size or out.shape[-2] != size:
            # In float32: antialiased resizing has no bf16 kernel on CPU, and it is cheap.
            out = F.interpolate(out.float(), size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)
        if self.config.bicubic_residual:
            out = out + F.interpolate(vlr.float(), size=(size, size), mode="bicubic",
                                      align_corners=False)
        return out.clamp(0.0, 1.0)
