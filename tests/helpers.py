"""Test helpers: the tests' small runs, a boring identity network, in-memory faces, the options of
the end-to-end searches, and a search with poisoned trials."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tune_dsr import demo
from tune_dsr.data import PairedFaces

# The unit tests' run: 8 px -> 32 px faces in memory, a one-block DSR, the boring identity net.
UNIT = {"vlr_size": 8, "hr_size": 32, "width": 8, "depth": 1, "batch_size": 4, "epochs": 2,
        "warmup_epochs": 1, "lr": 1e-3, "device": "cpu"}
# The end-to-end searches run on 8 px -> 32 px synthetic faces (`search_root`): what they test
# is Ray, Optuna and ASHA around real trainings, and at 32 px an epoch costs a tenth of one at
# 112 px. The knobs they pin: a tiny DSR, and bicubic_residual on, since without it a new net
# starts mid-grey and its first epochs look so bad that every later trial beats it, which would
# leave ASHA nothing to stop.
SEARCH_EPOCHS = 4
SEARCH_PINS = {"width": 8, "depth": 1, "batch_size": 4, "bicubic_residual": True, "hr_size": 32}

# The shared search's patience, and its confirmation: the top two configurations, one new run
# each.
SEARCH_PATIENCE = 2
SEARCH_CONFIRM = 2


def search_options(root: Path, **overrides: Any) -> Any:
    """SearchOptions of a tiny recognition_first search on the synthetic faces under `root`
    (`search_root`)."""
    from tune_dsr.tuning.service import SearchOptions

    values: dict[str, Any] = {
        "space": "recognition_first", "train_dir": str(root / "train_processed"),
        "val_dir": str(root / "val_processed"), **demo.RANDOM_NETWORKS, "pins": SEARCH_PINS,
        "seed": 7, "confirm": 0}
    return SearchOptions(**{**values, **overrides})


def as_flags(settings: dict[str, Any]) -> list[str]:
    """Settings as ``--set KEY=VALUE`` flags, for the tests that run the command lines."""
    flags: list[str] = []
    for key, value in settings.items():
        flags += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return flags


class BoringIdentityNet(nn.Module):
    """A frozen stand-in for EdgeFace: three convs, returning (embedding, activations).

    Cheap at any input size, differentiable with respect to its input, deterministic for a seed:
    what the loss and trainer unit tests need, without EdgeNeXt's cost.
    """

    def __init__(self, seed: int = 0, dim: int = 16) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                    nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                    nn.Conv2d(16, dim, 3, stride=2, padding=1)])
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
                conv.bias.zero_()
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> BoringIdentityNet:
        return super().train(False)  # frozen: always eval

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = (images - 0.5) / 0.5
        activations = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            activations.append(x)
        return x.mean(dim=(2, 3)), activations


def memory_faces(subjects: list[str], per_subject: int, vlr_size: int = 8, hr_size: int = 32,
                 seed: int = 0) -> PairedFaces:
    """Smooth random faces in memory: each subject has its own pattern, each image some noise;
    the VLR image is the HR image shrunk (area averaging)."""
    generator = torch.Generator().manual_seed(seed)
    names, hr = [], []
    for subject in subjects:
        base = torch.rand(3, 4, 4, generator=generator)
        for index in range(per_subject):
            noisy = (base + 0.1 * torch.randn(3, 4, 4, generator=generator)).clamp(0, 1)
            hr.append(nn.functional.interpolate(noisy[None], size=(hr_size, hr_size),
                                                mode="bilinear", align_corners=False)[0])
            names.append(f"{subject}_{index:02d}.png")
    hr_float = torch.stack(hr)
    vlr_float = nn.functional.interpolate(hr_float, size=(vlr_size, vlr_size), mode="area")
    return PairedFaces(names, _as_bytes(vlr_float), _as_bytes(hr_float))


def _as_bytes(images: Tensor) -> Tensor:
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- searches

def make_poisoned(marker_dir: str, poison: dict[int, tuple[int, bool]],
                  spare_anchors: bool = False) -> Any:
    """The real trial function, with a real NaN in DSR's output for chosen trials.

    `poison` maps a trial's start order (0: the first trial to start, not counting the anchors
    with `spare_anchors`, nor confirmation runs) to (the first epoch with NaN, whether every run
    is poisoned or only the first, before a retry).
    """

    def poisoned(config: dict[str, Any], train_set: PairedFaces, val_set: PairedFaces,
                 **kwargs: Any) -> None:
        from ray import tune

        from tune_dsr.models.dsr import DSR
        from tune_dsr.tuning.trainable import train_dsr

        if (spare_anchors and config.get("anchor")) or "confirms" in config:
            train_dsr(config, train_set, val_set, **kwargs)
            return
        trial_id = tune.get_context().get_trial_id()
        slot, retry = 0, False
        while True:  # claim the next start slot, or find ours again on a retry
            marker = Path(marker_dir, f"slot_{slot}")
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if marker.read_text() == trial_id:
                    retry = True
                    break
                slot += 1
                continue
            os.write(fd, trial_id.encode())
            os.close(fd)
            break
        handle = None
        first_epoch, every_run = poison.get(slot, (0, False))
        if first_epoch and (every_run or not retry):
            calls = {"n": 0, "epoch": 1}
            size = int(config["batch_size"])
            per_epoch = -(-len(train_set) // size)

            def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
                # Training forwards only (validation and the picture grid run the EMA in eval).
                if isinstance(module, DSR) and module.training:
                    calls["n"] += 1
                    if calls["n"] > (first_epoch - 1) * per_epoch:
                        return output * float("nan")
                return None

            handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            train_dsr(config, train_set, val_set, **kwargs)
        finally:
            if handle is not None:
                handle.remove()

    return poisoned


def run_poisoned_search(storage: Path, markers: Path, options: Any,
                        poison: dict[int, tuple[int, bool]],
                        spare_anchors: bool = False) -> dict[str, Any]:
    """Plan and run a search (`options`: SearchOptions) with poisoned trials; its outputs."""
    import dataclasses

    import optuna
    import ray.cloudpickle

    from tune_dsr.tuning.records import load_trials
    from tune_dsr.tuning.service import plan_search, run_search

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    plan = plan_search(dataclasses.replace(options, storage_path=str(storage)))
    document = run_search(plan, function=make_poisoned(str(markers), poison, spare_anchors))
    experiment = Path(plan.experiment_path)
    study = optuna.load_study(study_name=plan.name, storage=f"sqlite:///{plan.study_path}")
    return {"plan": plan, "document": document, "experiment": experiment, "study": study,
            "markers": markers, "trials": load_trials(str(experiment))}


def verification_scores(similarity: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """All probe-vs-gallery-subject comparisons: genuine scores (own subject) [N] and impostor
    scores (every other row, distractors included) [N·(C−1)]. The reference that
    `verification_metrics_from_similarity` (which never builds the impostor vector) must match."""
    sim = similarity.detach().float().cpu()
    labels = labels.cpu()
    own = torch.zeros_like(sim, dtype=torch.bool)
    own.scatter_(1, labels[:, None], True)
    return sim[own], sim[~own]
