"""The trials of an experiment folder as read: one `TrialRecord` per trial folder, the frames
built from them, and what the search's stopping saved.

`load_trials` reads a folder (local or a storage URI, through pyarrow's filesystems): every trial
folder holds ``params.json`` (its full config) and ``result.json`` (one JSON line per reported
epoch; `tune_dsr.tuning.experiment` owns the file names and the damage rules). A trial folder
with a damaged file is left out with a warning naming the file. `trials_frame` ranks the trials
by a metric at each trial's best epoch; `epochs_saved` counts what ASHA and the patience saved.
`tune_dsr.tuning.analysis.load_experiment` builds on these.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_dsr.config import ANCHOR, CONFIRMS
from tune_dsr.errors import ConfigError
from tune_dsr.tuning.experiment import (
    DAMAGE,
    DamagedFileError,
    decode_text,
    filesystem,
    is_uri,
    join,
    parse_json,
)

__all__ = [
    "BASE_COLUMNS",
    "UNFINISHED",
    "ExperimentFolder",
    "TrialRecord",
    "best_row",
    "epochs_saved",
    "finite_mean",
    "full_length",
    "history_frame",
    "load_trials",
    "read_experiment",
    "trials_frame",
    "unfinished_trials",
]

logger = logging.getLogger(__name__)

# Tune statuses of a trial that has not ended: the search is running, or was interrupted.
UNFINISHED = ("RUNNING", "PENDING", "PAUSED")
# The columns of `trials_frame` before its metric/... and config/... columns.
BASE_COLUMNS = ["trial_id", "anchor", "value", "best_epoch", "epochs_run", "stopped_early",
                "stopped_by", "error", "status", "path", "checkpoint"]


@dataclass
class TrialRecord:
    """One trial folder as read: its config, one result per epoch, and how it ended."""

    trial_id: str
    path: str  # local absolute path or URI of the trial folder
    config: dict[str, Any]
    history: list[dict[str, Any]]
    error: bool
    status: str | None = None  # Tune's status (TERMINATED, ERROR, RUNNING...); None if unknown
    files: frozenset[str] = field(default_factory=frozenset)  # names in the trial folder

    @property
    def epochs_run(self) -> int:
        return int(max((r.get("epoch", 0) for r in self.history), default=0))

    @property
    def anchor(self) -> str:
        """The anchor this trial ran (``guide``, ``pixel-only``...), or "" for a TPE trial."""
        return str(self.config.get(ANCHOR) or "")

    @property
    def unfinished(self) -> bool:
        """Still running, pending or paused: its epochs so far are not its last."""
        return self.status in UNFINISHED

    def latest_checkpoint(self) -> str | None:
        checkpoints = [r["checkpoint_dir_name"] for r in self.history
                       if r.get("checkpoint_dir_name")]
        return join(self.path, checkpoints[-1]) if checkpoints else None


def load_trials(experiment: str) -> list[TrialRecord]:
    """Every trial of an experiment with its config and per-epoch results (a damaged trial
    folder is left out with a warning, see `read_experiment`)."""
    where = experiment if is_uri(experiment) else str(Path(experiment).expanduser().resolve())
    return read_experiment(where, allow_empty=False).records


@dataclass
class ExperimentFolder:
    """An experiment folder as read: its trials, Tune's statuses, and what was left out."""

    records: list[TrialRecord]
    statuses: dict[str, str]
    damaged: list[str]  # one message per damaged file, naming it and what is wrong


def read_experiment(experiment: str, allow_empty: bool) -> ExperimentFolder:
    """The trials of the folder `experiment` (an absolute path or a URI), sorted by folder, and
    Tune's status of every trial it knows of.

    A trial folder with a damaged file (params.json that is not a JSON object, a result.json
    line that is not one, other than a last line still being written, an unreadable
    progress.csv) is left out with a warning that names the file: the other trials still rank
    and export. A damaged Tune state leaves the statuses unknown, likewise.
    """
    import pyarrow.fs

    fs, root = filesystem(experiment)
    if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        raise ConfigError(f"experiment folder {experiment} does not exist or is not a folder; "
                          "give the folder a search wrote (<storage-path>/<name>)")
    entries = fs.get_file_info(pyarrow.fs.FileSelector(root))
    damaged: list[str] = []
    statuses = _trial_statuses(fs, entries, experiment, damaged)
    trials = []
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        names = {e.base_name for e in fs.get_file_info(pyarrow.fs.FileSelector(entry.path))}
        if "params.json" not in names:
            continue
        where = join(experiment, entry.base_name)
        try:
            config = parse_json(_read_bytes(fs, f"{entry.path}/params.json"),
                                f"{where}/params.json", expect=dict)
            history = _read_history(fs, entry.path, names, where)
        except DamagedFileError as exc:
            logger.warning("%s. Trial folder %s left out; the other trials are read.", exc,
                           entry.base_name)
            damaged.append(str(exc))
            continue
        trial_id = str(next((r["trial_id"] for r in history if r.get("trial_id")),
                            entry.base_name.split("_")[-1]))
        # error.txt stays behind when a retry recovered: the experiment state has the verdict.
        status = statuses.get(trial_id)
        error = status == "ERROR" if status else "error.txt" in names
        trials.append(TrialRecord(trial_id, where, config, history, error, status,
                                  frozenset(names)))
    if not trials and not allow_empty:
        raise ConfigError(f"{experiment} holds no trials (no trial folder with a readable "
                          "params.json); is it an experiment folder written by tune_dsr.search?")
    return ExperimentFolder(sorted(trials, key=lambda t: t.path), statuses, damaged)


