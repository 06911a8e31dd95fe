"""Paired VLR/HR face images: validation, in-memory loading and shared augmentation.

A split folder holds ``hr_images/`` and either ``vlr_images/`` or one ``vlr_images_{N}x{N}/`` per
VLR size; a VLR image and its HR counterpart share the same file name, and the subject id is the
file name's prefix before the first ``_`` (``0042_03.png`` -> ``0042``).

Everything that can be wrong with a split (missing folders, unpaired files, unreadable files,
wrong sizes) is found in one pass *before* the images are decoded, and reported together in one
`DataError`: a run over a large set should not die on the third problem after fixing two.

The decoded set lives in memory as uint8 tensors (four times smaller than float32, and plain
tensors and lists only, so it pickles into Ray's object store). The augmentations are
`tune_dsr.training.augment`.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from tune_dsr.config import Config
from tune_dsr.errors import ConfigError, DataError, listing

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DataError",
    "PairedFaces",
    "bicubic_upscale",
    "check_split",
    "decode_faces",
    "find_vlr_dir",
    "inspect_image",
    "load_pair_sets",
    "split_dirs",
    "split_folder",
    "subject_of",
    "to_float",
    "vlr_sizes",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
HR_DIR = "hr_images"
VLR_DIR = "vlr_images"
_VLR_SIZED_RE = re.compile(r"^vlr_images_(\d+)x\1$")
_LIST_LIMIT = 10  # names listed per problem before "and N more"

_FIX_LAYOUT = ("point at a split folder that holds hr_images/ and vlr_images/ (or "
               "vlr_images_NxN/), for example one written by `python -m tune_dsr.synth --out DIR`")
_FIX_PAIRS = ("every VLR image needs an HR image with the same file name, and every HR image a VLR "
              "image: add the missing counterparts or remove the extra files")
_FIX_CORRUPT = ("replace or delete the unreadable files (export them again, or regenerate "
                "synthetic data with `python -m tune_dsr.synth`)")


class _Problem(NamedTuple):
    text: str
    fix: str


def _error(folder: Path, problems: Sequence[_Problem]) -> DataError:
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    lines = [f"{count} with the paired face data in {folder}:"]
    lines += [f"- {p.text}" for p in problems]
    fixes = list(dict.fromkeys(p.fix for p in problems))
    if len(fixes) == 1:
        lines.append(f"How to fix: {fixes[0]}.")
    else:
        lines.append("How to fix:")
        lines += [f"  * {fix}." for fix in fixes]
    return DataError("\n".join(lines), [p.text for p in problems])


# The splits of a data root, in order: DATA/<split>_processed/ (the original project's layout).
SPLITS = ("train", "val", "test")


def split_folder(split: str) -> str:
    """The folder name of a split under a data root: ``test`` -> ``test_processed``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    return f"{split}_processed"


def split_dirs(data_root: str | Path, *splits: str) -> dict[str, str]:
    """``{"<split>_dir": "<data_root>/<split>_processed"}`` for each split, absolute: what a data
    root means to every command (``--data-root``)."""
    root = Path(data_root).expanduser().resolve()
    return {f"{split}_dir": str(root / split_folder(split)) for split in splits}


def subject_of(name: str) -> str:
    """Subject id of a file name: the prefix before the first ``_`` (the stem if there is none)."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem.split("_", 1)[0]


# ----------------------------------------------------------------------------- folders and files

def _vlr_folders(split_dir: Path) -> list[Path]:
    """VLR folders in a split: ``vlr_images/`` first, then ``vlr_images_NxN/`` by size."""
    found = []
    for entry in split_dir.iterdir():
        if entry.is_dir() and (entry.name == VLR_DIR or _VLR_SIZED_RE.match(entry.name)):
            found.append(entry)

    def key(path: Path) -> tuple[int, int]:
        match = _VLR_SIZED_RE.match(path.name)
        return (1, int(match.group(1))) if match else (0, 0)

    return sorted(found, key=key)


def vlr_sizes(split_dir: Path) -> dict[str, int | None]:
    """The split's VLR folders by name, with the size each name promises (None: ``vlr_images``);
    empty for a folder that does not exist."""
    if not split_dir.is_dir():
        return {}
    return {folder.name: _folder_size(folder) for folder in _vlr_folders(split_dir)}


def _folder_size(folder: Path) -> int | None:
    """The size a ``vlr_images_NxN`` folder's name promises; None for ``vlr_images``."""
    match = _VLR_SIZED_RE.match(folder.name)
    return int(match.group(1)) if match else None


