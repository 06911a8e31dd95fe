"""Part "step": images/s of whole training epochs (data + step), tune_dsr against the original.

tune_dsr: its real `Trainer` (`trainer._train_epoch()`), on a `PairedFaces` set decoded once,
with the fast paths its config offers (`amp`: bf16 autocast where the hardware computes bf16;
`channels_last`; `compile`: torch.compile). The baseline: `benchmarks.reference`, the original
system's epoch (PIL decoding and per-sample augmentation in a DataLoader, EdgeFace four times per
step, the whole torchvision vgg19() built, float32, a host sync per loss term per step).

Both train the same DSR with the same batch size on the same synthetic faces; every variant has
its own copy of the loss networks (channels_last converts weights in place). Each variant is
warmed up with one batch (which also pays torch.compile's compilation), then the variants' epochs
alternate (ABBA...), and the median epoch is reported.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Context, PartResult, Ratio, fmt, interleaved, median, now, spread
from benchmarks.reference import ReferenceTrainer, check_same_loss
from tune_dsr.config import Config, LossConfig, ModelConfig
from tune_dsr.data import PairedFaces, to_float
from tune_dsr.synthetic import make_synthetic_dataset
from tune_dsr.training.losses import load_loss_networks
from tune_dsr.training.trainer import Trainer

EDGEFACE = "random:edgeface_xxs"
LEVERS = ("amp", "channels_last", "compile")  # tune_dsr's fast paths, where its config has them


@dataclass(frozen=True)
class Case:
    dsr: str  # "guide" or "small"
    width: int
    depth: int
    vlr: int

    @property
    def label(self) -> str:
        return f"{self.dsr} DSR C{self.width} N{self.depth}, {self.vlr}px"


def cases(demo: bool) -> list[Case]:
    if demo:
        return [Case("small", 32, 4, 16)]
    return [Case(dsr, width, depth, vlr) for dsr, width, depth in
            (("guide", 112, 16), ("small", 32, 4)) for vlr in (16, 32)]


def present_levers() -> list[str]:
    keys = Config.flat_keys()
    return [lever for lever in LEVERS if lever in keys]


def lever_settings(demo: bool) -> dict[str, dict[str, bool]]:
    """tune_dsr's rows: everything off, each lever alone, and the config's defaults."""
    levers = present_levers()
    if demo:  # compiling takes longer than the whole smoke run may
        levers = [lever for lever in levers if lever != "compile"]
    off = dict.fromkeys(levers, False)
    defaults = {lever: bool(Config().to_flat()[lever]) for lever in levers}
    rows = {"tune_dsr, levers off (float32, NCHW, eager)": off}
    for lever in levers:
        rows[f"tune_dsr, {lever} only"] = {**off, lever: True}
    on = [lever for lever, value in defaults.items() if value]
    rows[f"tune_dsr (its defaults: {', '.join(on) or 'no lever'} on)"] = defaults
    return rows


DEFAULT_ROW_PREFIX = "tune_dsr (its defaults"
OFF_ROW = "tune_dsr, levers off (float32, NCHW, eager)"
# Where the time goes: tune_dsr's defaults with one loss network left out. Not the same loss, so
# not a way to train; the lever case only.
DIAGNOSTICS: dict[str, dict[str, Any]] = {
    "diagnostic: defaults without the perceptual term (no VGG)": {"lambda_perceptual": 0.0},
    "diagnostic: defaults without identity and feature matching (no EdgeFace)": {
        "lambda_identity": 0.0, "lambda_feature_match": 0.0},
}


class Variant:
    """One row: `warmup()` once (returns its seconds), then `epoch()` returns an epoch's seconds."""

    def __init__(self, warmup: Callable[[], None], epoch: Callable[[], None],
                 device: torch.device) -> None:
        self._warmup, self._epoch, self.device = warmup, epoch, device

    def warmup(self) -> float:
        started = now(self.device)
        self._warmup()
        return now(self.device) - started

    def epoch(self) -> float:
        started = now(self.device)
        self._epoch()
        return now(self.device) - started


