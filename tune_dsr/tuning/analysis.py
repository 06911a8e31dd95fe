"""Read a search's experiment folder: its trials, their epochs, ASHA's rungs, the Optuna study.

    from tune_dsr.tuning.analysis import load_experiment
    exp = load_experiment("tune_results/NAME")        # or "s3://bucket/tune_results/NAME"
    exp.trials                  # one row per trial, best first by the search's objective
    exp.history                 # one row per trial and epoch
    exp.top(5)                  # the ranking export's --rank takes: confirmed configurations first
    exp.top(5, "val_psnr")      # the five best trials by another metric
    exp.pareto("val_psnr", "val_margin")
    exp.importance(), exp.rungs(), exp.best_checkpoint()
    exp.confirmations()         # each confirmed configuration: its runs, mean and interval
    exp.winner(), exp.verdict() # the configuration export takes; did it beat doing nothing?

`load_experiment` reads the folder once; every method works on what it read, so a notebook can
ask many questions of a large or remote experiment cheaply. It needs no running Ray, and works
on a search that is still running or was interrupted: trials with no epoch yet, half-written
result lines and ERROR trials are all expected. The folder can be local or a storage URI
(through pyarrow's filesystems): every trial folder holds ``params.json`` (its full config) and
``result.json`` (one JSON line per reported epoch), and the search adds ``search_plan.json`` and
``optuna_study.db`` (`tune_dsr.tuning.experiment`).

Any of these files may be damaged (cut short by a crash, or edited by hand). A trial folder with
a damaged file is left out with a warning naming the file (`Experiment.damaged` lists them), as
are Tune's statuses and the study: the rest of the experiment still ranks and exports. A damaged
``search_plan.json`` is refused (ConfigError naming the file, what is wrong and the fix): without
it the objective is unknown.

The functions below `Experiment` (`load_trials`, `trials_frame`, `epochs_saved`,
`unfinished_trials`) are the lower-level readers that export and the search use.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tune_dsr.config import direction
from tune_dsr.errors import ConfigError
from tune_dsr.statistics import t_interval
from tune_dsr.tuning.experiment import (
    CONFIRM_DIR,
    DAMAGE,
    STUDY_FILE,
    DamagedFileError,
    SearchPlan,
    decode_text,
    filesystem,
    is_uri,
    join,
    parse_json,
)

if TYPE_CHECKING:
    import optuna

__all__ = [
    "Experiment",
    "TrialRecord",
    "Verdict",
    "Winner",
    "asha_milestones",
    "epochs_saved",
    "load_experiment",
    "load_trials",
    "trials_frame",
    "unfinished_trials",
]

logger = logging.getLogger(__name__)

# Tune statuses of a trial that has not ended: the search is running, or was interrupted.
UNFINISHED = ("RUNNING", "PENDING", "PAUSED")
# The columns of `trials_frame` before its metric/... and config/... columns.
BASE_COLUMNS = ["trial_id", "anchor", "value", "best_epoch", "epochs_run", "stopped_early",
                "stopped_by", "error", "status", "path", "checkpoint"]
# The recognition gain over bicubic that the verdict reports for an objective (default: margin).
GAIN_OF = {"val_margin": "val_margin_gain", "val_rank1_full": "val_rank1_full_gain",
           "val_soft_rank1": "val_soft_rank1_gain", "val_margin_gain": "val_margin_gain",
           "val_rank1_full_gain": "val_rank1_full_gain",
           "val_soft_rank1_gain": "val_soft_rank1_gain",
           "val_heldout_margin": "val_heldout_margin_gain",
           "val_heldout_margin_gain": "val_heldout_margin_gain",
           "val_heldout_rank1_full": "val_heldout_rank1_full_gain",
           "val_heldout_rank1_full_gain": "val_heldout_rank1_full_gain",
           "val_heldout_soft_rank1": "val_heldout_soft_rank1_gain",
           "val_heldout_soft_rank1_gain": "val_heldout_soft_rank1_gain",
           # the verdict's interval is the trained-against gain's; the held-out one is beside it
           "val_margin_gain_min": "val_margin_gain"}
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
        return str(self.config.get("anchor") or "")

    @property
    def unfinished(self) -> bool:
        """Still running, pending or paused: its epochs so far are not its last."""
        return self.status in UNFINISHED

    def latest_checkpoint(self) -> str | None:
        checkpoints = [r["checkpoint_dir_name"] for r in self.history
                       if r.get("checkpoint_dir_name")]
        return join(self.path, checkpoints[-1]) if checkpoints else None


@dataclass(frozen=True)
class Winner:
    """The configuration a search hands back: its search trial, anchor label, the value it is
    ranked by (the confirmed mean, or the search trial's best) and its confirmation runs."""

    trial_id: str
    anchor: str
    value: float
    runs: int  # confirmation runs (0: not confirmed)
    low: float  # 95 % t interval of the confirmed mean (NaN for fewer than two runs)
    high: float
    run_records: list[TrialRecord] = field(default_factory=list, repr=False)

    @property
    def confirmed(self) -> bool:
        return self.runs > 0


@dataclass(frozen=True)
class Verdict:
    """Whether the search found a DSR that clearly helps recognition on validation.

    ``gain`` is the winner's recognition gain over bicubic (``gain_metric``, e.g. the margin's)
    at its best epoch, averaged over its confirmation runs where it has them, with the 95 %
    half-width of the per-probe paired difference; ``rank1_gain`` likewise. It *clearly beats
    bicubic* when the gain's interval excludes 0 and its best epoch came after the learning-rate
    warm-up (before it, the network has barely moved from bicubic upscaling). ``pixel_only`` is
    the pixel-only anchor's value of the objective (its confirmed mean where confirmed); the
    winner *beats* it only when that value lies outside the winner's confirmed interval.
    """

    metric: str
    winner: Winner
    gain_metric: str
    gain: float
    gain_half_width: float
    rank1_gain: float
    rank1_half_width: float
    best_epochs: list[int]
    warmup_epochs: int
    pixel_only: float | None
    beats_bicubic: bool
    beats_pixel_only: bool | None
    text: str

    @classmethod
    def of(cls, metric: str, mode: str, winner: Winner, gain_metric: str, gain: float,
           half: float, rank1: float, rank1_half: float, best_epochs: list[int], warmup: int,
           pixel_only: float | None) -> Verdict:
        in_warmup = bool(best_epochs) and max(best_epochs) <= warmup
        known = math.isfinite(gain) and math.isfinite(half)
        clear = known and gain - half > 0 and not in_warmup
        sign = 1.0 if mode == "max" else -1.0
        # Ahead of the pixel-only anchor only where its value lies outside the winner's confirmed
        # interval: two configurations within one seed's noise are a tie, not a ranking.
        within = (pixel_only is not None and math.isfinite(winner.low)
                  and winner.low <= pixel_only <= winner.high)
        beats_pixel = (None if pixel_only is None or winner.anchor == "pixel-only"
                       else sign * (winner.value - pixel_only) > 0 and not within)
        which = (f"trial {winner.trial_id}" + (f" ({winner.anchor} anchor)" if winner.anchor
                                                else ""))
        how = (f"mean of {winner.runs} confirmation run(s)" if winner.confirmed
               else "its search run")
        epochs = ", ".join(str(e) for e in best_epochs) or "?"
        lines = [f"Winner: {which}, {metric} {winner.value:.4f} ({how}"
                 + (f", 95 % interval [{winner.low:.4f}, {winner.high:.4f}]"
                    if math.isfinite(winner.low) else "") + f"; best epoch {epochs})."]
        def interval(value: float, half_width: float, low: float, high: float, form: str) -> str:
            if not math.isfinite(half_width):
                return "(interval unknown)"
            # A rank-1 gain lies in [-1, 1] whatever the normal approximation says.
            return (f"[{max(low, value - half_width):{form}}, "
                    f"{min(high, value + half_width):{form}}]")

        lines.append(f"Gain over bicubic on validation: {gain_metric} {gain:+.4f} "
                     f"{interval(gain, half, -math.inf, math.inf, '+.4f')}, rank-1 "
                     f"{rank1:+.1%} {interval(rank1, rank1_half, -1.0, 1.0, '+.1%')} (95 %, "
                     "paired over the validation persons).")
        if winner.anchor == "pixel-only":
            lines.append("The winner is the pixel-only anchor: the identity terms did not help "
                         "on this data.")
        elif pixel_only is not None and within:
            lines.append(f"Against the pixel-only anchor ({metric} {pixel_only:.4f}): no clear "
                         f"difference ({sign * (winner.value - pixel_only):+.4f}; it lies within "
                         "the winner's 95 % interval).")
        elif pixel_only is not None:
            lines.append(f"Against the pixel-only anchor ({metric} {pixel_only:.4f}): "
                         + ("better" if beats_pixel else "not better")
                         + f" by {sign * (winner.value - pixel_only):+.4f}.")
        if clear:
            lines.append("It clearly beats bicubic upscaling on validation.")
        else:
            why = []
            if in_warmup:
                why.append(f"its best epoch ({epochs}) lies within its learning-rate warm-up "
                           f"({warmup} epochs), when the network has barely moved from bicubic")
            if not known:
                why.append("the interval of its gain over bicubic is unknown (an experiment "
                           "from before tune_dsr reported it, or a single validation face)")
            elif gain - half <= 0:
                why.append("its gain over bicubic " + (
                    "is negative" if gain + half < 0 else "has an interval that includes 0"))
            lines.append("No configuration clearly beat doing nothing (bicubic upscaling): "
                         + " and ".join(why) + ".")
        return cls(metric, winner, gain_metric, gain, half, rank1, rank1_half, best_epochs,
                   warmup, pixel_only, clear, beats_pixel, "\n".join(lines))


# ----------------------------------------------------------------------------- the experiment

class Experiment:
    """A search's experiment folder, read once by `load_experiment`.

    `trials` (one row per trial, the frame of `trials_frame`) is the search's own ranking by its
    objective (`metric`, `mode`), and `history` has one row per trial and epoch. `top` is the
    ranking a user picks from, the one ``tune_dsr.export --rank`` takes: it puts the confirmed
    configurations first, and ranks by other metrics from the same records, without reading the
    folder again. `damaged` lists the files left out (a message each).
    """

    def __init__(self, path: str, plan: SearchPlan | None, records: list[TrialRecord],
                 statuses: dict[str, str], metric: str, mode: str,
                 confirm_records: list[TrialRecord] | None = None,
                 damaged: list[str] | None = None) -> None:
        self.path = path
        self.plan = plan
        self.records = records
        self.statuses = statuses  # every trial Tune knows of, folders or not yet
        self.damaged = list(damaged or [])  # the damaged files left out, a message each
        self.metric, self.mode = metric, mode
        self.max_epochs = plan.max_epochs if plan else _full_length(records)
        self.patience = plan.patience if plan else 0
        self._ranked: dict[str, pd.DataFrame] = {}
        self.trials = self._ranking(metric)  # checks the metric was reported
        self.history = _history(records)
        # The confirmation runs (``--confirm``): each repeats a search trial (``confirms``).
        self.confirm_records = list(confirm_records or [])
        self.confirm_trials = trials_frame(self.confirm_records, metric, mode, self.max_epochs,
                                           self.patience)

    def __repr__(self) -> str:
        unfinished = f", {len(self.unfinished)} unfinished" if self.unfinished else ""
        return (f"Experiment({self.path!r}: {len(self.records)} trials{unfinished}, "
                f"objective {self.mode} {self.metric})")

    # ------------------------------------------------------------ what the folder holds
    @property
    def unfinished(self) -> list[str]:
        """Trials a running or interrupted search has not ended (``--resume`` continues them)."""
        return [t for t, s in self.statuses.items() if s in UNFINISHED]

    @cached_property
    def distributions(self) -> dict[str, Any]:
        """The searched hyperparameters and their Optuna ranges: as the stored study recorded
        them, else the plan's preset minus its pins (a preset may have been edited since, or a
        user's preset file be missing here). Empty without a plan (plain Ray Tune)."""
        if self.plan is None:
            return {}
        space: dict[str, Any] = {}
        for trial in self.study.get_trials(deepcopy=False) if self.study else []:
            space.update(trial.distributions)
        if not space:
            from search_spaces import load_preset

            return load_preset(self.plan.space).searched(self.plan.pins)
        return {k: d for k, d in space.items() if k not in self.plan.pins}

    @property
    def searched(self) -> list[str]:
        """The searched hyperparameters: the plan's, or without one whatever varied."""
        if self.plan is not None:
            return list(self.distributions)
        return [c.removeprefix("config/") for c in self.trials.columns
                if c.startswith("config/") and self.trials[c].astype(str).nunique() > 1]

    @cached_property
    def study(self) -> optuna.Study | None:
        """The search's Optuna study, or None where it cannot be found (an experiment on a URI
        keeps it on the machine that ran the search; plain Ray Tune has none)."""
        if self.plan is None:
            return None
        # A local experiment keeps its study inside, wherever the folder has been moved to.
        study_path = self.plan.study_path if is_uri(self.path) else Path(self.path) / STUDY_FILE
        if not study_path.is_file():  # loading a missing SQLite file would create it
            return None
        import optuna
        import sqlalchemy.exc

        storage = f"sqlite:///{study_path}"
        with open(study_path, "rb") as f:
            # Optuna would write its tables into an empty or foreign file: look before opening.
            sqlite = f.read(16) == b"SQLite format 3\x00"
        try:
            if not sqlite:
                raise ValueError("not an SQLite database")
            names = optuna.get_all_study_names(storage)
            name = self.plan.name if self.plan.name in names or len(names) != 1 else names[0]
            return optuna.load_study(study_name=name, storage=storage)
        except (ValueError, sqlalchemy.exc.SQLAlchemyError, KeyError) as exc:
            # KeyError: an SQLite database without the study.
            reason = ("no Optuna study in it" if isinstance(exc, KeyError)
                      else str(getattr(exc, "orig", None) or exc).splitlines()[0])
            message = f"{study_path} is not a readable Optuna study ({reason}): {DAMAGE}"
            logger.warning("%s. The searched hyperparameters come from the preset instead, and "
                           "the importances from the trials' values.", message)
            self.damaged.append(message)
            return None

    def trial(self, trial_id: str) -> TrialRecord:
        """One trial's record; ConfigError naming the trials for an unknown id."""
        for record in self.records:
            if record.trial_id == trial_id:
                return record
        raise ConfigError(f"no trial {trial_id!r} in {self.path}; its trials: "
                          f"{', '.join(r.trial_id for r in self.records)}")

    # ------------------------------------------------------------ ranking
    def _ranking(self, metric: str) -> pd.DataFrame:
        if metric not in self._ranked:
            mode = self.mode if metric == self.metric else direction(metric)
            self._ranked[metric] = trials_frame(self.records, metric, mode, self.max_epochs,
                                                self.patience)
        return self._ranked[metric]

    def top(self, k: int | None = 5, metric: str | None = None, *,
            confirmed: bool = True) -> pd.DataFrame:
        """The `k` best configurations (None: all) by `metric` (default: the objective), one
        row per trial at its best epoch by that metric, indexed by rank from 1: the rank
        ``tune_dsr.export --rank`` takes, and `winner` is rank 1.

        By the search's objective, the configurations the search confirmed (``--confirm``) come
        first, best mean of their confirmation runs first, then the other trials by their own
        best value: a search's best single run is partly luck, a mean of new runs less so.
        `confirm_runs` and `confirmed_mean` say where a rank comes from those runs (0 and NaN
        where it comes from the trial's own ``value``). With ``confirmed=False``, or by another
        metric (the runs were chosen and valued by the objective), every trial ranks by its own
        value: the search's order, the one ``--confirm`` picks from.

        Trials with no value yet (no epoch reported, or failed at once) are left out.
        """
        metric = metric or self.metric
        ranked = self._ranking(metric)
        ranked = ranked[ranked["value"].notna()]
        confirmations = self._confirmations if confirmed and self._confirms_rank(metric) else \
            self._confirmations.iloc[0:0]
        confirmations = confirmations[confirmations.index.isin(ranked["trial_id"])]
        order = [*confirmations.index,
                 *(t for t in ranked["trial_id"] if t not in confirmations.index)]
        out = ranked.set_index("trial_id", drop=False).loc[order].reset_index(drop=True)
        at = out.columns.get_loc("value") + 1
        out.insert(at, "confirm_runs",
                   out["trial_id"].map(confirmations["runs"]).fillna(0).astype(int))
        out.insert(at + 1, "confirmed_mean",
                   out["trial_id"].map(confirmations["mean"]).astype(float))
        top = out if k is None else out.head(k)
        return top.set_axis(pd.RangeIndex(1, len(top) + 1, name="rank"))

    def _confirms_rank(self, metric: str) -> bool:
        """Whether confirmation runs rank configurations by `metric`: only by the search's own
        objective, the metric they were chosen by and `confirmations` values them by."""
        return self.plan is not None and metric == self.metric == self.plan.metric

    @property
    def objectives(self) -> list[str]:
        """A multi-objective search's objectives (its plan's); [] for a single-objective one."""
        return list(self.plan.objectives) if self.plan is not None else []

    def front(self, objectives: Sequence[str] | None = None) -> pd.DataFrame:
        """Every trial's point and its non-dominated front (`tune_dsr.tuning.front.front_frame`):
        by the search's objectives, or any two or three reported metrics. Front 0 first, best
        first by the first objective; dominated trials follow, with the epoch a scheduler or
        the patience stopped each at (``stopped_at``)."""
        from tune_dsr.tuning.front import front_frame

        chosen = list(objectives or self.objectives)
        if not chosen:
            raise ConfigError(f"{self.path} searched one objective ({self.metric}); name the "
                              "metrics to draw a front of, e.g. front(['val_margin', "
                              "'val_psnr'])")
        for metric in chosen:
            direction(metric)  # a known metric, or a message naming the known ones
        return front_frame(self.trials, chosen)

    def describe_front(self, objectives: Sequence[str] | None = None) -> str:
        """The front as text, as the search prints it at its end."""
        from tune_dsr.tuning.front import describe

        chosen = list(objectives or self.objectives)
        configs = {}
        for record in self.records:
            searched = {k: record.config[k] for k in self.searched if k in record.config
                        and not k.endswith("_on")}  # a switched-off weight shows as 0
            configs[record.trial_id] = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(searched.items()))
        return describe(self.front(chosen), chosen, configs=configs)

    def pareto(self, x: str, y: str) -> pd.DataFrame:
        """The trials no other trial beats on both `x` and `y`: front 0 of `front([x, y])`,
        as rows of the trials frame, best first by `x`. Each trial is taken at its best epoch by
        the objective, the epoch its ``best.pt`` holds, so every point on the front is a model
        one can pick (other epochs' weights are gone)."""
        points = self.front([x, y])
        ids = list(points.loc[points["front"] == 0, "trial_id"])
        rows = self.trials.set_index("trial_id").loc[ids].reset_index()
        return rows

    # ------------------------------------------------------------ confirmation and verdict
    def confirmations(self) -> pd.DataFrame:
        """One row per confirmed configuration (index: the search trial it repeats), best mean
        first: its anchor label, its value in the search, the confirmation runs' values of the
        objective (each at its best epoch), their mean with a 95 % t interval, and the mean
        recognition gain over bicubic (``gain``, the verdict's metric). Empty without
        confirmation runs."""
        return self._confirmations.copy()

    @cached_property
    def _confirmations(self) -> pd.DataFrame:
        columns = ["anchor", "search_value", "runs", "values", "mean", "low", "high", "gain"]
        frame = self.confirm_trials
        if frame.empty:
            return pd.DataFrame(columns=columns).rename_axis("trial_id")
        gain = GAIN_OF.get(self.metric, "val_margin_gain")
        search = self.trials.set_index("trial_id")["value"]
        rows = {}
        for trial_id, runs in frame[frame["value"].notna()].groupby("confirms", sort=False):
            runs = runs.sort_values("config/confirm_run")
            values = runs["value"].tolist()
            mean, low, high = t_interval(values)
            gains = runs.get(f"metric/{gain}", pd.Series(dtype=float)).dropna()
            rows[trial_id] = {
                "anchor": runs["anchor"].iloc[0], "search_value": search.get(trial_id, math.nan),
                "runs": len(values), "values": values, "mean": mean, "low": low, "high": high,
                "gain": float(gains.mean()) if len(gains) else math.nan}
        out = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
        out.index.name = "trial_id"
        return out.sort_values("mean", ascending=self.mode == "min", kind="stable")

    def winner(self) -> Winner:
        """The configuration export takes, rank 1 of `top`: the best confirmed mean where the
        search confirmed its top trials, else the best trial."""
        top = self.top(1)
        if top.empty:
            raise ConfigError(f"no trial of {self.path} has reported {self.metric} yet; wait "
                              "for the search's first epoch, or --resume it")
        row = top.iloc[0]
        trial_id = str(row["trial_id"])
        if row["confirm_runs"]:
            confirmed = self._confirmations.loc[trial_id]
            runs = self.confirm_trials[self.confirm_trials["confirms"] == trial_id]
            runs = runs.sort_values("config/confirm_run")
            return Winner(trial_id, str(confirmed["anchor"]), float(confirmed["mean"]),
                          int(confirmed["runs"]), float(confirmed["low"]),
                          float(confirmed["high"]),
                          [self.confirm_record(r) for r in runs["trial_id"]])
        return Winner(trial_id, self.trial(trial_id).anchor, float(row["value"]), 0,
                      math.nan, math.nan, [])

    def confirm_record(self, trial_id: str) -> TrialRecord:
        for record in self.confirm_records:
            if record.trial_id == trial_id:
                return record
        raise ConfigError(f"no confirmation run {trial_id!r} in {self.path}/{CONFIRM_DIR}")

    def verdict(self) -> Verdict:
        """Did the winner clearly beat bicubic upscaling, and the pixel-only anchor? In words
        (``text``) and figures; see `Verdict`."""
        winner = self.winner()
        gain_metric = GAIN_OF.get(self.metric, "val_margin_gain")
        # The winner's runs at their best epochs: the confirmation runs, else its search trial.
        rows = ([_best_row(r.history, self.metric, self.mode) for r in winner.run_records]
                if winner.run_records else
                [_best_row(self.trial(winner.trial_id).history, self.metric, self.mode)])
        rows = [r for r in rows if r]
        gains = [float(r.get(gain_metric, math.nan)) for r in rows]
        halves = [float(r.get(f"{gain_metric}_ci", math.nan)) for r in rows]
        rank1 = [float(r.get("val_rank1_full_gain", math.nan)) for r in rows]
        rank1_halves = [float(r.get("val_rank1_full_gain_ci", math.nan)) for r in rows]
        best_epochs = [int(r.get("epoch", 0)) for r in rows]
        from tune_dsr.config import Config

        warmup = Config.from_dict(self.trial(winner.trial_id).config).train.warmup_epochs
        pixel = self.trials[(self.trials["anchor"] == "pixel-only")
                            & self.trials["value"].notna()]
        pixel_value = float(pixel["value"].iloc[0]) if len(pixel) else None
        confirmed = self.confirmations()
        if pixel_value is not None and str(pixel["trial_id"].iloc[0]) in confirmed.index:
            pixel_value = float(confirmed.loc[str(pixel["trial_id"].iloc[0]), "mean"])
        return Verdict.of(self.metric, self.mode, winner, gain_metric, _mean(gains),
                          _mean(halves), _mean(rank1), _mean(rank1_halves), best_epochs, warmup,
                          pixel_value)

    def rungs(self) -> pd.DataFrame:
        """The trials that reached each of ASHA's rungs, from the plan's grace period, reduction
        factor and epochs: one row per rung (index: its epoch), the last one the full length.

        ``reached`` counts the trials that ran at least that many epochs, ``trial_ids`` lists
        them best first: how many survived each cut, and whether the winner was ever at risk.
        """
        if self.plan is None:
            raise ConfigError(f"{self.path} has no search plan, so ASHA's rungs are unknown")
        rows = []
        for rung in asha_milestones(self.plan.grace_period, self.plan.reduction_factor,
                                    self.plan.max_epochs):
            reached = self.trials[self.trials["epochs_run"] >= rung]["trial_id"].tolist()
            rows.append({"rung": rung, "reached": len(reached), "trial_ids": reached})
        return pd.DataFrame(rows).set_index("rung")

    # ------------------------------------------------------------ files of the best trial
    def best_checkpoint(self, metric: str | None = None) -> str:
        """The best trial's model by `metric` (default: the objective), for evaluate, compare
        or fine-tuning: its ``best.pt`` (the EMA weights of its best epoch by the search's
        objective) if written, else its latest Tune checkpoint folder."""
        ranked = self.top(1, metric)
        if ranked.empty:
            raise ConfigError(f"no trial of {self.path} has reported "
                              f"{metric or self.metric} yet")
        record = self.trial(ranked["trial_id"].iloc[0])
        if "best.pt" in record.files:
            return join(record.path, "best.pt")
        checkpoint = record.latest_checkpoint()
        if checkpoint is None or checkpoint.rsplit("/", 1)[-1] not in record.files:
            raise ConfigError(f"trial {record.trial_id} ({record.path}) holds neither best.pt "
                              "nor a Tune checkpoint")
        return checkpoint

    def picture(self, trial_id: str | None = None) -> bytes | None:
        """A trial's picture grid (PNG bytes) of fixed validation faces at its best epoch:
        VLR, bicubic, DSR and HR (``best.png``); default the best trial. None if not written."""
        if trial_id is None:
            ranked = self.top(1)
            if ranked.empty:
                return None
            trial_id = str(ranked["trial_id"].iloc[0])
        record = self.trial(trial_id)
        if "best.png" not in record.files:
            return None
        fs, inner = filesystem(join(record.path, "best.png"))
        with fs.open_input_stream(inner) as f:
            return bytes(f.read())

    # ------------------------------------------------------------ importance
    def importance(self, metric: str | None = None, *, partial: bool = True) -> pd.Series:
        """How much of `metric`'s variation (default: the objective) each searched
        hyperparameter explains, by Optuna's importance evaluators; largest first, summing to 1.

        For the objective the trials come from the stored Optuna study. Optuna alone counts only
        COMPLETE trials, and ASHA stops most of a search's trials; with `partial` (the default)
        the trials that did not run to the end (PRUNED by ASHA, or still running) count too, with
        their best value so far: the value they are ranked by. A stopped trial's value is
        pessimistic, which is why ASHA stopped it. For another metric, without a study, or for
        a multi-objective study, each trial's best value of that metric is used the same way.
        FAIL trials never count. The series' name says which evaluator answered and from how
        many trials.
        """
        import optuna

        metric = metric or self.metric
        mode = self.mode if metric == self.metric else direction(metric)
        if metric == self.metric and self.study is not None and len(self.study.directions) == 1:
            trials = _study_trials(self.study, partial)
        else:
            trials = self._frame_trials(metric, partial)
        which = "trials" if partial else "trials that ran to the end"
        if len(trials) < 2:
            raise ConfigError(f"parameter importances need at least 2 {which} with a {metric} "
                              f"value; {self.path} has {len(trials)}"
                              + ("" if partial else "; try partial=True"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with _no_study_created_line():
                study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
            study.add_trials(trials)
            importances, evaluator = _param_importances(study)
        series = pd.Series(importances, dtype=float).sort_values(ascending=False)
        series.name = f"importance for {metric} ({evaluator}, {len(trials)} {which})"
        return series

    def _frame_trials(self, metric: str, partial: bool) -> list[Any]:
        """Optuna trials built from the Tune trials' best values of `metric`."""
        import optuna

        from search_spaces import in_range

        if not self.distributions:
            raise ConfigError(f"{self.path} has no search plan, so the searched "
                              "hyperparameters and their ranges are unknown")
        ranked = self._ranking(metric)
        trials = []
        for row in ranked[ranked["value"].notna() & ~ranked["error"]].itertuples():
            record = self.trial(str(row.trial_id))
            if not partial and (record.unfinished or record.epochs_run < self.max_epochs):
                continue
            # A conditional parameter counts only where it was drawn: a weight switched off is
            # 0 in the config, outside its range, and was never a parameter of that trial.
            params = {k: record.config[k] for k, d in self.distributions.items()
                      if k in record.config and in_range(d, record.config[k])}
            try:
                trials.append(optuna.trial.create_trial(
                    params=params, distributions={k: self.distributions[k] for k in params},
                    value=float(row.value)))
            except ValueError as exc:  # e.g. a value outside a range edited since the search
                logger.warning("trial %s left out of the importances: %s", row.trial_id, exc)
        return trials


class _DropStudyCreated(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("A new study created")


@contextlib.contextmanager
def _no_study_created_line() -> Iterator[None]:
    """Hide Optuna's "A new study created in memory" for a scratch study, and only that: the
    user's Optuna verbosity is left as it is."""
    target = logging.getLogger("optuna")
    only = _DropStudyCreated()
    for handler in target.handlers:
        handler.addFilter(only)
    try:
        yield
    finally:
        for handler in target.handlers:
            handler.removeFilter(only)


def load_experiment(path: str | os.PathLike[str], metric: str | None = None) -> Experiment:
    """Read an experiment folder (local or URI) once: its plan, trials and epochs.

    `metric` ranks the trials (default: the search's objective, from its plan); an experiment
    from plain Ray Tune has no plan and needs it. ConfigError for a folder that holds no
    search, a damaged plan, or a metric that is unknown or was not reported; a damaged trial
    folder is left out with a warning (`Experiment.damaged`).
    """
    where = str(path)
    where = where.rstrip("/") if is_uri(where) else str(Path(where).expanduser().resolve())
    if metric is not None:
        direction(metric)  # an unknown metric is named before anything is read
    plan = SearchPlan.find(where)
    folder = _read_experiment(where, allow_empty=plan is not None)
    if metric is None:
        if plan is None:
            raise ConfigError(f"{where} has no search plan (search_plan.json) to take the "
                              "objective from; pass metric=")
        metric = plan.metric
    mode = plan.mode if plan is not None and metric == plan.metric else direction(metric)
    confirm_records: list[TrialRecord] = []
    damaged = folder.damaged
    confirm = join(where, CONFIRM_DIR)
    fs, inner = filesystem(confirm)
    import pyarrow.fs

    if fs.get_file_info(inner).type == pyarrow.fs.FileType.Directory:
        runs = _read_experiment(confirm, allow_empty=True)
        confirm_records, damaged = runs.records, [*damaged, *runs.damaged]
    return Experiment(where, plan, folder.records, folder.statuses, metric, mode,
                      confirm_records, damaged)


def asha_milestones(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """The epochs at which ASHA compares trials, as Ray's ASHAScheduler sets them:
    grace_period × reduction_factor^k below max_epochs; then max_epochs, the end."""
    if grace_period < 1 or reduction_factor <= 1 or max_epochs < 1:
        raise ConfigError(f"ASHA needs grace_period >= 1, reduction_factor > 1 and max_epochs "
                          f">= 1, but got ({grace_period}, {reduction_factor}, {max_epochs})")
    rungs: list[int] = []
    milestone = float(grace_period)
    while milestone < max_epochs:
        # A trial reports whole epochs; Ray compares it once it has reached the milestone.
        rungs.append(math.ceil(milestone))
        milestone *= reduction_factor
    return sorted({*rungs, max_epochs})


def _study_trials(study: optuna.Study, partial: bool) -> list[Any]:
    """The study's COMPLETE trials and, with `partial`, the PRUNED and RUNNING ones that
    reported, valued at their best intermediate value (a PRUNED trial's own value is its last)."""
    import optuna
    from optuna.trial import TrialState

    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    trials = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            value = trial.value
        elif (partial and trial.state in (TrialState.PRUNED, TrialState.RUNNING)
              and trial.intermediate_values):
            value = pick(trial.intermediate_values.values())
        else:
            continue
        trials.append(optuna.trial.create_trial(params=trial.params,
                                                distributions=trial.distributions, value=value))
    return trials


def _param_importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """fANOVA (seeded, so the same study gives the same answer) where scikit-learn is installed,
    else PED-ANOVA, which needs nothing more; and the name of the one that answered."""
    import optuna

    try:
        evaluator: optuna.importance.BaseImportanceEvaluator = (
            optuna.importance.FanovaImportanceEvaluator(seed=0))
        name = "fANOVA"
    except ImportError:  # fANOVA's random forest is scikit-learn's
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    return optuna.importance.get_param_importances(study, evaluator=evaluator), name


# ----------------------------------------------------------------------------- the readers

def load_trials(experiment: str) -> list[TrialRecord]:
    """Every trial of an experiment with its config and per-epoch results (a damaged trial
    folder is left out with a warning, see `_read_experiment`)."""
    where = experiment if is_uri(experiment) else str(Path(experiment).expanduser().resolve())
    return _read_experiment(where, allow_empty=False).records


@dataclass
class _Folder:
    """An experiment folder as read: its trials, Tune's statuses, and what was left out."""

    records: list[TrialRecord]
    statuses: dict[str, str]
    damaged: list[str]  # one message per damaged file, naming it and what is wrong


def _read_experiment(experiment: str, allow_empty: bool) -> _Folder:
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
    return _Folder(sorted(trials, key=lambda t: t.path), statuses, damaged)


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


def _history(trials: list[TrialRecord]) -> pd.DataFrame:
    rows = [{"trial_id": t.trial_id, **r} for t in trials for r in t.history]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["trial_id", "epoch"])


def _trials(experiment: str | list[TrialRecord]) -> list[TrialRecord]:
    """An experiment's trials: read from its folder, or the records already read."""
    return load_trials(experiment) if isinstance(experiment, str) else experiment


def _full_length(trials: list[TrialRecord]) -> int:
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
    full = max_epochs or _full_length(trials)
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
        if "confirms" in t.config:
            row["confirms"] = t.config["confirms"]
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


def _best_row(history: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    values = [r for r in history if isinstance(r.get(metric), (int, float))]
    return (min if mode == "min" else max)(values, key=lambda r: r[metric]) if values else {}


def _mean(values: list[float]) -> float:
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
