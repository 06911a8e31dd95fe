"""Ray Tune + Optuna pieces that fix the known traps of using them together.

- `PruneAwareOptunaSearch`: Ray's `OptunaSearch` tells Optuna that a trial ASHA stopped early is
  COMPLETE with its truncated last value, so TPE learns from early numbers as if they were final.
  Here every epoch the trial's best value so far goes to the Optuna trial as an intermediate value
  (a trial is kept and ranked at its best epoch), and a trial that ended before the last epoch
  without error is told as PRUNED (Optuna's TPE handles pruned trials by their intermediate
  values). With several objectives (a list of metrics) a trial that ran to the end, or that its
  own patience ended, is told its point; one that the Pareto-aware ASHA stopped is PRUNED
  (multi-objective TPE ranks those below the complete trials).
- `AshaStateCallback`: `Tuner.restore` brings back the searcher but not ASHA's rungs (ray#30838);
  this callback's state is saved with the experiment and puts the rungs back.
- `check_storage_reachable`: a multi-node search needs a storage path every node can reach.
- `FixedConfigs`: a searcher that runs a given list of configurations (the confirmation runs),
  resumable with the experiment.

The first two reach into private attributes of Ray and Optuna (versions tested: see the bounds in
pyproject.toml). `check_private_api` looks for each of them before a search starts, so a release
that renamed one fails at once with a message that says so, not halfway through a search.
"""
from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tune_dsr.errors import ConfigError
from tune_dsr.tuning.experiment import is_uri, trial_folder
from tune_dsr.tuning.presets import SearchSpace

__all__ = [
    "AshaStateCallback",
    "FixedConfigs",
    "PrivateApiChanged",
    "PruneAwareOptunaSearch",
    "check_private_api",
    "check_storage_reachable",
    "coverage_points",
    "make_sampler",
    "trial_dirname",
]

logger = logging.getLogger(__name__)