def _subset(data: PairedFaces, count: int) -> PairedFaces:
    return PairedFaces(data.names[:count], data.vlr[:count], data.hr[:count], data.split_dir)


def tune_dsr_variant(config: Config, train: PairedFaces, val: PairedFaces, identity: Any,
                     trunk: Any, device: torch.device) -> Variant:
    trainer = Trainer(config, train, val, copy.deepcopy(identity), copy.deepcopy(trunk))
    one_batch = _subset(train, config.train.batch_size)

    def warmup() -> None:
        trainer.train_set = one_batch  # one batch of the same shape (compiles, if asked to)
        try:
            trainer._train_epoch()
        finally:
            trainer.train_set = train

    return Variant(warmup, trainer._train_epoch, device)


def reference_variant(model: ModelConfig, train: PairedFaces, identity: Any, trunk: Any,
                      batch: int, device: torch.device) -> Variant:
    trainer = ReferenceTrainer(model, LossConfig(), Path(train.split_dir), train.names,
                               copy.deepcopy(identity), trunk.state_dict(), batch, device)
    return Variant(lambda: trainer.train_epoch(max_batches=1), trainer.train_epoch, device)


def data_variants(train: PairedFaces, batch: int, device: torch.device
                  ) -> dict[str, Callable[[], float]]:
    """The data path alone (what bench_data.py measured): tune_dsr's in-memory uint8 set sliced,
    converted and augmented per batch (as `Trainer._train_epoch` does) vs the reference's
    DataLoader decoding and augmenting every file."""
    from torch.utils.data import DataLoader

    from benchmarks.reference import PILPairs
    from tune_dsr.training.augment import augment_pair

    loader = DataLoader(PILPairs(Path(train.split_dir), train.names, train.vlr_size),
                        batch_size=batch, shuffle=True, num_workers=0)

    def cached() -> float:
        generator = torch.Generator().manual_seed(0)
        started = now(device)
        for index in torch.randperm(len(train), generator=generator).split(batch):
            vlr = to_float(train.vlr[index].to(device, non_blocking=True))
            hr = to_float(train.hr[index].to(device, non_blocking=True))
            augment_pair(vlr, hr, generator)
        return now(device) - started

    def decoded() -> float:
        started = now(device)
        for vlr, hr in loader:
            vlr.to(device), hr.to(device)
        return now(device) - started

    return {"reference: PIL decode + per-sample augmentation (DataLoader, 0 workers)": decoded,
            "tune_dsr: PairedFaces uint8 in memory + batched augment_pair": cached}


