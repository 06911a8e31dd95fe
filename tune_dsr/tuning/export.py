"""A search's configuration as a complete training config for the final run.

`best_config_document` ranks the experiment's configurations (the confirmed ones first, by the mean
of their confirmation runs), and returns the chosen one's config: the guide's defaults plus the
tuned values, the ranking metric as ``monitor``, early stopping back on, and a ``provenance``
block (experiment, trial, metric, epochs, what was searched, the verdict).
"""

from __future__ import annotations

import math
import time
from typing import Any

from tune_dsr.errors import ConfigError

__all__ = ["best_config_document"]


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
    from tune_dsr.config import Config
    from tune_dsr.tuning.analysis import epochs_saved, load_experiment

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