class PruneAwareOptunaSearch(OptunaSearch):
    """`OptunaSearch` that reports per-epoch values and marks early-stopped trials PRUNED.

    `max_epochs` is the full length of a trial; `step_key` the result key that counts epochs.
    """

    def __init__(self, *args: Any, max_epochs: int, step_key: str = "epoch", patience: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._step_key = step_key
        self._patience = patience
        self._last_step: dict[str, int] = {}

    def _study(self) -> optuna.Study:
        if self._ot_study is None:
            raise RuntimeError("the Optuna study is not set up: give the searcher a space, "
                               "a metric and a mode")
        return self._ot_study

    @property
    def _several(self) -> bool:
        """Several objectives: Optuna takes no intermediate values then (``Trial.report`` is
        single-objective); a trial is told its point when it ends, or PRUNED."""
        return isinstance(self.metric, list)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if self._several:
            return
        # The trial's best so far (the trainer's best_<objective>): a trial is ranked, exported
        # and kept (best.pt) at its best epoch, so Optuna judges it there too, also when ASHA or
        # the patience stopped it after a decline.
        value = result.get(f"best_{self.metric}", result.get(self.metric))
        step = result.get(self._step_key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or step is None:
            return
        step = int(step)
        # A trial retried from its checkpoint reports some epochs again: report each step once.
        if step <= self._last_step.get(trial_id, 0):
            return
        self._last_step[trial_id] = step
        try:
            self._ot_trials[trial_id].report(float(value), step)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Finished in the study already (see `restore`): its repeated epochs change nothing.
            self._completed_trials.add(trial_id)
            logger.info("trial %s is finished in the Optuna study; its repeated epoch %d is "
                        "not reported again", trial_id, step)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result and not error and not self._several:
            self.on_trial_result(trial_id, result)  # Ray passes the last epoch here, not there
        epochs = int(result.get(self._step_key, 0)) if result else 0
        if error or epochs >= self._max_epochs:
            if result and not self._several and f"best_{self.metric}" in result:
                result = {**result, self.metric: result[f"best_{self.metric}"]}
            super().on_trial_complete(trial_id, result, error)
            return
        since = result.get("epochs_since_best") if result else None
        if (self._several and not error and self._patience and since is not None
                and since >= self._patience):
            # Ended by its own patience: its kept epoch, its point, will not change. With
            # several objectives Optuna has no intermediate values to judge a PRUNED trial by,
            # so it is told its point like a trial that ran to the end.
            super().on_trial_complete(trial_id, result, error)
            return
        # Stopped early (ASHA, time budget): PRUNED, judged by its intermediate values.
        self._study().tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        study = self._study()
        frozen_by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        known = set()
        for trial_id, ot_trial in self._ot_trials.items():
            known.add(ot_trial.number)
            frozen = frozen_by_number.get(ot_trial.number)
            # The study (SQLite, written at once) can be ahead of this pickle (written every few
            # seconds): a trial that ended between the two is finished there. Tune re-runs it
            # from its checkpoint; Optuna must not be told its epochs again.
            if (trial_id not in self._completed_trials and frozen is not None
                    and frozen.state.is_finished()):
                self._completed_trials.add(trial_id)
                logger.info("Optuna trial %d finished before the driver died; its epochs are "
                            "not reported again", ot_trial.number)
        # Trials asked after the experiment's last checkpoint are lost to Tune (a killed driver)
        # but stand RUNNING in the stored study: close them, so the study holds no ghosts.
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                study.tell(frozen.number, state=TrialState.FAIL)
                logger.info("Optuna trial %d was lost with the driver; marked FAIL",
                            frozen.number)


def make_sampler(seed: int, num_samples: int) -> optuna.samplers.TPESampler:
    """Seeded TPE; `constant_liar` so parallel trials are not proposed as near-duplicates.

    Random start-up trials: a quarter of the budget, between 2 and 10 (Optuna's default 10 would
    leave a small search with no model-guided trials at all).
    """
    startup = max(2, min(10, num_samples // 4))
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True,
                                      n_startup_trials=startup)


def coverage_points(distributions: dict[str, optuna.distributions.BaseDistribution],
                    taken: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """Partial start-up points so that every choice of every categorical parameter (a loss
    term's on/off switch, the bicubic skip, the width...) is tried at least once, beside the
    `taken` points (the anchors), in at most `budget` trials.

    Point k holds the k-th untried choice of each parameter that still has one; the other
    parameters are left to the sampler. Why: the anchors carry the guide's values, and with a
    few random start-up trials multivariate TPE can keep exploiting a choice it never saw the
    alternative of (on real faces not one of 12 trials drew ``bicubic_residual=True``, which is
    what lets a short run beat bicubic).
    """
    untried: dict[str, list[Any]] = {}
    for name, dist in distributions.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            seen = {point[name] for point in taken if name in point}
            left = [choice for choice in dist.choices if choice not in seen]
            if left:
                untried[name] = left
    needed = max((len(left) for left in untried.values()), default=0)
    if needed > budget:
        logger.warning("%d trial(s) after the anchors cannot try every categorical choice "
                       "(%d needed); some choices of %s are left to the sampler", budget, needed,
                       ", ".join(n for n, left in untried.items() if len(left) > budget))
    return [{name: left[k] for name, left in untried.items() if k < len(left)}
            for k in range(min(needed, max(budget, 0)))]


class AshaStateCallback(Callback):
    """Saves ASHA's rung records with the experiment and puts them back on `Tuner.restore`.

    It holds the same scheduler object as the `TuneConfig`; both are pickled together in the
    experiment, so after a restore this callback still points at the scheduler Tune uses.
    """

    def __init__(self, scheduler: ASHAScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        rungs = [[(float(milestone), dict(recorded)) for milestone, recorded in bracket._rungs]
                 for bracket in self.scheduler._brackets]
        return {"rungs": rungs, "num_stopped": self.scheduler._num_stopped}

    def set_state(self, state: dict[str, Any]) -> None:
        for bracket, rungs in zip(self.scheduler._brackets, state["rungs"], strict=False):
            bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in rungs]
        self.scheduler._num_stopped = state["num_stopped"]
        logger.info("Restored ASHA rungs: %s",
                    [(m, len(r)) for rungs in state["rungs"] for m, r in rungs])


# Experiments searched before the pinned space moved to search_spaces pickled it under this name.
_PinnedSpace = SearchSpace


class FixedConfigs(Searcher):
    """Suggests each of `configs` once, in order, then reports the search finished.

    Its state (the list and how far it got) is saved with the experiment as JSON, so a resumed
    experiment neither repeats nor skips a configuration.
    """

    def __init__(self, configs: list[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.configs = [dict(config) for config in configs]
        self.given = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        return True  # the configurations are complete; Tune's param_space adds nothing

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.given >= len(self.configs):
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's own sentinel
        self.given += 1
        return dict(self.configs[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        return None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"configs": self.configs, "given": self.given}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.configs, self.given = state["configs"], int(state["given"])


class PrivateApiChanged(RuntimeError):
    """Ray or Optuna no longer has a private attribute this module relies on."""


def check_private_api() -> None:
    """Fail now, with the versions to use, if Ray or Optuna renamed what the fixes here use.

    Cheap (an in-memory study, an unused scheduler); run before a search starts.
    """
    problems = []
    searcher = OptunaSearch(space=lambda trial: None, metric="m", mode="max")
    for name in ("_ot_study", "_ot_trials", "_completed_trials"):
        if not hasattr(searcher, name):
            problems.append(f"ray.tune.search.optuna.OptunaSearch.{name}")
    scheduler = ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1)
    brackets = getattr(scheduler, "_brackets", None)
    if not isinstance(brackets, list) or not brackets:
        problems.append("ray.tune.schedulers.ASHAScheduler._brackets")
    elif not isinstance(getattr(brackets[0], "_rungs", None), list):
        problems.append("ray.tune.schedulers.async_hyperband._Bracket._rungs")
    if not hasattr(scheduler, "_num_stopped"):
        problems.append("ray.tune.schedulers.ASHAScheduler._num_stopped")
    if not hasattr(optuna.distributions.FloatDistribution(0, 1), "_contains"):
        problems.append("optuna.distributions.BaseDistribution._contains")
    if problems:
        raise PrivateApiChanged(
            f"this Ray {ray.__version__} / Optuna {optuna.__version__} lacks "
            f"{', '.join(problems)}, which tune_dsr's fixes of OptunaSearch and ASHA rely on; "
            "install the versions pyproject.toml names (ray[tune] and optuna), or update "
            "tune_dsr/tuning/optuna_asha.py for this release")


# What the experiment pickles must live in an importable module, not in `python -m` __main__,
# or --resume could not unpickle it.
def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default spells out every parameter)."""
    return trial_folder(trial.trial_id)


@ray.remote(num_cpus=0)
def _sees_marker(uri: str, marker: str) -> bool:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    return fs.get_file_info(f"{path.rstrip('/')}/{marker}").type != pyarrow.fs.FileType.NotFound


def check_storage_reachable(storage: str) -> list[str]:
    """Write a marker at `storage` and check every alive Ray node sees it.

    Returns the ids of nodes that cannot see it (empty: shared). Raises ConfigError if the driver
    itself cannot write there.
    """
    import pyarrow.fs
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    uri = storage if is_uri(storage) else f"file://{storage}"
    marker = f".tune_dsr_reach_{uuid.uuid4().hex}"
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path.rstrip('/')}/{marker}") as out:
            out.write(b"tune_dsr")
    except Exception as exc:
        raise ConfigError(f"--storage-path {storage} cannot be written from this machine "
                          f"({exc}); give a writable folder, a shared (NFS) mount or an s3:// "
                          "URI with credentials set") from exc
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) == 1 and nodes[0]["NodeID"] == ray.get_runtime_context().get_node_id():
            return []  # only the driver's own node, which has just written the marker
        checks = {n["NodeID"]: _sees_marker.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(uri, marker) for n in nodes}
        return [node for node, ref in checks.items() if not ray.get(ref, timeout=120)]
    finally:
        fs.delete_file(f"{path.rstrip('/')}/{marker}")
