"""``python -m tune_dsr.synth``: write procedurally drawn synthetic faces as train/val/test splits.

    python -m tune_dsr.synth --out data/synth --subjects 24 --per-subject 6 --vlr-size 16

The faces and the layout are described in `tune_dsr.synthetic`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tune_dsr.cli import add_debug_flag, add_demo_flag, add_seed_flag, check_writable_dir, run_cli

__all__ = ["build_parser", "main"]

DEMO = {"subjects": 3, "per_subject": 2}  # one subject per split, two images each


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune_dsr.synth",
        description="Write procedurally drawn synthetic faces as train/val/test splits "
                    "(hr_images/ and vlr_images_SxS/), split by subject.")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder to write train_processed/, val_processed/, test_processed/ "
                             "into (created if missing)")
    parser.add_argument("--subjects", type=int, default=24,
                        help="number of identities, at least 3 (default: 24)")
    parser.add_argument("--per-subject", type=int, default=6,
                        help="images per identity (default: 6)")
    parser.add_argument("--vlr-size", type=int, action="append", dest="vlr_sizes",
                        metavar="S",
                        help="VLR image size in pixels; repeat for several sizes, e.g. "
                             "--vlr-size 16 --vlr-size 32 (default: 16)")
    parser.add_argument("--hr-size", type=int, default=112,
                        help="HR image size in pixels (default: 112, EdgeFace's input)")
    add_seed_flag(parser, "random seed; the same seed writes the same files", 0)
    add_demo_flag(parser, f"a tiny set ({DEMO['subjects']} subjects x {DEMO['per_subject']} "
                          "images) to check the set-up quickly")
    add_debug_flag(parser)
    return parser


def _synth(args: argparse.Namespace) -> int:
    from tune_dsr.synthetic import make_synthetic_dataset

    check_writable_dir(args.out, "--out")
    sizes = tuple(args.vlr_sizes or (16,))
    subjects, per_subject = ((DEMO["subjects"], DEMO["per_subject"]) if args.demo
                             else (args.subjects, args.per_subject))
    splits = make_synthetic_dataset(args.out, subjects=subjects, per_subject=per_subject,
                                    vlr_sizes=sizes, hr_size=args.hr_size, seed=args.seed)
    vlr_text = ", ".join(f"vlr_images_{s}x{s}" for s in sorted(set(sizes)))
    for split, split_dir in splits.items():
        names = sorted((split_dir / "hr_images").glob("*.png"))
        n_subjects = len({p.name.split("_", 1)[0] for p in names})
        print(f"{split:5s}: {n_subjects:4d} subjects, {len(names):5d} images -> {split_dir} "
              f"(hr_images {args.hr_size}x{args.hr_size}; {vlr_text})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _synth, argv)


if __name__ == "__main__":
    sys.exit(main())
