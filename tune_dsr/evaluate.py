"""Evaluate DSR checkpoints as the field reports face recognition after super-resolution.

``python -m tune_dsr.evaluate --dataset-root DATA/test_processed --dsr runs/a/best.pt
--edgeface edgeface_finetuned.pth``

Each probe is a VLR face of the dataset; every method turns it into a 112×112 face: HR (the real
face, the upper bound), bicubic (the do-nothing baseline) and each DSR. EdgeFace embeds the
result and it is identified against a gallery that holds each subject's mean HR embedding:

- protocol "guide": the gallery holds the dataset's own subjects (the training guide's test);
- protocol "wide": it also holds distractor subjects (by default the training and validation
  subjects beside the dataset), so a DSR that turns faces into training identities is caught.

Per method: rank-1, rank-5, the guide's accuracy and unknown rate at a threshold, the margin to
the best other subject, verification ROC-AUC / EER / TAR@FAR, PSNR and SSIM; 95 % bootstrap
intervals, paired differences against bicubic, per-subject accuracy, the most frequent wrong
answers and, on request, a threshold sweep. Extra ``--edgeface`` networks are held-out
recognisers: a gain that only the recogniser DSR was trained against sees is overfitting.

The library entry point is `evaluate` (loaded networks and data in, a JSON-ready report out);
`format_report` prints it. This module imports torch only inside functions, so ``--help`` and
bad flags answer at once.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_dsr.cli import add_debug_flag, add_probe_flags, run_cli
from tune_dsr.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from tune_dsr.data import PairedFaces
    from tune_dsr.models.dsr import DSRCheckpoint

__all__ = [
    "PROTOCOLS",
    "GalleryFaces",
    "LoadedDSR",
    "check_threshold",
    "default_distractor_roots",
    "evaluate",
    "format_report",
    "load_dsrs",
    "load_probe_set",
    "load_recognisers",
    "main",
    "resolve_device",
    "resolve_split",
]

logger = logging.getLogger("tune_dsr.evaluate")

REPORT_FORMAT = "tune_dsr.evaluation/1"
PROTOCOLS = ("guide", "wide")
HR, BICUBIC = "HR", "bicubic"
TRAINED_AGAINST, HELD_OUT = "trained against", "held-out"
UNDER = 0.15  # a subject below 15 % accuracy is "barely ever recognised"
_VLR_DIR_RE = re.compile(r"^vlr_images(?:_(\d+)x\1)?$")
_SPLIT_FIX = ("pass a split folder that holds hr_images/ and vlr_images/ (or vlr_images_NxN/), "
              "e.g. DATA/test_processed, or a data root that holds test_processed/")


# ============================================================================= inputs

def check_threshold(threshold: float) -> float:
    """The acceptance threshold must be a cosine similarity: a number in [-1, 1]."""
    if not isinstance(threshold, (int, float)) or not -1.0 <= float(threshold) <= 1.0:
        raise ConfigError(
            f"--threshold {threshold} is outside [-1, 1]: it is compared with a cosine "
            "similarity, which lies in [-1, 1], so every face (or none) would pass. Use the "
            "guide's 0.35, or the best threshold that --sweep reports.")
    return float(threshold)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device: use auto, cpu, cuda or "
                          "cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA, but torch sees no CUDA device here; "
                          "use --device cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def resolve_split(root: str | Path) -> Path:
    """The split folder to evaluate: `root` itself if it holds ``hr_images/``, else its
    ``test_processed/``. Raises DataError for a missing, non-folder or empty `root`."""
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise DataError(f"the dataset root {path} does not exist (given as {str(root)!r}); "
                        f"{_SPLIT_FIX}.")
    if not path.is_dir():
        raise DataError(f"the dataset root {path} is a file, not a folder; {_SPLIT_FIX}.")
    if not any(path.iterdir()):
        raise DataError(f"the dataset root {path} is empty; {_SPLIT_FIX} (for example one "
                        "written by `python -m tune_dsr.synth --out DATA`).")
    if not (path / "hr_images").is_dir() and (path / "test_processed").is_dir():
        logger.info("%s holds test_processed/: evaluating that split", path)
        return path / "test_processed"
    return path


def default_distractor_roots(split: Path) -> list[Path]:
    """``train_processed/`` and ``val_processed/`` beside `split` (other than `split` itself):
    subjects the wide protocol adds to the gallery when no ``--gallery-root`` is given."""
    split = split.resolve()
    return [split.parent / name for name in ("train_processed", "val_processed")
            if (split.parent / name).is_dir() and (split.parent / name) != split]


@dataclass
class LoadedDSR:
    """A DSR ready to run, with where it came from (for the report)."""

    label: str
    model: nn.Module
    checkpoint: DSRCheckpoint

    def describe(self) -> dict[str, Any]:
        c = self.checkpoint
        return {"name": self.label, "kind": "dsr", "path": str(c.path), "epoch": c.epoch,
                "weights": c.weights, "vlr_size": c.config.model.vlr_size,
                "width": c.config.model.width, "depth": c.config.model.depth,
                "metrics": {k: v for k, v in c.metrics.items()
                            if isinstance(v, (int, float)) and math.isfinite(v)}}


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the file name, else as many trailing parts as make them unique; the
    same file given again gets " #2"."""
    unique = list(dict.fromkeys(paths))
    short = {p: str(p) for p in unique}
    for parts in range(1, 6):
        names = {p: "/".join(p.parts[-parts:]) for p in unique}
        if len(set(names.values())) == len(unique):
            short = names
            break
    seen: dict[Path, int] = {}
    labels = []
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
        labels.append(short[p] if seen[p] == 1 else f"{short[p]} #{seen[p]}")
    return labels


