"""Read a search's experiment folder into pandas: one row per trial, or one row per epoch.

Works on a local folder or a storage URI (through pyarrow's filesystems) and needs no running Ray:
every trial folder holds ``params.json`` (its full config) and ``result.json`` (one JSON line per
reported epoch).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tune_dsr.errors import ConfigError
from tune_dsr.experiment import filesystem, is_uri


@dataclass
class TrialRecord:
    trial_id: str
    path: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    error: bool

    @property
    def epochs_run(self) -> int:
        return int(max((r.get("epoch", 0) for r in self.history), default=0))

    def latest_checkpoint(self) -> str | None:
        checkpoints = [r["checkpoint_dir_name"] for r in self.history
                       if r.get("checkpoint_dir_name")]
        return f"{self.path}/{checkpoints[-1]}" if checkpoints else None


def load_trials(experiment: str) -> list[TrialRecord]:
    """Every trial of an experiment with its config and per-epoch results."""
    import pyarrow.fs

    fs, root = filesystem(experiment)
    info = fs.get_file_info(root)
    if info.type != pyarrow.fs.FileType.Directory:
        raise ConfigError(f"experiment folder {experiment} does not exist; give the folder a "
                          "search wrote (<storage-path>/<name>)")
    trials = []
    scheme = experiment.split("://", 1)[0] + "://" if is_uri(experiment) else ""
    entries = fs.get_file_info(pyarrow.fs.FileSelector(root))
    statuses = _trial_statuses(fs, entries)
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        names = {e.base_name for e in fs.get_file_info(pyarrow.fs.FileSelector(entry.path))}
        if "params.json" not in names:
            continue
        with fs.open_input_stream(f"{entry.path}/params.json") as f:
            config = json.loads(f.read().decode())
        history = _read_history(fs, entry.path, names)
        trial_id = history[0]["trial_id"] if history else entry.base_name.split("_")[-1]
        # error.txt stays behind when a retry recovered: the experiment state has the verdict.
        status = statuses.get(trial_id)
        error = status == "ERROR" if status else "error.txt" in names
        trials.append(TrialRecord(trial_id, scheme + entry.path, config, history, error))
    if not trials:
        raise ConfigError(f"{experiment} holds no trials (no trial folder with params.json); is "
                          "it an experiment folder written by tune_dsr.search?")
    return sorted(trials, key=lambda t: t.path)


def _read_history(fs: Any, folder: str, names: set[str]) -> list[dict[str, Any]]:
    """Per-epoch results of one trial, one row per epoch (the last report of an epoch wins).

    Ray rewrites result.json when a failed trial restarts, while progress.csv keeps the epochs
    from before the failure; whichever holds more epochs is used.
    """
    logs: list[list[dict[str, Any]]] = [[]]
    if "result.json" in names:
        with fs.open_input_stream(f"{folder}/result.json") as f:
            logs.append([json.loads(line) for line in f.read().decode().splitlines()
                         if line.strip()])
    if "progress.csv" in names:
        with fs.open_input_stream(f"{folder}/progress.csv") as f:
            text = f.read().decode()
        if text.strip():
            frame = pd.read_csv(io.StringIO(text))
            logs.append([{k: _python(v) for k, v in row.items()}
                         for row in frame.to_dict("records")])
    by_epoch = {r.get("epoch", i): r for i, r in enumerate(max(logs, key=_epoch_count))}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _epoch_count(log: Iterable[dict[str, Any]]) -> int:
    return len({r.get("epoch") for r in log})


def _python(value: Any) -> Any:
    """numpy scalars from pandas as plain Python values (NaN cells as None)."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def _trial_statuses(fs: Any, entries: list[Any]) -> dict[str, str]:
    """Trial id -> final Tune status, from the newest experiment_state-*.json (if any)."""
    states = sorted(e.path for e in entries if e.base_name.startswith("experiment_state-")
                    and e.base_name.endswith(".json"))
    if not states:
        return {}
    with fs.open_input_stream(states[-1]) as f:
        data = json.loads(f.read().decode())
    statuses = {}
    for entry in data.get("trial_data", []):
        meta = json.loads(entry[0])
        statuses[meta["trial_id"]] = meta.get("status", "")
    return statuses


def unfinished_trials(experiment: str) -> list[str]:
    """Trials an interrupted search left running, pending or paused (for --resume)."""
    import pyarrow.fs

    fs, root = filesystem(experiment)
    statuses = _trial_statuses(fs, fs.get_file_info(pyarrow.fs.FileSelector(root)))
    return [t for t, s in statuses.items() if s in ("RUNNING", "PENDING", "PAUSED")]


def history_frame(experiment: str) -> pd.DataFrame:
    """One row per (trial, epoch) with every reported metric."""
    rows = [{"trial_id": t.trial_id, **r} for t in load_trials(experiment) for r in t.history]
    return pd.DataFrame(rows)


def _trials(experiment: str | list[TrialRecord]) -> list[TrialRecord]:
    """An experiment's trials: read from its folder, or the records already read."""
    return load_trials(experiment) if isinstance(experiment, str) else experiment


def trials_frame(experiment: str | list[TrialRecord], metric: str, mode: str,
                 max_epochs: int | None = None) -> pd.DataFrame:
    """One row per trial: best `metric` (over its epochs), the epoch it came at, epochs run, whether
    it was stopped early, its metrics at that epoch (``metric/...``) and config (``config/...``).

    Sorted best first; trials with no reported epoch come last.
    """
    if mode not in ("min", "max"):
        raise ConfigError(f"mode={mode!r} must be 'min' or 'max'")
    trials = _trials(experiment)
    full = max_epochs or max((int(t.config.get("epochs", 0)) for t in trials), default=0)
    rows = []
    for t in trials:
        values = [r for r in t.history if isinstance(r.get(metric), (int, float))]
        if t.history and not values:
            raise ConfigError(f"metric {metric!r} was not reported by trial {t.trial_id}; "
                              f"reported: {', '.join(sorted(k for k in t.history[-1]))}")
        best = (min if mode == "min" else max)(values, key=lambda r: r[metric]) if values else {}
        row: dict[str, Any] = {
            "trial_id": t.trial_id, "value": best.get(metric), "best_epoch": best.get("epoch"),
            "epochs_run": t.epochs_run, "stopped_early": 0 < t.epochs_run < full and not t.error,
            "error": t.error, "path": t.path, "checkpoint": t.latest_checkpoint()}
        row.update({f"metric/{k}": v for k, v in best.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        row.update({f"config/{k}": v for k, v in t.config.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values("value", ascending=(mode == "min"), na_position="last",
                             ignore_index=True)


def epochs_saved(experiment: str | list[TrialRecord]) -> dict[str, int]:
    """Epochs the search ran against epochs if every trial had run to the end."""
    trials = _trials(experiment)
    run = sum(t.epochs_run for t in trials)
    full = sum(int(t.config.get("epochs", t.epochs_run)) for t in trials)
    return {"trials": len(trials), "epochs_run": run, "epochs_full": full,
            "epochs_saved": full - run}
