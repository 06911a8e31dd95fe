"""Pareto-aware asynchronous successive halving (MO-ASHA, Schmucker et al. 2021) for Ray Tune.

Why: Ray's schedulers rank trials on one metric (ray#8018), and Optuna's pruners are
single-objective, but this project trades off two or more objectives (image quality against
identity preservation). Folding them into one weighted score picks the trade-off before the
search has seen any trial; ranking by Pareto dominance keeps every trade-off that is not beaten
on all objectives at once.

The rule, one bracket like Ray's `ASHAScheduler`: rungs at `grace_period * reduction_factor**k`
strictly below `max_t`. When a result first reaches a rung, the trial's objective vector is
recorded there and all vectors recorded at that rung are ordered by `pareto_order`: by
non-dominated front, then within a front by descending crowding distance, then by the order they
were recorded. The trial continues if its position is below `max(1, ceil(n / reduction_factor))`
(n counts it too: the first trial at a rung always continues, as in ASHA), else it is stopped.
A missing or non-finite objective counts as the worst possible value. As in ASHA, only the
highest rung a result newly reaches decides (a result that jumps several rungs fills the lower
ones with later results), a trial's final result is recorded but decides nothing, and a trial
that reaches `max_t` is stopped (unless `stop_last_trials=False`). Ray's ASHA also puts a rung
at `max_t` itself when it falls on the grid; with `stop_last_trials` that rung can only collect
finished trials, so it is left out here.

Why crowding distance breaks ties inside a front: the boundary points of front 0 are the best
trial on each objective, the ones a scalar ASHA on that objective alone would keep first. They
get an infinite distance, so they are kept first here too (whenever a rung keeps at least as
many trials as there are extremes; two tied extremes go by recording order). The interior
points that survive are those furthest from their neighbours, which spreads the survivors along
the front instead of letting them bunch up in one region. It is cheap (a sort per objective)
and deterministic, so a decision can be replayed from the recorded rungs.

`Tuner.restore` does not restore a scheduler's state (ray#30838); `ParetoStateCallback` saves
the rungs with the experiment and puts them back, like `optuna_asha.AshaStateCallback` does for
ASHA.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune_dsr.tuning.rungs import rung_milestones

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = [
    "ParetoASHA",
    "ParetoStateCallback",
    "crowding_distance",
    "hypervolume",
    "non_dominated_fronts",
    "pareto_order",
]

logger = logging.getLogger(__name__)

_MODES = ("max", "min")


def _signs(signs: Sequence[str | float], m: int) -> np.ndarray:
    """+1 per objective to maximise, -1 per objective to minimise."""
    if len(signs) != m:
        raise ValueError(f"one sign or mode per objective: got {len(signs)} for {m} objectives")
    out = []
    for sign in signs:
        if sign in ("max", 1):
            out.append(1.0)
        elif sign in ("min", -1):
            out.append(-1.0)
        else:
            raise ValueError(f"a sign must be 'max', 'min', 1 or -1, got {sign!r}")
    return np.array(out)


def _as_points(points: Any) -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"points must be an n x m array, got shape {array.shape}")
    return array


def non_dominated_fronts(points: np.ndarray, signs: Sequence[str | float]) -> list[np.ndarray]:
    """Indices of `points` (n x m) split into non-dominated fronts, front 0 first.

    `signs` gives each objective's direction: "max"/"min" (or +1/-1). A point with a NaN or
    infinite objective is worse than every finite point: all such points form the last front.
    Indices inside a front are ascending.
    """
    array = _as_points(points)
    if len(array) == 0:
        return []
    maxed = array * _signs(signs, array.shape[1])
    valid = np.isfinite(maxed).all(axis=1)
    left = np.flatnonzero(valid)
    fronts = []
    if len(left):
        finite = maxed[left]
        # dominates[i, j]: i is at least as good on every objective and better on one.
        at_least = (finite[:, None, :] >= finite[None, :, :]).all(axis=2)
        better = (finite[:, None, :] > finite[None, :, :]).any(axis=2)
        dominates = at_least & better
        remaining = np.ones(len(left), dtype=bool)
        while remaining.any():
            beaten = dominates[remaining][:, remaining].any(axis=0)
            members = np.flatnonzero(remaining)[~beaten]
            fronts.append(left[members])
            remaining[members] = False
    if not valid.all():
        fronts.append(np.flatnonzero(~valid))
    return fronts


def hypervolume(points: Any, modes: Sequence[str | float], reference: Sequence[float]) -> float:
    """The volume of objective space that `points` dominate and that dominates `reference`
    (the worst corner, in the points' own units): the usual single figure for how good a front
    is, 0 for none. Exact, by slicing one objective at a time (fine for the tens of points of a
    search); points with a non-finite value, or not beyond `reference` on every objective,
    add nothing."""
    array = _as_points(points)
    signs = _signs(modes, array.shape[1])
    ref = np.asarray(reference, dtype=float) * signs
    if ref.shape != (array.shape[1],):
        raise ValueError(f"one reference value per objective: got {ref.shape[0]} for "
                         f"{array.shape[1]} objectives")
    maximised = array * signs
    keep = np.isfinite(maximised).all(axis=1) & (maximised > ref).all(axis=1)
    return float(_slices(maximised[keep], ref))


def _slices(points: np.ndarray, ref: np.ndarray) -> float:
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(points[:, 0].max() - ref[0])
    ordered = points[np.argsort(-points[:, -1], kind="stable")]
    volume = 0.0
    for i, point in enumerate(ordered):
        floor = ordered[i + 1, -1] if i + 1 < len(ordered) else ref[-1]
        if point[-1] > floor:  # the slab between this level and the next one down
            volume += (point[-1] - floor) * _slices(ordered[: i + 1, :-1], ref[:-1])
    return volume


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each point of one front (n x m).

    Per objective the points are sorted (stably, so ties keep index order); the first and last
    get an infinite distance, an interior point the gap between its neighbours divided by the
    objective's range. Distances add over objectives. The direction of an objective does not
    matter. Fronts of one or two points are all boundary: infinite.
    """
    array = _as_points(points)
    n, m = array.shape
    distance = np.zeros(n)
    if n <= 2:
        distance[:] = np.inf
        return distance
    for k in range(m):
        order = np.argsort(array[:, k], kind="stable")
        values = array[order, k]
        distance[order[0]] = distance[order[-1]] = np.inf
        spread = values[-1] - values[0]
        if spread > 0:  # all equal: no interior point is more isolated than another
            distance[order[1:-1]] += (values[2:] - values[:-2]) / spread
    return distance


def pareto_order(points: np.ndarray, modes: Sequence[str | float]) -> np.ndarray:
    """Indices of `points` best first: by front, then by descending crowding distance, then by
    index (so the order is deterministic and an earlier point wins a tie)."""
    array = _as_points(points)
    maxed = array * _signs(modes, array.shape[1]) if len(array) else array
    ordered = []
    for front in non_dominated_fronts(array, modes):
        if np.isfinite(maxed[front]).all():
            distance = crowding_distance(maxed[front])
        else:
            distance = np.zeros(len(front))  # the non-finite front: by index only
        ordered.append(front[np.lexsort((front, -distance))])
    return np.concatenate(ordered) if ordered else np.zeros(0, dtype=int)


def _objective(value: Any) -> float:
    """A reported value as a float; anything missing, non-numeric or non-finite is NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


class ParetoASHA(FIFOScheduler):
    """Asynchronous successive halving on several objectives, ranked by Pareto dominance.

    `metrics` and `modes` ("max"/"min") name the objectives, in pairs. `time_attr`, `max_t`,
    `grace_period`, `reduction_factor` and `stop_last_trials` mean what they mean for Ray's
    `ASHAScheduler` (one bracket). See the module docstring for the rule.

    `stopped_at` maps each trial stopped at a rung to that rung's milestone; `finished` holds
    the trials stopped on reaching `max_t`.
    """

    def __init__(self, metrics: Sequence[str], modes: Sequence[str], time_attr: str = "epoch",
                 max_t: float = 100, grace_period: float = 1, reduction_factor: float = 4,
                 stop_last_trials: bool = True) -> None:
        if isinstance(metrics, str) or not metrics:
            raise ValueError(f"metrics must be a non-empty list of result keys, got {metrics!r}")
        if isinstance(modes, str) or len(modes) != len(metrics):
            raise ValueError(f"modes must be a list with one mode per metric: got "
                             f"modes={modes!r} for metrics={list(metrics)!r}")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics must not repeat a name, got {list(metrics)!r}")
        bad = [mode for mode in modes if mode not in _MODES]
        if bad:
            raise ValueError(f"modes must each be 'max' or 'min', got {bad!r} in {list(modes)!r}")
        if not time_attr or not isinstance(time_attr, str):
            raise ValueError(f"time_attr must name a result key, got {time_attr!r}")
        if not max_t > 0:
            raise ValueError(f"max_t > 0 must hold, but got max_t={max_t}")
        if not 0 < grace_period <= max_t:
            raise ValueError(f"0 < grace_period <= max_t must hold, but got "
                             f"grace_period={grace_period}, max_t={max_t}")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor > 1 must hold (it keeps 1/reduction_factor of a "
                             f"rung), but got reduction_factor={reduction_factor}")
        super().__init__()
        self._metrics = list(metrics)
        self._modes = list(modes)
        self._time_attr = time_attr
        self._max_t = max_t
        self._grace_period = grace_period
        self._rf = reduction_factor
        self._stop_last_trials = stop_last_trials
        milestones = rung_milestones(grace_period, reduction_factor, max_t)
        # Highest first, as in Ray's _Bracket: a result is decided at the highest rung it reached.
        self._rungs: list[tuple[float, dict[str, list[float]]]] = [
            (m, {}) for m in reversed(milestones)]
        self.stopped_at: dict[str, float] = {}
        self.finished: set[str] = set()
        self.num_decisions = 0
        self._warned: set[str] = set()

    # `metric` (TrialScheduler's single name) stays None: Ray checks every result holds it and
    # fails the trial if not, while here a missing objective counts as worst, with a warning.
    @property
    def metrics(self) -> list[str]:
        return list(self._metrics)

    @property
    def modes(self) -> list[str]:
        return list(self._modes)

    @property
    def milestones(self) -> list[float]:
        """The rungs, lowest first."""
        return [milestone for milestone, _ in reversed(self._rungs)]

    @property
    def num_stopped(self) -> int:
        """Trials stopped at a rung (not counting those stopped at max_t)."""
        return len(self.stopped_at)

    def set_search_properties(self, metric: str | Sequence[str] | None,
                              mode: str | Sequence[str] | None, **spec: Any) -> bool:
        """Accept what `TuneConfig(metric=..., mode=...)` passes: None, one name or a list.

        The scheduler ranks on its own `metrics`; the TuneConfig's metric (e.g. the one to pick
        the best result by) is not an error. A metric named in both with opposite modes is.
        """
        names = [metric] if isinstance(metric, str) else list(metric or [])
        directions = [mode] if isinstance(mode, str) else list(mode or [])
        for name, direction in zip(names, directions, strict=False):
            if name in self._metrics and direction != self._modes[self._metrics.index(name)]:
                raise ValueError(
                    f"TuneConfig says mode={direction!r} for {name!r} but ParetoASHA says "
                    f"{self._modes[self._metrics.index(name)]!r}: make them agree")
        return True

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        if self._time_attr not in result:
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t and self._stop_last_trials:
            self.finished.add(trial.trial_id)
            return TrialScheduler.STOP
        return self._on_result(trial.trial_id, result, decide=True)

    def on_trial_complete(self, tune_controller: Any, trial: Trial,
                          result: dict[str, Any]) -> None:
        # As ASHA: a final result that reaches a new rung is recorded (later trials are compared
        # with it) but decides nothing.
        if result and self._time_attr in result:
            self._on_result(trial.trial_id, result, decide=False)

    def _vector(self, result: dict[str, Any]) -> list[float]:
        for name in self._metrics:
            if name not in result and name not in self._warned:
                self._warned.add(name)
                logger.warning("ParetoASHA: a result has no %r; counted as the worst value "
                               "(is the metric name right?)", name)
        return [_objective(result.get(name)) for name in self._metrics]

    def _on_result(self, trial_id: str, result: dict[str, Any], decide: bool) -> str:
        now = result[self._time_attr]
        for milestone, recorded in self._rungs:
            # Mirrors Ray's _Bracket.on_result: the highest rung reached and not yet recorded
            # takes the result; with stop_last_trials off, a recorded higher rung ends the search.
            if now >= milestone and trial_id in recorded and not self._stop_last_trials:
                break
            if now < milestone or trial_id in recorded:
                continue
            recorded[trial_id] = self._vector(result)
            if decide:
                return self._decide(trial_id, milestone, recorded)
            break
        return TrialScheduler.CONTINUE

    def _decide(self, trial_id: str, milestone: float, recorded: dict[str, list[float]]) -> str:
        ids = list(recorded)
        order = pareto_order(np.array([recorded[i] for i in ids]), self._modes)
        position = int(np.flatnonzero(order == ids.index(trial_id))[0])
        keep = max(1, math.ceil(len(ids) / self._rf))
        self.num_decisions += 1
        if position < keep:
            logger.debug("ParetoASHA: trial %s continues at %s=%s (position %d, keep %d of %d)",
                         trial_id, self._time_attr, milestone, position, keep, len(ids))
            return TrialScheduler.CONTINUE
        self.stopped_at[trial_id] = milestone
        logger.info("ParetoASHA: trial %s stopped at %s=%s (position %d, keep %d of %d)",
                    trial_id, self._time_attr, milestone, position, keep, len(ids))
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = " | ".join(f"{self._time_attr} {m}: {len(r)} recorded"
                           for m, r in reversed(self._rungs))
        return (f"Using ParetoASHA on {self._metrics} ({self._modes}): "
                f"num_stopped={self.num_stopped}, finished={len(self.finished)}\n{rungs}")

    def get_rung_state(self) -> dict[str, Any]:
        """The rungs and counters as plain JSON (NaN written as null)."""
        def plain(values: list[float]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        return {
            "metrics": list(self._metrics), "modes": list(self._modes),
            "rungs": [[m, {tid: plain(v) for tid, v in r.items()}] for m, r in self._rungs],
            "stopped_at": dict(self.stopped_at), "finished": sorted(self.finished),
            "num_decisions": self.num_decisions,
        }

    def set_rung_state(self, state: dict[str, Any]) -> None:
        """Put back what `get_rung_state` returned (from a scheduler with the same settings)."""
        if state["metrics"] != self._metrics or state["modes"] != self._modes:
            raise ValueError(f"the state ranks {state['metrics']} ({state['modes']}) but this "
                             f"scheduler ranks {self._metrics} ({self._modes})")
        milestones = [m for m, _ in state["rungs"]]
        if milestones != [m for m, _ in self._rungs]:
            raise ValueError(f"the state has rungs at {milestones} but this scheduler at "
                             f"{[m for m, _ in self._rungs]}: build it with the same max_t, "
                             "grace_period and reduction_factor")
        self._rungs = [(m, {tid: [_objective(v) for v in values]
                            for tid, values in recorded.items()})
                       for (m, _), (_, recorded) in zip(self._rungs, state["rungs"], strict=True)]
        self.stopped_at = dict(state["stopped_at"])
        self.finished = set(state["finished"])
        self.num_decisions = int(state["num_decisions"])

    # Tune's own scheduler checkpoint hooks (ASHA pickles itself); the same state, as JSON.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_rung_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_rung_state(json.load(f))


class ParetoStateCallback(Callback):
    """Saves ParetoASHA's rungs with the experiment and puts them back on `Tuner.restore`.

    It holds the same scheduler object as the `TuneConfig`; both are pickled together in the
    experiment, so after a restore this callback still points at the scheduler Tune uses.
    """

    def __init__(self, scheduler: ParetoASHA) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return self.scheduler.get_rung_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_rung_state(state)
        logger.info("Restored ParetoASHA rungs: %s",
                    [(m, len(recorded)) for m, recorded in state["rungs"]])
