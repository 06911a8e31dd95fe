"""Export a search's best (or K-th best) trial as a complete training config for the final run.

``python -m tune_dsr.export EXPERIMENT_DIR [--metric M] [--rank K] --out best.json`` then
``python -m tune_dsr.train --config best.json --out final_run``. The JSON holds every setting (the
guide's defaults plus the tuned values, the search's objective as ``monitor``, early stopping back
on) and a ``provenance`` block: the experiment, trial, metric, epochs run. Which way a metric is
better comes from `tune_dsr.config.METRICS`.
"""

from __future__ import annotations

import argparse
import sys

from tune_dsr.cli import add_debug_flag, run_cli

__all__ = [
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune_dsr.export",
                                description="Write a search's best trial as a training config.")
    p.add_argument("experiment", help="the experiment folder (<storage-path>/<name>) or URI")
    p.add_argument("--metric", help="metric to rank trials by, which the final run then monitors "
                                    "(default: the search's objective)")
    p.add_argument("--rank", type=int, default=1, help="1: the best trial, 2: the second, ...")
    p.add_argument("--out", required=True, help="JSON file to write (for train --config)")
    add_debug_flag(p)
    return p


def _export(args: argparse.Namespace) -> int:
    from tune_dsr.tuning.experiment import write_json
    from tune_dsr.tuning.export import best_config_document

    document = best_config_document(args.experiment, args.metric, args.rank)
    write_json(args.out, document)
    prov = document["provenance"]
    print(f"Wrote {args.out}: trial {prov['trial_id']} (rank {prov['rank']}), {prov['mode']} "
          f"{prov['metric']} = {prov['value']:.4f} at epoch {prov['best_epoch']} of "
          f"{prov['epochs_run']} run.")
    if "verdict" in prov:
        print(prov["verdict"])
    print(f"Final run: python -m tune_dsr.train --config {args.out} --out final_run")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _export, argv)


if __name__ == "__main__":
    sys.exit(main())
