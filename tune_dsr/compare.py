"""``python -m tune_dsr.compare``: VLR, bicubic, each DSR and HR side by side for a few probes,
as one PNG grid.

    python -m tune_dsr.compare --data-root DATA --dsr runs/a/best.pt \
        --edgeface edgeface_finetuned.pth --count 8 --pick worst --out grid.png

``--pick worst`` / ``best`` shows the probes where the first DSR's face is least / most similar
to HR. The grid is drawn by `tune_dsr.evaluation.grid`; torch is imported only after the
arguments are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tune_dsr import cli
from tune_dsr.cli import check_at_least, check_writable_file

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune_dsr.compare",
        description="Draw VLR, bicubic, each DSR and HR side by side for a few probes, labelled "
                    "with PSNR, similarity to HR and the identified subject, as a PNG grid.")
    cli.add_probe_flags(parser, held_out_recognisers=False)
    p = parser
    p.add_argument("--count", type=int, default=8, help="probes (rows) to show (default 8)")
    p.add_argument("--pick", choices=("random", "worst", "best"), default="random",
                   help="which probes: random (seeded), worst or best by the first DSR's "
                        "similarity to HR (default random)")
    cli.add_seed_flag(p, "seed for --pick random", 0)
    p.add_argument("--out", required=True, help="the PNG file to write")
    cli.add_debug_flag(p)
    return p


def _compare(args: argparse.Namespace) -> int:
    from tune_dsr.evaluation.grid import probe_grid, save_grid
    from tune_dsr.evaluation.probes import load_recognisers, open_probes
    from tune_dsr.evaluation.protocols import check_threshold

    check_threshold(args.threshold)
    check_at_least(args, count=1, batch_size=1, max_images=0)
    check_writable_file(args.out, "--out", ".png")
    probes = open_probes(dsr_paths=args.dsr, data_root=args.data_root, test_dir=args.test_dir,
                         device=args.device, max_images=args.max_images)
    data, dsrs, device = probes.data, probes.dsrs, probes.device
    identity_net = next(iter(load_recognisers([args.edgeface], device).values()))

    grid = probe_grid(data, dsrs, identity_net, count=args.count, pick=args.pick, seed=args.seed,
                      threshold=args.threshold, batch_size=args.batch_size, device=device)
    path = save_grid(grid.image, args.out)
    print(f"Wrote {path}: {len(grid.chosen)} probes x {len(grid.columns) + 2} columns "
          f"(VLR, {', '.join(grid.columns)}, HR), {grid.image.width}x{grid.image.height} px.")
    for row, i in enumerate(grid.chosen, 1):
        detail = (f", cos({dsrs[0].label}, HR) {grid.similarity[i]:.3f}"
                  if grid.similarity is not None else "")
        print(f"  row {row}: {data.names[i]} (subject {data.subjects[i]}){detail}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_cli(build_parser(), _compare, argv)


if __name__ == "__main__":
    sys.exit(main())
