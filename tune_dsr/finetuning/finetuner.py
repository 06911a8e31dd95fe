"""One EdgeFace fine-tuning run: the loop, its validation and its files (nothing of Ray).

The recogniser learns the training persons through a CosFace head from their faces as a frozen
DSR renders them (rendered once: the DSR does not change), mixed with their HR faces. Every
epoch its EMA weights identify the **validation** persons' rendered faces on a gallery of their
HR faces with every training person as a distractor, and the training persons' rendered faces on
the same gallery: the gap between the two is what the recogniser memorised rather than learned.
Epoch 0 is the recogniser as given, so the kept epoch is never one that validation finds worse
than no fine-tuning at all.
"""

from __future__ import annotations

import copy
import hashlib
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

from tune_dsr.data import PairedFaces, bicubic_upscale, to_float, vlr_sizes
from tune_dsr.errors import CheckpointError, ConfigError, DataError
from tune_dsr.finetuning.config import BICUBIC, FINETUNE_METRICS, FinetuneConfig
from tune_dsr.finetuning.head import CosFaceHead
from tune_dsr.hardware import autocast_dtype, resolve_device
from tune_dsr.models.checkpoints import (
    FINETUNE_STATE_FORMAT,
    DSRCheckpoint,
    build_dsr,
    load_edgeface,
    read_dsr_checkpoint,
    read_trainer_state,
    save_finetuned_edgeface,
    write_trainer_state,
)
from tune_dsr.models.edgeface import EdgeNeXtIdentityNet, IdentityNet
from tune_dsr.recognition import embed_batches, gallery_means, identify, similarities
from tune_dsr.training.trainer import WarmupCosine, improves, warmed_ema_decay
from tune_dsr.training.validation import distractor_rows, soft_rank1

__all__ = [
    "FINETUNED_FILE",
    "TRAIN_PROBES_PER_PERSON",
    "FinetuneCallback",
    "FinetuneResult",
    "Finetuner",
    "check_dsr_size",
    "check_out_dir",
    "check_persons",
    "prepare_finetune",
    "render",
]

logger = logging.getLogger(__name__)

# The recogniser a run hands on (the kept epoch's EMA weights), under the guide's file name.
FINETUNED_FILE = "edgeface_finetuned.pth"
# Training faces per person identified each epoch to see what the recogniser memorised.
TRAIN_PROBES_PER_PERSON = 2
_BATCH = 64  # faces per forward pass when measuring


class FinetuneCallback(Protocol):
    def on_batch_end(self, run: Finetuner, batch: int, num_batches: int, loss: Tensor) -> None:
        return None

    def on_epoch_end(self, run: Finetuner, metrics: dict[str, float]) -> None:
        return None


@dataclass
class FinetuneResult:
    epochs_run: int
    best_epoch: int
    best_metrics: dict[str, float]
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def render(vlr: Tensor, dsr: nn.Module | None, size: int, device: torch.device,
           batch: int = _BATCH) -> Tensor:
    """uint8 VLR faces [N,3,s,s] as `dsr` renders them at `size` (None: bicubic), as uint8."""
    out = []
    for chunk in vlr.split(batch):
        images = to_float(chunk.to(device))
        sr = bicubic_upscale(images, size) if dsr is None else dsr(images).float().clamp(0, 1)
        out.append(sr.mul(255).round().to(torch.uint8).cpu())
    return torch.cat(out) if out else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def check_persons(train_set: PairedFaces) -> None:
    """Refuse a training split the head cannot learn from, counting what it holds."""
    counts: dict[str, int] = {}
    for subject in train_set.subjects:
        counts[subject] = counts.get(subject, 0) + 1
    several = sum(1 for n in counts.values() if n >= 2)
    if len(counts) < 2 or several < 2:
        single = len(counts) - several
        raise DataError(
            f"the training split {train_set.split_dir} holds {len(counts)} person(s), {single} "
            f"of them with a single face: the classification head needs at least two persons "
            f"with two faces or more to learn what tells persons apart; use a training split "
            f"with several faces per person")


def _trunk_blocks(net: IdentityNet) -> list[nn.Module]:
    """The backbone's blocks in order, for `freeze_stages`."""
    if isinstance(net, EdgeNeXtIdentityNet):
        return [net.model.stem, *net.model.stages]
    features: nn.Sequential = net.features  # type: ignore[attr-defined,assignment]
    return list(features)


