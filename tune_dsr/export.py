"""Export a search's best (or K-th best) trial as a complete training config for the final run.

``python -m tune_dsr.export EXPERIMENT_DIR [--metric M] [--rank K] --out best.json`` then
``python -m tune_dsr.train --config best.json --out final_run``. The JSON holds every setting (the
guide's defaults plus the tuned values, the search's objective as ``monitor``, early stopping back
on) and a ``provenance`` block: the experiment, trial, metric, epochs run. Which way a metric is
better comes from `tune_dsr.config.METRICS`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from tune_dsr.cli import add_debug_flag, run_cli
from tune_dsr.errors import ConfigError
from tune_dsr.experiment import write_json


def best_config_document(experiment: str, metric: str | None = None, rank: int = 1
                         ) -> dict[str, Any]:
    """The full config of the `rank`-th best configuration by `metric` (default: the search's
    objective).

    By the objective, the confirmed configurations come first, by the mean of their
    confirmation runs (``--confirm``), then the other trials by their best value; by another
    metric, every trial by its best value. The config's ``monitor`` is that metric, so the final
    run keeps the epoch the search would have picked; its early-stopping patience is the
    preset's (the guide's 20 unless the preset sets one). The provenance holds the verdict: did
    the winner clearly beat bicubic upscaling, and the pixel-only anchor?
    """
    from tune_dsr.analysis import epochs_saved, load_experiment
    from tune_dsr.config import Config

    exp = load_experiment(experiment, metric)  # a wrong folder or metric is reported first
    metric, mode = exp.metric, exp.mode
    ranked = exp.trials[exp.trials["value"].notna()]
    confirmed = exp.confirmations()
    if exp.plan is None or metric != exp.plan.metric:
        confirmed = confirmed.iloc[0:0]  # confirmation runs rank by the search's objective only
    order = [*confirmed.index, *[t for t in ranked["trial_id"] if t not in confirmed.index]]
    if not order:
        raise ConfigError(f"no trial of {exp.path} has finished an epoch with a {metric} value "
                          "yet: nothing to export; wait for the search, or --resume it")
    if rank < 1 or rank > len(order):
        raise ConfigError(f"--rank {rank}: the experiment has {len(order)} trial(s) with a "
                          f"{metric} value; give a rank from 1 to {len(order)}")
    trial_id = order[rank - 1]
    row = ranked[ranked["trial_id"] == trial_id].iloc[0]
    # The trial's own params.json, not the frame: pandas turns bools and ints into numpy types.
    trial = exp.trial(trial_id)
    config = Config.from_dict(trial.config).replace(monitor=metric)
    searched_keys = exp.searched
    saved = epochs_saved(exp.records, exp.patience)
    document: dict[str, Any] = config.to_dict()
    document["metrics"] = {k[len("metric/"):]: float(v) for k, v in row.items()
                           if k.startswith("metric/") and not _missing(v)}
    confirm_epochs = sum(r.epochs_run for r in exp.confirm_records)
    document["provenance"] = {
        "experiment": exp.path, "trial_id": trial_id, "anchor": trial.anchor, "metric": metric,
        "mode": mode, "value": float(row["value"]), "rank": rank,
        "best_epoch": int(row["best_epoch"]), "epochs_run": int(row["epochs_run"]),
        "checkpoint": row["checkpoint"], "best_model": f"{trial.path}/best.pt",
        "searched": {k: trial.config[k] for k in searched_keys if k in trial.config},
        "trials": saved["trials"], "trials_pruned": int(exp.trials["stopped_early"].sum()),
        "epochs_total": saved["epochs_run"], "epochs_full": saved["epochs_full"],
        "epochs_saved_by_patience": saved["saved_by_patience"],
        "epochs_saved_by_asha": saved["saved_by_asha"], "confirm_epochs": confirm_epochs,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if trial_id in confirmed.index:
        entry = confirmed.loc[trial_id]
        document["provenance"]["confirmed"] = {
            "runs": int(entry["runs"]), "values": [float(v) for v in entry["values"]],
            "mean": float(entry["mean"]), "low": _number(entry["low"]),
            "high": _number(entry["high"])}
    if rank == 1 and metric == exp.metric and exp.plan is not None:
        verdict = exp.verdict()
        document["provenance"]["verdict"] = verdict.text
        document["provenance"]["beats_bicubic"] = verdict.beats_bicubic
        document["provenance"]["beats_pixel_only"] = verdict.beats_pixel_only
    return document


def _number(value: Any) -> float | None:
    """A float for JSON: NaN (no interval from one run) as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


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