def _read_bytes(fs: Any, inner: str) -> bytes:
    with fs.open_input_stream(inner) as f:
        return bytes(f.read())


def _complete_lines(text: str) -> str:
    """`text` up to its last newline: a running trial's last line may be half written."""
    return text[: text.rfind("\n") + 1]


def _read_history(fs: Any, folder: str, names: set[str], where: str) -> list[dict[str, Any]]:
    """Per-epoch results of one trial, one row per epoch (the last report of an epoch wins).

    Ray rewrites result.json when a failed trial restarts, while progress.csv keeps the epochs
    from before the failure; whichever holds more epochs is used. Text after the last newline
    is a line Ray is still writing and is left for the next read; any other line that is not a
    JSON object, or a progress.csv pandas cannot read, raises DamagedFileError naming the file.
    """
    logs: list[list[dict[str, Any]]] = [[]]
    if "result.json" in names:
        source = f"{where}/result.json"
        text = _complete_lines(decode_text(_read_bytes(fs, f"{folder}/result.json"), source))
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            row = parse_json(line, source, expect=dict, line=number)
            epoch = row.get("epoch", 0)
            if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
                raise DamagedFileError(f"{source} line {number} has epoch {epoch!r}, not a "
                                       f"number: {DAMAGE}", source)
            rows.append(row)
        logs.append(rows)
    if "progress.csv" in names:
        source = f"{where}/progress.csv"
        text = _complete_lines(decode_text(_read_bytes(fs, f"{folder}/progress.csv"), source))
        if text.strip():
            try:
                frame = pd.read_csv(io.StringIO(text))
            except pd.errors.ParserError as exc:
                reason = str(exc).strip().removeprefix("Error tokenizing data. C error: ")
                raise DamagedFileError(f"{source} is not a readable CSV table ({reason}): "
                                       f"{DAMAGE}", source) from None
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


def _trial_statuses(fs: Any, entries: list[Any], experiment: str,
                    damaged: list[str] | None = None) -> dict[str, str]:
    """Trial id -> Tune status, from the newest experiment_state-*.json (if any).

    A damaged state file (caught mid-write, or edited) leaves every status unknown, with a
    warning naming it: the trial folders still tell failed trials apart (error.txt).
    """
    states = sorted(e.base_name for e in entries if e.base_name.startswith("experiment_state-")
                    and e.base_name.endswith(".json"))
    if not states:
        return {}
    source = join(experiment, states[-1])
    inner = next(e.path for e in entries if e.base_name == states[-1])
    try:
        data = parse_json(_read_bytes(fs, inner), source, expect=dict)
        trial_data = data.get("trial_data", [])
        if not isinstance(trial_data, list):
            raise DamagedFileError(f"{source} holds trial_data that is not a list: {DAMAGE}",
                                   source)
        statuses = {}
        for number, entry in enumerate(trial_data):
            meta = (parse_json(entry[0], f"{source} trial_data[{number}]", expect=dict)
                    if isinstance(entry, list) and entry and isinstance(entry[0], str) else None)
            if meta is None or not isinstance(meta.get("trial_id"), str):
                raise DamagedFileError(f"{source} trial_data[{number}] is not a Tune trial "
                                       f"(no trial_id): {DAMAGE}", source)
            statuses[meta["trial_id"]] = str(meta.get("status", ""))
    except DamagedFileError as exc:
        logger.warning("%s. Trial statuses unknown: failed trials are told by their error.txt, "
                       "and none counts as unfinished.", exc)
        if damaged is not None:
            damaged.append(str(exc))
        return {}
    return statuses