def run(ctx: Context) -> PartResult:
    result = PartResult("step")
    device, demo = ctx.device, ctx.demo
    hr_size = 32 if demo else 112
    images = 8 if demo else 16
    batch = 4 if demo else 16
    repeats = ctx.repeats or (1 if demo else 3)
    todo = cases(demo)
    rows_of = lever_settings(demo)
    # Each row costs its epochs: the small DSR at 16 px gets every lever on its own, the guide's
    # DSR at 16 px levers off too, the 32 px cases the reference and tune_dsr's defaults only.
    lever_case = todo[2] if len(todo) > 2 else todo[0]

    vlr_sizes = sorted({case.vlr for case in todo})
    per_subject = math.ceil(images / 4)  # 6 subjects: 4 train, 1 val, 1 test
    splits = make_synthetic_dataset(ctx.workdir / "step_faces", subjects=6,
                                    per_subject=per_subject, vlr_sizes=vlr_sizes,
                                    hr_size=hr_size, seed=0)
    sets = {vlr: (PairedFaces.load(splits["train"], vlr_size=vlr, hr_size=hr_size,
                                   max_images=images),
                  PairedFaces.load(splits["val"], vlr_size=vlr, hr_size=hr_size))
            for vlr in vlr_sizes}
    identity, trunk = load_loss_networks(EDGEFACE, "random")
    identity, trunk = identity.to(device), trunk.to(device)
    levers = present_levers()
    steps = math.ceil(images / batch)
    result.say(f"Epochs of {images} images (batch {batch}, {steps} step{'s' * (steps > 1)}), "
               f"HR {hr_size}px, EdgeFace {EDGEFACE} and VGG19 random, {repeats} interleaved "
               f"repeat(s) after a one-batch warm-up, median reported. tune_dsr levers in its "
               f"config: {', '.join(levers) or 'none yet'}.")
    result.say(check_same_loss(identity, trunk, LossConfig(), hr_size, device))

    rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for case in todo:
        train, val = sets[case.vlr]
        model = ModelConfig(vlr_size=case.vlr, hr_size=hr_size, width=case.width,
                            depth=case.depth)
        base = Config().replace(vlr_size=case.vlr, hr_size=hr_size, width=case.width,
                                depth=case.depth, batch_size=batch, device=str(device))
        chosen: dict[str, dict[str, Any]] = {
            name: settings for name, settings in rows_of.items()
            if case == lever_case or (name == OFF_ROW and case.vlr == todo[0].vlr)
            or name.startswith(DEFAULT_ROW_PREFIX)}
        if case == lever_case:
            defaults = next(v for k, v in rows_of.items() if k.startswith(DEFAULT_ROW_PREFIX))
            chosen.update({name: {**defaults, **change} for name, change in DIAGNOSTICS.items()})
        variants = {"reference (the original system)":
                    reference_variant(model, train, identity, trunk, batch, device)}
        variants.update({name: tune_dsr_variant(base.replace(**settings), train, val, identity,
                                                trunk, device)
                         for name, settings in chosen.items()})
        first: dict[str, float] = {}
        for name, variant in list(variants.items()):
            try:
                first[name] = variant.warmup()
            except Exception as exc:  # a lever this machine cannot run (compile, say)
                if name.startswith(DEFAULT_ROW_PREFIX) or name.startswith("reference"):
                    raise
                rows.append([case.label, name, "failed", "", "", "", str(exc).splitlines()[0]])
                del variants[name]
        case_started = time.perf_counter()
        times = interleaved({name: v.epoch for name, v in variants.items()}, repeats)
        reference_speed = len(train) / median(times["reference (the original system)"])
        for name, seconds in times.items():
            speed = len(train) / median(seconds)
            rows.append([case.label, name, fmt(median(seconds)), spread(seconds),
                         fmt(first[name]), fmt(speed), f"×{fmt(speed / reference_speed)}"])
            summary[f"{case.label} | {name}"] = {"seconds": seconds, "images_per_s": speed,
                                                 "warmup_batch_s": first[name]}
        default = next(name for name in times if name.startswith(DEFAULT_ROW_PREFIX))
        result.ratios.append(Ratio(
            f"step {case.dsr} DSR {case.vlr}→{hr_size}",
            len(train) / median(times[default]), reference_speed, "images/s"))
        del variants
        print(f"  step: {case.label} measured in {time.perf_counter() - case_started:.0f} s",
              file=sys.stderr, flush=True)
    result.say()
    result.table(["case", "variant", "s/epoch", "min-max s", "warm-up batch s", "images/s",
                  "vs reference"], rows)

    # The data path alone, from the first VLR size's set.
    train = sets[vlr_sizes[0]][0]
    data_times = interleaved(data_variants(train, batch, device), 1 if demo else 5)
    result.say()
    result.say(f"The data path alone (epoch of {len(train)} pairs, {vlr_sizes[0]}px -> "
               f"{hr_size}px, batch {batch}, augmentation on):")
    result.table(["variant", "ms/epoch", "min-max ms", "images/s"],
                 [[name, fmt(median(s) * 1e3), spread([v * 1e3 for v in s]),
                   fmt(len(train) / median(s))] for name, s in data_times.items()])
    summary["data_path"] = data_times
    result.data = summary
    return result
