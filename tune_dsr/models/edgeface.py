"""EdgeFace: the frozen identity network whose embedding and activations train DSR.

DSR's identity and feature-matching losses compare EdgeFace on SR and HR faces. For those terms
to reach DSR, EdgeFace must be frozen (eval mode, no parameter gradients) yet differentiable with
respect to its input, and must hand back its intermediate activations from the same forward pass
that produced the embedding (the original ran it under ``no_grad`` and hooked detached
activations; see docs/background.md, "Defects").

Reading checkpoint files is `tune_dsr.models.checkpoints.load_edgeface`.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import Tensor, nn

from tune_dsr.errors import EdgeFaceError

__all__ = [
    "LDC_VARIANT",
    "VARIANTS",
    "EdgeNeXtIdentityNet",
    "IdentityNet",
    "LDCIdentityNet",
    "LowRankLinear",
    "build_edgeface",
]


LDC_VARIANT = "ldc_edgeface_s"

VARIANTS = ("edgeface_xxs", "edgeface_xs_gamma_06", "edgeface_s_gamma_05", "edgeface_base",
            LDC_VARIANT)

# Official variants: timm EdgeNeXt model and low-rank ratio γ (None: full-rank linears).
_EDGENEXT: dict[str, tuple[str, float | None]] = {
    "edgeface_xxs": ("edgenext_xx_small", None),
    "edgeface_xs_gamma_06": ("edgenext_x_small", 0.6),
    "edgeface_s_gamma_05": ("edgenext_small", 0.5),
    "edgeface_base": ("edgenext_base", None),
    # Not a published float model: the official int8 file edgeface_xs_q.pt quantised a full-rank
    # edgenext_x_small, so dequantising it needs this architecture.
    "edgeface_xs": ("edgenext_x_small", None),
}
_LOAD_ONLY = ("edgeface_xs",)

# Width of the stem conv tells the EdgeNeXt size apart (docs/background.md, "EdgeFace variants").
_STEM_WIDTH = {24: "edgenext_xx_small", 32: "edgenext_x_small", 48: "edgenext_small",
               80: "edgenext_base"}

# The original project's LDC backbone, (in, out, stride, hidden) per block
# (docs/background.md, "EdgeFace variants").
_LDC_BLOCKS = ((32, 64, 2, 64), (64, 64, 1, 128), (64, 128, 2, 128), (128, 128, 1, 256),
               (128, 128, 1, 256), (128, 256, 2, 256)) + ((256, 256, 1, 512),) * 4
# Indices into `features` whose outputs are the feature-matching taps: the stem (56×56) and the
# last block at 28×28, 14×14 and 7×7.
_LDC_TAPS = (0, 2, 5, 10)


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------

class LowRankLinear(nn.Module):
    """``in → r`` (no bias) then ``r → out``: the official "gamma" variants' factorised linear.

    The attribute names ``linear1``/``linear2`` are the official checkpoints' key names.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.linear1 = nn.Linear(in_features, rank, bias=False)
        self.linear2 = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.linear1(x))


