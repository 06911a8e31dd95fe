"""A search's configuration as a complete training config for the final run.

`best_config_document` takes the `rank`-th configuration of the experiment's one ranking,
`Experiment.top` (the confirmed configurations first, by the mean of their confirmation runs), and
returns its config: the guide's defaults plus the tuned values, the ranking metric as
``monitor``, early stopping back on, and a ``provenance`` block (experiment, trial, metric,
epochs, what was searched, the verdict).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from tune_dsr.errors import ConfigError

__all__ = ["best_config_document", "front_config_document"]


def best_config_document(experiment: str, metric: str | None = None, rank: int = 1
                         ) -> dict[str, Any]:
    """The full config of the `rank`-th best configuration by `metric` (default: the search's
    objective), as `Experiment.top` ranks them.

    By the objective, the confirmed configurations come first, by the mean of their
    confirmation runs (``--confirm``), then the other trials by their best value; by another
    metric, every trial by its best value. The config's ``monitor`` is that metric, so the final
    run keeps the epoch the search would have picked; its early-stopping patience is the
    preset's (the guide's 20 unless the preset sets one). The provenance holds the verdict: did
    the winner clearly beat bicubic upscaling, and the pixel-only anchor? ConfigError when no
    trial has a value yet, or for a rank outside the ranking.
    """
    from tune_dsr.tuning.analysis import load_experiment

    exp = load_experiment(experiment, metric)  # a wrong folder or metric is reported first
    metric, mode = exp.metric, exp.mode
    ranked = exp.top(None)
    if ranked.empty:
        failed = int(exp.trials["error"].astype(bool).sum())
        so_far = (f"{len(exp.trials)} trial(s) so far, {failed} failed" if len(exp.trials)
                  else "no trial has started")
        what_to_do = ("every trial failed: read their error.txt, fix the cause and search again"
                      if len(exp.trials) and failed == len(exp.trials) else
                      "wait for the search's first epochs and export again, or continue an "
                      "interrupted search with python -m tune_dsr.search --resume")
        raise ConfigError(f"nothing to export yet from {exp.path}: no trial has finished an "
                          f"epoch with a {metric} value ({so_far}); {what_to_do}")
    if not 1 <= rank <= len(ranked):
        valid = "rank 1" if len(ranked) == 1 else f"a rank from 1 to {len(ranked)}"
        raise ConfigError(f"--rank {rank}: {exp.path} has {len(ranked)} configuration(s) with a "
                          f"{metric} value; give {valid}")
    document = _document(exp, ranked.loc[rank], metric, mode, rank)
    if rank == 1 and exp.plan is not None and not exp.objectives:
        verdict = exp.verdict()  # of `winner`: rank 1 of the same ranking
        document["provenance"]["verdict"] = verdict.text
        document["provenance"]["beats_bicubic"] = verdict.beats_bicubic
        document["provenance"]["beats_pixel_only"] = verdict.beats_pixel_only
    return document


def front_config_document(experiment: str, *, point: int | None = None,
                          maximize: str | None = None, minimize: str | None = None,
                          where: Sequence[str] = ()) -> dict[str, Any]:
    """The full config of one point of a multi-objective search's front: the `point`-th (best
    first on the first objective), or the best on `maximize` / `minimize` among the points that
    meet every condition of `where` (``"val_psnr>=24"``). The config monitors the metric the
    rule optimises (the first objective for a `point`); the provenance says how the point was
    chosen and its objectives. ConfigError for a single-objective search, a metric that is not
    an objective or goes the other way, and a rule no point meets (naming the closest)."""
    from tune_dsr.config import direction
    from tune_dsr.tuning.analysis import load_experiment
    from tune_dsr.tuning.front import choose, parse_where

    exp = load_experiment(experiment)
    objectives = exp.objectives
    if not objectives:
        raise ConfigError(f"{exp.path} searched one objective ({exp.metric}): it has no front "
                          "to pick from; export it with --metric/--rank")
    best = maximize or minimize
    if best is not None:
        wanted = "max" if maximize else "min"
        if best in objectives and direction(best) != wanted:
            better = "higher" if direction(best) == "max" else "lower"
            flag = "maximize" if wanted == "min" else "minimize"
            raise ConfigError(f"{best} is better {better}: use --{flag} {best}")
    choice = choose(exp.front(), objectives, point=point, best=best, where=parse_where(where))
    row = exp.trials.set_index("trial_id").loc[choice.trial_id]
    row["trial_id"] = choice.trial_id
    document = _document(exp, row, choice.monitor, direction(choice.monitor), None)
    document["provenance"]["value"] = choice.values[choice.monitor]
    document["provenance"]["front"] = {"objectives": objectives, "how": choice.how,
                                       "values": choice.values}
    return document


def _document(exp: Any, row: Any, metric: str, mode: str, rank: int | None) -> dict[str, Any]:
    """The config and provenance of the trial in `row` (a row of a trials frame), monitoring
    `metric`."""
    from tune_dsr.config import Config
    from tune_dsr.tuning.records import epochs_saved

    trial_id = str(row["trial_id"])
    # The trial's own params.json, not the frame: pandas turns bools and ints into numpy types.
    trial = exp.trial(trial_id)
    try:
        config = Config.from_dict(trial.config).replace(monitor=metric)
    except ConfigError as exc:
        raise ConfigError(f"{trial.path}/params.json (trial {trial_id}) is not a training "
                          f"config: {str(exc).rstrip('.')}. A hand edit? Undo it, or export "
                          "another trial") from None
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
        # The searched keys as the stored study drew them (the preset may have changed since).
        "searched": {k: trial.config[k] for k in exp.searched if k in trial.config},
        "trials": saved["trials"], "trials_pruned": int(exp.trials["stopped_early"].sum()),
        "epochs_total": saved["epochs_run"], "epochs_full": saved["epochs_full"],
        "epochs_saved_by_patience": saved["saved_by_patience"],
        "epochs_saved_by_asha": saved["saved_by_asha"], "confirm_epochs": confirm_epochs,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if exp.damaged:
        document["provenance"]["left_out"] = list(exp.damaged)
    if row.get("confirm_runs", 0):
        entry = exp.confirmations().loc[trial_id]
        document["provenance"]["confirmed"] = {
            "runs": int(entry["runs"]), "values": [float(v) for v in entry["values"]],
            "mean": float(entry["mean"]), "low": _number(entry["low"]),
            "high": _number(entry["high"])}
    return document


def _number(value: Any) -> float | None:
    """A float for JSON: NaN (no interval from one run) as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)