def unfinished_trials(experiment: str) -> list[str]:
    """Trials an interrupted search left running, pending or paused (for --resume)."""
    import pyarrow.fs

    fs, root = filesystem(experiment)
    statuses = _trial_statuses(fs, fs.get_file_info(pyarrow.fs.FileSelector(root)), experiment)
    return [t for t, s in statuses.items() if s in UNFINISHED]


def history_frame(trials: list[TrialRecord]) -> pd.DataFrame:
    rows = [{"trial_id": t.trial_id, **r} for t in trials for r in t.history]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["trial_id", "epoch"])


def _trials(experiment: str | list[TrialRecord]) -> list[TrialRecord]:
    """An experiment's trials: read from its folder, or the records already read."""
    return load_trials(experiment) if isinstance(experiment, str) else experiment


def full_length(trials: list[TrialRecord]) -> int:
    """The epochs a trial runs unless stopped: the longest configured."""
    return max((int(t.config.get("epochs", 0)) for t in trials), default=0)


def trials_frame(experiment: str | list[TrialRecord], metric: str, mode: str,
                 max_epochs: int | None = None, patience: int = 0) -> pd.DataFrame:
    """One row per trial: its anchor label ("" for TPE's), best `metric` (over its epochs), the
    epoch it came at, epochs run, whether it was stopped early and by what (``"patience"``: its
    objective had not beaten its own best for `patience` epochs; ``"asha"``), Tune's status, its
    metrics at that epoch (``metric/...``) and config (``config/...``); a confirmation run also
    says which trial it repeats (``confirms``).

    Sorted best first; trials with no reported epoch come last. A trial still running (or left
    unfinished by an interrupt) is not "stopped early": its later epochs may yet come.
    """
    if mode not in ("min", "max"):
        raise ConfigError(f"mode={mode!r} must be 'min' or 'max'")
    trials = _trials(experiment)
    full = max_epochs or full_length(trials)
    rows = []
    for t in trials:
        values = [r for r in t.history if isinstance(r.get(metric), (int, float))]
        if t.history and not values:
            raise ConfigError(f"metric {metric!r} was not reported by trial {t.trial_id}; "
                              f"reported: {', '.join(sorted(k for k in t.history[-1]))}")
        best = (min if mode == "min" else max)(values, key=lambda r: r[metric]) if values else {}
        stopped = 0 < t.epochs_run < full and not t.error and not t.unfinished
        row: dict[str, Any] = {
            "trial_id": t.trial_id, "anchor": t.anchor, "value": best.get(metric),
            "best_epoch": best.get("epoch"), "epochs_run": t.epochs_run, "stopped_early": stopped,
            "stopped_by": _stopped_by(t, patience) if stopped else "", "error": t.error,
            "status": t.status, "path": t.path, "checkpoint": t.latest_checkpoint()}
        if CONFIRMS in t.config:
            row[CONFIRMS] = t.config[CONFIRMS]
        row.update({f"metric/{k}": v for k, v in best.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        row.update({f"config/{k}": v for k, v in t.config.items()})
        rows.append(row)
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=BASE_COLUMNS)
    frame["value"] = frame["value"].astype(float)  # None (no epoch yet) as NaN
    return frame.sort_values("value", ascending=(mode == "min"), na_position="last",
                             ignore_index=True)


def _stopped_by(trial: TrialRecord, patience: int) -> str:
    """Why a trial that ended early ended: its own patience ran out, or ASHA stopped it."""
    last = trial.history[-1] if trial.history else {}
    since = last.get("epochs_since_best")
    return "patience" if patience and since is not None and since >= patience else "asha"


def best_row(history: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    values = [r for r in history if isinstance(r.get(metric), (int, float))]
    return (min if mode == "min" else max)(values, key=lambda r: r[metric]) if values else {}


def finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def epochs_saved(experiment: str | list[TrialRecord], patience: int = 0) -> dict[str, int]:
    """Epochs the search ran against epochs if every trial had run to the end, and how many of
    the epochs saved each stopping rule saved (``saved_by_patience``, ``saved_by_asha``)."""
    trials = _trials(experiment)
    run = sum(t.epochs_run for t in trials)
    full = sum(int(t.config.get("epochs", t.epochs_run)) for t in trials)
    by = {"patience": 0, "asha": 0}
    for t in trials:
        left = int(t.config.get("epochs", t.epochs_run)) - t.epochs_run
        if left > 0 and t.epochs_run and not t.error and not t.unfinished:
            by[_stopped_by(t, patience)] += left
    return {"trials": len(trials), "epochs_run": run, "epochs_full": full,
            "epochs_saved": full - run, "saved_by_patience": by["patience"],
            "saved_by_asha": by["asha"]}
