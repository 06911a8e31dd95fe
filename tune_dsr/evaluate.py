"""``python -m tune_dsr.evaluate``: DSR checkpoints against HR (the upper bound) and bicubic
upscaling (the baseline), as the field reports face recognition after super-resolution.

    python -m tune_dsr.evaluate --data-root DATA --dsr runs/a/best.pt \
        --edgeface edgeface_finetuned.pth [--edgeface held_out.pt ...]

The protocols and figures are described in `tune_dsr.evaluation.protocols`; the probes, DSRs
and recognisers are loaded by `tune_dsr.evaluation.probes`. torch is imported only after the
arguments are parsed, so ``--help`` and bad flags answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tune_dsr.cli import (
    add_debug_flag,
    add_probe_flags,
    add_seed_flag,
    check_at_least,
    check_writable_file,
    run_cli,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tune_dsr.evaluate",
        description="Evaluate DSR checkpoints against HR (upper bound) and bicubic (baseline): "
                    "identification, verification, PSNR/SSIM, with bootstrap intervals.")
    add_probe_flags(p, held_out_recognisers=True)
    p.add_argument("--distractor-dir", action="append", default=[], metavar="DIR",
                   help="a split folder whose subjects join the gallery as distractors "
                        "(protocol 'wide'); repeatable (default: train_processed/ and "
                        "val_processed/ beside the probes' split)")
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
    add_seed_flag(p, "bootstrap seed", 0)
    add_debug_flag(p)
    return p


def _evaluate(args: argparse.Namespace) -> int:
    from tune_dsr.evaluation.probes import (
        DistractorFaces,
        check_distractors,
        default_distractor_roots,
        load_recognisers,
        open_probes,
    )
    from tune_dsr.evaluation.protocols import check_threshold, evaluate_dsrs
    from tune_dsr.evaluation.report import format_report, write_csv

    # Everything that can be refused is read and checked before any network runs.
    check_threshold(args.threshold)
    check_at_least(args, batch_size=1, resamples=100, max_images=0)
    if args.csv:
        check_writable_file(args.csv, "--csv", ".csv")
    probes = open_probes(dsr_paths=args.dsr, data_root=args.data_root, test_dir=args.test_dir,
                         device=args.device, max_images=args.max_images)
    data, dsrs, device = probes.data, probes.dsrs, probes.device
    roots = ([Path(r).expanduser().resolve() for r in args.distractor_dir]
             if args.distractor_dir else default_distractor_roots(probes.split))
    distractors = [DistractorFaces.scan(root, data.hr_size) for root in dict.fromkeys(roots)]
    check_distractors(data, distractors)
    recognisers = load_recognisers(args.edgeface, device)

    report = evaluate_dsrs(data, {d.label: d.model for d in dsrs}, recognisers,
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
