"""The five DSR training losses, returned as named terms plus their weighted total.

Per step the frozen networks run once on SR (with autograd, so the identity and feature-matching
terms train DSR: the original ran EdgeFace under ``no_grad`` and stored detached SR activations
only, so those terms sent no gradient and feature matching was always zero) and once on HR
(without autograd); identity and feature matching share those two EdgeFace passes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tune_dsr.config import LossConfig
from tune_dsr.errors import PerceptualWeightsError

__all__ = [
    "TERMS",
    "DSRLoss",
    "Perceptual",
    "build_vgg",
    "load_held_out",
    "load_loss_networks",
    "total_variation",
]

logger = logging.getLogger(__name__)

TERMS = ("l1", "perceptual", "identity", "feature_match", "tv")

# Where each perceptual layer ends in torchvision's vgg19().features (relu1_2 is features[3]).
VGG_LAYER_END = {"relu1_2": 4, "relu2_2": 9, "relu3_4": 18, "relu4_4": 27}
# VGG19's convolutions up to relu4_4: output channels, "M" for a 2x2 max-pool.
_VGG19_TO_RELU4_4 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512)
VGG19_IMAGENET_FILE = "vgg19-dcbb9e9d.pth"
VGG19_IMAGENET_URL = "https://download.pytorch.org/models/" + VGG19_IMAGENET_FILE
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_trunk() -> nn.Sequential:
    """VGG19's features up to relu4_4 (10.6 M parameters), with torchvision's layer indices so its
    state dict loads as is. Built directly: torchvision's vgg19() would first build and initialise
    all 143.7 M parameters, classifier included, in every trial."""
    layers: list[nn.Module] = []
    channels = 3
    for spec in _VGG19_TO_RELU4_4:
        if spec == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(spec), kernel_size=3, padding=1),
                       nn.ReLU(inplace=True)]
            channels = int(spec)
    return nn.Sequential(*layers)


def _read_vgg_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PerceptualWeightsError(
            f"cannot read VGG19 weights from {path} ({exc}); give torchvision's "
            f"{VGG19_IMAGENET_FILE} (a plain state dict) or --perceptual-weights random") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PerceptualWeightsError(f"{path} does not hold a VGG19 state dict")
    # Accept a whole vgg19 state dict ("features.0.weight", "classifier...") or the features alone.
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return state


def build_vgg(weights: str) -> nn.Sequential:
    """VGG19 up to relu4_4, frozen: 'imagenet' (torch hub cache), a file path, or 'random'."""
    trunk = _vgg19_trunk()
    if weights == "random":
        logger.warning("Perceptual loss uses a RANDOMLY INITIALISED VGG19: fine for the demo and "
                       "tests, meaningless for real training. Use --perceptual-weights imagenet.")
    else:
        if weights == "imagenet":
            path = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_IMAGENET_FILE
            if not path.is_file():
                raise PerceptualWeightsError(
                    f"ImageNet VGG19 weights not found at {path} and nothing can be downloaded "
                    f"here. Download {VGG19_IMAGENET_URL} on a connected machine and copy it to "
                    f"that path (or set TORCH_HOME), or pass --perceptual-weights /path/to/"
                    f"{VGG19_IMAGENET_FILE}, or --perceptual-weights random for a smoke test.")
        else:
            path = Path(os.path.expanduser(weights))
            if not path.is_file():
                raise PerceptualWeightsError(
                    f"perceptual weights file {path} does not exist; pass 'imagenet', 'random' "
                    f"or the path of torchvision's {VGG19_IMAGENET_FILE}")
        state = _read_vgg_state(path)
        wanted = trunk.state_dict()
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise PerceptualWeightsError(
                f"{path} lacks VGG19 keys {missing[:5]}: it is not a torchvision vgg19 state dict")
        try:
            trunk.load_state_dict({k: state[k] for k in wanted})
        except RuntimeError as exc:
            raise PerceptualWeightsError(
                f"{path}: VGG19 weights of the wrong shape: {exc}") from exc
        logger.info("Perceptual loss: VGG19 weights from %s", path)
    trunk.eval().requires_grad_(False)
    return trunk


class Perceptual(nn.Module):
    """Weighted L1 between VGG19 activations of SR and HR at the layers `config` names."""

    def __init__(self, trunk: nn.Sequential, config: LossConfig) -> None:
        super().__init__()
        # In network order, each slice running from the previous chosen layer to this one.
        chosen = sorted(config.perceptual_layers, key=VGG_LAYER_END.__getitem__)
        ends = [VGG_LAYER_END[name] for name in chosen]
        self.slices = nn.ModuleList(trunk[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True))
        self.layer_weights = tuple(float(config.perceptual_layers[name]) for name in chosen)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> Perceptual:
        return super().train(False)  # frozen: always eval

    def features(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute horizontal difference plus mean absolute vertical difference."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


class DSRLoss(nn.Module):
    """λ_l1·L1 + λ_perc·perceptual + λ_id·identity + λ_fm·feature-match + λ_tv·TV.

    `identity_net(images) -> (embedding, [activations...])` is the frozen EdgeFace; `perceptual`
    may be None when λ_perceptual is 0. A network whose terms all weigh 0 is not run in training
    (`compute_all=False`) and those terms read 0; validation computes every term. When EdgeFace
    ran, the result also holds its detached embeddings, ``sr_embedding`` and ``hr_embedding``,
    for recognition metrics without another pass.
    """

    def __init__(self, config: LossConfig, identity_net: nn.Module,
                 perceptual: Perceptual | None) -> None:
        super().__init__()
        if perceptual is None and config.lambda_perceptual > 0:
            raise ValueError("lambda_perceptual > 0 needs a perceptual network")
        self.config = config
        self.identity_net = identity_net
        self.perceptual = perceptual

    def forward(self, sr: Tensor, hr: Tensor, compute_all: bool = False) -> dict[str, Tensor]:
        cfg = self.config
        zero = sr.new_zeros(())
        terms: dict[str, Tensor] = {"l1": F.l1_loss(sr, hr), "tv": total_variation(sr)}

        terms["perceptual"] = zero
        if self.perceptual is not None and (compute_all or cfg.lambda_perceptual > 0):
            with torch.no_grad():
                hr_vgg = self.perceptual.features(hr)
            sr_vgg = self.perceptual.features(sr)
            # L1 written out: autocast runs F.l1_loss in float32, which makes every large
            # bf16 feature map convert first (5 % of a CPU epoch); the mean is the same.
            terms["perceptual"] = sum(
                (w * (s - h).abs().mean().float() for w, s, h in
                 zip(self.perceptual.layer_weights, sr_vgg, hr_vgg, strict=True)), zero)

        terms["identity"] = terms["feature_match"] = zero
        if compute_all or cfg.lambda_identity > 0 or cfg.lambda_feature_match > 0:
            with torch.no_grad():
                hr_embedding, hr_acts = self.identity_net(hr)
            sr_embedding, sr_acts = self.identity_net(sr)  # with autograd: trains DSR
            cosine = F.cosine_similarity(sr_embedding.float(), hr_embedding.float(), dim=1)
            terms["identity"] = (1.0 - cosine).mean()
            terms["feature_match"] = torch.stack(
                [F.l1_loss(s.float(), h.float()) for s, h in zip(sr_acts, hr_acts, strict=True)]
            ).mean()
            terms["sr_embedding"], terms["hr_embedding"] = sr_embedding.detach(), hr_embedding

        terms["total"] = (cfg.lambda_l1 * terms["l1"] + cfg.lambda_perceptual * terms["perceptual"]
                          + cfg.lambda_identity * terms["identity"]
                          + cfg.lambda_feature_match * terms["feature_match"]
                          + cfg.lambda_tv * terms["tv"])
        return terms


def load_loss_networks(edgeface: str, perceptual_weights: str) -> tuple[nn.Module, nn.Sequential]:
    """The frozen EdgeFace and VGG19 trunk a run trains against.

    Random networks (``random:<variant>``, ``random``) are drawn from a fixed seed, so every trial
    of a search and the final run are measured by the same network.
    """
    from tune_dsr.models.checkpoints import load_edgeface

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        identity_net = load_edgeface(edgeface)
        vgg = build_vgg(perceptual_weights)
    return identity_net, vgg


def load_held_out(edgeface: str) -> nn.Module:
    """The held-out validation recogniser (``val_edgeface``): an EdgeFace file, or
    ``random:<variant>`` drawn from another seed than the trained-against one (so that a smoke
    test's two random recognisers differ). EdgeFaceError names the setting for a bad file."""
    from tune_dsr.errors import EdgeFaceError
    from tune_dsr.models.checkpoints import load_edgeface

    try:
        return load_edgeface(edgeface, seed=1)
    except EdgeFaceError as exc:
        raise EdgeFaceError(f"val_edgeface={edgeface!r} (the held-out validation recogniser): "
                            f"{exc}") from exc