def _locate_vlr(split_dir: Path, vlr_size: int | None) -> tuple[Path | None, list[_Problem]]:
    if not split_dir.is_dir():
        return None, [_Problem(f"the split folder {split_dir} does not exist", _FIX_LAYOUT)]
    folders = _vlr_folders(split_dir)
    names = ", ".join(f"{f.name}/" for f in folders)
    if vlr_size is not None:
        sized = split_dir / f"{VLR_DIR}_{vlr_size}x{vlr_size}"
        if sized.is_dir():
            return sized, []
        plain = split_dir / VLR_DIR
        if plain.is_dir():
            return plain, []
        found = f"; found only {names}" if folders else ""
        sizes = [s for s in map(_folder_size, folders) if s is not None]
        fix = (f"pass one of the sizes the data has (vlr_size={' or '.join(map(str, sizes))}) or "
               f"write {vlr_size}x{vlr_size} images into {sized.name}/") if sizes else _FIX_LAYOUT
        return None, [_Problem(f"no VLR folder for vlr_size={vlr_size}: expected {sized.name}/ "
                               f"or {VLR_DIR}/{found}", fix)]
    if not folders:
        return None, [_Problem(f"no VLR folder: expected {VLR_DIR}/ or {VLR_DIR}_NxN/",
                               _FIX_LAYOUT)]
    if len(folders) > 1:
        choices = [str(s) for s in map(_folder_size, folders) if s is not None]
        return None, [_Problem(f"several VLR folders ({names}) and no vlr_size to choose one",
                               f"pass vlr_size (one of {', '.join(choices)}) to pick a folder")]
    return folders[0], []


def find_vlr_dir(split_dir: Path, vlr_size: int | None) -> Path:
    """The VLR folder of a split.

    With `vlr_size`, ``vlr_images_{S}x{S}/`` if present, else ``vlr_images/`` (whose images must
    then all be S×S); without, the only VLR folder there. Raises DataError otherwise, naming the
    folders found (several: pass vlr_size to choose).
    """
    split_dir = Path(split_dir).expanduser().resolve()
    _check_size_arg("vlr_size", vlr_size, allow_none=True)
    folder, problems = _locate_vlr(split_dir, vlr_size)
    if folder is None:
        raise _error(split_dir, problems)
    return folder


def _list_images(folder: Path) -> dict[str, Path]:
    """Image files by file name; anything else is skipped (logged at debug level)."""
    images = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                images[entry.name] = Path(entry.path)
            else:
                logger.debug("ignoring %s: not an image file (%s)", entry.path,
                             "/".join(IMAGE_EXTENSIONS))
    return images


def _check_size_arg(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer"
                         f"{' or None' if allow_none else ''}, but got {name}={value!r}")


_T = TypeVar("_T")
_R = TypeVar("_R")


