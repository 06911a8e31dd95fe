"""The settings of one EdgeFace fine-tuning run: one small, frozen, validated dataclass.

Built like `tune_dsr.config.Config`: from flat JSON keys (``--set lr=3e-5``), every value checked
against its field's type and range, errors naming the key, the value and the rule.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_dsr.config import GUIDE_THRESHOLD, _check, _coerce, _range, _unknown_key_error
from tune_dsr.errors import ConfigError

__all__ = ["BICUBIC", "FINETUNE_METRICS", "FinetuneConfig"]

# `dsr` for the plain bicubic upscales: the control that adapts the recogniser alone.
BICUBIC = "bicubic"

# What an epoch reports that can choose the kept epoch, and which way is better.
FINETUNE_METRICS: dict[str, str] = {
    # The validation persons' faces as the DSR renders them, on a gallery of the validation
    # persons' HR faces and every training person as a distractor (never trained on).
    "val_soft_rank1": "max",
    "val_rank1_full": "max",
    "val_margin": "max",
    # The guide's gallery: the validation persons alone.
    "val_rank1": "max",
    "val_accuracy": "max",
}


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. The recogniser learns the training persons from their faces as
    `dsr` renders them (a DSR checkpoint, or ``bicubic``), mixed with their HR faces."""

    train_dir: str | None = None
    val_dir: str | None = None
    # None: the DSR's own size (or the data's only one, for bicubic).
    vlr_size: int | None = None
    max_images: int = 0
    edgeface: str = "edgeface_xxs.pt"
    dsr: str = BICUBIC
    # Share of training samples shown as the HR face instead of the rendered one: keeps the
    # embedding of real faces in place (the gallery is enrolled from HR faces).
    hr_fraction: float = 0.3
    # CosFace: logits s·(cos θ − m) for the own class. An additive cosine margin has no
    # non-monotonic region (ArcFace's cos(θ + m) needs the "easy margin" patch once θ + m > π)
    # and is the steadier of the two when a few hundred classes with a handful of images each
    # meet a pretrained backbone; s = 30 is well above the bound a few hundred classes need.
    margin: float = 0.35
    scale: float = 30.0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-5  # the backbone's
    head_lr: float = 1e-3  # the head starts at the classes' mean embeddings: it needs no more
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    grad_clip: float = 5.0
    ema_decay: float = 0.999
    # Leading blocks kept as they are: EdgeNeXt's stem and stages (0..4), the LDC's layers.
    freeze_stages: int = 0
    augment: bool = True  # horizontal flips
    patience: int = 0
    monitor: str = "val_soft_rank1"
    recognition_threshold: float = GUIDE_THRESHOLD
    seed: int = 0
    amp: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        _range("max_images", self.max_images, 0, 10**9)
        if self.vlr_size is not None:
            _range("vlr_size", self.vlr_size, 8, 64)
        _range("hr_fraction", self.hr_fraction, 0.0, 1.0)
        _check(self.hr_fraction < 1.0 or self.dsr == BICUBIC, "hr_fraction", self.hr_fraction,
               "at 1 the DSR's faces are never shown; use a value below 1")
        _range("margin", self.margin, 0.0, 1.0)
        _range("scale", self.scale, 1.0, 128.0)
        _range("epochs", self.epochs, 1, 100_000)
        _range("batch_size", self.batch_size, 2, 65_536)
        _range("lr", self.lr, 0.0, 1.0, low_open=True)
        _range("head_lr", self.head_lr, 0.0, 10.0, low_open=True)
        _range("weight_decay", self.weight_decay, 0.0, 1.0)
        _range("warmup_epochs", self.warmup_epochs, 0, 100_000)
        _range("grad_clip", self.grad_clip, 0.0, 1e6)
        _range("ema_decay", self.ema_decay, 0.0, 1.0)
        _check(self.ema_decay < 1.0, "ema_decay", self.ema_decay,
               "it must be below 1 (1 would freeze the EMA weights); 0 turns EMA off")
        _range("freeze_stages", self.freeze_stages, 0, 64)
        _range("patience", self.patience, 0, 100_000)
        _check(self.monitor in FINETUNE_METRICS, "monitor", self.monitor,
               f"choose one of {', '.join(FINETUNE_METRICS)}")
        _range("recognition_threshold", self.recognition_threshold, -1.0, 1.0)
        _range("seed", self.seed, 0, 2**32 - 1)
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "device", self.device, "use 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: FinetuneConfig | None = None
                  ) -> FinetuneConfig:
        """Flat keys over `base` (default: the defaults above); ConfigError names what is wrong."""
        if not isinstance(raw, dict):
            raise ConfigError(f"a fine-tuning config must be a JSON object, got "
                              f"{type(raw).__name__}")
        hints = typing.get_type_hints(cls)
        valid = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for key, value in raw.items():
            if key in ("format", "provenance"):
                continue
            if key not in valid:
                raise _unknown_key_error(key, valid, " for fine-tuning")
            values[key] = _coerce(key, value, hints[key])
        return dataclasses.replace(base or cls(), **values)

    @classmethod
    def from_json(cls, path: str | Path) -> FinetuneConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read fine-tuning config {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def replace(self, **flat: Any) -> FinetuneConfig:
        return FinetuneConfig.from_dict(flat, base=self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