class Finetuner:
    """Fine-tunes `backbone` (a loaded EdgeFace) on `train_set` as `dsr` renders it (None:
    bicubic), validating on `val_set` every epoch. With `out_dir`, writes ``config.json``,
    ``metrics.jsonl``, ``last.pt`` (resumable) every epoch and `FINETUNED_FILE` at each new best.
    `provenance` (the DSR and EdgeFace files) goes into the written recogniser's config.
    """

    def __init__(self, config: FinetuneConfig, train_set: PairedFaces, val_set: PairedFaces,
                 backbone: IdentityNet, dsr: nn.Module | None, *,
                 provenance: dict[str, Any] | None = None,
                 callbacks: Sequence[FinetuneCallback] = (),
                 out_dir: str | Path | None = None) -> None:
        check_persons(train_set)
        if len(val_set) == 0:
            raise DataError(f"the validation split {val_set.split_dir} holds no faces")
        self.config = config
        self.train_set, self.val_set = train_set, val_set
        self.provenance = dict(provenance or {})
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else None
        self.device = resolve_device(config.device)
        self.amp_dtype = autocast_dtype(self.device, config.amp)
        torch.manual_seed(config.seed)

        blocks = _trunk_blocks(backbone)
        if config.freeze_stages >= len(blocks):
            raise ConfigError(f"freeze_stages={config.freeze_stages} would freeze all of "
                              f"{backbone.variant}'s {len(blocks)} blocks; it must be below "
                              f"{len(blocks)}")
        # Eval mode stays (IdentityNet.train is a no-op): EdgeNeXt has no batch statistics, and
        # the LDC's BatchNorm keeps the statistics it was trained with, which a batch of 32
        # faces could only make noisier.
        self.backbone = backbone.to(self.device).requires_grad_(True)
        for block in blocks[:config.freeze_stages]:
            block.requires_grad_(False)
        self.trainable = [p for p in self.backbone.parameters() if p.requires_grad]
        self.ema = copy.deepcopy(self.backbone).requires_grad_(False)

        size = train_set.hr_size
        self.dsr = dsr.to(self.device).eval() if dsr is not None else None
        started = time.perf_counter()
        self.train_sr = render(train_set.vlr, self.dsr, size, self.device)
        self.val_sr = render(val_set.vlr, self.dsr, size, self.device)
        self.val_bicubic = (self.val_sr if self.dsr is None
                            else render(val_set.vlr, None, size, self.device))
        logger.info("rendered %d training and %d validation faces with %s in %.1f s",
                    len(train_set), len(val_set), "bicubic" if dsr is None else "the DSR",
                    time.perf_counter() - started)

        # The gallery's distractors: the training persons that are not also validation persons.
        self._enrol, self._rows, self._kept = distractor_rows(
            train_set, set(val_set.unique_subjects))
        probes: list[int] = []
        taken: dict[str, int] = {}
        for index in self._enrol.tolist():
            subject = train_set.subjects[index]
            if taken.get(subject, 0) < TRAIN_PROBES_PER_PERSON:
                taken[subject] = taken.get(subject, 0) + 1
                probes.append(index)
        self._train_probes = torch.tensor(probes, dtype=torch.long)
        row_of = dict(zip(self._enrol.tolist(), self._rows.tolist(), strict=True))
        self._train_probe_rows = torch.tensor([row_of[i] for i in probes], dtype=torch.long)

        labels = train_set.subject_index
        classes = len(train_set.unique_subjects)
        both = torch.cat([self._embed_all(self.backbone, train_set.hr),
                          self._embed_all(self.backbone, self.train_sr)])
        self.head = CosFaceHead(both.shape[1], classes, config.scale, config.margin)
        self.head.init_from(gallery_means(both, torch.cat([labels, labels]), classes))
        self.head.to(self.device)
        self.optimizer = torch.optim.AdamW(
            [{"params": self.trainable, "lr": config.lr},
             {"params": self.head.parameters(), "lr": config.head_lr}],
            weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(config.warmup_epochs, config.epochs))

        self.monitor, self.mode = config.monitor, FINETUNE_METRICS[config.monitor]
        self.epoch = 0
        self.ema_updates = 0
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self._tensorboard: Any = None

    # ---------------------------------------------------------------- the loop
    def fit(self) -> FinetuneResult:
        """Measure the recogniser as given (epoch 0, once), then train to the end or until
        patience runs out."""
        cfg = self.config
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_json(self.out_dir / "config.json",
                        {**cfg.to_dict(), "provenance": self.provenance})
        if not self.history:
            self._end_epoch({"epoch": 0.0, "lr": 0.0, **self.validate()})
        stopped_early = False
        while self.epoch < cfg.epochs:
            started = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_metrics = self._train_epoch()
            train_seconds = time.perf_counter() - started
            self.scheduler.step()
            self.epoch += 1
            metrics = {"epoch": float(self.epoch), "lr": lr, **train_metrics, **self.validate(),
                       "images_per_s": len(self.train_set) / max(train_seconds, 1e-9),
                       "epoch_seconds": time.perf_counter() - started}
            self._end_epoch(metrics)
            if cfg.patience and self.bad_epochs >= cfg.patience:
                logger.info("early stopping at epoch %d: %s has not improved for %d epochs",
                            self.epoch, self.monitor, cfg.patience)
                stopped_early = True
                break
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        return FinetuneResult(self.epoch, self.best_epoch, dict(self.best_metrics),
                              stopped_early, list(self.history))

    def _end_epoch(self, metrics: dict[str, float]) -> None:
        improved = self._track_best(metrics)
        metrics["best_" + self.monitor] = float(self.best_value)  # type: ignore[arg-type]
        metrics["epochs_since_best"] = float(self.bad_epochs)
        self.history.append(metrics)
        self._write_outputs(metrics, improved)
        for callback in self.callbacks:
            callback.on_epoch_end(self, metrics)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _train_epoch(self) -> dict[str, float]:
        cfg = self.config
        # Order, HR-or-rendered draws and flips from (seed, epoch): a resumed run repeats them.
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.train_set), generator=generator)
        batches = order.split(cfg.batch_size)
        labels_all = self.train_set.subject_index
        sums = torch.zeros(2, device=self.device)
        for index, batch in enumerate(batches, start=1):
            show_hr = torch.rand(len(batch), generator=generator) < cfg.hr_fraction
            images = torch.where(show_hr[:, None, None, None], self.train_set.hr[batch],
                                 self.train_sr[batch])
            if cfg.augment:
                flip = torch.rand(len(batch), generator=generator) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            x = to_float(images.to(self.device, non_blocking=True))
            labels = labels_all[batch].to(self.device)
            with self._autocast():
                embedding, _ = self.backbone(x)
            loss, cosines = self.head(embedding.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_([*self.trainable, *self.head.parameters()],
                                         cfg.grad_clip)
            self.optimizer.step()
            self._update_ema()
            right = (cosines.argmax(1) == labels).float().sum()
            sums += torch.stack([loss.detach() * len(batch), right])
            for callback in self.callbacks:
                callback.on_batch_end(self, index, len(batches), loss.detach())
        loss_mean, accuracy = (sums / len(order)).tolist()
        if not math.isfinite(loss_mean):
            raise FloatingPointError(
                f"the fine-tuning loss became {loss_mean} during epoch {self.epoch + 1}; lower "
                f"lr (now {cfg.lr:g}) or head_lr (now {cfg.head_lr:g})")
        return {"train_loss": loss_mean, "train_head_accuracy": accuracy}

    @torch.no_grad()
    def _update_ema(self) -> None:
        self.ema_updates += 1
        decay = warmed_ema_decay(self.ema_updates, self.config.ema_decay)
        torch._foreach_lerp_(list(self.ema.parameters()),
                             [p.detach() for p in self.backbone.parameters()], 1.0 - decay)

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def _embed_all(self, net: nn.Module, images: Tensor) -> Tensor:
        def forward(x: Tensor) -> Tensor:
            with self._autocast():
                return net(x)[0].float()
        return embed_batches(forward, images.split(_BATCH), self.device)

    @torch.no_grad()
    def validate(self, net: nn.Module | None = None) -> dict[str, float]:
        """Identification by `net` (default: the EMA weights) of the validation persons'
        rendered faces (``val_*``, and bicubic's ``val_bicubic_*``) and of training persons'
        rendered faces (``train_*``), all on one gallery: the validation persons' HR faces and
        every training person as a distractor."""
        net = self.ema if net is None else net
        val = self.val_set
        own = gallery_means(self._embed_all(net, val.hr), val.subject_index,
                            len(val.unique_subjects))
        distractors = gallery_means(self._embed_all(net, self.train_set.hr[self._enrol]),
                                    self._rows, len(self._kept))
        full = torch.cat([own, distractors])
        threshold = self.config.recognition_threshold
        out: dict[str, float] = {}
        probes = {"val": (self.val_sr, val.subject_index),
                  "train": (self.train_sr[self._train_probes],
                            self._train_probe_rows + own.shape[0])}
        for split, (images, labels) in probes.items():
            embeddings = self._embed_all(net, images)
            wide = identify(similarities(embeddings, full), labels, threshold)
            out[f"{split}_rank1_full"] = wide.right.float().mean().item()
            out[f"{split}_margin"] = wide.margin.mean().item()
            out[f"{split}_soft_rank1"] = soft_rank1(wide.margin).mean().item()
            if split == "val":  # the guide's gallery: the validation persons alone
                guide = identify(similarities(embeddings, own), labels, threshold).metrics()
                out["val_rank1"], out["val_accuracy"] = guide["rank1"], guide["accuracy"]
        bicubic = (self._embed_all(net, self.val_bicubic) if self.dsr is not None
                   else None)
        if bicubic is not None:
            wide = identify(similarities(bicubic, full), val.subject_index, threshold)
            out["val_bicubic_rank1_full"] = wide.right.float().mean().item()
            out["val_bicubic_margin"] = wide.margin.mean().item()
        else:
            out["val_bicubic_rank1_full"] = out["val_rank1_full"]
            out["val_bicubic_margin"] = out["val_margin"]
        # What was learned rather than memorised shrinks this gap; memorising widens it.
        out["train_val_gap"] = out["train_rank1_full"] - out["val_rank1_full"]
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

    # ---------------------------------------------------------------- files
    def _write_outputs(self, metrics: dict[str, float], improved: bool) -> None:
        if self.out_dir is None:
            return
        if improved:
            self.save_recogniser(self.out_dir / FINETUNED_FILE, metrics)
        self.save_state(self.out_dir / "last.pt")
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        self._log_scalars(metrics)

    def save_recogniser(self, path: str | Path, metrics: dict[str, float]) -> None:
        subjects = self.train_set.unique_subjects
        save_finetuned_edgeface(
            path, self.ema, self.head.weight, epoch=self.epoch,
            subject_to_id={s: i for i, s in enumerate(subjects)},
            config={**self.config.to_dict(), "head": "cosface", "variant":
                    self.backbone.variant, "provenance": self.provenance},
            metrics=metrics)

    def _log_scalars(self, metrics: dict[str, float]) -> None:
        if self.out_dir is None:
            return
        if self._tensorboard is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: metrics.jsonl holds the same numbers
                return
            self._tensorboard = SummaryWriter(str(self.out_dir), filename_suffix=".finetune")
        step = int(metrics["epoch"])
        for name, value in metrics.items():
            if name != "epoch" and math.isfinite(value):
                self._tensorboard.add_scalar(f"finetune/{name}", value, step)
        self._tensorboard.flush()

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "provenance": self.provenance,
            "epoch": self.epoch, "backbone_state_dict": self.backbone.state_dict(),
            "ema_state_dict": self.ema.state_dict(), "head_state_dict": self.head.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "ema_updates": self.ema_updates, "best_value": self.best_value,
            "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
            "bad_epochs": self.bad_epochs, "history": self.history,
            "rng_cpu": torch.get_rng_state()}

    def save_state(self, path: str | Path) -> None:
        write_trainer_state(self.state_dict(), path, FINETUNE_STATE_FORMAT)

    def load_state(self, path: str | Path) -> None:
        """Continue from a `save_state` file of the same run (same settings, same DSR)."""
        state = read_trainer_state(path, FINETUNE_STATE_FORMAT)
        saved = FinetuneConfig.from_dict(state["config"])
        loose = ("epochs", "patience", "device")
        differ = [k for k, v in saved.to_dict().items()
                  if k not in loose and v != getattr(self.config, k)]
        if differ:
            raise ConfigError(
                f"cannot resume from {path}: it was fine-tuned with other settings ("
                + ", ".join(f"{k}={getattr(saved, k)!r}, now {getattr(self.config, k)!r}"
                            for k in differ[:5])
                + "); resume with the same settings, or start in another --out")
        if state["provenance"].get("dsr_sha256") != self.provenance.get("dsr_sha256"):
            raise ConfigError(f"cannot resume from {path}: the DSR file {self.config.dsr} has "
                              "changed since that run rendered its faces; start in another "
                              "--out")
        self.backbone.load_state_dict(state["backbone_state_dict"])
        self.ema.load_state_dict(state["ema_state_dict"])
        self.head.load_state_dict(state["head_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.epoch = int(state["epoch"])
        self.ema_updates = int(state["ema_updates"])
        self.best_value = state["best_value"]
        self.best_epoch = int(state["best_epoch"])
        self.best_metrics = dict(state["best_metrics"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = [dict(h) for h in state["history"]]
        torch.set_rng_state(state["rng_cpu"])
        logger.info("resumed fine-tuning from %s at epoch %d", path, self.epoch)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    from tune_dsr.files import atomic_write_text

    text = json.dumps(document, indent=2) + "\n"
    atomic_write_text(path, lambda out: out.write(text))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_dsr_size(dsr: str | Path, vlr_size: int | None, splits: Sequence[str | Path]
                   ) -> tuple[DSRCheckpoint, int]:
    """The DSR checkpoint `dsr` and its VLR size, refused (CheckpointError) when `vlr_size` asks
    for another or a split in `splits` holds no VLR faces of that size."""
    checkpoint = read_dsr_checkpoint(dsr)
    size = checkpoint.config.model.vlr_size
    if vlr_size is not None and vlr_size != size:
        raise CheckpointError(f"the DSR {checkpoint.path} turns {size} px faces into HR, but "
                              f"vlr_size={vlr_size} was asked for; leave vlr_size unset or pass "
                              f"a DSR trained for {vlr_size} px")
    for split in splits:
        folders = vlr_sizes(Path(split))
        sizes = sorted(s for s in folders.values() if s is not None)
        if sizes and None not in folders.values() and size not in sizes:
            raise CheckpointError(
                f"the DSR {checkpoint.path} was trained on {size} px faces, but {split} holds "
                f"VLR faces of {' and '.join(map(str, sizes))} px only; pass a DSR trained for "
                f"that size, or data with vlr_images_{size}x{size}/")
    return checkpoint, int(size)  # type: ignore[arg-type]


def check_out_dir(out_dir: str | Path, resume: bool) -> Path:
    """The output folder, refused when it holds a run and `resume` is off (or none and on)."""
    out = Path(out_dir).expanduser().resolve()
    started = [name for name in ("last.pt", FINETUNED_FILE) if (out / name).exists()]
    if resume and not (out / "last.pt").is_file():
        raise ConfigError(f"resume: {out / 'last.pt'} does not exist; run without --resume")
    if started and not resume:
        raise ConfigError(f"{out} already holds a fine-tuning run ({', '.join(started)}); pass "
                          "--resume to continue it, or another --out (nothing was changed)")
    return out


def prepare_finetune(config: FinetuneConfig, out_dir: str | Path,
                     callbacks: Sequence[FinetuneCallback] = (), resume: bool = False
                     ) -> Finetuner:
    """A run as ``python -m tune_dsr.finetune`` makes it. Everything that can be wrong with the
    input is found here, before any network runs: the output folder (a finished or started run
    there is not overwritten without `resume`), the DSR file, the data and its persons, the
    EdgeFace file. ``fit()`` trains it."""
    out = check_out_dir(out_dir, resume)
    missing = [name for name in ("train_dir", "val_dir") if not getattr(config, name)]
    if missing:
        raise ConfigError(f"no {' or '.join(missing)} given: pass --data-root (or --train-dir "
                          "and --val-dir)")
    checkpoint: DSRCheckpoint | None = None
    size = config.vlr_size
    if config.dsr != BICUBIC:
        checkpoint, size = check_dsr_size(config.dsr, config.vlr_size,
                                          [config.train_dir, config.val_dir])  # type: ignore[list-item]
    backbone = load_edgeface(config.edgeface)
    train_set, val_set = (PairedFaces.load(Path(split), vlr_size=size,  # type: ignore[arg-type]
                                           max_images=config.max_images)
                          for split in (config.train_dir, config.val_dir))
    if train_set.vlr_size != val_set.vlr_size:
        raise DataError(f"training VLR faces are {train_set.vlr_size} px, validation ones "
                        f"{val_set.vlr_size} px; pass --vlr-size to pick one size")
    if checkpoint is not None and train_set.vlr_size != size:
        raise CheckpointError(f"the DSR {checkpoint.path} turns {size} px faces into HR, but "
                              f"{config.train_dir} holds {train_set.vlr_size} px faces; pass a "
                              f"DSR trained for {train_set.vlr_size} px")
    check_persons(train_set)
    dsr = build_dsr(checkpoint) if checkpoint is not None else None
    provenance = {"dsr": str(checkpoint.path) if checkpoint is not None else BICUBIC,
                  "dsr_sha256": _sha256(checkpoint.path) if checkpoint is not None else None,
                  "edgeface": config.edgeface, "vlr_size": train_set.vlr_size}
    run = Finetuner(config.replace(vlr_size=train_set.vlr_size), train_set, val_set, backbone,
                    dsr, provenance=provenance, callbacks=callbacks, out_dir=out)
    if resume:
        run.load_state(out / "last.pt")
    return run