def _parallel_map(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """`fn` over `items` in a thread pool (PIL releases the GIL while reading and decoding)."""
    if len(items) < 64:
        return [fn(item) for item in items]
    workers = min(16, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tune_dsr-data") as pool:
        return list(pool.map(fn, items))


def inspect_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) from the header, or why the file cannot be read. `verify` checks a PNG's
    chunk checksums without decoding the pixels, which catches truncated files cheaply."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
        return size, None
    except UnidentifiedImageError:
        return None, "is not an image PIL can read (wrong format or not an image at all)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"is corrupt or truncated ({exc})"


# ----------------------------------------------------------------------------- the scan

@dataclass
class _Scan:
    """What one validation pass found: problems, and the pairs to load if there are none."""

    split_dir: Path
    problems: list[_Problem] = field(default_factory=list)
    hr_dir: Path | None = None
    vlr_dir: Path | None = None
    names: list[str] = field(default_factory=list)
    vlr_size: int = 0


def _select(names: list[str], max_images: int) -> list[str]:
    """At most `max_images` names, evenly spaced over the sorted list so that a capped set still
    covers many subjects (the first N names would be a few subjects only)."""
    if max_images <= 0 or len(names) <= max_images:
        return names
    picks = np.linspace(0, len(names) - 1, max_images).round().astype(int)
    return [names[i] for i in picks]


def _size_problems(label: str, sizes: dict[str, tuple[int, int]], expected: tuple[int, int],
                   why: str, fix: str) -> list[_Problem]:
    wrong = [(name, size) for name, size in sizes.items() if size != expected]
    problems = [_Problem(f"{label}/{name} is {w}x{h}, expected {expected[0]}x{expected[1]} "
                         f"({why})", fix) for name, (w, h) in wrong[:_LIST_LIMIT]]
    if len(wrong) > _LIST_LIMIT:
        problems.append(_Problem(f"and {len(wrong) - _LIST_LIMIT} more images in {label}/ are not "
                                 f"{expected[0]}x{expected[1]}", fix))
    return problems


def _scan(split_dir: Path, vlr_size: int | None, hr_size: int, max_images: int = 0) -> _Scan:
    """Find every problem of a split without decoding pixels (headers and checksums only)."""
    scan = _Scan(split_dir)
    if not split_dir.is_dir():
        what = "is a file, not a folder" if split_dir.exists() else "does not exist"
        scan.problems.append(_Problem(f"the split folder {split_dir} {what}", _FIX_LAYOUT))
        return scan
    hr_dir = split_dir / HR_DIR
    if not hr_dir.is_dir():
        scan.problems.append(_Problem(f"no {HR_DIR}/ folder (the {hr_size}x{hr_size} HR images)",
                                      _FIX_LAYOUT))
    vlr_dir, vlr_problems = _locate_vlr(split_dir, vlr_size)
    scan.problems += vlr_problems
    if scan.problems or vlr_dir is None:
        return scan
    scan.hr_dir, scan.vlr_dir = hr_dir, vlr_dir
    hr_label, vlr_label = HR_DIR, vlr_dir.name

    hr_files, vlr_files = _list_images(hr_dir), _list_images(vlr_dir)
    vlr_only = sorted(set(vlr_files) - set(hr_files))
    hr_only = sorted(set(hr_files) - set(vlr_files))
    pairs = sorted(set(vlr_files) & set(hr_files))
    if not pairs:
        scan.problems.append(_Problem(
            f"no VLR/HR pairs: {vlr_label}/ holds {len(vlr_files)} images, {hr_label}/ holds "
            f"{len(hr_files)}, and no file name ({'/'.join(IMAGE_EXTENSIONS)}) is in both",
            _FIX_PAIRS))
    if vlr_only:
        scan.problems.append(_Problem(
            f"{len(vlr_only)} VLR image{'s' if len(vlr_only) > 1 else ''} in {vlr_label}/ "
            f"without an HR counterpart in {hr_label}/: {listing(vlr_only)}", _FIX_PAIRS))
    if hr_only:
        scan.problems.append(_Problem(
            f"{len(hr_only)} HR image{'s' if len(hr_only) > 1 else ''} in {hr_label}/ "
            f"without a VLR counterpart in {vlr_label}/: {listing(hr_only)}", _FIX_PAIRS))

    # Read headers of the images that will be used (all of them unless capped).
    chosen = _select(pairs, max_images)
    paths = [hr_files[n] for n in chosen] + [vlr_files[n] for n in chosen]
    results = _parallel_map(inspect_image, paths)
    hr_sizes: dict[str, tuple[int, int]] = {}
    vlr_sizes: dict[str, tuple[int, int]] = {}
    unreadable: list[_Problem] = []
    for index, (size, why) in enumerate(results):
        name = chosen[index % len(chosen)]
        is_hr = index < len(chosen)
        if why is not None:
            unreadable.append(_Problem(f"{hr_label if is_hr else vlr_label}/{name} {why}",
                                       _FIX_CORRUPT))
        elif size is not None:
            (hr_sizes if is_hr else vlr_sizes)[name] = size
    scan.problems += unreadable

    size_fix = ("resize or regenerate the listed images (all HR images {h}x{h}, all VLR images "
                "one square size), or pass the hr_size / vlr_size the data really has")
    scan.problems += _size_problems(hr_label, hr_sizes, (hr_size, hr_size), "hr_size",
                                    size_fix.format(h=hr_size))
    expected_vlr = vlr_size or _folder_size(vlr_dir)
    why = "vlr_size" if vlr_size else "the folder's name"
    if expected_vlr is None and vlr_sizes:
        # A plain vlr_images/ without vlr_size: the most common size is taken as the intended one.
        (common, _), = collections.Counter(vlr_sizes.values()).most_common(1)
        if common[0] != common[1]:
            scan.problems.append(_Problem(
                f"most images in {vlr_label}/ are {common[0]}x{common[1]}: VLR images must be "
                "square", size_fix.format(h=hr_size)))
        expected_vlr, why = common[0], f"the size of most images in {vlr_label}/"
    if expected_vlr is not None:
        scan.problems += _size_problems(vlr_label, vlr_sizes, (expected_vlr, expected_vlr), why,
                                        size_fix.format(h=hr_size))
        scan.vlr_size = expected_vlr
    scan.names = chosen
    return scan


def check_split(split_dir: Path | str, vlr_size: int | None = None,
                hr_size: int = 112) -> list[str]:
    """Every problem of a split as one line each ([] if it is usable), without decoding pixels.

    Checks the folders, that VLR and HR file names pair up, that each image can be read (header
    and, for PNG, chunk checksums) and that sizes agree: HR hr_size×hr_size, VLR one square size
    (vlr_size if given).
    """
    _check_size_arg("vlr_size", vlr_size, allow_none=True)
    _check_size_arg("hr_size", hr_size)
    return [p.text for p in _scan(Path(split_dir).expanduser().resolve(), vlr_size,
                                  hr_size).problems]


# ----------------------------------------------------------------------------- decoding

def _to_rgb(image: Image.Image) -> Image.Image:
    """Greyscale, 16-bit, palette, CMYK and alpha images as 8-bit RGB (alpha is dropped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Bit depth above 8: scale to 8 bits rather than clip.
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.rint(pixels * (255.0 / top)).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what PIL recommends for palette transparency
    return image if image.mode == "RGB" else image.convert("RGB")


def _decode_into(path: Path, out: np.ndarray) -> str | None:
    """Decode `path` into `out` ([3, h, w] uint8); returns why it failed, or None."""
    try:
        with Image.open(path) as image:
            rgb = _to_rgb(image)
            pixels = np.asarray(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"cannot be decoded ({exc})"
    if pixels.shape != (out.shape[1], out.shape[2], 3):
        return f"decodes to {pixels.shape[1]}x{pixels.shape[0]}, expected {out.shape[2]}x" \
               f"{out.shape[1]}"
    out[...] = pixels.transpose(2, 0, 1)
    return None


def _decode_all(paths: Sequence[Path], size: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    results = _parallel_map(lambda i: _decode_into(paths[i], out[i]), range(len(paths)))
    return out, [(i, why) for i, why in enumerate(results) if why is not None]


def decode_faces(paths: Sequence[Path], size: int) -> Tensor:
    """Square images as uint8 [N, 3, size, size] RGB, decoded as every split is (any mode to
    8-bit RGB, 16-bit scaled, in parallel). DataError names each file that cannot be decoded."""
    images, failed = _decode_all(paths, size)
    if failed:
        raise _error(Path(paths[0]).parent, [_Problem(f"{Path(paths[i]).name} {why}",
                                                      _FIX_CORRUPT) for i, why in failed])
    return torch.from_numpy(images)


# ----------------------------------------------------------------------------- the dataset

class PairedFaces:
    """A split decoded once into memory: ``vlr`` uint8 [N,3,s,s], ``hr`` uint8 [N,3,H,H], the file
    ``names`` and per image ``subjects`` (ids) and ``subject_index`` (into ``unique_subjects``,
    the sorted ids).

    It pickles its images as numpy arrays: Ray's object store hands numpy arrays to every trial
    on a node as read-only views of one shared copy, where pickled tensors would be copied into
    each trial's private memory. Nothing writes to the images (batches are indexed copies).
    """

    def __init__(self, names: Sequence[str], vlr: Tensor, hr: Tensor,
                 split_dir: str | Path = "") -> None:
        for label, images in (("vlr", vlr), ("hr", hr)):
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3 \
                    or images.shape[2] != images.shape[3]:
                raise ValueError(f"{label} must be a uint8 tensor [N, 3, s, s], but got "
                                 f"{images.dtype} {list(images.shape)}")
            if images.shape[0] != len(names):
                raise ValueError(f"{label} holds {images.shape[0]} images for {len(names)} names")
        self.names: list[str] = list(names)
        self.subjects: list[str] = [subject_of(n) for n in self.names]
        self.unique_subjects: list[str] = sorted(set(self.subjects))
        lookup = {s: i for i, s in enumerate(self.unique_subjects)}
        self.subject_index: Tensor = torch.tensor([lookup[s] for s in self.subjects],
                                                  dtype=torch.long)
        self.vlr: Tensor = vlr
        self.hr: Tensor = hr
        self.vlr_size: int = int(vlr.shape[-1])
        self.hr_size: int = int(hr.shape[-1])
        self.split_dir: str = str(split_dir)

    @classmethod
    def load(cls, split_dir: Path | str, vlr_size: int | None = None, hr_size: int = 112,
             max_images: int = 0) -> PairedFaces:
        """Validate a split (every problem in one DataError), then decode it into memory.

        `vlr_size` picks ``vlr_images_{S}x{S}/`` (or requires ``vlr_images/`` to be S×S);
        `max_images` > 0 keeps that many pairs, evenly spaced over the sorted names (only those
        are read). Images are converted to RGB whatever their mode.
        """
        _check_size_arg("vlr_size", vlr_size, allow_none=True)
        _check_size_arg("hr_size", hr_size)
        if not isinstance(max_images, int) or max_images < 0:
            raise ValueError(f"max_images must be an integer >= 0 (0: all), but got "
                             f"max_images={max_images!r}")
        started = time.perf_counter()
        split_path = Path(split_dir).expanduser().resolve()
        scan = _scan(split_path, vlr_size, hr_size, max_images)
        if scan.problems:
            raise _error(split_path, scan.problems)
        if scan.hr_dir is None or scan.vlr_dir is None:  # _scan reports a missing folder
            raise RuntimeError(f"internal error: {split_path} scanned without its folders")
        names = scan.names
        hr, hr_failed = _decode_all([scan.hr_dir / n for n in names], hr_size)
        vlr, vlr_failed = _decode_all([scan.vlr_dir / n for n in names], scan.vlr_size)
        # verify() cannot see every defect (a truncated JPEG, say); decoding reports the rest.
        failed = [_Problem(f"{HR_DIR}/{names[i]} {why}", _FIX_CORRUPT) for i, why in hr_failed]
        failed += [_Problem(f"{scan.vlr_dir.name}/{names[i]} {why}", _FIX_CORRUPT)
                   for i, why in vlr_failed]
        if failed:
            raise _error(split_path, failed)
        dataset = cls(names, torch.from_numpy(vlr), torch.from_numpy(hr), split_path)
        logger.info("loaded %d pairs (%d subjects, VLR %dpx from %s/, HR %dpx) from %s in %.1f s",
                    len(dataset), len(dataset.unique_subjects), dataset.vlr_size,
                    scan.vlr_dir.name, hr_size, split_path, time.perf_counter() - started)
        return dataset

    def __len__(self) -> int:
        return len(self.names)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_faces, (self.names, self.vlr.numpy(), self.hr.numpy(), self.split_dir))

    def __repr__(self) -> str:
        return (f"PairedFaces({len(self)} pairs, {len(self.unique_subjects)} subjects, "
                f"vlr {self.vlr_size}px, hr {self.hr_size}px, from {self.split_dir or '?'})")


def _unpickle_faces(names: list[str], vlr: np.ndarray, hr: np.ndarray,
                    split_dir: str) -> PairedFaces:
    with warnings.catch_warnings():
        # Read-only when they are views of Ray's shared object store; they are never written.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return PairedFaces(names, torch.from_numpy(vlr), torch.from_numpy(hr), split_dir)


# ----------------------------------------------------------------------------- tensors

def bicubic_upscale(vlr: Tensor, size: int) -> Tensor:
    """Bicubic upscaling to `size` x `size`, clamped to [0, 1]: the do-nothing baseline every DSR
    is measured against."""
    return F.interpolate(vlr, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def to_float(images_uint8: Tensor) -> Tensor:
    """uint8 images [B,3,h,w] as float32 in [0, 1] (on the same device)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, but got {images_uint8.dtype}")
    return images_uint8.to(torch.float32).div_(255.0)


def load_pair_sets(config: Config) -> tuple[Config, PairedFaces, PairedFaces]:
    """The training and validation sets a config names, checked before anything trains.

    With ``vlr_size`` unset the VLR size is the data's (its only vlr_images* folder), and the
    returned config names it; otherwise the data must have that size.
    """
    data = config.data
    missing = [name for name in ("train_dir", "val_dir") if not getattr(data, name)]
    if missing:
        raise ConfigError(f"no {' or '.join(missing)} given: pass --train-dir and --val-dir "
                          "(or --data-root), or set them in the --config file")
    train, val = (PairedFaces.load(Path(split).expanduser().resolve(),  # type: ignore[arg-type]
                                   vlr_size=config.model.vlr_size, hr_size=config.model.hr_size,
                                   max_images=data.max_images)
                  for split in (data.train_dir, data.val_dir))
    if train.vlr_size != val.vlr_size:
        raise DataError(f"training VLR images are {train.vlr_size}px, validation ones "
                        f"{val.vlr_size}px; pass --vlr-size to pick one size")
    return config.replace(vlr_size=train.vlr_size), train, val
