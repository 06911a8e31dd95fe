"""One DSR cycle-training run: the loop, and nothing of Ray.

The trainer trains DSR against a frozen identity network and hands each epoch's metrics to its
callbacks (`Callback.on_epoch_end`): the CLI prints them, the Tune trainable reports them. The same
loop serves a search's trials and the single final run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tune_dsr.augment import augment_pair
from tune_dsr.config import MONITOR_MODES, Config, score
from tune_dsr.data import PairedFaces, to_float
from tune_dsr.errors import ConfigError
from tune_dsr.losses import TERMS, DSRLoss, Perceptual
from tune_dsr.metrics import psnr, psnr_y, recognition, ssim
from tune_dsr.models.dsr import DSR, save_dsr

logger = logging.getLogger(__name__)

STATE_FORMAT = "tune_dsr.trainer_state/1"


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite; the run cannot continue."""


class Callback:
    """Hooks the trainer calls; override what you need (the trainer knows nothing of listeners)."""

    def on_batch_end(self, trainer: Trainer, batch: int, num_batches: int, loss: float) -> None:
        """After each training batch (1-based `batch`)."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After each epoch's validation, with every metric of that epoch."""


@dataclass
class RunResult:
    """How a run ended."""

    epochs_run: int
    best_epoch: int
    best_metrics: dict[str, float]
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


class WarmupCosine:
    """Per-epoch LR factor: linear warm-up over `warmup` epochs, then cosine to zero."""

    def __init__(self, warmup: int, epochs: int) -> None:
        self.warmup, self.epochs = warmup, epochs

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / self.warmup
        span = max(1, self.epochs - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch - self.warmup, span) / span))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not allowed: no CUDA device is visible here; "
                          "use device='auto' or 'cpu'")
    return device


def _check_sizes(config: Config, split: str, data: PairedFaces) -> None:
    model = config.model
    if data.vlr_size != model.vlr_size or data.hr_size != model.hr_size:
        raise ConfigError(
            f"the {split} set holds {data.vlr_size}px VLR / {data.hr_size}px HR images but the "
            f"config says vlr_size={model.vlr_size}, hr_size={model.hr_size}; set them to match "
            "the data (or point at the matching vlr_images_NxN folder)")


