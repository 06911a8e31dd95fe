"""One cycle of the guide from the command line: ``python -m tune_dsr.cycle``.

    python -m tune_dsr.cycle --data-root DATA --vlr-size 8 --edgeface edgeface_xxs.pt \\
        --config search/best.json --held-out edgeface_xs.pt --out runs/cycle1

Stage 1 trains DSR with the settings (or takes ``--dsr``), stage 2 fine-tunes EdgeFace on its
faces (and, as the control, on bicubic upscales), stage 3 retrains DSR with the same settings
against the fine-tuned EdgeFace, stage 4 evaluates bicubic and both DSRs on the test persons
under every recogniser. ``--resume`` carries an interrupted cycle on; finished stages are never
run again. The stages are described in `tune_dsr.cycling.cycle`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tune_dsr.cli import (
    add_debug_flag,
    add_demo_flag,
    add_device_flag,
    check_writable_dir,
    parse_settings,
    run_cli,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tune_dsr.cycle",
        description="One cycle: DSR, EdgeFace fine-tuned on its faces, DSR retrained against it, "
                    "and the test persons read by every recogniser.")
    p.add_argument("--data-root", metavar="DATA",
                   help="a data root with train_processed/, val_processed/ and test_processed/")
    p.add_argument("--vlr-size", type=int, help="VLR size in px (default: the DSR's, or the "
                                                "data's only one)")
    p.add_argument("--edgeface", help="the original EdgeFace checkpoint (stage 1 trains against "
                                      "it, stage 2 fine-tunes it)")
    p.add_argument("--held-out", action="extend", nargs="+", default=[], metavar="PATH",
                   help="recognisers neither stage trains or fine-tunes, read in stage 4")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", help="the DSR's training settings (a search's best.json), "
                                         "for stages 1 and 3")
    source.add_argument("--dsr", help="an existing stage-1 DSR (best.pt): stage 1 is not "
                                      "trained, stage 3 reuses its settings")
    p.add_argument("--epochs", type=int, help="DSR training epochs in stages 1 and 3 (default: "
                                              "the settings')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a DSR training setting for stages 1 and 3; repeatable")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default 10)")
    p.add_argument("--hr-fraction", type=float,
                   help="share of fine-tuning samples shown as HR faces (default 0.3)")
    p.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a fine-tuning setting (lr, margin, freeze_stages, ...); repeatable")
    p.add_argument("--no-control", action="store_true",
                   help="skip the control (EdgeFace fine-tuned on bicubic upscales)")
    add_device_flag(p)
    p.add_argument("--resamples", type=int, default=4000,
                   help="bootstrap resamples of the intervals (default 4000)")
    p.add_argument("--out", required=True, help="the cycle's folder: cycle.json and one "
                                                "sub-folder per stage")
    p.add_argument("--resume", action="store_true",
                   help="carry on the cycle in --out; finished stages are not run again")
    add_demo_flag(p, "synthetic faces, random networks, tiny DSRs: about a minute on CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(p)
    return p


def _plan(args: argparse.Namespace, out: Path) -> Any:
    from tune_dsr import demo
    from tune_dsr.config import Config
    from tune_dsr.cycling.cycle import plan_cycle
    from tune_dsr.errors import ConfigError

    settings: dict[str, Any] = {}
    finetune: dict[str, Any] = {}
    data_root, edgeface, config = args.data_root, args.edgeface, None
    if args.demo:
        if not args.resume and (out / "cycle.json").exists():
            raise ConfigError(f"--out {out} already holds a cycle; pass --resume to carry it on, "
                              "or another --out (nothing was changed)")
        data_root = data_root or str(demo.make_data(out / "demo_data",
                                                    **demo.TRAIN_DATA)["train"].parent)
        edgeface = edgeface or demo.RANDOM_NETWORKS["edgeface"]
        settings.update({**demo.TRAIN, "epochs": 2})
        finetune.update({k: v for k, v in demo.FINETUNE.items() if k != "edgeface"})
    missing = [flag for flag, value in (("--data-root", data_root), ("--edgeface", edgeface))
               if not value]
    if missing:
        raise ConfigError(f"no {' or '.join(missing)} given; pass them, or --demo for a smoke "
                          "test")
    if args.config:
        config = Config.from_json(args.config)
    elif args.demo and not args.dsr:
        config = Config()
    settings.update(parse_settings(args.set))
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if settings:
        if config is None:
            from tune_dsr.models.checkpoints import read_dsr_checkpoint

            config = read_dsr_checkpoint(args.dsr).config if args.dsr else Config()
        config = config.replace(**settings)
    finetune.update(parse_settings(args.finetune_set))
    if args.finetune_epochs is not None:
        finetune["epochs"] = args.finetune_epochs
    if args.hr_fraction is not None:
        finetune["hr_fraction"] = args.hr_fraction
    return plan_cycle(out=out, data_root=data_root, edgeface=edgeface, config=config,
                      dsr=args.dsr, held_out=args.held_out, finetune=finetune,
                      vlr_size=args.vlr_size, control=not args.no_control,
                      device=args.device or "auto", resamples=args.resamples,
                      resume=args.resume)


def _cycle(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = check_writable_dir(args.out, "--out")
    plan = _plan(args, out)
    from tune_dsr.cycling.cycle import Callbacks, format_summary, run_cycle
    from tune_dsr.finetune import EpochPrinter as FinetunePrinter
    from tune_dsr.train import EpochPrinter as TrainPrinter

    progress = not args.no_progress and sys.stderr.isatty()
    print(f"Cycle {plan.identity} in {plan.out}: {plan.data_root} at {plan.vlr_size} px, "
          f"EdgeFace {plan.edgeface}"
          + (f", held out {', '.join(plan.held_out)}" if plan.held_out else "")
          + (f"; stage-1 DSR given: {plan.given_dsr}" if plan.given_dsr else "")
          + ("" if plan.control else "; no control"), flush=True)
    summary = run_cycle(plan, Callbacks(dsr=[TrainPrinter(progress)],
                                        finetune=[FinetunePrinter(progress)]))
    print()
    print(format_summary(summary))
    print(f"Done in {time.perf_counter() - started:.0f} s. Report: "
          f"{plan.stage_dir('4_evaluate') / 'report.json'}; fine-tuned EdgeFace: "
          f"{plan.stage_dir('2_finetune') / 'edgeface_finetuned.pth'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _cycle, argv)


if __name__ == "__main__":
    sys.exit(main())