def load_dsrs(paths: Sequence[str | Path], device: str | torch.device = "cpu") -> list[LoadedDSR]:
    """Read every DSR checkpoint safely (``weights_only``) and build its network, in eval mode.

    Accepts ``best.pt``, ``last.pt`` and Tune trial checkpoints (a folder or its ``state.pt``;
    their EMA weights). All must be for one VLR size. Raises CheckpointError naming the file.
    """
    from tune_dsr.models.dsr import build_dsr, read_dsr_checkpoint

    if not paths:
        raise ConfigError("no DSR checkpoint given: pass --dsr PATH (best.pt, last.pt or a Tune "
                          "trial checkpoint folder)")
    checkpoints = [read_dsr_checkpoint(p) for p in paths]
    first = checkpoints[0]
    for other in checkpoints[1:]:
        if other.config.model.vlr_size != first.config.model.vlr_size:
            raise CheckpointError(
                f"DSR checkpoints for different VLR sizes: {first.path} takes "
                f"{first.config.model.vlr_size}x{first.config.model.vlr_size} faces, {other.path} "
                f"{other.config.model.vlr_size}x{other.config.model.vlr_size}; evaluate "
                "checkpoints of one VLR size together (one run per size).")
    labels = _labels([c.path if c.path.name not in ("state.pt",) else c.path.parent
                      for c in checkpoints])
    return [LoadedDSR(label, build_dsr(c).to(device), c)
            for label, c in zip(labels, checkpoints, strict=True)]


def _vlr_folders(split: Path) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    if split.is_dir():
        for entry in sorted(split.iterdir()):
            match = _VLR_DIR_RE.match(entry.name)
            if entry.is_dir() and match:
                found[entry.name] = int(match.group(1)) if match.group(1) else None
    return found


def load_probe_set(split: Path, dsrs: Sequence[LoadedDSR] = (), vlr_size: int | None = None,
                   max_images: int = 0) -> PairedFaces:
    """The probes: the split's pairs at the DSRs' VLR size (else `vlr_size`, else the only one).

    A DSR trained for another VLR size than the data is refused here (CheckpointError naming
    both sizes), before anything runs; so is a set with fewer than two subjects (DataError).
    """
    from tune_dsr.data import PairedFaces

    wanted = dsrs[0].checkpoint.config.model.vlr_size if dsrs else vlr_size
    folders = _vlr_folders(split)
    sized = {size: name for name, size in folders.items() if size is not None}
    pick: int | None = wanted if wanted in sized else None
    if wanted is not None and pick is None and dsrs and sized and "vlr_images" not in folders:
        have = " and ".join(f"{s}x{s}" for s in sorted(sized))
        raise _size_mismatch(dsrs[0], split, have)
    data = PairedFaces.load(split, vlr_size=pick, max_images=max_images)
    if dsrs and data.vlr_size != wanted:
        raise _size_mismatch(dsrs[0], split, f"{data.vlr_size}x{data.vlr_size}")
    if len(data.unique_subjects) < 2:
        raise DataError(f"{split} holds {len(data.unique_subjects)} subject; identification and "
                        "verification need at least two subjects: evaluate a split with more "
                        "identities")
    return data


