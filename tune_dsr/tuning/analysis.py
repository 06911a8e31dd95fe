"""Read a search's experiment folder: its trials, their epochs, ASHA's rungs, the Optuna study.

    from tune_dsr.tuning.analysis import load_experiment
    exp = load_experiment("tune_results/NAME")        # or "s3://bucket/tune_results/NAME"
    exp.trials                  # one row per trial, best first by the search's objective
    exp.history                 # one row per trial and epoch
    exp.top(5)                  # the ranking export's --rank takes: confirmed configurations first
    exp.top(5, "val_psnr")      # the five best trials by another metric
    exp.front(["val_psnr", "val_margin"])   # any search: the non-dominated trials
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

The readers it builds on (`load_trials`, `trials_frame`, `epochs_saved`, `unfinished_trials`)
live in `tune_dsr.tuning.records`, the winner and the verdict in `tune_dsr.tuning.verdict`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tune_dsr.config import ANCHOR, CONFIRMS, PIXEL_ONLY, direction
from tune_dsr.errors import ConfigError
from tune_dsr.statistics import t_interval
from tune_dsr.tuning.experiment import (
    CONFIRM_DIR,
    DAMAGE,
    STUDY_FILE,
    SearchPlan,
    filesystem,
    is_uri,
    join,
)
from tune_dsr.tuning.records import (
    UNFINISHED,
    TrialRecord,
    best_row,
    finite_mean,
    full_length,
    history_frame,
    read_experiment,
    trials_frame,
)
from tune_dsr.tuning.rungs import rung_milestones
from tune_dsr.tuning.verdict import GAIN_OF, Verdict, Winner

if TYPE_CHECKING:
    import optuna

__all__ = [
    "Experiment",
    "asha_milestones",
    "load_experiment",
]

logger = logging.getLogger(__name__)


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
        self.max_epochs = plan.max_epochs if plan else full_length(records)
        self.patience = plan.patience if plan else 0
        self._ranked: dict[str, pd.DataFrame] = {}
        self.trials = self._ranking(metric)  # checks the metric was reported
        self.history = history_frame(records)
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
            from tune_dsr.tuning.presets import load_preset

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
        for trial_id, runs in frame[frame["value"].notna()].groupby(CONFIRMS, sort=False):
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
            runs = self.confirm_trials[self.confirm_trials[CONFIRMS] == trial_id]
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
        rows = ([best_row(r.history, self.metric, self.mode) for r in winner.run_records]
                if winner.run_records else
                [best_row(self.trial(winner.trial_id).history, self.metric, self.mode)])
        rows = [r for r in rows if r]
        gains = [float(r.get(gain_metric, math.nan)) for r in rows]
        halves = [float(r.get(f"{gain_metric}_ci", math.nan)) for r in rows]
        rank1 = [float(r.get("val_rank1_full_gain", math.nan)) for r in rows]
        rank1_halves = [float(r.get("val_rank1_full_gain_ci", math.nan)) for r in rows]
        best_epochs = [int(r.get("epoch", 0)) for r in rows]
        from tune_dsr.config import Config

        warmup = Config.from_dict(self.trial(winner.trial_id).config).train.warmup_epochs
        pixel = self.trials[(self.trials[ANCHOR] == PIXEL_ONLY)
                            & self.trials["value"].notna()]
        pixel_value = float(pixel["value"].iloc[0]) if len(pixel) else None
        confirmed = self.confirmations()
        if pixel_value is not None and str(pixel["trial_id"].iloc[0]) in confirmed.index:
            pixel_value = float(confirmed.loc[str(pixel["trial_id"].iloc[0]), "mean"])
        return Verdict.of(self.metric, self.mode, winner, gain_metric, finite_mean(gains),
                          finite_mean(halves), finite_mean(rank1), finite_mean(rank1_halves),
                          best_epochs, warmup, pixel_value)

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

        from tune_dsr.tuning.presets import in_range

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
    folder = read_experiment(where, allow_empty=plan is not None)
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
        runs = read_experiment(confirm, allow_empty=True)
        confirm_records, damaged = runs.records, [*damaged, *runs.damaged]
    return Experiment(where, plan, folder.records, folder.statuses, metric, mode,
                      confirm_records, damaged)


def asha_milestones(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """The epochs at which ASHA compares trials, as Ray's ASHAScheduler sets them:
    grace_period × reduction_factor^k below max_epochs; then max_epochs, the end."""
    if grace_period < 1 or reduction_factor <= 1 or max_epochs < 1:
        raise ConfigError(f"ASHA needs grace_period >= 1, reduction_factor > 1 and max_epochs "
                          f">= 1, but got ({grace_period}, {reduction_factor}, {max_epochs})")
    # A trial reports whole epochs; Ray compares it once it has reached the milestone.
    rungs = {math.ceil(m) for m in rung_milestones(grace_period, reduction_factor, max_epochs)}
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