class Trainer:
    """Trains DSR on `train_set`, validates its EMA weights on `val_set` every epoch.

    `identity_net(images) -> (embedding, activations)` is the frozen EdgeFace; `vgg` the frozen
    VGG19 trunk for the perceptual loss (None if λ_perceptual is 0). With `out_dir`, writes
    ``last.pt`` (full state, for resuming), ``best.pt`` (EMA weights, config, metrics),
    ``config.json`` and ``metrics.jsonl``.
    """

    def __init__(self, config: Config, train_set: PairedFaces, val_set: PairedFaces,
                 identity_net: nn.Module, vgg: nn.Sequential | None, *,
                 callbacks: Sequence[Callback] = (), out_dir: str | Path | None = None) -> None:
        _check_sizes(config, "training", train_set)
        _check_sizes(config, "validation", val_set)
        if len(train_set) == 0 or len(val_set) == 0:
            raise ConfigError("the training and validation sets must each hold at least one pair")
        self.config = config
        self.train_set, self.val_set = train_set, val_set
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else None
        self.device = resolve_device(config.train.device)
        cfg = config.train

        torch.manual_seed(cfg.seed)
        self.model = DSR(config.model).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        perceptual = Perceptual(vgg, config.loss) if vgg is not None else None
        self.loss = DSRLoss(config.loss, identity_net, perceptual).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(cfg.warmup_epochs, cfg.epochs))
        use_amp = cfg.amp and self.device.type == "cuda"
        bf16 = use_amp and torch.cuda.is_bf16_supported()
        self.amp_dtype: torch.dtype | None = (torch.bfloat16 if bf16 else torch.float16
                                              if use_amp else None)
        # Loss scaling only for float16; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_amp and not bf16)

        self.monitor, self.mode = cfg.monitor, MONITOR_MODES[cfg.monitor]
        self.epoch = 0  # epochs completed
        self.ema_updates = 0
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []

    # ---------------------------------------------------------------- the loop
    def fit(self) -> RunResult:
        """Train from the current epoch to the end, or until early stopping."""
        cfg = self.config.train
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.config.to_json(self.out_dir / "config.json")
        stopped_early = False
        while self.epoch < cfg.epochs:
            started = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_metrics = self._train_epoch()
            train_seconds = time.perf_counter() - started
            val_metrics = self._validate()
            self.scheduler.step()
            self.epoch += 1
            metrics = {"epoch": float(self.epoch), "lr": lr, **train_metrics, **val_metrics,
                       "images_per_s": len(self.train_set) / max(train_seconds, 1e-9),
                       "epoch_seconds": time.perf_counter() - started}
            improved = self._track_best(metrics)
            metrics["best_" + self.monitor] = float(self.best_value)  # type: ignore[arg-type]
            self.history.append(metrics)
            self._write_outputs(metrics, improved)
            for callback in self.callbacks:
                callback.on_epoch_end(self, metrics)
            patience = cfg.early_stop_patience
            if patience and self.bad_epochs >= patience:
                logger.info("Early stopping at epoch %d: %s has not improved for %d epochs",
                            self.epoch, self.monitor, patience)
                stopped_early = True
                break
        return RunResult(self.epoch, self.best_epoch, dict(self.best_metrics), stopped_early,
                         list(self.history))

    def _to_device(self, images: Tensor) -> Tensor:
        # Copy uint8 and convert there: a quarter of the bytes of a float copy.
        return to_float(images.to(self.device, non_blocking=True))

    def _train_epoch(self) -> dict[str, float]:
        cfg = self.config.train
        self.model.train()
        # Data order and augmentation come from a generator seeded by (seed, epoch): an epoch is the
        # same whether the run went straight through or was resumed before it.
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
        batches = torch.randperm(len(self.train_set), generator=generator).split(cfg.batch_size)
        sums = dict.fromkeys(("total", *TERMS, "psnr"), 0.0)
        seen = 0
        for index, batch in enumerate(batches, start=1):
            vlr = self._to_device(self.train_set.vlr[batch])
            hr = self._to_device(self.train_set.hr[batch])
            if self.config.data.augment:
                vlr, hr = augment_pair(vlr, hr, generator)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                sr = self.model(vlr)
                terms = self.loss(sr, hr)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["total"]).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._update_ema()

            # One host sync per step: the values are needed for the log and the NaN check anyway.
            names = ("total", *TERMS)
            values = torch.stack([terms[k].detach().float() for k in names]
                                 + [psnr(sr.detach(), hr).mean()]).tolist()
            for name, value in zip(names, values, strict=False):
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"the {name} loss became {value} at epoch {self.epoch + 1}, batch {index} "
                        f"(lr {self.optimizer.param_groups[0]['lr']:.3g}); lower the learning "
                        "rate or that term's weight")
            batch_size = len(batch)
            seen += batch_size
            for name, value in zip((*names, "psnr"), values, strict=True):
                sums[name] += value * batch_size
            for callback in self.callbacks:
                callback.on_batch_end(self, index, len(batches), values[0])
        out = {f"train_{name}_loss": sums[name] / seen for name in TERMS}
        out["train_loss"] = sums["total"] / seen
        out["train_psnr"] = sums["psnr"] / seen
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        self.ema_updates += 1
        # Warm the decay up ((1+t)/(10+t), capped at ema_decay): with a fixed 0.999 the EMA would
        # still be mostly random initial weights for the first thousand steps, and a search's
        # short trials would be judged on those.
        decay = min(self.config.train.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        ema_params: list[Tensor] = list(self.ema.parameters())
        params = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        batch_size = self.config.train.batch_size
        sums = dict.fromkeys(("total", *TERMS, "psnr", "psnr_y", "ssim"), 0.0)
        sr_embeddings, hr_embeddings = [], []
        for batch in torch.arange(len(self.val_set)).split(batch_size):
            vlr = self._to_device(self.val_set.vlr[batch])
            hr = self._to_device(self.val_set.hr[batch])
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                sr = self.ema(vlr)
                terms = self.loss(sr, hr, compute_all=True)
            sr = sr.float()
            sr_embeddings.append(terms["sr_embedding"])
            hr_embeddings.append(terms["hr_embedding"])
            values = [terms[k].float() * len(batch) for k in ("total", *TERMS)]
            values += [psnr(sr, hr).sum(), psnr_y(sr, hr).sum(), ssim(sr, hr).sum()]
            for name, value in zip(sums, torch.stack(values).tolist(), strict=True):
                sums[name] += value
        n = len(self.val_set)
        out = {f"val_{name}_loss": sums[name] / n for name in TERMS}
        out.update(val_loss=sums["total"] / n, val_psnr=sums["psnr"] / n,
                   val_psnr_y=sums["psnr_y"] / n, val_ssim=sums["ssim"] / n)
        for name, value in out.items():
            if not math.isfinite(value):
                raise TrainingDiverged(f"validation {name} is {value} at epoch {self.epoch + 1}; "
                                       "lower the learning rate")
        out["val_score"] = score(out["val_psnr"], out["val_identity_loss"])
        # The guide's success metric on identities never seen in training (splits are by subject).
        found = recognition(torch.cat(sr_embeddings), torch.cat(hr_embeddings),
                            self.val_set.subject_index, self.config.train.recognition_threshold)
        out.update({f"val_{name}": value for name, value in found.items()})
        return out

    def _track_best(self, metrics: dict[str, float]) -> bool:
        value = metrics[self.monitor]
        better = (self.best_value is None
                  or (value > self.best_value if self.mode == "max" else value < self.best_value))
        if better:
            self.best_value, self.best_epoch = value, self.epoch
            self.best_metrics = dict(metrics)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return better

    def _write_outputs(self, metrics: dict[str, float], improved: bool) -> None:
        if self.out_dir is None:
            return
        self.save_state(self.out_dir / "last.pt")
        if improved:
            save_dsr(self.out_dir / "best.pt", self.ema, self.config, metrics, self.epoch)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain data only."""
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model_state_dict": self.model.state_dict(),
            "ema_state_dict": self.ema.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "ema_updates": self.ema_updates,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "rng_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ConfigError("not a tune_dsr trainer state (expected last.pt or a Tune "
                              "checkpoint's state.pt); a best.pt cannot be resumed from")
        saved = Config.from_dict(state["config"])
        if saved.model != self.config.model:
            raise ConfigError(f"cannot resume: the checkpoint's model config {saved.model} "
                              f"differs from this run's {self.config.model}")
        self.model.load_state_dict(state["model_state_dict"])
        self.ema.load_state_dict(state["ema_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.scaler.load_state_dict(state["scaler_state_dict"])
        self.epoch = int(state["epoch"])
        self.ema_updates = int(state["ema_updates"])
        self.best_value = state["best_value"]
        self.best_epoch = int(state["best_epoch"])
        self.best_metrics = dict(state["best_metrics"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = [dict(h) for h in state["history"]]
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    def save_state(self, path: str | Path) -> None:
        # Write then rename: a run killed mid-save leaves the previous state intact.
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load_state(self, path: str | Path) -> None:
        """Resume from a state file written by `save_state` (read with weights_only=True)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"cannot resume: {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(state)
        logger.info("Resumed from %s at epoch %d", path, self.epoch)