def _size_mismatch(dsr: LoadedDSR, split: Path, have: str) -> CheckpointError:
    size = dsr.checkpoint.config.model.vlr_size
    return CheckpointError(
        f"DSR checkpoint {dsr.checkpoint.path} was trained for {size}x{size} VLR faces, but the "
        f"data in {split} has {have} VLR images; evaluate it on data with vlr_images_{size}x"
        f"{size}/, or pass a checkpoint trained for the data's size.")


def load_recognisers(specs: Sequence[str], device: str | torch.device = "cpu"
                     ) -> dict[str, nn.Module]:
    """The EdgeFace networks by display name, in order: the first is the one DSR was trained
    against, the others are held-out recognisers. Raises EdgeFaceError for unreadable files."""
    from tune_dsr.models.checkpoints import load_edgeface

    if not specs:
        raise ConfigError("no EdgeFace given: pass --edgeface PATH (or random:<variant> for a "
                          "smoke test)")
    names = [spec if spec.startswith("random:") else Path(spec).name for spec in specs]
    nets: dict[str, nn.Module] = {}
    for index, (name, spec) in enumerate(zip(names, specs, strict=True)):
        key = name if names.count(name) == 1 else f"{name} #{index + 1}"
        nets[key] = load_edgeface(spec, map_location=device)
    return nets


# ----------------------------------------------------------------------------- distractors

@dataclass
class GalleryFaces:
    """HR faces of distractor subjects (only HR images are needed), read in batches.

    `scan` checks a split folder's ``hr_images/`` (names, sizes, readability) without decoding
    it; `from_tensor` wraps faces already in memory (uint8 [M, 3, H, H]).
    """

    source: str
    subjects: list[str]
    paths: list[Path] = field(default_factory=list)
    hr: Tensor | None = None

    @classmethod
    def scan(cls, split: str | Path, hr_size: int = 112) -> GalleryFaces:
        from concurrent.futures import ThreadPoolExecutor

        from PIL import Image

        from tune_dsr.data import IMAGE_EXTENSIONS, subject_of

        folder = Path(split).expanduser().resolve()
        hr_dir = folder / "hr_images"
        if not hr_dir.is_dir():
            what = "does not exist" if not folder.exists() else "holds no hr_images/ folder"
            raise DataError(f"the gallery folder {folder} {what}; pass --gallery-root folders "
                            "that hold hr_images/ (e.g. DATA/train_processed)")
        paths = sorted(p for p in hr_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise DataError(f"the gallery folder {hr_dir} holds no images "
                            f"({'/'.join(IMAGE_EXTENSIONS)}); pass a folder with HR faces")

        def problem(path: Path) -> str | None:
            try:
                with Image.open(path) as image:
                    size = image.size
                    image.verify()
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                return f"{path.name} cannot be read ({type(exc).__name__})"
            if size != (hr_size, hr_size):
                return f"{path.name} is {size[0]}x{size[1]}, expected {hr_size}x{hr_size}"
            return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            problems = [p for p in pool.map(problem, paths) if p]
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more"
                                                if len(problems) > 10 else "")
            raise DataError(f"{len(problems)} unusable HR images in the gallery folder {hr_dir}: "
                            f"{shown}. Replace or remove them, or leave this --gallery-root out.",
                            problems)
        return cls(str(folder), [subject_of(p.name) for p in paths], paths=paths)

    @classmethod
    def from_tensor(cls, hr: Tensor, subjects: Sequence[str], source: str = "memory"
                    ) -> GalleryFaces:
        if hr.shape[0] != len(subjects):
            raise ValueError(f"{hr.shape[0]} faces for {len(subjects)} subject names")
        return cls(source, list(subjects), hr=hr)

    def __len__(self) -> int:
        return len(self.subjects)

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """uint8 [b, 3, H, W] batches, in `subjects` order."""
        import numpy as np
        import torch
        from PIL import Image

        if self.hr is not None:
            yield from self.hr.split(batch_size)
            return
        for start in range(0, len(self.paths), batch_size):
            chunk = []
            for path in self.paths[start:start + batch_size]:
                try:
                    with Image.open(path) as image:
                        chunk.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
                except OSError as exc:
                    raise DataError(f"gallery image {path} cannot be decoded ({exc}); replace "
                                    "or remove it") from exc
            yield torch.from_numpy(np.stack(chunk))