def _make_low_rank(module: nn.Module, gamma: float) -> None:
    """Replace every ``nn.Linear`` under `module` by a `LowRankLinear` of rank max(2, ⌊min·γ⌋)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            rank = max(2, int(min(child.in_features, child.out_features) * gamma))
            setattr(module, name, LowRankLinear(child.in_features, child.out_features, rank,
                                                bias=child.bias is not None))
        else:
            _make_low_rank(child, gamma)


class IdentityNet(nn.Module):
    """Frozen EdgeFace: eval mode and no parameter gradients, but differentiable w.r.t. its input.

    ``forward(images)`` takes RGB in [0, 1], shape [B, 3, H, W] (112×112 for real faces), and
    returns ``(embedding [B, 512], activations)``: the embedding is not l2-normalised (cosine
    similarity does that) and the activations are early-to-late intermediate tensors of the same
    forward pass, still attached to the autograd graph, for the feature-matching loss.
    """

    variant: str

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"EdgeFace expects RGB images of shape [B, 3, H, W], but got "
                             f"{tuple(images.shape)}")
        # The official preprocessing: ToTensor then Normalize(0.5, 0.5).
        return self._embed((images - 0.5) / 0.5)

    def _embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> IdentityNet:
        """Stay in eval mode whatever is asked: a parent's ``.train()`` must not wake BatchNorm
        or dropout in the loss network."""
        return super().train(False)

    def freeze(self) -> IdentityNet:
        """Eval mode and ``requires_grad=False`` on every parameter; returns self."""
        self.eval()
        self.requires_grad_(False)
        return self


class EdgeNeXtIdentityNet(IdentityNet):
    """An official EdgeFace: timm EdgeNeXt with a 512-d head, held as ``model`` so that state-dict
    keys read ``model.stem.0.weight`` like the official checkpoints.

    Activations: the four stage outputs (28, 14, 7 and 3 px at 112 px input).
    """

    def __init__(self, variant: str) -> None:
        super().__init__(variant)
        timm_name, gamma = _EDGENEXT[variant]
        # Any: timm builds EdgeNeXt with stem/stages/norm_pre/head, which nn.Module's typing hides.
        model: Any = timm.create_model(timm_name, pretrained=False)
        model.reset_classifier(512)
        if gamma is not None:
            _make_low_rank(model, gamma)
        self.model: Any = model

    def _embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"{self.variant} needs images of at least 32×32 (its stride is 32), "
                             f"but got {tuple(x.shape[-2:])}")
        # The body of timm's forward, unrolled to keep each stage output.
        activations = []
        x = self.model.stem(x)
        for stage in self.model.stages:
            x = stage(x)
            activations.append(x)
        x = self.model.norm_pre(x)
        return self.model.head(x), activations


class _ConvBNAct(nn.Module):
    """Conv (no bias) → BatchNorm → Hardswish; attribute names follow the original checkpoint."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.Hardswish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class _LDCBlock(nn.Module):
    """1×1 expand → depthwise 3×3 (with the stride) → 1×1 project, no residual."""

    def __init__(self, cin: int, cout: int, stride: int, hidden: int) -> None:
        super().__init__()
        self.conv_1x1_in = _ConvBNAct(cin, hidden, 1)
        self.conv_dw = _ConvBNAct(hidden, hidden, 3, stride, groups=hidden)
        self.conv_1x1_out = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_1x1_out(self.conv_dw(self.conv_1x1_in(x)))


class LDCIdentityNet(IdentityNet):
    """The original project's own "edgeface_s" (LDC blocks), everything under ``features.``.

    Activations: the stem (56 px) and the last block at 28, 14 and 7 px. Input must be 112×112
    (the embedding is a linear layer over the 7×7 map).
    """

    def __init__(self, variant: str = LDC_VARIANT) -> None:
        super().__init__(variant)
        self.features = nn.Sequential(
            _ConvBNAct(3, 32, 3, stride=2),
            *(_LDCBlock(*block) for block in _LDC_BLOCKS),
            _ConvBNAct(256, 512, 1),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 512, bias=False),
            nn.BatchNorm1d(512),
        )

    def _embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if tuple(x.shape[-2:]) != (112, 112):
            raise ValueError(f"{self.variant} needs 112×112 images (its embedding is a linear "
                             f"layer over a 7×7 map), but got {tuple(x.shape[-2:])}")
        activations = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _LDC_TAPS:
                activations.append(x)
        return x, activations


def build_edgeface(variant: str) -> IdentityNet:
    """A randomly initialised, frozen EdgeFace of the named variant (see `VARIANTS`)."""
    if variant == LDC_VARIANT:
        return LDCIdentityNet().freeze()
    if variant in _EDGENEXT:
        return EdgeNeXtIdentityNet(variant).freeze()
    raise EdgeFaceError(
        f"unknown EdgeFace variant {variant!r}; valid variants are {', '.join(VARIANTS)} "
        f"(and {', '.join(_LOAD_ONLY)}, the full-rank layout of the official int8 "
        f"edgeface_xs_q.pt).")
