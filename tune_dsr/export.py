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
import time
from typing import Any

from tune_dsr.cli import add_debug_flag, run_cli
from tune_dsr.errors import ConfigError
from tune_dsr.experiment import SearchPlan, write_json


def best_config_document(experiment: str, metric: str | None = None, rank: int = 1
                         ) -> dict[str, Any]:
    """The full config of the `rank`-th best trial by `metric` (default: the search's objective).

    The config's ``monitor`` is that metric, so the final run keeps the epoch the search would
    have picked; its early-stopping patience is the preset's (the guide's 20 unless the preset
    sets one).
    """
    from tune_dsr.analysis import epochs_saved, load_trials, trials_frame
    from tune_dsr.config import Config, direction

    trials = load_trials(experiment)  # a wrong folder is reported before anything else
    plan = SearchPlan.find(experiment)
    if metric is None:
        if plan is None:
            raise ConfigError(f"{experiment} has no search plan to take the objective from; "
                              "pass --metric")
        metric = plan.metric
    mode = direction(metric)
    frame = trials_frame(trials, metric, mode)
    ranked = frame[frame["value"].notna()]
    if rank < 1 or rank > len(ranked):
        raise ConfigError(f"--rank {rank}: the experiment has {len(ranked)} trial(s) with a "
                          f"{metric} value; give a rank from 1 to {len(ranked)}")
    row = ranked.iloc[rank - 1]
    # The trial's own params.json, not the frame: pandas turns bools and ints into numpy types.
    trial = next(t for t in trials if t.trial_id == row["trial_id"])
    config = Config.from_dict(trial.config).replace(monitor=metric)
    if plan is not None:
        from search_spaces import load_preset

        searched_keys = [k for k in load_preset(plan.space).distributions()
                         if k not in plan.pins]
    elif len(frame) > 1:  # a plain Ray Tune experiment: what varied between trials
        searched_keys = [k for k in trial.config if frame[f"config/{k}"].astype(str).nunique() > 1]
    else:
        searched_keys = []
    saved = epochs_saved(trials)
    document: dict[str, Any] = config.to_dict()
    document["metrics"] = {k[len("metric/"):]: float(v) for k, v in row.items()
                           if k.startswith("metric/") and not _missing(v)}
    document["provenance"] = {
        "experiment": experiment, "trial_id": row["trial_id"], "metric": metric, "mode": mode,
        "value": float(row["value"]), "rank": rank, "best_epoch": int(row["best_epoch"]),
        "epochs_run": int(row["epochs_run"]), "checkpoint": row["checkpoint"],
        "best_model": f"{trial.path}/best.pt",
        "searched": {k: trial.config[k] for k in searched_keys if k in trial.config},
        "trials": saved["trials"], "trials_pruned": int(frame["stopped_early"].sum()),
        "epochs_total": saved["epochs_run"], "epochs_full": saved["epochs_full"],
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return document


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
          f"{prov['epochs_run']} run.\nFinal run: python -m tune_dsr.train --config {args.out} "
          "--out final_run")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _export, argv)


if __name__ == "__main__":
    sys.exit(main())
