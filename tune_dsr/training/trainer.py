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
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from tune_dsr.config import HELD_OUT_PREFIX, Config, direction, score
from tune_dsr.data import PairedFaces, bicubic_upscale, to_float
from tune_dsr.errors import ConfigError
from tune_dsr.hardware import autocast_dtype, resolve_device
from tune_dsr.models.checkpoints import (
    TRAINER_STATE_FORMAT,
    read_trainer_state,
    save_dsr,
    write_trainer_state,
)
from tune_dsr.models.dsr import DSR
from tune_dsr.quality import psnr, psnr_y, ssim
from tune_dsr.training.augment import augment_pair
from tune_dsr.training.losses import TERMS, DSRLoss, Perceptual, load_held_out
from tune_dsr.training.validation import ValidationGallery

__all__ = [
    "GRID_PROBES",
    "Callback",
    "RunResult",
    "Trainer",
    "TrainingDiverged",
    "WarmupCosine",
    "improves",
    "prepare_run",
    "warmed_ema_decay",
]

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite; the run cannot continue."""


class Callback(Protocol):
    """Hooks the trainer calls (the trainer knows nothing of who listens); subclass and override
    what you need, or give any object with these two methods."""

    def on_batch_end(self, trainer: Trainer, batch: int, num_batches: int, loss: Tensor) -> None:
        """After each training batch (1-based `batch`); `loss` is the detached total on the
        device: reading it (``float(loss)``) waits for the device, so do it only when needed."""
        return None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After each epoch's validation, with every metric of that epoch."""
        return None


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


