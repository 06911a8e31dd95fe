"""One epoch of augmented training batches: tune_dsr's in-memory PairedFaces versus decoding the
PNG files with PIL every epoch.

tune_dsr decodes a split once (`PairedFaces.load`) and keeps it as uint8 tensors; an epoch then
only indexes those tensors, converts each batch to float and augments it (`augment_pair`), as
`Trainer._train_epoch` does. The baseline is the usual per-item Dataset over the files, read by a
DataLoader with num_workers=0: every epoch opens and decodes both PNGs of every pair again. Both
end with the same float batches, augmented the same way, on the chosen device.

    python benchmarks/bench_data.py            # ~1 min on 2 CPU cores
    python benchmarks/bench_data.py --quick    # smoke run

The data are synthetic faces written to a temporary folder (`tune_dsr.synth`), 16 px VLR and
112 px HR. The files are fresh in the OS page cache, so the baseline pays for decoding, not for
the disk: on a real disk (or a network file system) it would be slower still.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _util import add_common_flags, interleaved, load_line, machine_lines, median, now, setup, table
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tune_dsr.augment import augment_pair
from tune_dsr.data import PairedFaces, to_float
from tune_dsr.synth import make_synthetic_dataset

VLR_SIZE, HR_SIZE = 16, 112
PROJECTED_IMAGES = 100_000


class PNGPairs(Dataset):
    """The baseline: file names only in memory; each item opens and decodes its two PNGs."""

    def __init__(self, split_dir: Path, names: list[str]) -> None:
        self.hr_dir = split_dir / "hr_images"
        self.vlr_dir = split_dir / f"vlr_images_{VLR_SIZE}x{VLR_SIZE}"
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def _read(path: Path) -> Tensor:
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"))  # a writable copy, as torch wants
        return torch.from_numpy(pixels).permute(2, 0, 1)  # uint8 [3, h, w], like PairedFaces

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        name = self.names[index]
        return self._read(self.vlr_dir / name), self._read(self.hr_dir / name)


def cached_epoch(data: PairedFaces, batch: int, device: torch.device,
                 augment: bool) -> Callable[[], float]:
    """What the trainer does per epoch: shuffle indices, slice the uint8 tensors, float, augment."""
    def run() -> float:
        generator = torch.Generator().manual_seed(0)
        started = now(device)
        for index in torch.randperm(len(data), generator=generator).split(batch):
            vlr = to_float(data.vlr[index]).to(device, non_blocking=True)
            hr = to_float(data.hr[index]).to(device, non_blocking=True)
            if augment:
                vlr, hr = augment_pair(vlr, hr, generator)
        return now(device) - started
    return run


def naive_epoch(files: PNGPairs, batch: int, device: torch.device,
                augment: bool) -> Callable[[], float]:
    def run() -> float:
        generator = torch.Generator().manual_seed(0)
        loader = DataLoader(files, batch_size=batch, shuffle=True, generator=generator,
                            num_workers=0)
        started = now(device)
        for vlr_uint8, hr_uint8 in loader:
            vlr = to_float(vlr_uint8).to(device, non_blocking=True)
            hr = to_float(hr_uint8).to(device, non_blocking=True)
            if augment:
                vlr, hr = augment_pair(vlr, hr, generator)
        return now(device) - started
    return run


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**10:.1f} KiB" if n_bytes < 2**20 else f"{n_bytes / 2**20:.1f} MiB"


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB ({n_bytes / 1e9:.2f} GB)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser)
    parser.add_argument("--batch", type=int, default=16, help="pairs per batch (default 16)")
    parser.add_argument("--subjects", type=int, default=None,
                        help="synthetic subjects (default 60; 10 with --quick); 80%% of them "
                             "form the training split that is read")
    parser.add_argument("--per-subject", type=int, default=8,
                        help="images per subject (default 8)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed epochs per variant, median reported (default 5; 1 with "
                             "--quick)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed epochs per variant first (default 1)")
    args = parser.parse_args(argv)
    subjects = args.subjects or (10 if args.quick else 60)
    per_subject = 4 if args.quick else args.per_subject
    repeats = args.repeats or (1 if args.quick else 5)
    if min(args.batch, subjects, per_subject, repeats) < 1 or args.warmup < 0:
        parser.error("--batch, --subjects, --per-subject and --repeats must be >= 1, "
                     "--warmup >= 0")

    started = time.perf_counter()
    device = setup(args.device, args.threads)
    print("bench_data: one epoch of augmented batches, in-memory uint8 cache vs PIL every epoch")
    for line in machine_lines(device):
        print("  " + line)

    with tempfile.TemporaryDirectory(prefix="tune_dsr_bench_") as tmp:
        t0 = time.perf_counter()
        split = make_synthetic_dataset(Path(tmp), subjects=subjects, per_subject=per_subject,
                                       vlr_sizes=(VLR_SIZE,), hr_size=HR_SIZE)["train"]
        synth_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = PairedFaces.load(split, vlr_size=VLR_SIZE, hr_size=HR_SIZE)
        load_s = time.perf_counter() - t0
        files = PNGPairs(split, data.names)
        png_bytes = sum(os.path.getsize(d / n) for d in (files.hr_dir, files.vlr_dir)
                        for n in data.names)
        n = len(data)
        print(f"  {n} training pairs (VLR {VLR_SIZE} px, HR {HR_SIZE} px), batch {args.batch}, "
              f"augment_pair on {device}; synthesised in {synth_s:.1f} s; warm-up "
              f"{args.warmup}, repeats {repeats} epochs (interleaved), median reported")

        variants = {
            "naive: PIL decode every epoch (DataLoader, 0 workers)": naive_epoch(
                files, args.batch, device, True),
            "tune_dsr: PairedFaces uint8 cache": cached_epoch(data, args.batch, device, True),
            "naive, augmentation off": naive_epoch(files, args.batch, device, False),
            "tune_dsr cache, augmentation off": cached_epoch(data, args.batch, device, False),
        }
        results = interleaved(variants, args.warmup, repeats)

    rows, times = [], {}
    for name, runs in results.items():
        seconds: list[float] = runs  # type: ignore[assignment]
        times[name] = median(seconds)
        rows.append([name, f"{times[name] * 1e3:.1f}",
                     f"{min(seconds) * 1e3:.1f}-{max(seconds) * 1e3:.1f}",
                     f"{n / times[name]:.0f}", f"{times[name] / n * 1e6:.0f}"])
    naive, cached, naive_plain, cached_plain = times.values()

    per_image = (data.vlr.nbytes + data.hr.nbytes) / n
    formula = 3 * (VLR_SIZE**2 + HR_SIZE**2)  # uint8 RGB, one byte per channel
    if per_image != formula:
        raise SystemExit(f"cache holds {per_image} B per pair, expected {formula}")
    memory_rows = [
        ["uint8 cache (what PairedFaces keeps)", _mib(per_image),
         _gib(per_image * PROJECTED_IMAGES)],
        ["same as float32 (if decoded to floats)", _mib(4 * per_image),
         _gib(4 * per_image * PROJECTED_IMAGES)],
        ["PNG files on disk (these synthetic faces)", _mib(png_bytes / n),
         _gib(png_bytes / n * PROJECTED_IMAGES)],
    ]

    print()
    print(table(["variant", "ms/epoch", "min-max ms", "images/s", "µs/image"], rows))
    print()
    print(f"speed-up of the cache over decoding every epoch, with augmentation: "
          f"x{naive / cached:.2f} ({n / naive:.0f} -> {n / cached:.0f} images/s)")
    print(f"  loading alone (augmentation off): x{naive_plain / cached_plain:.1f} "
          f"({n / naive_plain:.0f} -> {n / cached_plain:.0f} images/s)")
    print(f"  augmentation's share of a cached epoch: {(cached - cached_plain) / cached:.0%}; "
          f"PNG decoding per pair: {(naive_plain - cached_plain) / n * 1e6:.0f} µs")
    print(f"one-off PairedFaces.load (check + decode, thread pool): {load_s * 1e3:.0f} ms "
          f"= {load_s / naive_plain:.1f} epochs of decoding every epoch")
    print()
    print(table(["memory per VLR+HR pair", "per pair", f"{PROJECTED_IMAGES:,} pairs"],
                memory_rows))
    print(f"  {load_line()}; wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
