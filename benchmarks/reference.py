"""The baseline of the step part: one training epoch done the way the original system did it
(REFERENCE.md, "Training" and "Its defects"), written here from that description.

- Data: a per-item Dataset that opens and decodes both PNGs with PIL and applies the guide's
  augmentations to each pair on its own (flip, rotation, colour jitter on PIL images), read by a
  torch DataLoader with num_workers=0: every epoch decodes every file again.
- Loss: EdgeFace runs four times per step, SR and HR for the identity term, then both again for
  feature matching, the HR passes not under no_grad (defect 3). Defects 1 and 2 are repaired
  here (the SR passes keep autograd, the HR activations are kept), so the loss and the gradient
  are tune_dsr's (`check_same_loss`): the comparison prices the extra work, not a different loss.
- VGG19: the whole torchvision ``vgg19()`` is built (143.7 M parameters, classifier included)
  and its features sliced at relu1_2, relu2_2, relu3_4 and relu4_4.
- float32 throughout, and a host sync (``.item()``) per loss term per step for the log.
- The rest as the guide: AdamW, gradient clipping at 1.0, an EMA of the weights (0.999) updated
  parameter by parameter.

The DSR network is tune_dsr's own (the same architecture as the original's DSRColor), so both
sides train the same network on the same batch size.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from tune_dsr.config import LossConfig, ModelConfig
from tune_dsr.models.dsr import DSR
from tune_dsr.training.losses import total_variation

# The original's settings (REFERENCE.md, "Training").
LR, WEIGHT_DECAY, GRAD_CLIP, EMA_DECAY = 1.5e-4, 1e-6, 1.0, 0.999
VGG_SLICES = ((0, 4), (4, 9), (9, 18), (18, 27))  # ends at relu1_2, relu2_2, relu3_4, relu4_4
VGG_LAYER_NAMES = ("relu1_2", "relu2_2", "relu3_4", "relu4_4")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PILPairs(Dataset):
    """File names in memory; each item decodes its two PNGs and augments the pair on its own."""

    def __init__(self, split_dir: Path, names: list[str], vlr_size: int, augment: bool = True,
                 seed: int = 0) -> None:
        self.hr_dir = Path(split_dir) / "hr_images"
        self.vlr_dir = Path(split_dir) / f"vlr_images_{vlr_size}x{vlr_size}"
        self.names = list(names)
        self.augment = augment
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.names)

    def _augment(self, vlr: Image.Image, hr: Image.Image) -> tuple[Image.Image, Image.Image]:
        """The guide's shared augmentations: flip (p 0.5), rotation ±5° (p 0.6), brightness and
        contrast ±5 %, saturation ±3 % (p 0.25), the same draw for both images of the pair."""
        rng = self.rng
        pair = [vlr, hr]
        if rng.random() < 0.5:
            pair = [TF.hflip(image) for image in pair]
        if rng.random() < 0.6:
            angle = rng.uniform(-5.0, 5.0)
            pair = [TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)
                    for image in pair]
        if rng.random() < 0.25:
            brightness, contrast = rng.uniform(0.95, 1.05), rng.uniform(0.95, 1.05)
            saturation = rng.uniform(0.97, 1.03)
            pair = [TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(
                image, brightness), contrast), saturation) for image in pair]
        return pair[0], pair[1]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        name = self.names[index]
        with Image.open(self.vlr_dir / name) as vlr_file, Image.open(self.hr_dir / name) as hr_file:
            vlr, hr = vlr_file.convert("RGB"), hr_file.convert("RGB")
        if self.augment:
            vlr, hr = self._augment(vlr, hr)
        return TF.to_tensor(vlr), TF.to_tensor(hr)


def full_vgg19_slices(trunk_state: dict[str, Tensor]) -> nn.ModuleList:
    """Build all of torchvision's vgg19() (143.7 M parameters), give its features the weights of
    tune_dsr's trunk (so both sides compute the same loss), then slice; frozen."""
    from torchvision.models import vgg19

    vgg = vgg19(weights=None)
    vgg.features.load_state_dict(trunk_state, strict=False)  # the trunk ends at relu4_4
    slices = nn.ModuleList(vgg.features[a:b] for a, b in VGG_SLICES)
    slices.eval().requires_grad_(False)
    return slices