def improves(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` is a new best over `best` (None: nothing yet) in direction `mode`."""
    return best is None or (value > best if mode == "max" else value < best)


def warmed_ema_decay(updates: int, cap: float) -> float:
    """The EMA decay after `updates` steps: (1+t)/(10+t), at most `cap`. With a fixed 0.999 the
    EMA would still be mostly the initial weights for the first thousand steps, and a search's
    short trials (or a short fine-tuning) would be judged on those."""
    return min(cap, (1 + updates) / (10 + updates))


# Validation probes shown in the picture grid written at each new best epoch.
GRID_PROBES = 6


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
    ``config.json``, ``metrics.jsonl``, ``best.pt`` (EMA weights, config, metrics), ``best.png``
    (a picture grid of fixed validation faces, also in TensorBoard) at each new best epoch and,
    with `save_last`, ``last.pt`` (the full state, for resuming) every epoch.
    """

    def __init__(self, config: Config, train_set: PairedFaces, val_set: PairedFaces,
                 identity_net: nn.Module, vgg: nn.Sequential | None, *,
                 callbacks: Sequence[Callback] = (), out_dir: str | Path | None = None,
                 save_last: bool = True, held_out: nn.Module | None = None) -> None:
        if config.model.vlr_size is None:  # unset: the data's size
            config = config.replace(vlr_size=train_set.vlr_size)
        _check_sizes(config, "training", train_set)
        _check_sizes(config, "validation", val_set)
        if len(train_set) == 0 or len(val_set) == 0:
            raise ConfigError("the training and validation sets must each hold at least one pair")
        self.config = config
        self.train_set, self.val_set = train_set, val_set
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else None
        self.save_last = save_last
        self.device = resolve_device(config.train.device)
        cfg = config.train
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels

        torch.manual_seed(cfg.seed)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = DSR(config.model).to(self.device).to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # The compiled module shares its parameters with `model`, which is what gets saved.
        self.forward_model: Any = torch.compile(self.model) if cfg.compile else self.model
        perceptual = Perceptual(vgg, config.loss) if vgg is not None else None
        self.loss = DSRLoss(config.loss, identity_net, perceptual).to(self.device).to(
            memory_format=self.memory_format)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(cfg.warmup_epochs, cfg.epochs))
        self.amp_dtype = autocast_dtype(self.device, cfg.amp)
        # Loss scaling only for float16; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)

        self.monitor, self.mode = cfg.monitor, direction(cfg.monitor)
        self.epoch = 0  # epochs completed
        self.ema_updates = 0
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self._gallery: ValidationGallery | None = None
        # The held-out validation recogniser (config ``val_edgeface``), never trained against.
        if held_out is None and cfg.val_edgeface:
            held_out = load_held_out(cfg.val_edgeface)
        self.held_out = held_out.to(self.device) if held_out is not None else None
        self._held_out_gallery: ValidationGallery | None = None
        self._tensorboard: Any = None  # a tensorboardX writer, opened at the first grid

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
                       "images_per_s": self.epoch_samples / max(train_seconds, 1e-9),
                       "epoch_seconds": time.perf_counter() - started}
            improved = self._track_best(metrics)
            metrics["best_" + self.monitor] = float(self.best_value)  # type: ignore[arg-type]
            # How long `monitor` has gone without a new best: the patience count, so a search can
            # tell a trial that ended by patience from one that ASHA stopped.
            metrics["epochs_since_best"] = float(self.bad_epochs)
            self.history.append(metrics)
            self._write_outputs(metrics, improved)
            for callback in self.callbacks:
                callback.on_epoch_end(self, metrics)
            patience = cfg.patience
            if patience and self.bad_epochs >= patience:
                logger.info("Early stopping at epoch %d: %s has not improved for %d epochs",
                            self.epoch, self.monitor, patience)
                stopped_early = True
                break
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        return RunResult(self.epoch, self.best_epoch, dict(self.best_metrics), stopped_early,
                         list(self.history))

    def _to_device(self, images: Tensor) -> Tensor:
        # Copy uint8 and convert there: a quarter of the bytes of a float copy.
        return to_float(images.to(self.device, non_blocking=True))

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    @property
    def epoch_samples(self) -> int:
        """Training pairs one epoch steps through (``samples_per_epoch``, at most all of them)."""
        wanted = self.config.data.samples_per_epoch
        return min(wanted, len(self.train_set)) if wanted else len(self.train_set)

    def _train_epoch(self) -> dict[str, float]:
        cfg = self.config.train
        self.model.train()
        # Data order and augmentation come from a generator seeded by (seed, epoch): an epoch is the
        # same whether the run went straight through or was resumed before it.
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
        # With samples_per_epoch, each epoch a fresh draw of that many pairs (all persons in play).
        order = torch.randperm(len(self.train_set), generator=generator)[:self.epoch_samples]
        batches = order.split(cfg.batch_size)
        names = ("total", *TERMS, "psnr")
        # Summed on the device and read once per epoch: a read per step would make the host wait
        # for the device at every step.
        sums = torch.zeros(len(names), device=self.device)
        for index, batch in enumerate(batches, start=1):
            vlr = self._to_device(self.train_set.vlr[batch])
            hr = self._to_device(self.train_set.hr[batch])
            if self.config.data.augment:
                vlr, hr = augment_pair(vlr, hr, generator)
            vlr = vlr.contiguous(memory_format=self.memory_format)
            hr = hr.contiguous(memory_format=self.memory_format)
            with self._autocast():
                sr = self.forward_model(vlr)
                terms = self.loss(sr, hr)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["total"]).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._update_ema()
            values = torch.stack([terms[k].detach().float() for k in names[:-1]]
                                 + [psnr(sr.detach(), hr).mean()])
            sums += values * len(batch)
            for callback in self.callbacks:
                callback.on_batch_end(self, index, len(batches), terms["total"].detach())
        means = dict(zip(names, (sums / len(order)).tolist(), strict=True))
        for name in names[:-1]:
            if not math.isfinite(means[name]):
                raise TrainingDiverged(
                    f"the {name} loss became {means[name]} during epoch {self.epoch + 1} "
                    f"(lr {self.optimizer.param_groups[0]['lr']:.3g}); lower the learning rate "
                    "or that term's weight")
        out = {f"train_{name}_loss": means[name] for name in TERMS}
        out["train_loss"] = means["total"]
        out["train_psnr"] = means["psnr"]
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        self.ema_updates += 1
        decay = warmed_ema_decay(self.ema_updates, self.config.train.ema_decay)
        ema_params: list[Tensor] = list(self.ema.parameters())
        params = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)

    @torch.no_grad()
    def _embed(self, images: Tensor, net: nn.Module | None = None) -> Tensor:
        """Embeddings of float images in [0, 1] by the frozen recogniser (or `net`)."""
        with self._autocast():
            embedding, _ = (self.loss.identity_net if net is None else net)(
                images.contiguous(memory_format=self.memory_format))
        return embedding.float()

    @property
    def held_out_gallery(self) -> ValidationGallery | None:
        """The held-out recogniser's galleries and bicubic's figures (None without one)."""
        if self.held_out is not None and self._held_out_gallery is None:
            net = self.held_out
            self._held_out_gallery = ValidationGallery.build(
                lambda images: self._embed(images, net), self.train_set, self.val_set,
                self.config.train.recognition_threshold, self.device)
        return self._held_out_gallery

    @property
    def gallery(self) -> ValidationGallery:
        """The validation galleries and bicubic's figures, computed once per run."""
        if self._gallery is None:
            started = time.perf_counter()
            self._gallery = ValidationGallery.build(
                self._embed, self.train_set, self.val_set,
                self.config.train.recognition_threshold, self.device)
            logger.info("Recognition galleries: %d validation subjects and %d training subjects "
                        "as distractors; bicubic rank-1 %.1f%%, margin %.4f (%.2f s, once per "
                        "run)", len(self.val_set.unique_subjects), self._gallery.distractors,
                        100 * self._gallery.bicubic["rank1_full"],
                        self._gallery.bicubic["margin"], time.perf_counter() - started)
        return self._gallery

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        gallery = self.gallery
        batch_size = self.config.train.batch_size
        names = ("total", *TERMS, "psnr", "psnr_y", "ssim")
        sums = torch.zeros(len(names), device=self.device)
        sr_embeddings, held_out_embeddings = [], []
        for batch in torch.arange(len(self.val_set)).split(batch_size):
            vlr = self._to_device(self.val_set.vlr[batch]).contiguous(
                memory_format=self.memory_format)
            hr = self._to_device(self.val_set.hr[batch]).contiguous(
                memory_format=self.memory_format)
            with self._autocast():
                sr = self.ema(vlr)
                terms = self.loss(sr, hr, compute_all=True)
            sr = sr.float()
            sr_embeddings.append(terms["sr_embedding"].float())
            if self.held_out is not None:
                held_out_embeddings.append(self._embed(sr, self.held_out))
            values = [terms[k].float() * len(batch) for k in ("total", *TERMS)]
            values += [psnr(sr, hr).sum(), psnr_y(sr, hr).sum(), ssim(sr, hr).sum()]
            sums += torch.stack(values)
        means = dict(zip(names, (sums / len(self.val_set)).tolist(), strict=True))
        out = {f"val_{name}_loss": means[name] for name in TERMS}
        out.update(val_loss=means["total"], val_psnr=means["psnr"], val_psnr_y=means["psnr_y"],
                   val_ssim=means["ssim"])
        for name, value in out.items():
            if not math.isfinite(value):
                raise TrainingDiverged(f"validation {name} is {value} at epoch {self.epoch + 1}; "
                                       "lower the learning rate")
        # Recognition of identities never seen in training (the splits are by subject).
        out.update(gallery.report(torch.cat(sr_embeddings)))
        out["val_margin_gain_min"] = out["val_margin_gain"]
        held_out = self.held_out_gallery
        if held_out is not None:
            found = held_out.report(torch.cat(held_out_embeddings))
            out.update({HELD_OUT_PREFIX + key[len("val_"):]: value
                        for key, value in found.items()})
            out["val_margin_gain_min"] = min(out["val_margin_gain"],
                                             out[HELD_OUT_PREFIX + "margin_gain"])
        out["val_score"] = score(out["val_psnr"], out["val_margin_gain"])
        return out

    def _track_best(self, metrics: dict[str, float]) -> bool:
        value = metrics[self.monitor]
        better = improves(value, self.best_value, self.mode)
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
        if self.save_last:
            self.save_state(self.out_dir / "last.pt")
        if improved:
            save_dsr(self.out_dir / "best.pt", self.ema, self.config, metrics, self.epoch)
            self._write_grid()
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def grid_probes(self) -> Tensor:
        """Validation faces shown in the picture grid: the same every epoch, taking each
        subject's first image in turn, then second images, so as many subjects as possible."""
        order: dict[str, int] = {}
        seen = []
        for index, subject in enumerate(self.val_set.subjects):
            seen.append((order.get(subject, 0), index))
            order[subject] = order.get(subject, 0) + 1
        return torch.tensor([index for _, index in sorted(seen)[:GRID_PROBES]])

    @torch.no_grad()
    def comparison_grid(self) -> Any:
        """A picture grid (PIL image) of fixed validation faces: VLR, bicubic, DSR (EMA), HR."""
        from tune_dsr.evaluation.grid import comparison_grid

        rows = self.grid_probes()
        vlr = self._to_device(self.val_set.vlr[rows])
        hr = self._to_device(self.val_set.hr[rows])
        with self._autocast():
            sr = self.ema(vlr.contiguous(memory_format=self.memory_format)).float()
        gallery = self.gallery
        return comparison_grid(
            vlr, hr, {"bicubic": bicubic_upscale(vlr, hr.shape[-1]), f"DSR ep {self.epoch}": sr},
            self.loss.identity_net, gallery.full, gallery.names, gallery.labels[rows],
            threshold=gallery.threshold,
            probe_names=[self.val_set.names[int(i)] for i in rows])

    def _write_grid(self) -> None:
        if self.out_dir is None:
            return
        image = self.comparison_grid()
        image.save(self.out_dir / "best.png")
        # Beside the scalars that Tune (or the user) logs to the same folder.
        if self._tensorboard is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: the PNG is what matters
                return
            self._tensorboard = SummaryWriter(str(self.out_dir), filename_suffix=".faces")
        import numpy as np

        self._tensorboard.add_image("best_epoch_faces", np.asarray(image), self.epoch,
                                    dataformats="HWC")
        self._tensorboard.flush()

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain data only."""
        state: dict[str, Any] = {
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
        if state.get("format", TRAINER_STATE_FORMAT) != TRAINER_STATE_FORMAT:
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
        write_trainer_state(self.state_dict(), path)

    def load_state(self, path: str | Path) -> None:
        """Resume from a state file written by `save_state` (read with weights_only=True)."""
        self.load_state_dict(read_trainer_state(path))
        logger.info("Resumed from %s at epoch %d", path, self.epoch)


def prepare_run(config: Config, out_dir: str | Path, callbacks: Sequence[Callback] = (),
                resume: bool = False) -> Trainer:
    """A run as ``python -m tune_dsr.train`` makes it: both splits checked and decoded and the
    loss networks loaded (everything that can be wrong with the input is found here, before the
    first step), resumed from ``out_dir/last.pt`` when asked. ``fit()`` trains it."""
    from tune_dsr.data import load_pair_sets
    from tune_dsr.training.losses import load_loss_networks

    out = Path(out_dir)
    if resume and not (out / "last.pt").is_file():
        raise ConfigError(f"resume: {out / 'last.pt'} does not exist; run without --resume")
    config, train_set, val_set = load_pair_sets(config)
    identity_net, vgg = load_loss_networks(config.train.edgeface, config.train.perceptual_weights)
    trainer = Trainer(config, train_set, val_set, identity_net, vgg, callbacks=callbacks,
                      out_dir=out)
    if resume:
        trainer.load_state(out / "last.pt")
    return trainer
