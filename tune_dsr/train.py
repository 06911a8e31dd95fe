"""One DSR training run from the command line: ``python -m tune_dsr.train``.

Settings come from the guide's defaults, then ``--config`` (for example ``best.json`` from
``tune_dsr.export``), then the flags. ``--demo`` makes synthetic faces and uses random networks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_dsr.cli import (
    add_data_flags,
    add_debug_flag,
    add_demo_flag,
    add_device_flag,
    add_max_images_flag,
    add_seed_flag,
    add_set_flag,
    check_writable_dir,
    parse_settings,
    run_cli,
    show_progress,
)

__all__ = [
    "EpochPrinter",
    "build_parser",
    "config_from_args",
    "main",
]

if TYPE_CHECKING:
    from torch import Tensor

    from tune_dsr.config import Config
    from tune_dsr.training.trainer import Trainer



class EpochPrinter:
    """The guide's per-epoch lines, and a progress bar on a terminal (a trainer callback)."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress

    def on_batch_end(self, trainer: Trainer, batch: int, num_batches: int, loss: Tensor) -> None:
        if self.progress:  # reading the loss would wait for the device
            show_progress(trainer.epoch + 1, batch, num_batches, loss)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        def parts(prefix: str) -> str:
            return " ".join(f"{short}:{metrics[f'{prefix}_{term}_loss']:.3g}" for short, term in
                            (("L1", "l1"), ("P", "perceptual"), ("ID", "identity"),
                             ("FM", "feature_match"), ("TV", "tv")))
        print(f"Epoch {int(metrics['epoch']):03d} | train_loss={metrics['train_loss']:.4f} "
              f"({parts('train')}) PSNR={metrics['train_psnr']:.2f}dB", flush=True)
        print(f"          | val_loss={metrics['val_loss']:.4f} ({parts('val')}) "
              f"PSNR={metrics['val_psnr']:.2f}dB SSIM={metrics['val_ssim']:.3f} "
              f"| {metrics['images_per_s']:.1f} img/s {metrics['epoch_seconds']:.1f}s "
              f"lr={metrics['lr']:.3g}", flush=True)
        print(f"          | unseen faces: acc={metrics['val_accuracy']:.1%} "
              f"unknown={metrics['val_unknown_rate']:.1%} (validation subjects), "
              f"rank-1={metrics['val_rank1_full']:.1%} ({metrics['val_rank1_full_gain']:+.1%} vs "
              f"bicubic) margin={metrics['val_margin']:.3f} ({metrics['val_margin_gain']:+.3f}) "
              f"(training subjects in the gallery)", flush=True)
        if trainer.best_epoch == trainer.epoch:
            print(f"  saved new best (by {trainer.monitor} = {metrics[trainer.monitor]:.4f}): "
                  f"val PSNR {metrics['val_psnr']:.2f}dB, ID loss "
                  f"{metrics['val_identity_loss']:.3f}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tune_dsr.train",
        description="Train DSR against a frozen (fine-tuned) EdgeFace: one run.")
    add_data_flags(p, "train", "val")
    p.add_argument("--edgeface", help="EdgeFace checkpoint path, or random:<variant> for a "
                                      "smoke test (default: from --config, else "
                                      "edgeface_finetuned.pth)")
    p.add_argument("--val-edgeface", metavar="PATH",
                   help="a held-out recogniser for validation only, never trained against: "
                        "reported as val_heldout_* every epoch, usable as --set monitor=... "
                        "(default: none)")
    p.add_argument("--perceptual-weights", help="VGG19 weights: imagenet (torch hub cache), a "
                                                "file path, or random (default: imagenet)")
    p.add_argument("--config", help="JSON config (e.g. best.json from tune_dsr.export); flags "
                                    "override it")
    p.add_argument("--epochs", type=int, help="number of epochs (default 100)")
    p.add_argument("--batch-size", type=int, help="batch size (default 16)")
    p.add_argument("--vlr-size", type=int,
                   help="VLR input size in px (default: the only vlr_images* folder there)")
    add_max_images_flag(p)
    p.add_argument("--samples-per-epoch", type=int, metavar="N",
                   help="training pairs drawn afresh each epoch, all persons in play (default "
                        "0: every pair every epoch)")
    add_device_flag(p)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs; 0: off "
                                                "(default 20)")
    add_seed_flag(p, "seed of the initialisation, the batches and the augmentation "
                     "(default: from --config, else 42)", None)
    p.add_argument("--out", required=True, help="output folder: config.json, metrics.jsonl, "
                                                "last.pt (resumable), best.pt")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (same config)")
    add_demo_flag(p, "synthetic faces, random networks, a tiny DSR: about a minute on CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_flag(p, "any other setting, over --config and the flags above")
    add_debug_flag(p)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's config: the guide's defaults, then --config, --demo, the flags, then --set."""
    from tune_dsr import demo
    from tune_dsr.config import Config
    from tune_dsr.data import split_dirs

    config = Config.from_json(args.config) if args.config else Config()
    overrides: dict[str, Any] = {}
    out = Path(args.out).expanduser().resolve()
    if args.demo:
        splits = demo.make_data(out / "demo_data", **demo.TRAIN_DATA)
        overrides.update(demo.TRAIN, train_dir=str(splits["train"]), val_dir=str(splits["val"]))
    if args.data_root:
        overrides.update(split_dirs(args.data_root, "train", "val"))
    # Each flag is named after the setting it sets.
    flags = ("train_dir", "val_dir", "edgeface", "val_edgeface", "perceptual_weights", "epochs",
             "batch_size", "vlr_size", "max_images", "samples_per_epoch", "device", "patience",
             "seed")
    overrides.update({k: getattr(args, k) for k in flags if getattr(args, k) is not None})
    overrides.update(parse_settings(args.set))
    for key in ("train_dir", "val_dir"):
        if overrides.get(key):
            overrides[key] = str(Path(overrides[key]).expanduser().resolve())
    return config.replace(**overrides)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _train, argv)


def _train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = check_writable_dir(args.out, "--out")
    config = config_from_args(args)
    from tune_dsr.training.trainer import TrainingDiverged, prepare_run

    printer = EpochPrinter(progress=not args.no_progress and sys.stderr.isatty())
    trainer = prepare_run(config, out, callbacks=[printer], resume=args.resume)
    config, train_set, val_set = trainer.config, trainer.train_set, trainer.val_set
    print(f"Training DSR ({config.model.width}x{config.model.depth}, {config.model.vlr_size}px -> "
          f"{config.model.hr_size}px) on {len(train_set)} pairs, validating on {len(val_set)}, "
          f"device {trainer.device}, {config.train.epochs} epochs, best epoch by "
          f"{config.train.monitor}", flush=True)
    try:
        result = trainer.fit()
    except TrainingDiverged as exc:
        print(f"training diverged: {exc}. The last good state is in {out / 'last.pt'}.",
              file=sys.stderr)
        return 1
    best = result.best_metrics
    nan = float("nan")
    print(f"Done: {result.epochs_run} epochs in {time.perf_counter() - started:.1f}s"
          f"{' (early stop)' if result.stopped_early else ''}. Best epoch {result.best_epoch} by "
          f"{trainer.monitor}: val PSNR {best.get('val_psnr', nan):.2f}dB, "
          f"ID loss {best.get('val_identity_loss', nan):.3f}, margin gain over bicubic "
          f"{best.get('val_margin_gain', nan):+.4f}. Model: {out / 'best.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
