"""ParetoASHA: the pure ranking functions on hand-made fronts, the rung rule on real Ray trials
(stubs fed results, and one real Tune run), the state round trip and the argument checks."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray import tune
from ray.tune.callback import CallbackList
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_dsr.tuning.pareto_asha import (
    ParetoASHA,
    ParetoStateCallback,
    crowding_distance,
    non_dominated_fronts,
    pareto_order,
)

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
NAN = math.nan


def _fronts(points, signs) -> list[list[int]]:
    return [front.tolist() for front in non_dominated_fronts(np.array(points, float), signs)]


# ----------------------------------------------------------------------------- pure functions

def test_fronts_of_a_two_objective_maximisation():
    points = [[1, 5], [2, 4], [3, 3], [1, 1], [2, 2], [3, 3]]
    # (3, 3) twice: equal points do not dominate each other, so both are in front 0.
    assert _fronts(points, ["max", "max"]) == [[0, 1, 2, 5], [4], [3]]


def test_fronts_with_one_objective_minimised():
    # max f1, min f2: (3, 3) is now beaten by nothing, (1, 1) is the best on f2.
    points = [[1, 5], [2, 4], [3, 3], [1, 1], [2, 2]]
    assert _fronts(points, ["max", "min"]) == [[2, 3, 4], [1], [0]]
    assert _fronts(points, [1, -1]) == _fronts(points, ["max", "min"])
    assert _fronts(points, ["min", "min"]) == [[3], [0, 4], [1, 2]]


def test_nan_and_inf_are_worst_whatever_the_other_objective():
    points = [[NAN, 9], [1, 1], [np.inf, 9], [0, 0], [5, -np.inf]]
    assert _fronts(points, ["max", "max"]) == [[1], [3], [0, 2, 4]]
    assert pareto_order(np.array(points), ["max", "max"]).tolist() == [1, 3, 0, 2, 4]


def test_crowding_distance_is_infinite_at_each_objectives_extremes():
    front = np.array([[0.0, 1.0], [0.4, 0.6], [0.5, 0.5], [1.0, 0.0]])
    distance = crowding_distance(front)
    assert np.isinf(distance[[0, 3]]).all()
    # Interior: neighbours' gap over the range, summed over both objectives.
    assert distance[1:3].tolist() == pytest.approx([0.5 + 0.5, 0.6 + 0.6])
    assert np.isinf(crowding_distance(front[:2])).all()
    assert crowding_distance(-front).tolist() == distance.tolist()  # direction-free


def test_pareto_order_by_front_then_crowding_then_index():
    points = np.array([
        [0.4, 0.6],  # 0: front 0, interior, crowding 1.0
        [0.0, 1.0],  # 1: front 0, extreme
        [0.5, 0.5],  # 2: front 0, interior, crowding 1.2
        [1.0, 0.0],  # 3: front 0, extreme
        [0.1, 0.1],  # 4: front 2, beaten by 5 too
        [0.3, 0.4],  # 5: front 1, beaten by 0 and 2
    ])
    assert _fronts(points, ["max", "max"]) == [[0, 1, 2, 3], [5], [4]]
    assert pareto_order(points, ["max", "max"]).tolist() == [1, 3, 2, 0, 5, 4]
    # Minimising both: (0.1, 0.1) joins the extremes on front 0, (0.3, 0.4) beats 0 and 2.
    assert _fronts(points, ["min", "min"]) == [[1, 3, 4], [5], [0, 2]]
    assert pareto_order(points, ["min", "min"]).tolist() == [1, 3, 4, 5, 0, 2]


def test_pure_functions_reject_bad_shapes_and_signs():
    with pytest.raises(ValueError, match="one sign or mode per objective"):
        pareto_order(np.zeros((3, 2)), ["max"])
    with pytest.raises(ValueError, match="'up'"):
        non_dominated_fronts(np.zeros((3, 2)), ["max", "up"])
    with pytest.raises(ValueError, match="n x m"):
        crowding_distance(np.zeros(3))
    assert non_dominated_fronts(np.zeros((0, 2)), ["max", "max"]) == []
    assert pareto_order(np.zeros((0, 2)), ["max", "max"]).tolist() == []


# ----------------------------------------------------------------------------- the rung rule

def _trials(n: int) -> list[Trial]:
    return [Trial("unit_trainable", stub=True) for _ in range(n)]


def _scheduler(**kwargs: Any) -> ParetoASHA:
    settings = {"metrics": ["f1", "f2"], "modes": ["max", "max"], "time_attr": "epoch",
                "max_t": 8, "grace_period": 1, "reduction_factor": 2, **kwargs}
    return ParetoASHA(**settings)


def _report(scheduler: ParetoASHA, trial: Trial, epoch: int, f1: float, f2: float) -> str:
    return scheduler.on_trial_result(None, trial, {"epoch": epoch, "f1": f1, "f2": f2})


def test_rungs_like_asha_strictly_below_max_t():
    assert _scheduler().milestones == [1, 2, 4]
    assert _scheduler(max_t=9, reduction_factor=3).milestones == [1, 3]
    assert _scheduler(max_t=10, grace_period=2, reduction_factor=2).milestones == [2, 4, 8]
    assert _scheduler(max_t=4, grace_period=4).milestones == []


def test_a_rung_keeps_the_front_extremes_and_stops_the_crowded_and_the_dominated():
    scheduler = _scheduler()
    a, b, c, d, e = _trials(5)
    assert _report(scheduler, a, 1, 0.5, 0.5) == CONTINUE  # n=1: the first always continues
    assert _report(scheduler, b, 1, 0.1, 0.9) == STOP  # n=2, keep 1: a tie of two extremes,
    # won by the earlier; c is the new extreme on f1, a now interior: c is 2nd of keep 2.
    assert _report(scheduler, c, 1, 0.9, 0.1) == CONTINUE
    # n=4, keep 2: all on front 0; b and c are the extremes, a (crowding 1.125) beats d (1.0).
    assert _report(scheduler, d, 1, 0.45, 0.55) == STOP
    # n=5, keep 3: dominated by a, so behind the whole front 0.
    assert _report(scheduler, e, 1, 0.4, 0.4) == STOP
    assert scheduler.stopped_at == {b.trial_id: 1, d.trial_id: 1, e.trial_id: 1}
    assert scheduler.num_stopped == 3 and scheduler.num_decisions == 5
    # A later epoch below the next rung decides nothing, even for a bad value.
    assert _report(scheduler, a, 1.5, 0.0, 0.0) == CONTINUE
    assert scheduler.num_decisions == 5


def test_min_and_max_objectives_and_a_missing_or_nan_metric_is_worst(caplog):
    scheduler = _scheduler(modes=["max", "min"])  # e.g. accuracy up, loss down
    first, good, broken, missing = _trials(4)
    assert _report(scheduler, first, 1, 0.5, 0.5) == CONTINUE
    assert _report(scheduler, good, 1, 0.6, 0.4) == CONTINUE  # dominates first: position 0
    assert _report(scheduler, broken, 1, 0.99, NAN) == STOP  # n=3, keep 2, worst front
    with caplog.at_level("WARNING", logger="tune_dsr.tuning.pareto_asha"):
        action = scheduler.on_trial_result(None, missing, {"epoch": 1, "f1": 0.99})
    assert action == STOP and "'f2'" in caplog.text
    recorded = dict(scheduler._rungs[-1][1])
    assert recorded[missing.trial_id][0] == 0.99 and math.isnan(recorded[missing.trial_id][1])


def test_a_result_past_several_rungs_is_decided_at_the_highest_as_asha_does():
    """Per result, Ray's ASHA records a trial at the highest rung reached where it has no
    record yet, and only there; the rungs it jumped over are filled by later results."""
    pareto = _scheduler(metrics=["f1"], modes=["max"])
    asha = ASHAScheduler(time_attr="epoch", metric="f1", mode="max", max_t=8, grace_period=1,
                         reduction_factor=2)
    trial = _trials(1)[0]
    asha.on_trial_add(None, trial)
    for epoch in (5, 6, 7):
        result = {"epoch": epoch, "f1": float(epoch)}
        assert pareto.on_trial_result(None, trial, result) == CONTINUE
        assert asha.on_trial_result(None, trial, result) == CONTINUE
        ours = [m for m, recorded in pareto._rungs if trial.trial_id in recorded]
        theirs = [m for m, recorded in asha._brackets[0]._rungs if trial.trial_id in recorded]
        assert ours == theirs
    assert ours == [4, 2, 1]
    assert pareto.num_decisions == 3


def test_max_t_stops_unless_stop_last_trials_is_off():
    scheduler = _scheduler()
    trial, other = _trials(2)
    assert _report(scheduler, trial, 8, 0.1, 0.1) == STOP
    assert scheduler.finished == {trial.trial_id} and scheduler.stopped_at == {}
    # Decided at max_t before any rung, as ASHA: recorded only when the trial completes.
    assert all(trial.trial_id not in recorded for _, recorded in scheduler._rungs)
    scheduler.on_trial_complete(None, trial, {"epoch": 8, "f1": 0.1, "f2": 0.1})
    assert trial.trial_id in scheduler._rungs[0][1]  # the highest rung, 4
    assert scheduler.num_decisions == 0
    # It now holds rung 4: a later trial worse on both is stopped there.
    assert _report(scheduler, other, 4, 0.0, 0.0) == STOP

    lenient = _scheduler(stop_last_trials=False)
    assert _report(lenient, trial, 8, 0.1, 0.1) == CONTINUE
    assert lenient.finished == set()


def test_search_properties_from_tune_config_are_accepted():
    scheduler = _scheduler()
    assert scheduler.set_search_properties(None, None)
    assert scheduler.set_search_properties("f1", "max")
    assert scheduler.set_search_properties(["f1", "f2"], ["max", "max"], config={})
    assert scheduler.set_search_properties("psnr", "min")  # not ranked here: not an error
    assert scheduler.metric is None  # so Ray does not fail a result that lacks one
    with pytest.raises(ValueError, match=r"mode='min' for 'f2'"):
        scheduler.set_search_properties(["f1", "f2"], ["max", "min"])


# ----------------------------------------------------------------------------- state

SEQUENCE = [(0.5, 0.5), (0.1, 0.9), (0.9, 0.1), (0.45, 0.55), (0.4, 0.4), (0.2, 0.7)]


def test_rung_state_survives_json_and_gives_the_same_decisions():
    before = _scheduler()
    trials = _trials(len(SEQUENCE) + 3)
    for trial, (f1, f2) in zip(trials, SEQUENCE, strict=False):
        _report(before, trial, 1, f1, f2)
    _report(before, trials[0], 2, 0.6, 0.6)
    before.on_trial_result(None, trials[2], {"epoch": 2, "f1": 0.9})  # f2 missing: NaN
    _report(before, trials[0], 8, 0.7, 0.7)
    state = json.loads(json.dumps(before.get_rung_state(), allow_nan=False))  # strict JSON

    after = _scheduler()
    after.set_rung_state(state)
    assert after.get_rung_state() == before.get_rung_state()
    assert after.stopped_at == before.stopped_at and after.finished == before.finished
    # The same new results meet the same rungs in both; without the state, the first would
    # have been alone at its rung and continued.
    later = [(1, trials[-3], (0.3, 0.3)), (1, trials[-2], (0.95, 0.0)),
             (2, trials[-2], (0.95, 0.05)), (2, trials[-1], (0.0, 0.0)),
             (4, trials[-2], (0.99, 0.1))]
    decisions = [(_report(before, t, e, *f), _report(after, t, e, *f)) for e, t, f in later]
    assert decisions == [(d, d) for d in (STOP, CONTINUE, CONTINUE, STOP, CONTINUE)]
    assert _report(_scheduler(), trials[-3], 1, 0.3, 0.3) == CONTINUE
    assert after.get_rung_state() == before.get_rung_state()
    assert after.num_stopped == before.num_stopped == 7


def test_state_callback_and_a_mismatched_state():
    before = _scheduler()
    for trial, (f1, f2) in zip(_trials(3), SEQUENCE, strict=False):
        _report(before, trial, 1, f1, f2)
    state = ParetoStateCallback(before).get_state()
    after = _scheduler()
    ParetoStateCallback(after).set_state(json.loads(json.dumps(state)))
    assert after.get_rung_state() == before.get_rung_state()
    with pytest.raises(ValueError, match="grace_period"):
        _scheduler(max_t=16).set_rung_state(state)
    with pytest.raises(ValueError, match="ranks"):
        _scheduler(modes=["max", "min"]).set_rung_state(state)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"modes": ["max", "up"]}, r"modes must each be 'max' or 'min', got \['up'\]"),
    ({"modes": ["max"]}, "modes must be a list with one mode per metric"),
    ({"metrics": "f1", "modes": ["max"]}, "metrics must be a non-empty list"),
    ({"metrics": [], "modes": []}, "metrics must be a non-empty list"),
    ({"metrics": ["f1", "f1"]}, "metrics must not repeat a name"),
    ({"reduction_factor": 1}, "reduction_factor > 1 must hold"),
    ({"grace_period": 9}, r"grace_period <= max_t must hold.*grace_period=9, max_t=8"),
    ({"grace_period": 0}, "grace_period"),
    ({"max_t": 0, "grace_period": 0}, "max_t > 0 must hold"),
    ({"time_attr": ""}, "time_attr"),
])
def test_constructor_names_the_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _scheduler(**kwargs)


# ----------------------------------------------------------------------------- a real Tune run

XS = [0.2, 0.5, 0.8]
PENALTIES = [0.0, 0.5, 0.9]
MAX_T = 3


def _index(config: dict[str, Any]) -> int:
    """A trial's place in Tune's grid order: keys sorted by name, the first varying fastest."""
    return XS.index(config["x"]) * len(PENALTIES) + PENALTIES.index(config["penalty"])


class _Processed(tune.Callback):
    """Marks, in the driver, each result the scheduler has seen and each trial that ended."""

    def __init__(self, marks: Path) -> None:
        self.marks = marks

    def on_trial_result(self, iteration, trials, trial, result, **info):
        (self.marks / f"{_index(trial.config)}_{result['epoch']}").touch()

    def on_trial_complete(self, iteration, trials, trial, **info):
        (self.marks / f"{_index(trial.config)}_done").touch()

    on_trial_error = on_trial_complete


def _toy(marks: Path):
    def toy(config: dict[str, Any]) -> None:
        """f1 = x(1-y)s, f2 = (1-x)(1-y)s, penalty y, s growing: y=0 is the front at every epoch.

        Before each report a trial waits until every earlier trial of the grid has had that
        epoch seen by the scheduler (or has ended): two trials run at once, but each rung is
        reached in grid order, so every decision is known in advance.
        """
        x, y = config["x"], config["penalty"]
        index = _index(config)
        for epoch in range(1, MAX_T + 1):
            deadline = time.monotonic() + 20
            while not all((marks / f"{j}_{epoch}").exists() or (marks / f"{j}_done").exists()
                          for j in range(index)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"trial {index} waited 20 s for epoch {epoch}: did Tune "
                                       "start the trials out of grid order?")
                time.sleep(0.01)
            s = epoch / MAX_T
            tune.report({"epoch": epoch, "f1": x * (1 - y) * s, "f2": (1 - x) * (1 - y) * s})

    return toy


def test_a_tune_run_keeps_the_front_and_stops_the_dominated(ray_session, tmp_path):
    marks = (tmp_path / "marks").resolve()
    marks.mkdir()
    # One rung, at epoch 1 (max_t 3 = rf**1). The grid runs "penalty" fastest ("penalty" < "x"),
    # so at the rung each x brings its y=0 trial first, then its two dominated ones. The k-th
    # y=0 trial arrives as the (3k-2)-th, when keep = ceil(n/3) has just grown to k, and takes a
    # position <= k-1 (front 0: the newest extreme ties the first one and wins against the
    # interior x=0.5 on crowding). Each dominated trial arrives behind the whole front 0 with
    # keep = the size of front 0: stopped.
    scheduler = ParetoASHA(["f1", "f2"], ["max", "max"], time_attr="epoch", max_t=MAX_T,
                           grace_period=1, reduction_factor=3)
    tuner = tune.Tuner(
        _toy(marks),
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1, max_concurrent_trials=2,
                                    reuse_actors=True),  # a new worker per trial costs seconds
        param_space={"x": tune.grid_search(XS), "penalty": tune.grid_search(PENALTIES)},
        run_config=tune.RunConfig(name="pareto", storage_path=str(tmp_path.resolve()),
                                  verbose=0,
                                  callbacks=[_Processed(marks), ParetoStateCallback(scheduler)]),
    )
    results = tuner.fit()
    assert not results.errors
    grid = [(x, y) for x in XS for y in PENALTIES]
    epochs = {(r.config["x"], r.config["penalty"]): r.metrics["epoch"] for r in results}
    ids = {(r.config["x"], r.config["penalty"]): r.metrics["trial_id"] for r in results}
    assert epochs == {(x, y): MAX_T if y == 0 else 1 for x, y in grid}
    assert scheduler.stopped_at == {ids[x, y]: 1 for x, y in grid if y > 0}
    assert scheduler.finished == {ids[x, 0.0] for x in XS}
    assert sum(epochs.values()) == 3 * MAX_T + 6 * 1 < len(grid) * MAX_T
    # The rungs were saved with the experiment: what Tuner.restore would put back.
    restored = ParetoASHA(["f1", "f2"], ["max", "max"], time_attr="epoch", max_t=MAX_T,
                          grace_period=1, reduction_factor=3)
    CallbackList([_Processed(marks), ParetoStateCallback(restored)]).restore_from_dir(
        str(tmp_path / "pareto"))
    assert restored.get_rung_state() == scheduler.get_rung_state()


def test_hypervolume_of_known_fronts():
    from tune_dsr.tuning.pareto_asha import hypervolume

    # Two maximised objectives, reference (0, 0): the union of the rectangles [0,x] x [0,y].
    assert hypervolume([[1, 3], [2, 2], [3, 1]], ["max", "max"], [0, 0]) == pytest.approx(6.0)
    # A dominated point and one below the reference add nothing; NaN adds nothing.
    assert hypervolume([[1, 3], [2, 2], [3, 1], [1, 1], [-1, 5], [float("nan"), 9]],
                       ["max", "max"], [0, 0]) == pytest.approx(6.0)
    # Minimised objectives, reference at the worst corner (4, 4).
    assert hypervolume([[1, 3], [3, 1]], ["min", "min"], [4, 4]) == pytest.approx(5.0)
    # Three objectives: a unit cube, and two boxes overlapping in a 1 x 1 x 1 corner.
    assert hypervolume([[1, 1, 1]], ["max"] * 3, [0, 0, 0]) == pytest.approx(1.0)
    assert hypervolume([[2, 1, 1], [1, 2, 1]], ["max"] * 3, [0, 0, 0]) == pytest.approx(3.0)
    assert hypervolume(np.zeros((0, 2)), ["max", "max"], [0, 0]) == 0.0