class FourPassLoss(nn.Module):
    """The original's loss: EdgeFace on SR and HR for identity, on SR and HR again for feature
    matching, no no_grad on HR; VGG19 slices for the perceptual term."""

    def __init__(self, config: LossConfig, identity_net: nn.Module, slices: nn.ModuleList) -> None:
        super().__init__()
        self.config = config
        self.identity_net = identity_net
        self.slices = slices
        self.layer_weights = _layer_weights(config)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _vgg(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out

    def forward(self, sr: Tensor, hr: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        terms = {"l1": F.l1_loss(sr, hr), "tv": total_variation(sr)}
        terms["perceptual"] = sum(
            (w * F.l1_loss(s, h) for w, s, h in
             zip(self.layer_weights, self._vgg(sr), self._vgg(hr), strict=True) if w),
            sr.new_zeros(()))
        sr_embedding, _ = self.identity_net(sr)
        hr_embedding, _ = self.identity_net(hr)
        terms["identity"] = (1.0 - F.cosine_similarity(sr_embedding, hr_embedding, dim=1)).mean()
        _, sr_acts = self.identity_net(sr)
        _, hr_acts = self.identity_net(hr)
        terms["feature_match"] = torch.stack(
            [F.l1_loss(s, h) for s, h in zip(sr_acts, hr_acts, strict=True)]).mean()
        terms["total"] = (cfg.lambda_l1 * terms["l1"] + cfg.lambda_perceptual * terms["perceptual"]
                          + cfg.lambda_identity * terms["identity"]
                          + cfg.lambda_feature_match * terms["feature_match"]
                          + cfg.lambda_tv * terms["tv"])
        return terms


def _layer_weights(config: LossConfig) -> tuple[float, ...]:
    """The perceptual layer weights of `config`, in VGG order (0 for a layer it leaves out)."""
    layers = getattr(config, "perceptual_layers", None)
    if isinstance(layers, dict):
        return tuple(float(layers.get(name, 0.0)) for name in VGG_LAYER_NAMES)
    return tuple(float(w) for w in config.perceptual_layer_weights)  # older configs


def psnr(sr: Tensor, hr: Tensor) -> Tensor:
    mse = ((sr - hr) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean()


class ReferenceTrainer:
    """Trains DSR for whole epochs the original way; `train_epoch()` runs one."""

    def __init__(self, model_config: ModelConfig, loss_config: LossConfig, split_dir: Path,
                 names: list[str], identity_net: nn.Module, trunk_state: dict[str, Tensor],
                 batch_size: int, device: torch.device, seed: int = 42) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.model = DSR(model_config).to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.loss = FourPassLoss(loss_config, identity_net, full_vgg19_slices(trunk_state)
                                 ).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR,
                                           weight_decay=WEIGHT_DECAY)
        vlr_size = model_config.vlr_size
        if vlr_size is None:
            raise ValueError("the reference needs model_config.vlr_size")
        self.dataset = PILPairs(split_dir, names, vlr_size, seed=seed)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=True,
                                 num_workers=0, generator=torch.Generator().manual_seed(seed))
        self.log: list[dict[str, float]] = []

    def train_epoch(self, max_batches: int | None = None) -> None:
        self.model.train()
        for index, (vlr, hr) in enumerate(self.loader):
            if max_batches is not None and index >= max_batches:
                break
            vlr, hr = vlr.to(self.device), hr.to(self.device)
            sr = self.model(vlr)
            terms = self.loss(sr, hr)
            self.optimizer.zero_grad()
            terms["total"].backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
            self.optimizer.step()
            with torch.no_grad():
                for ema_param, param in zip(self.ema.parameters(), self.model.parameters(),
                                            strict=True):
                    ema_param.mul_(EMA_DECAY).add_(param, alpha=1 - EMA_DECAY)
            # One host sync per term per step, as the original logged them.
            entry = {name: value.item() for name, value in terms.items()}
            entry["psnr"] = psnr(sr.detach(), hr).item()
            if not np.isfinite(entry["total"]):
                raise SystemExit(f"the reference loss is {entry['total']}: it diverged")
            self.log.append(entry)


def check_same_loss(identity_net: nn.Module, trunk: nn.Sequential, loss_config: LossConfig,
                    hr_size: int, device: torch.device) -> str:
    """The reference's loss and tune_dsr's `DSRLoss` must give the same terms and the same DSR
    gradient, or the timings compare different work. Returns a line for the report."""
    from tune_dsr.training.losses import DSRLoss, Perceptual

    torch.manual_seed(0)
    model = DSR(ModelConfig(vlr_size=16, hr_size=hr_size, width=8, depth=1)).to(device)
    generator = torch.Generator().manual_seed(2)
    hr = torch.rand(2, 3, hr_size, hr_size, generator=generator).to(device)
    vlr = F.interpolate(hr, size=(16, 16), mode="bilinear", antialias=True)
    losses: dict[str, Any] = {
        "tune_dsr": DSRLoss(loss_config, identity_net, Perceptual(trunk, loss_config)),
        "reference": FourPassLoss(loss_config, identity_net,
                                  full_vgg19_slices(trunk.state_dict())),
    }
    results = {}
    for name, loss in losses.items():
        terms = loss.to(device)(model(vlr), hr)
        grads = torch.autograd.grad(terms["total"], list(model.parameters()))
        results[name] = ({k: terms[k].item() for k in ("l1", "perceptual", "identity",
                                                         "feature_match", "tv", "total")},
                         torch.cat([g.flatten() for g in grads]))
    (terms_a, grad_a), (terms_b, grad_b) = results["tune_dsr"], results["reference"]
    term_diff = max(abs(terms_a[k] - terms_b[k]) for k in terms_a)
    grad_diff = ((grad_a - grad_b).abs().max() / grad_a.abs().max().clamp_min(1e-12)).item()
    if term_diff > 1e-5 or grad_diff > 1e-4:
        raise SystemExit(f"the reference does not compute tune_dsr's loss: max |Δterm| "
                         f"{term_diff:.2e}, max relative |Δgrad| {grad_diff:.2e}")
    return (f"check: the reference and tune_dsr's DSRLoss give the same terms (max |Δ| "
            f"{term_diff:.1e}) and DSR gradient (max relative |Δ| {grad_diff:.1e})")
