"""Fine-tune EdgeFace on DSR's faces from the command line: ``python -m tune_dsr.finetune``.

    python -m tune_dsr.finetune --data-root DATA --edgeface edgeface_xxs.pt \\
        --dsr runs/final/best.pt --out runs/finetune

The first half of the guide's cycle: the recogniser learns the training persons from their faces
as the DSR renders them (``--dsr bicubic``: the plain upscales, the control that adapts the
recogniser alone), mixed with their HR faces. It writes ``OUT/edgeface_finetuned.pth``, which
``train``, ``search``, ``evaluate`` and ``compare`` take as ``--edgeface``.
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

__all__ = ["EpochPrinter", "build_parser", "config_from_args", "main"]

if TYPE_CHECKING:
    from torch import Tensor

    from tune_dsr.finetuning.config import FinetuneConfig
    from tune_dsr.finetuning.finetuner import Finetuner


class EpochPrinter:
    """One line per epoch, and a progress bar on a terminal (a fine-tuning callback)."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress

    def on_batch_end(self, run: Finetuner, batch: int, num_batches: int, loss: Tensor) -> None:
        if self.progress:  # reading the loss would wait for the device
            show_progress(run.epoch + 1, batch, num_batches, loss)

    def on_epoch_end(self, run: Finetuner, metrics: dict[str, float]) -> None:
        epoch = int(metrics["epoch"])
        training = (f"train_loss={metrics['train_loss']:.4f} head acc "
                    f"{metrics['train_head_accuracy']:.1%} | " if epoch else "as given | ")
        print(f"Epoch {epoch:03d} | {training}validation persons rank-1 "
              f"{metrics['val_rank1_full']:.1%} (bicubic {metrics['val_bicubic_rank1_full']:.1%})"
              f" margin {metrics['val_margin']:.3f} soft {metrics['val_soft_rank1']:.3f} | "
              f"training persons rank-1 {metrics['train_rank1_full']:.1%}", flush=True)
        if run.best_epoch == run.epoch:
            print(f"  kept (by {run.monitor} = {metrics[run.monitor]:.4f})", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tune_dsr.finetune",
        description="Fine-tune EdgeFace on the training persons' faces as a DSR renders them "
                    "(CosFace head, EMA, validation on unseen persons every epoch).")
    add_data_flags(p, "train", "val")
    p.add_argument("--edgeface", help="the EdgeFace checkpoint to fine-tune (required unless "
                                      "--demo or --config names it)")
    p.add_argument("--dsr", help="DSR checkpoint whose faces the recogniser learns (best.pt), "
                                 "or 'bicubic' for the plain upscales (default: bicubic)")
    p.add_argument("--config", help="JSON file of fine-tuning settings; flags override it")
    p.add_argument("--hr-fraction", type=float,
                   help="share of training samples shown as the HR face instead of the "
                        "rendered one (default 0.3)")
    p.add_argument("--epochs", type=int, help="epochs (default 10)")
    p.add_argument("--batch-size", type=int, help="batch size (default 32)")
    p.add_argument("--lr", type=float, help="the backbone's learning rate (default 5e-5)")
    p.add_argument("--freeze-stages", type=int,
                   help="leading blocks kept as they are (EdgeNeXt: stem and stages; default 0)")
    p.add_argument("--vlr-size", type=int,
                   help="VLR input size in px (default: the DSR's, or the data's only one)")
    add_max_images_flag(p)
    add_device_flag(p)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs; 0: off "
                                                "(default 0)")
    add_seed_flag(p, "seed of the batches, the HR/rendered draws and the flips (default 0)",
                  None)
    p.add_argument("--out", required=True,
                   help="output folder: edgeface_finetuned.pth (the kept epoch), config.json, "
                        "metrics.jsonl, last.pt (resumable), TensorBoard events")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_demo_flag(p, "synthetic faces, a random EdgeFace and a random DSR: seconds on CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_flag(p, "any other fine-tuning setting (margin, scale, head_lr, weight_decay, "
                    "warmup_epochs, grad_clip, ema_decay, monitor, ...)")
    add_debug_flag(p)
    return p


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The defaults, then --config, --demo, the flags, then --set."""
    from tune_dsr import demo
    from tune_dsr.data import split_dirs
    from tune_dsr.finetuning.config import FinetuneConfig

    config = FinetuneConfig.from_json(args.config) if args.config else FinetuneConfig()
    overrides: dict[str, Any] = {}
    out = Path(args.out).expanduser().resolve()
    if args.demo:
        splits = demo.make_data(out / "demo_data", **demo.TRAIN_DATA)
        overrides.update(demo.FINETUNE, train_dir=str(splits["train"]),
                         val_dir=str(splits["val"]))
        if args.dsr is None:
            overrides["dsr"] = str(demo.random_dsr(out / "demo_dsr" / "best.pt"))
    elif not (args.edgeface or args.config):
        from tune_dsr.errors import ConfigError

        raise ConfigError("no EdgeFace to fine-tune: pass --edgeface (e.g. edgeface_xxs.pt), or "
                          "--demo for a smoke test")
    if args.data_root:
        overrides.update(split_dirs(args.data_root, "train", "val"))
    flags = ("train_dir", "val_dir", "edgeface", "dsr", "hr_fraction", "epochs", "batch_size",
             "lr", "freeze_stages", "vlr_size", "max_images", "device", "patience", "seed")
    overrides.update({k: getattr(args, k) for k in flags if getattr(args, k) is not None})
    overrides.update(parse_settings(args.set))
    for key in ("train_dir", "val_dir", "edgeface", "dsr"):
        value = overrides.get(key)
        if value and not (key == "dsr" and value == "bicubic") and not value.startswith(
                "random:"):
            overrides[key] = str(Path(value).expanduser().resolve())
    return config.replace(**overrides)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _finetune, argv)


def _finetune(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = check_writable_dir(args.out, "--out")
    from tune_dsr.finetuning.finetuner import FINETUNED_FILE, check_out_dir, prepare_finetune

    check_out_dir(out, args.resume)  # before --demo writes its faces there
    config = config_from_args(args)
    printer = EpochPrinter(progress=not args.no_progress and sys.stderr.isatty())
    run = prepare_finetune(config, out, callbacks=[printer], resume=args.resume)
    print(f"Fine-tuning {run.backbone.variant} ({len(run.trainable)} trainable tensors, "
          f"{config.freeze_stages} blocks frozen) on {len(run.train_set)} faces of "
          f"{len(run.train_set.unique_subjects)} persons as {run.provenance['dsr']} renders them "
          f"({config.hr_fraction:.0%} shown as HR), validating on {len(run.val_set)} faces of "
          f"{len(run.val_set.unique_subjects)} persons, device {run.device}, {config.epochs} "
          f"epochs, kept epoch by {config.monitor}", flush=True)
    result = run.fit()
    best = result.best_metrics
    print(f"Done: {result.epochs_run} epochs in {time.perf_counter() - started:.1f}s"
          f"{' (early stop)' if result.stopped_early else ''}. Kept epoch {result.best_epoch}"
          f"{' (the recogniser as given: no epoch did better)' if result.best_epoch == 0 else ''}"
          f": validation persons rank-1 {best['val_rank1_full']:.1%} (epoch 0: "
          f"{result.history[0]['val_rank1_full']:.1%}). Recogniser: {out / FINETUNED_FILE} "
          f"(pass it as --edgeface)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
