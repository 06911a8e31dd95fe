"""Export a search's best (or K-th best) trial, or a point of its front, as a complete training
config for the final run.

``python -m tune_dsr.export EXPERIMENT_DIR [--metric M] [--rank K] --out best.json`` then
``python -m tune_dsr.train --config best.json --out final_run``. From a multi-objective search,
``--point N`` takes the N-th point of the front, and ``--maximize M`` / ``--minimize M`` with
``--where 'METRIC>=VALUE'`` the best point on M that meets every condition. The JSON holds every
setting (the guide's defaults plus the tuned values, the ranking metric as ``monitor``, early
stopping back on) and a ``provenance`` block: the experiment, trial, metric, epochs run, and for
a point of a front, the rule that chose it. Which way a metric is better comes from
`tune_dsr.config.METRICS`.
"""

from __future__ import annotations

import argparse
import sys

from tune_dsr.cli import add_debug_flag, check_writable_file, run_cli
from tune_dsr.errors import ConfigError

__all__ = [
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune_dsr.export",
                                description="Write a search's best trial, or a point of its "
                                            "front, as a training config.")
    p.add_argument("experiment", help="the experiment folder (<storage-path>/<name>) or URI")
    p.add_argument("--metric", help="metric to rank trials by, which the final run then monitors "
                                    "(default: the search's objective)")
    p.add_argument("--rank", type=int, default=1, help="1: the best trial, 2: the second, ...")
    front = p.add_argument_group("a point of a multi-objective search's front")
    front.add_argument("--point", type=int, metavar="N",
                       help="the N-th point of the front, best first on the first objective")
    best = front.add_mutually_exclusive_group()
    best.add_argument("--maximize", metavar="M", help="the point best on objective M (one that "
                                                      "is better higher); the final run "
                                                      "monitors M")
    best.add_argument("--minimize", metavar="M", help="the same for an objective better lower")
    front.add_argument("--where", action="append", default=[], metavar="COND",
                       help="a condition the point must meet, e.g. 'val_psnr>=24'; repeatable")
    p.add_argument("--out", required=True, help="JSON file to write (for train --config)")
    add_debug_flag(p)
    return p


def _export(args: argparse.Namespace) -> int:
    from tune_dsr.tuning.experiment import write_json
    from tune_dsr.tuning.export import best_config_document, front_config_document

    check_writable_file(args.out, "--out")
    if args.point is not None or args.maximize or args.minimize or args.where:
        if args.metric or args.rank != 1:
            raise ConfigError("--metric/--rank rank trials by one metric; --point, --maximize, "
                              "--minimize and --where choose a point of a front: give one kind")
        document = front_config_document(
            args.experiment, point=args.point, maximize=args.maximize, minimize=args.minimize,
            where=args.where)
    else:
        document = best_config_document(args.experiment, args.metric, args.rank)
    write_json(args.out, document)
    prov = document["provenance"]
    if "front" in prov:
        values = ", ".join(f"{m} {v:.4f}" for m, v in prov["front"]["values"].items())
        print(f"Wrote {args.out}: trial {prov['trial_id']}, {prov['front']['how']}: {values}; "
              f"the final run monitors {prov['metric']}.")
    else:
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