def _check_distractors(data: PairedFaces, distractors: Sequence[GalleryFaces]) -> None:
    probes = set(data.unique_subjects)
    for faces in distractors:
        shared = sorted(probes & set(faces.subjects))
        if shared:
            shown = ", ".join(shared[:10]) + (f" and {len(shared) - 10} more"
                                               if len(shared) > 10 else "")
            raise DataError(
                f"the gallery folder {faces.source} holds {len(shared)} of the probes' own "
                f"subjects ({shown}); distractors must be other identities, or a right answer "
                "would count as wrong. Pass --gallery-root folders of other subjects (the splits "
                "are by subject: train_processed/ and val_processed/ beside a test split).")


# ============================================================================= the evaluation

@dataclass
class _ProbeOutputs:
    embeddings: dict[str, dict[str, Tensor]]  # method -> recogniser -> [N, D]
    psnr: dict[str, Tensor | None]
    ssim: dict[str, Tensor | None]
    seconds: float


def _bicubic(vlr: Tensor, size: int) -> Tensor:
    import torch.nn.functional as F

    return F.interpolate(vlr, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _run_probes(data: PairedFaces, dsrs: Mapping[str, nn.Module],
                recognisers: Mapping[str, nn.Module], batch_size: int,
                device: torch.device) -> _ProbeOutputs:
    """Every method on every probe, and every recogniser on every result, batch by batch (the
    super-resolved faces are never all held in memory)."""
    import torch

    from tune_dsr.data import to_float
    from tune_dsr.metrics import psnr, ssim

    methods = [HR, BICUBIC, *dsrs]
    embeddings: dict[str, dict[str, list[Tensor]]] = {m: {r: [] for r in recognisers}
                                                      for m in methods}
    quality: dict[str, list[Tensor]] = {m: [] for m in methods[1:]}
    structure: dict[str, list[Tensor]] = {m: [] for m in methods[1:]}
    started = time.perf_counter()
    with torch.no_grad():
        for index in torch.arange(len(data)).split(batch_size):
            vlr = to_float(data.vlr[index].to(device))
            hr = to_float(data.hr[index].to(device))
            faces = {HR: hr, BICUBIC: _bicubic(vlr, data.hr_size)}
            for name, net in dsrs.items():
                faces[name] = net(vlr).float()
                if not torch.isfinite(faces[name]).all():
                    raise CheckpointError(f"DSR {name} produced NaN or infinite pixels; its "
                                          "weights are broken: use another checkpoint")
            for method, images in faces.items():
                if method != HR:
                    quality[method].append(psnr(images, hr).cpu())
                    structure[method].append(ssim(images, hr).cpu())
                for name, net in recognisers.items():
                    embeddings[method][name].append(net(images)[0].float().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return _ProbeOutputs(
        {m: {r: torch.cat(v) for r, v in by_rec.items()} for m, by_rec in embeddings.items()},
        {HR: None, **{m: torch.cat(v) for m, v in quality.items()}},
        {HR: None, **{m: torch.cat(v) for m, v in structure.items()}}, seconds)


def _distractor_gallery(distractors: Sequence[GalleryFaces], recognisers: Mapping[str, nn.Module],
                        batch_size: int, device: torch.device
                        ) -> tuple[list[str], dict[str, Tensor]]:
    """Distractor subject names (sorted, merged across folders) and, per recogniser, their
    gallery rows (mean HR embedding per subject)."""
    import torch

    from tune_dsr.data import to_float
    from tune_dsr.recognition import gallery_means

    names = sorted({s for faces in distractors for s in faces.subjects})
    lookup = {name: i for i, name in enumerate(names)}
    labels = torch.tensor([lookup[s] for faces in distractors for s in faces.subjects],
                          dtype=torch.long)
    collected: dict[str, list[Tensor]] = {r: [] for r in recognisers}
    with torch.no_grad():
        for faces in distractors:
            for batch in faces.batches(batch_size):
                images = to_float(batch.to(device))
                for name, net in recognisers.items():
                    collected[name].append(net(images)[0].float().cpu())
    return names, {name: gallery_means(torch.cat(parts), labels, len(names))
                   for name, parts in collected.items()}


def _interval(values: Tensor, resamples: int, seed: int) -> list[float]:
    from tune_dsr.recognition import bootstrap_interval

    found = bootstrap_interval(values.float(), resamples=resamples, seed=seed)
    return [found.low, found.high]


def _mean(values: Tensor | None) -> float | None:
    return None if values is None else float(values.double().mean())


def evaluate(data: PairedFaces, dsrs: Mapping[str, nn.Module],
             recognisers: Mapping[str, nn.Module], *,
             distractors: Sequence[GalleryFaces] | None = None, threshold: float = 0.35,
             leave_one_out: bool = False, sweep: bool = False, batch_size: int = 32,
             device: str | torch.device = "cpu", resamples: int = 2000, seed: int = 0,
             per_probe: bool = False, method_info: Mapping[str, Mapping[str, Any]] | None = None,
             dataset_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate HR, bicubic and each DSR on `data`'s probes with each recogniser.

    `dsrs` maps a display name to a network (VLR [B,3,s,s] in [0,1] → [B,3,H,H]); `recognisers`
    maps a name to an EdgeFace-like network (images → (embedding, activations)); the first is
    the one the DSRs were trained against, the others are held out. `distractors`: HR faces of
    other subjects for the "wide" protocol (None or empty: the wide protocol is skipped). The
    networks must already be on `device`, in eval mode. Returns a JSON-ready dict
    (`format_report` prints it); with `per_probe`, its ``"probes"`` entry holds one row per
    probe × method × recogniser × protocol.
    """
    import torch

    from tune_dsr import recognition as rec

    threshold = check_threshold(threshold)
    if batch_size < 1 or resamples < 1:
        raise ConfigError(f"batch_size and resamples must be >= 1, but got batch_size="
                          f"{batch_size}, resamples={resamples}")
    if not recognisers:
        raise ConfigError("evaluate needs at least one recogniser")
    device = torch.device(device)
    distractors = list(distractors or [])
    _check_distractors(data, distractors)
    methods = [HR, BICUBIC, *dsrs]
    if len(set(methods)) != len(methods):
        raise ConfigError(f"method names must be unique and not {HR!r}/{BICUBIC!r}, but got "
                          f"{list(dsrs)}")

    outputs = _run_probes(data, dsrs, recognisers, batch_size, device)
    logger.info("ran %d methods x %d recognisers on %d probes in %.1f s", len(methods),
                len(recognisers), len(data), outputs.seconds)
    distractor_names: list[str] = []
    distractor_rows: dict[str, Tensor] = {}
    if distractors:
        distractor_names, distractor_rows = _distractor_gallery(distractors, recognisers,
                                                                batch_size, device)

    labels = data.subject_index
    count = len(data.unique_subjects)
    protocols: dict[str, dict[str, Any]] = {
        "guide": {"gallery_subjects": count, "distractor_subjects": 0, "skipped": None},
        "wide": {"gallery_subjects": count + len(distractor_names),
                 "distractor_subjects": len(distractor_names),
                 "distractor_sources": [faces.source for faces in distractors],
                 "skipped": None if distractors else
                 "no distractor subjects: pass --gallery-root, or evaluate a split that sits "
                 "beside train_processed/ and val_processed/"},
    }
    info = dict(method_info or {})
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "dataset": {"probes": len(data), "subjects": count, "vlr_size": data.vlr_size,
                    "hr_size": data.hr_size, "path": data.split_dir, **(dataset_info or {})},
        "settings": {"threshold": threshold, "leave_one_out": leave_one_out,
                     "resamples": resamples, "seed": seed, "level": 0.95},
        "methods": [{"name": HR, "kind": "hr"}, {"name": BICUBIC, "kind": "bicubic"}]
        + [{"name": name, "kind": "dsr", **info.get(name, {})} for name in dsrs],
        "recognisers": [{"name": name, "role": TRAINED_AGAINST if i == 0 else HELD_OUT}
                        for i, name in enumerate(recognisers)],
        "protocols": protocols,
        "quality": {m: {"psnr": _mean(outputs.psnr[m]), "ssim": _mean(outputs.ssim[m])}
                    for m in methods},
        "results": [],
        "speed": {"device": str(device), "probes": len(data), "seconds": outputs.seconds,
                  "probes_per_second": len(data) / max(outputs.seconds, 1e-9),
                  "methods": len(methods), "recognisers": len(recognisers)},
    }
    rows: list[dict[str, Any]] = []
    for r_index, recogniser in enumerate(recognisers):
        hr_embeddings = outputs.embeddings[HR][recogniser]
        gallery = rec.gallery_means(hr_embeddings, labels, count)
        if leave_one_out:
            lone = int((torch.bincount(labels, minlength=count) == 1).sum())
            if lone:
                logger.warning("leave-one-out: %d subjects have a single image, so their probes "
                               "cannot be identified (counted as wrong for every method)", lone)
        for protocol in PROTOCOLS:
            if protocols[protocol]["skipped"]:
                continue
            names = list(data.unique_subjects)
            extra = None
            if protocol == "wide":
                names += distractor_names
                extra = distractor_rows[recogniser]
            block: dict[str, Any] = {
                "recogniser": recogniser,
                "role": TRAINED_AGAINST if r_index == 0 else HELD_OUT,
                "protocol": protocol, "gallery_subjects": len(names), "methods": {}}
            found_by_method: dict[str, rec.Identification] = {}
            for method in methods:
                probes = outputs.embeddings[method][recogniser]
                if leave_one_out:
                    sim = rec.leave_one_out_similarities(probes, hr_embeddings, labels, count)
                else:
                    sim = rec.similarities(probes, gallery)
                if extra is not None:
                    sim = torch.cat([sim, rec.similarities(probes, extra)], dim=1)
                found = rec.identify(sim, labels, threshold)
                found_by_method[method] = found
                subjects = rec.per_subject_accuracy(found.correct, labels, names)
                entry: dict[str, Any] = dict(found.metrics())
                entry["rank1_ci"] = _interval(found.right, resamples, seed)
                entry["accuracy_ci"] = _interval(found.correct, resamples, seed)
                entry.update(rec.verification_metrics_from_similarity(sim, labels))
                entry.update(report["quality"][method])
                entry["per_subject"] = [s._asdict() for s in subjects]
                entry["subjects_under_15"] = rec.subjects_below(subjects, UNDER)
                entry["wrong_answers"] = [vars(w) for w in rec.wrong_answers(found, names, 10)]
                if sweep:
                    entry["sweep"] = vars(rec.threshold_sweep(found.best, found.right))
                block["methods"][method] = entry
                if per_probe:
                    rows += _probe_rows(data, method, recogniser, protocol, found, names,
                                        outputs)
            for method in dsrs:
                versus = {}
                for metric, attribute in (("rank1", "right"), ("accuracy", "correct")):
                    diff = rec.paired_bootstrap(getattr(found_by_method[method], attribute),
                                                getattr(found_by_method[BICUBIC], attribute),
                                                resamples=resamples, seed=seed)
                    versus[metric] = {"difference": diff.estimate, "low": diff.low,
                                      "high": diff.high, "verdict": rec.verdict(diff)}
                block["methods"][method]["vs_bicubic"] = versus
            report["results"].append(block)
    if per_probe:
        report["probes"] = rows
    return report


def _probe_rows(data: PairedFaces, method: str, recogniser: str, protocol: str,
                found: Any, names: Sequence[str], outputs: _ProbeOutputs) -> list[dict[str, Any]]:
    psnr, ssim = outputs.psnr[method], outputs.ssim[method]
    predicted, best = found.predicted.tolist(), found.best.tolist()
    correct, rank, margin = found.correct.tolist(), found.rank.tolist(), found.margin.tolist()
    return [{"probe": data.names[i], "subject": data.subjects[i], "method": method,
             "recogniser": recogniser, "protocol": protocol, "predicted": names[predicted[i]],
             "similarity": round(best[i], 6), "correct": int(correct[i]), "rank": rank[i],
             "margin": round(margin[i], 6),
             "psnr": "" if psnr is None else round(float(psnr[i]), 4),
             "ssim": "" if ssim is None else round(float(ssim[i]), 5)}
            for i in range(len(data))]


# ============================================================================= printing

def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _ci(entry: Mapping[str, Any], key: str) -> str:
    low, high = entry[f"{key}_ci"]
    return f"{_pct(entry[key])} [{_pct(low)}, {_pct(high)}]"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def format_report(report: Mapping[str, Any], worst: int = 5, wrong: int = 5) -> str:
    """The report as text: per recogniser and protocol a table (a row per method), then the
    paired differences against bicubic, per-subject accuracy, frequent wrong answers and, when
    swept, the thresholds."""
    settings, dataset = report["settings"], report["dataset"]
    threshold = settings["threshold"]
    lines = [f"Evaluated {dataset['probes']} probes of {dataset['subjects']} subjects from "
             f"{dataset['path']} ({dataset['vlr_size']} px -> {dataset['hr_size']} px), "
             f"threshold {threshold:g}"
             + (", leave-one-out gallery" if settings["leave_one_out"] else "") + "."]
    lines.append("Percentages with 95 % bootstrap intervals over probes "
                 f"({settings['resamples']} resamples). PSNR/SSIM against HR (n/a for HR).")
    wide = report["protocols"]["wide"]
    if wide["skipped"]:
        lines.append(f"Wide protocol skipped: {wide['skipped']}.")
    header = (f"{'method':<18} {'rank-1 [95% CI]':<21} {'rank-5':>6} "
              f"{f'acc@{threshold:g} [95% CI]':<21} {'unknown':>7} {'margin':>7} {'AUC':>6} "
              f"{'EER':>6} {'TAR@1e-2':>8} {'TAR@1e-3':>8} {'PSNR':>6} {'SSIM':>6}")
    for block in report["results"]:
        role = ("the recogniser DSR was trained against" if block["role"] == TRAINED_AGAINST
                else "HELD-OUT recogniser: DSR never trained against it")
        protocol = block["protocol"]
        detail = (f"gallery = mean HR embedding of the {block['gallery_subjects']} subjects"
                  if protocol == "guide" else
                  f"gallery = {dataset['subjects']} subjects + {wide['distractor_subjects']} "
                  "distractor subjects")
        lines += ["", f"== {block['recogniser']} ({role}) | protocol {protocol}: {detail} ==",
                  header, "-" * len(header)]
        methods = block["methods"]
        for name, m in methods.items():
            psnr = "n/a" if m["psnr"] is None else f"{m['psnr']:.2f}"
            ssim = "n/a" if m["ssim"] is None else f"{m['ssim']:.3f}"
            lines.append(
                f"{name[:18]:<18} {_ci(m, 'rank1'):<21} {_pct(m['rank5']):>6} "
                f"{_ci(m, 'accuracy'):<21} {_pct(m['unknown_rate']):>7} {m['margin']:>7.3f} "
                f"{m['roc_auc']:>6.3f} {_pct(m['eer']):>6} {_pct(m['tar_at_far_1e-2']):>8} "
                f"{_pct(m['tar_at_far_1e-3']):>8} {psnr:>6} {ssim:>6}")
        dsr_names = [n for n in methods if "vs_bicubic" in methods[n]]
        if dsr_names:
            lines.append("vs bicubic (paired bootstrap over the same probes, points, 95 % CI):")
            for name in dsr_names:
                parts = [f"{metric} {_signed(d['difference'])} [{_signed(d['low'])}, "
                         f"{_signed(d['high'])}] {d['verdict']}"
                         for metric, d in methods[name]["vs_bicubic"].items()]
                lines.append(f"  {name}: " + "; ".join(parts))
        lines.append(f"per subject (acc@{threshold:g}), worst first; subjects under "
                     f"{100 * UNDER:.0f} %:")
        for name, m in methods.items():
            shown = ", ".join(f"{s['subject']} {_pct(s['accuracy'])} % ({s['correct']}/"
                              f"{s['probes']})" for s in m["per_subject"][:worst])
            lines.append(f"  {name}: {m['subjects_under_15']} of {len(m['per_subject'])} "
                         f"under {100 * UNDER:.0f} %; worst: {shown}")
        lines.append("most frequent wrong answers (rank-1; 'accepted' = above the threshold):")
        for name, m in methods.items():
            answers = m["wrong_answers"][:wrong]
            shown = "; ".join(
                f"{a['predicted']} x{a['count']} ({a['accepted']} accepted) from "
                + ", ".join(f"{s} x{c}" for s, c in list(a["sources"].items())[:3])
                for a in answers) or "none"
            lines.append(f"  {name}: {shown}")
        if any("sweep" in m for m in methods.values()):
            lines += _format_sweep(methods)
    speed = report["speed"]
    lines += ["", f"Speed: {speed['probes_per_second']:.1f} probes/s on {speed['device']} "
                  f"({speed['probes']} probes x {speed['methods']} methods x "
                  f"{speed['recognisers']} recognisers in {speed['seconds']:.2f} s)."]
    return "\n".join(lines)


def _format_sweep(methods: Mapping[str, Any], step: float = 0.05) -> list[str]:
    names = [n for n in methods if "sweep" in methods[n]]
    lines = ["threshold sweep (correct/wrong/unknown probes):",
             f"  {'threshold':>9} " + " ".join(f"{n[:16]:>16}" for n in names)]
    sweep0 = methods[names[0]]["sweep"]
    for index, t in enumerate(sweep0["thresholds"]):
        if -0.2 - 1e-9 <= t <= 0.9 + 1e-9 and abs(t / step - round(t / step)) < 1e-6:
            cells = []
            for n in names:
                s = methods[n]["sweep"]
                cells.append(f"{s['correct'][index]}/{s['wrong'][index]}/{s['unknown'][index]}")
            lines.append(f"  {t:>9.2f} " + " ".join(f"{c:>16}" for c in cells))
    for n in names:
        s = methods[n]["sweep"]
        lines.append(f"  best threshold for {n}: {s['best_threshold']:.2f} "
                     f"({s['best_correct']} correct)")
    return lines


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per probe × method × recogniser × protocol."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["probe", "subject", "method", "recogniser", "protocol", "predicted",
              "similarity", "correct", "rank", "margin", "psnr", "ssim"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# ============================================================================= command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tune_dsr.evaluate",
        description="Evaluate DSR checkpoints against HR (upper bound) and bicubic (baseline): "
                    "identification, verification, PSNR/SSIM, with bootstrap intervals.")
    add_probe_flags(p, held_out_recognisers=True)
    p.add_argument("--gallery-root", action="append", default=[], metavar="DIR",
                   help="split folder whose subjects join the gallery as distractors (protocol "
                        "'wide'); repeatable (default: train_processed/ and val_processed/ "
                        "beside the dataset)")
    p.add_argument("--leave-one-out", action="store_true",
                   help="enrol each probe's subject without the probe's own HR image")
    p.add_argument("--sweep", action="store_true",
                   help="correct/wrong/unknown per threshold and the best threshold per method")
    p.add_argument("--csv", metavar="FILE",
                   help="write one row per probe, method, recogniser and protocol")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (every number) instead of the tables")
    p.add_argument("--resamples", type=int, default=2000,
                   help="bootstrap resamples for the 95 %% intervals (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_debug_flag(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    check_threshold(args.threshold)
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--resamples", args.resamples,
                                                                     100),
                             ("--max-images", args.max_images, 0)):
        if value < low:
            raise ConfigError(f"{flag} {value} is too small: it must be at least {low}")


def _evaluate(args: argparse.Namespace) -> int:
    _check_args(args)
    split = resolve_split(args.dataset_root)
    device = resolve_device(args.device)
    # Everything that can be refused is read and checked before any network runs.
    dsrs = load_dsrs(args.dsr, device)
    data = load_probe_set(split, dsrs, max_images=args.max_images)
    roots = ([Path(r).expanduser().resolve() for r in args.gallery_root] if args.gallery_root
             else default_distractor_roots(split))
    distractors = [GalleryFaces.scan(root, data.hr_size) for root in dict.fromkeys(roots)]
    _check_distractors(data, distractors)
    recognisers = load_recognisers(args.edgeface, device)

    report = evaluate(data, {d.label: d.model for d in dsrs}, recognisers,
                      distractors=distractors, threshold=args.threshold,
                      leave_one_out=args.leave_one_out, sweep=args.sweep,
                      batch_size=args.batch_size, device=device, resamples=args.resamples,
                      seed=args.seed, per_probe=bool(args.csv),
                      method_info={d.label: d.describe() for d in dsrs})
    rows = report.pop("probes", [])
    report["recognisers"] = [{**r, "spec": spec} for r, spec in
                             zip(report["recognisers"], args.edgeface, strict=True)]
    if args.csv:
        write_csv(args.csv, rows)
    if args.json:
        print(json.dumps(report, indent=1, allow_nan=False))
    else:
        print(format_report(report))
        if args.csv:
            print(f"Wrote {len(rows)} rows to {args.csv}.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
