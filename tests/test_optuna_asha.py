"""Unit tests of the Ray/Optuna fixes, with real Ray and Optuna objects and no running search.

Both fixes reach into private attributes; `check_private_api` must name a missing one."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from tune_dsr.tuning import optuna_asha
from tune_dsr.tuning.optuna_asha import (
    AshaStateCallback,
    PrivateApiChanged,
    PruneAwareOptunaSearch,
    check_private_api,
    make_sampler,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(trial):
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    trial.suggest_int("depth", 1, 4)
    return {"width": 8}


def _searcher(tmp_path, max_epochs: int = 4, **kwargs) -> PruneAwareOptunaSearch:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    return PruneAwareOptunaSearch(space=space, metric="val_margin", mode="max",
                                  max_epochs=max_epochs,
                                  sampler=optuna.samplers.RandomSampler(seed=0),
                                  study_name="unit", storage=storage, **kwargs)


def _state(searcher: PruneAwareOptunaSearch, trial_id: str) -> optuna.trial.FrozenTrial:
    number = searcher._ot_trials[trial_id].number
    return searcher._ot_study.trials[number]


def test_epochs_become_intermediate_values_and_an_early_stop_is_pruned(tmp_path):
    searcher = _searcher(tmp_path)
    config = searcher.suggest("a")
    assert config["width"] == 8 and 1e-4 <= config["lr"] <= 1e-2
    searcher.on_trial_result("a", {"val_margin": 0.1, "epoch": 1})
    searcher.on_trial_result("a", {"val_margin": 0.1, "epoch": 1})  # a retry repeats epoch 1
    searcher.on_trial_result("a", {"val_margin": 0.3, "epoch": 2})
    searcher.on_trial_complete("a", {"val_margin": 0.3, "epoch": 2})  # stopped at 2 of 4
    frozen = _state(searcher, "a")
    assert frozen.state == TrialState.PRUNED
    assert frozen.intermediate_values == {1: 0.1, 2: 0.3}


def test_a_trial_that_ran_to_the_end_is_complete_with_its_last_value(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("b")
    for epoch in range(1, 4):
        searcher.on_trial_result("b", {"val_margin": 0.1 * epoch, "epoch": epoch})
    searcher.on_trial_complete("b", {"val_margin": 0.4, "epoch": 4})  # Ray's last result
    frozen = _state(searcher, "b")
    assert frozen.state == TrialState.COMPLETE and frozen.value == pytest.approx(0.4)
    assert sorted(frozen.intermediate_values) == [1, 2, 3, 4]


def test_an_error_is_fail_and_a_nan_is_never_reported(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("c")
    searcher.on_trial_result("c", {"val_margin": float("nan"), "epoch": 1})
    searcher.on_trial_complete("c", None, error=True)
    frozen = _state(searcher, "c")
    assert frozen.state == TrialState.FAIL and frozen.intermediate_values == {}


def test_restore_marks_trials_lost_with_the_driver_as_failed(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("d")
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.suggest("e")  # asked after the last save: lost when the driver is killed
    restored = _searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    states = {t.number: t.state for t in restored._ot_study.trials}
    assert states == {0: TrialState.RUNNING, 1: TrialState.FAIL}


def test_a_trial_the_study_finished_after_the_last_save_takes_no_more_reports(tmp_path):
    """The study is written at once, the searcher's pickle every few seconds: a trial can end
    in between. Tune re-runs it from its checkpoint after a resume; its repeated epochs must
    neither raise (Optuna's UpdateFinishedTrialError, which ended such a trial in ERROR) nor
    change the finished trial."""
    searcher = _searcher(tmp_path)
    searcher.suggest("f")
    searcher.on_trial_result("f", {"val_margin": 0.1, "epoch": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.on_trial_result("f", {"val_margin": 0.2, "epoch": 2})
    searcher.on_trial_complete("f", {"val_margin": 0.2, "epoch": 2})  # PRUNED in the study
    restored = _searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("f", {"val_margin": 0.2, "epoch": 2})  # Tune's re-run reports
    restored.on_trial_result("f", {"val_margin": 0.25, "epoch": 3})
    restored.on_trial_complete("f", {"val_margin": 0.25, "epoch": 3})
    frozen = _state(restored, "f")
    assert frozen.state == TrialState.PRUNED and frozen.intermediate_values == {1: 0.1, 2: 0.2}
    assert [t.state for t in restored._ot_study.trials] == [TrialState.PRUNED]

    # Without the restore's check, a stale searcher still does not raise on a report.
    stale = _searcher(tmp_path)
    stale.__dict__.update({k: v for k, v in restored.__dict__.items()
                           if k not in ("_completed_trials",)})
    stale._completed_trials = set()
    stale.on_trial_result("f", {"val_margin": 0.3, "epoch": 4})
    assert "f" in stale._completed_trials


def _trial() -> Trial:
    return Trial("unit_trainable", stub=True)


def test_asha_rungs_survive_get_and_set_state():
    def scheduler() -> ASHAScheduler:
        return ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=8,
                             grace_period=1, reduction_factor=2)

    before = scheduler()
    trials = [_trial() for _ in range(3)]
    for trial in trials:
        before.on_trial_add(None, trial)
    for epoch in (1, 2):
        for value, trial in enumerate(trials):
            before.on_trial_result(None, trial, {"epoch": epoch, "m": float(value)})
    state = AshaStateCallback(before).get_state()

    after = scheduler()  # what Tuner.restore gives: a scheduler with empty rungs
    assert all(not recorded for bracket in after._brackets for _, recorded in bracket._rungs)
    AshaStateCallback(after).set_state(state)
    assert [(m, dict(r)) for b in after._brackets for m, r in b._rungs] == \
        [(m, dict(r)) for b in before._brackets for m, r in b._rungs]
    rung_one = dict(after._brackets[0]._rungs[-1][1])
    assert rung_one == {t.trial_id: float(i) for i, t in enumerate(trials)}
    # ASHA decides with the restored rungs: a fourth trial, worst at epoch 1, is stopped.
    late = _trial()
    after.on_trial_add(None, late)
    assert after.on_trial_result(None, late, {"epoch": 1, "m": -1.0}) == "STOP"


def test_private_api_check_passes_and_names_what_is_missing(monkeypatch):
    check_private_api()
    original = ASHAScheduler.__init__

    def without_brackets(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self._brackets

    monkeypatch.setattr(optuna_asha.ASHAScheduler, "__init__", without_brackets)
    with pytest.raises(PrivateApiChanged, match=r"ASHAScheduler\._brackets.*pyproject\.toml"):
        check_private_api()


def test_sampler_is_seeded_tpe_with_constant_liar():
    sampler = make_sampler(seed=3, num_samples=20)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar and sampler._n_startup_trials == 5
    assert make_sampler(seed=3, num_samples=4)._n_startup_trials == 2


def test_coverage_points_try_every_categorical_choice_the_anchors_left_out() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from tune_dsr.tuning.optuna_asha import coverage_points

    space = {"bicubic_residual": CategoricalDistribution([False, True]),
             "width": CategoricalDistribution([96, 112, 128]),
             "lambda_identity_on": CategoricalDistribution([False, True]),
             "lr": FloatDistribution(1e-5, 1e-3, log=True)}
    anchors = [{"bicubic_residual": False, "width": 112, "lambda_identity_on": True},
               {"bicubic_residual": False, "width": 112, "lambda_identity_on": False}]
    points = coverage_points(space, anchors, budget=10)
    assert points == [{"bicubic_residual": True, "width": 96}, {"width": 128}]
    for name in ("bicubic_residual", "width", "lambda_identity_on"):
        tried = {p[name] for p in anchors + points if name in p}
        assert tried == set(space[name].choices)
    # A budget too small for every choice: as many points as fit.
    assert coverage_points(space, anchors, budget=1) == [{"bicubic_residual": True, "width": 96}]
    assert coverage_points(space, anchors, budget=0) == []
    assert coverage_points(space, anchors + points, budget=5) == []
