"""The probe sets `evaluate` and `compare` share, and what is loaded for them: the split, the DSR
checkpoints, the EdgeFace recognisers and the distractor subjects of the wide gallery.

Everything here reads and checks its input before any network runs, and refuses what cannot be
used with an error that names the file and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_dsr.errors import CheckpointError, ConfigError, DataError, listing

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from tune_dsr.data import PairedFaces
    from tune_dsr.models.checkpoints import DSRCheckpoint

__all__ = [
    "DistractorFaces",
    "LoadedDSR",
    "Probes",
    "check_distractors",
    "default_distractor_roots",
    "load_dsrs",
    "load_probe_set",
    "load_recognisers",
    "open_probes",
    "resolve_split",
]


_SPLIT_FIX = ("pass --test-dir, a split folder that holds hr_images/ and vlr_images/ (or "
              "vlr_images_NxN/), e.g. DATA/test_processed, or --data-root, a root that holds "
              "test_processed/")


def resolve_split(data_root: str | Path | None = None, test_dir: str | Path | None = None
                  ) -> Path:
    """The probes' split folder: `test_dir` itself, or ``test_processed/`` under `data_root`
    (the same data root that ``train`` and ``search`` take). Exactly one must be given; raises
    DataError for a missing, non-folder or empty folder."""
    if (data_root is None) == (test_dir is None):
        given = "both" if data_root is not None else "neither"
        raise ConfigError(f"give the probes with --test-dir DIR or --data-root DATA, one of them "
                          f"({given} given); {_SPLIT_FIX}")
    if data_root is not None:
        from tune_dsr.data import split_dirs

        split = Path(split_dirs(data_root, "test")["test_dir"])
        root = split.parent
        if not split.is_dir():
            what = ("does not exist" if not root.exists() else "is not a folder"
                    if not root.is_dir() else f"holds no {split.name}/")
            raise DataError(f"--data-root {root} {what}; {_SPLIT_FIX}.")
        return split
    path = Path(str(test_dir)).expanduser().resolve()
    if not path.exists():
        raise DataError(f"--test-dir {path} does not exist; {_SPLIT_FIX}.")
    if not path.is_dir():
        raise DataError(f"--test-dir {path} is a file, not a folder; {_SPLIT_FIX}.")
    if not any(path.iterdir()):
        raise DataError(f"--test-dir {path} is empty; {_SPLIT_FIX} (for example one written by "
                        "`python -m tune_dsr.synth --out DATA`).")
    return path


def default_distractor_roots(split: Path) -> list[Path]:
    """``train_processed/`` and ``val_processed/`` beside `split` (other than `split` itself):
    subjects the wide protocol adds to the gallery when no ``--distractor-dir`` is given."""
    from tune_dsr.data import split_dirs

    split = split.resolve()
    beside = [Path(folder) for folder in split_dirs(split.parent, "train", "val").values()]
    return [folder for folder in beside if folder.is_dir() and folder != split]


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
    from tune_dsr.models.checkpoints import build_dsr, read_dsr_checkpoint

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


def load_probe_set(split: Path, dsrs: Sequence[LoadedDSR] = (), vlr_size: int | None = None,
                   max_images: int = 0) -> PairedFaces:
    """The probes: the split's pairs at the DSRs' VLR size (else `vlr_size`, else the only one).

    A DSR trained for another VLR size than the data is refused here (CheckpointError naming
    both sizes), before anything runs; so is a set with fewer than two subjects (DataError).
    """
    from tune_dsr.data import PairedFaces, vlr_sizes

    wanted = dsrs[0].checkpoint.config.model.vlr_size if dsrs else vlr_size
    folders = vlr_sizes(split)
    sized = {size: name for name, size in folders.items() if size is not None}
    pick: int | None = wanted if wanted in sized else None
    if wanted is not None and pick is None and dsrs and sized and "vlr_images" not in folders:
        have = " and ".join(f"{s}x{s}" for s in sorted(sized))
        raise _size_mismatch(dsrs[0], split, have)
    data = PairedFaces.load(split, vlr_size=pick, max_images=max_images)
    if dsrs and data.vlr_size != wanted:
        raise _size_mismatch(dsrs[0], split, f"{data.vlr_size}x{data.vlr_size}")
    if len(data.unique_subjects) < 2:
        fix = ("raise --max-images or leave it out (it keeps evenly spaced names, which can "
               "all fall on one subject)" if max_images else "evaluate a split with more "
               "identities")
        raise DataError(f"{split} gives {len(data.unique_subjects)} subject"
                        + (f" with --max-images {max_images}" if max_images else "")
                        + f"; identification and verification need at least two subjects: {fix}")
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


@dataclass
class DistractorFaces:
    """HR faces of distractor subjects (only HR images are needed), read in batches.

    `scan` checks a split folder's ``hr_images/`` (names, sizes, readability) without decoding
    it; `from_tensor` wraps faces already in memory (uint8 [M, 3, H, H]).
    """

    source: str
    subjects: list[str]
    paths: list[Path] = field(default_factory=list)
    hr: Tensor | None = None
    size: int = 112  # the faces' side (scan checked every file has it)

    @classmethod
    def scan(cls, split: str | Path, hr_size: int = 112) -> DistractorFaces:
        from concurrent.futures import ThreadPoolExecutor

        from tune_dsr.data import IMAGE_EXTENSIONS, inspect_image, subject_of

        folder = Path(split).expanduser().resolve()
        hr_dir = folder / "hr_images"
        if not hr_dir.is_dir():
            what = "does not exist" if not folder.exists() else "holds no hr_images/ folder"
            raise DataError(f"the distractor folder {folder} {what}; pass --distractor-dir folders "
                            "that hold hr_images/ (e.g. DATA/train_processed)")
        paths = sorted(p for p in hr_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise DataError(f"the distractor folder {hr_dir} holds no images "
                            f"({'/'.join(IMAGE_EXTENSIONS)}); pass a folder with HR faces")

        def problem(path: Path) -> str | None:
            size, why = inspect_image(path)
            if size is None:
                return f"{path.name} {why}"
            if size != (hr_size, hr_size):
                return f"{path.name} is {size[0]}x{size[1]}, expected {hr_size}x{hr_size}"
            return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            problems = [p for p in pool.map(problem, paths) if p]
        if problems:
            raise DataError(f"{len(problems)} unusable HR images in the distractor folder "
                            f"{hr_dir}: {listing(problems, sep='; ')}. Replace or remove them, "
                            "or leave "
                            "this --distractor-dir out.", problems)
        return cls(str(folder), [subject_of(p.name) for p in paths], paths=paths, size=hr_size)

    @classmethod
    def from_tensor(cls, hr: Tensor, subjects: Sequence[str], source: str = "memory"
                    ) -> DistractorFaces:
        if hr.shape[0] != len(subjects):
            raise ValueError(f"{hr.shape[0]} faces for {len(subjects)} subject names")
        return cls(source, list(subjects), hr=hr)

    def __len__(self) -> int:
        return len(self.subjects)

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """uint8 [b, 3, H, W] batches, in `subjects` order, decoded as the probes are."""
        from tune_dsr.data import decode_faces

        if self.hr is not None:
            yield from self.hr.split(batch_size)
            return
        for start in range(0, len(self.paths), batch_size):
            yield decode_faces(self.paths[start:start + batch_size], self.size)


def check_distractors(data: PairedFaces, distractors: Sequence[DistractorFaces]) -> None:
    """Refuse distractor folders that hold any of the probes' own subjects."""
    probes = set(data.unique_subjects)
    for faces in distractors:
        shared = sorted(probes & set(faces.subjects))
        if shared:
            raise DataError(
                f"the distractor folder {faces.source} holds {len(shared)} of the probes' own "
                f"subjects ({listing(shared)}); distractors must be other identities, or a "
                "right answer would count as wrong. Pass --distractor-dir folders of other "
                "subjects (the splits are by subject: train_processed/ and val_processed/ beside "
                "a test split).")


@dataclass
class Probes:
    """What `evaluate` and `compare` run on: the split, the device, the DSRs and the probes."""

    split: Path
    device: torch.device
    dsrs: list[LoadedDSR]
    data: PairedFaces


def open_probes(*, dsr_paths: Sequence[str | Path], data_root: str | Path | None = None,
                test_dir: str | Path | None = None, device: str | None = None,
                max_images: int | None = None) -> Probes:
    """The probes' split (`resolve_split`), the device (``auto`` by default), every DSR checkpoint
    (`load_dsrs`) and the probes at the DSRs' VLR size (`load_probe_set`): everything read and
    checked before any network runs."""
    from tune_dsr.hardware import resolve_device

    split = resolve_split(data_root, test_dir)
    resolved = resolve_device(device or "auto")
    dsrs = load_dsrs(dsr_paths, resolved)
    return Probes(split, resolved, dsrs, load_probe_set(split, dsrs, max_images=max_images or 0))
