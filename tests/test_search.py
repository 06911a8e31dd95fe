"""End-to-end searches with real Ray Tune (local, 2 CPUs), real Optuna and real torch training.

One search of six trials is shared by several tests: the anchors (the guide's values, then
pixel-only) run first, ASHA and the patience stop some, stopped trials are PRUNED in the Optuna
study, one trial diverges (NaN) and fails alone, the top two are confirmed with new seeds and the
best confirmed one is exported and trained again. Another search diverges once and is retried
from its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.helpers import (
    SEARCH_CONFIRM,
    SEARCH_EPOCHS,
    SEARCH_PATIENCE,
    SEARCH_PINS,
    run_poisoned_search,
    search_options,
)
from tune_dsr import train as train_cli
from tune_dsr.config import Config
from tune_dsr.tuning.analysis import load_experiment
from tune_dsr.tuning.experiment import BEST_FILE, CONFIRM_DIR, STUDY_FILE
from tune_dsr.tuning.presets import load_preset
from tune_dsr.tuning.records import load_trials

pytestmark = pytest.mark.slow

MAX_EPOCHS = SEARCH_EPOCHS


def _optuna_trial_for(study, tune_config):
    matches = [t for t in study.trials
               if all(tune_config.get(k) == v for k, v in t.params.items())]
    assert len(matches) == 1, (tune_config, [t.params for t in study.trials])
    return matches[0]


def test_six_trials_and_asha_stopped_some_early(finished_search):
    trials = finished_search["trials"]
    assert len(trials) == 6
    healthy = [t for t in trials if not t.error]
    stopped = [t for t in healthy if t.epochs_run < MAX_EPOCHS]
    full = [t for t in healthy if t.epochs_run == MAX_EPOCHS]
    assert stopped, [t.epochs_run for t in trials]
    assert full
    assert all(t.epochs_run >= 1 for t in stopped)  # the grace period is honoured


def test_the_anchors_run_first_labelled(finished_search):
    """The guide's values, then the same with the identity terms off, before TPE's trials."""
    study = finished_search["study"]
    anchors = load_preset("recognition_first").anchor_points(SEARCH_PINS)
    assert list(anchors) == ["guide", "pixel-only"]
    assert [study.trials[0].params, study.trials[1].params] == list(anchors.values())
    assert finished_search["plan"].anchors == anchors
    labels = {t.trial_id: t.config["anchor"] for t in finished_search["trials"]}
    assert sorted(labels.values()) == ["", "", "", "", "guide", "pixel-only"]
    for trial in finished_search["trials"]:
        if trial.config["anchor"]:
            assert trial.history  # it really ran
            assert all(trial.config[k] == v for k, v in anchors[trial.config["anchor"]].items())
    pixel = next(t for t in finished_search["trials"] if t.config["anchor"] == "pixel-only")
    assert pixel.config["lambda_identity"] == pixel.config["lambda_feature_match"] == 0.0


def test_every_categorical_choice_is_tried_right_after_the_anchors(finished_search):
    """The anchors both keep the perceptual term on; the next trial tries it off, before TPE."""
    from optuna.distributions import CategoricalDistribution

    study = finished_search["study"]
    searched = load_preset("recognition_first").searched(SEARCH_PINS)
    categorical = {name: dist.choices for name, dist in searched.items()
                   if isinstance(dist, CategoricalDistribution)}
    assert "lambda_perceptual_on" in categorical
    first = [t.params for t in study.trials[:3]]
    for name, choices in categorical.items():
        assert {p[name] for p in first if name in p} == set(choices), name


def test_stopped_trials_are_pruned_in_optuna_not_complete(finished_search):
    study = finished_search["study"]
    for trial in finished_search["trials"]:
        ot = _optuna_trial_for(study, trial.config)
        epochs = [int(r["epoch"]) for r in trial.history]
        if trial.error:
            assert ot.state == optuna.trial.TrialState.FAIL
        elif trial.epochs_run < MAX_EPOCHS:
            assert ot.state == optuna.trial.TrialState.PRUNED, (trial.trial_id, epochs)
        else:
            assert ot.state == optuna.trial.TrialState.COMPLETE
            # Optuna judges a trial at its best epoch, where it is kept and ranked.
            assert ot.value == pytest.approx(max(r["val_margin"] for r in trial.history))
        if not trial.error:  # every epoch reached Optuna as an intermediate value
            assert sorted(ot.intermediate_values) == list(range(1, trial.epochs_run + 1))


def test_nan_trial_fails_alone_and_the_search_goes_on(finished_search):
    trials = finished_search["trials"]
    failed = [t for t in trials if t.error]
    assert [t.trial_id for t in failed] == [(finished_search["markers"] / "slot_0").read_text()]
    error = next(Path(failed[0].path).glob("error.txt")).read_text()
    assert "TrainingDiverged" in error and "the total loss became nan during epoch 1" in error
    assert sum(1 for t in trials if not t.error and t.history) == 5


def test_failed_trial_is_retried_from_its_last_checkpoint(ray_session, search_root, tmp_path):
    """--max-failures 1: a trial that diverges in epoch 2 once goes on from its epoch-1 state."""
    options = search_options(search_root, name="retry", num_samples=1, max_epochs=3,
                             max_failures=1)
    run = run_poisoned_search(tmp_path / "tune", tmp_path, options, {0: (2, False)})
    (trial,) = run["trials"]
    assert not trial.error and trial.epochs_run == 3
    # From scratch, epoch 1 would be reported twice; from its checkpoint it goes on at epoch 2.
    progress = (Path(trial.path) / "progress.csv").read_text().splitlines()
    epoch_column = progress[0].split(",").index("epoch")
    assert [float(row.split(",")[epoch_column]) for row in progress[1:]] == [1.0, 2.0, 3.0]
    assert "the total loss became nan during epoch 2" in (
        Path(trial.path) / "error.txt").read_text()
    assert run["study"].trials[0].state == optuna.trial.TrialState.COMPLETE


def test_a_trial_ends_when_its_patience_runs_out(finished_search):
    """No trial goes on more than the patience past its own best; a trial that reached it
    ended there (by patience, not ASHA), and the epochs each rule saved add up."""
    exp = load_experiment(finished_search["experiment"])
    for trial in finished_search["trials"]:
        since = [int(r["epochs_since_best"]) for r in trial.history]
        assert max(since, default=0) <= SEARCH_PATIENCE, (trial.trial_id, since)
        if SEARCH_PATIENCE in since:  # it ended there
            assert since.index(SEARCH_PATIENCE) == len(since) - 1, (trial.trial_id, since)
    stopped = exp.trials[exp.trials["stopped_early"]]
    assert set(stopped["stopped_by"]) <= {"patience", "asha"} and len(stopped)
    saved = finished_search["document"]["provenance"]
    assert (saved["epochs_saved_by_patience"] + saved["epochs_saved_by_asha"]
            == saved["epochs_full"] - saved["epochs_total"] - MAX_EPOCHS)  # less the failed one's


def test_the_top_configurations_are_confirmed_and_export_takes_the_best_mean(finished_search):
    plan = finished_search["plan"]
    exp = load_experiment(finished_search["experiment"])
    runs = load_trials(str(finished_search["experiment"] / CONFIRM_DIR))
    # The search's top configurations, and the pixel-only anchor the verdict compares with.
    search_order = exp.top(None, confirmed=False)
    top = search_order["trial_id"].head(SEARCH_CONFIRM).tolist()
    pixel = search_order.loc[search_order["anchor"] == "pixel-only", "trial_id"].item()
    top += [] if pixel in top else [pixel]
    assert sorted(r.config["confirms"] for r in runs) == sorted(top)
    for run in runs:  # a new seed, at the full budget: neither ASHA nor a shorter run
        repeated = exp.trial(run.config["confirms"]).config
        assert run.config["seed"] == plan.seed + 1 != repeated["seed"]
        labels = {"seed", "confirms", "confirm_run"}
        assert ({k: v for k, v in run.config.items() if k not in labels}
                == {k: v for k, v in repeated.items() if k not in labels})
        assert run.epochs_run == MAX_EPOCHS or run.history[-1]["epochs_since_best"] >= \
            SEARCH_PATIENCE
    confirmed = exp.confirmations()
    assert sorted(confirmed.index) == sorted(top) and (confirmed["runs"] == 1).all()
    best = json.loads((finished_search["experiment"] / BEST_FILE).read_text())
    assert best["provenance"]["trial_id"] == confirmed.index[0] == exp.winner().trial_id
    assert best["provenance"]["confirmed"]["mean"] == pytest.approx(confirmed["mean"].iloc[0])
    assert "Winner: trial " + confirmed.index[0] in best["provenance"]["verdict"]


def test_best_config_written_exported_and_trained(finished_search, tmp_path, capsys):
    experiment = finished_search["experiment"]
    best = json.loads((experiment / BEST_FILE).read_text())
    assert (experiment / STUDY_FILE).is_file()
    winner = next(t for t in finished_search["trials"]
                  if t.trial_id == best["provenance"]["trial_id"])
    # The trial kept the model and the picture of its best epoch by the search's objective.
    assert (Path(winner.path) / "best.pt").is_file() and (Path(winner.path) / "best.png").is_file()

    out = tmp_path / "best.json"
    assert search_cli_export(str(experiment), "--out", str(out)) == 0
    verdict = capsys.readouterr().out  # the verdict, either way
    assert ("It clearly beats bicubic" in verdict
            or "No configuration clearly beat doing nothing" in verdict)
    exported = json.loads(out.read_text())
    assert exported["provenance"]["trial_id"] == best["provenance"]["trial_id"]
    assert 0 <= exported["metrics"]["val_accuracy"] <= exported["metrics"]["val_rank1"] <= 1
    config = Config.from_json(out)
    # The final run keeps the epoch the search would have picked, with the guide's patience.
    assert config.train.monitor == "val_margin" and config.train.patience == 20
    assert config.train.epochs == MAX_EPOCHS and config.model.vlr_size == 8
    assert config.model.width == 8 and config.data.train_dir.endswith("train_processed")
    assert config.loss.lambda_identity == winner.config["lambda_identity"]

    second = tmp_path / "second.json"
    assert search_cli_export(str(experiment), "--metric", "val_psnr", "--rank", "2",
                             "--out", str(second)) == 0
    second_document = json.loads(second.read_text())
    assert second_document["provenance"]["rank"] == 2
    assert second_document["train"]["monitor"] == "val_psnr"

    final = tmp_path / "final"
    capsys.readouterr()
    assert train_cli.main(["--config", str(out), "--out", str(final), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"Epoch {MAX_EPOCHS:03d}" in printed and "best epoch by val_margin" in printed
    assert (final / "best.pt").is_file() and Config.from_json(final / "config.json") == config


def search_cli_export(*argv: str) -> int:
    from tune_dsr import export

    return export.main(list(argv))


def test_export_errors(finished_search, tmp_path, capsys):
    experiment = str(finished_search["experiment"])
    assert search_cli_export(experiment, "--rank", "99", "--out", str(tmp_path / "x.json")) == 2
    assert "give a rank from 1 to" in capsys.readouterr().err
    assert search_cli_export(experiment, "--metric", "val_lfw_accuracy",
                             "--out", str(tmp_path / "x.json")) == 2
    assert "'val_lfw_accuracy' is not a metric tune_dsr reports" in capsys.readouterr().err
    assert search_cli_export(str(tmp_path / "nothing"), "--out", str(tmp_path / "x.json")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_balanced_search_returns_its_front_and_exports_a_point(balanced_search, tmp_path,
                                                               capsys):
    """`--space balanced`: two objectives, multi-objective TPE, the Pareto-aware ASHA; the front
    comes back from the experiment, and export takes a point of it by position and by rule."""
    from tune_dsr import export
    from tune_dsr.tuning.analysis import load_experiment

    plan = balanced_search["plan"]
    assert plan.objectives == ["val_margin_gain", "val_psnr"] and plan.confirm == 0
    exp = load_experiment(plan.experiment_path)
    study = optuna.load_study(study_name=plan.name, storage=f"sqlite:///{plan.study_path}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    front = exp.front()
    assert set(front.columns) >= {"trial_id", "val_margin_gain", "val_psnr", "front",
                                  "dominated", "stopped_at", "stopped_by"}
    # Optuna is told each trial's end: PRUNED when the Pareto-aware ASHA stopped it, else its
    # point (it ran to the end, or its own patience ended it: its kept epoch will not change).
    by_asha = front[front["stopped_by"] == "asha"]
    told = front[front["stopped_by"] != "asha"]
    states = sorted(t.state.name for t in study.trials)
    assert states.count("PRUNED") == len(by_asha) and states.count("COMPLETE") == len(told)
    points = {tuple(round(v, 6) for v in t.values) for t in study.trials
              if t.state.name == "COMPLETE"}
    assert points == {(round(r.val_margin_gain, 6), round(r.val_psnr, 6))
                      for r in told.itertuples()}
    # Front 0 holds exactly the trials no other trial beats on both objectives.
    for row in front.itertuples():
        beaten = ((front["val_margin_gain"] >= row.val_margin_gain)
                  & (front["val_psnr"] >= row.val_psnr)
                  & ((front["val_margin_gain"] > row.val_margin_gain)
                     | (front["val_psnr"] > row.val_psnr))).any()
        assert row.dominated == beaten
    assert "Pareto front of val_margin_gain and val_psnr" in exp.describe_front()
    out = tmp_path / "point.json"
    assert export.main([plan.experiment_path, "--point", "1", "--out", str(out)]) == 0
    first = front[front["front"] == 0].iloc[0]
    document = json.loads(out.read_text())
    assert document["provenance"]["trial_id"] == first["trial_id"]
    assert document["train"]["monitor"] == "val_margin_gain"
    assert export.main([plan.experiment_path, "--maximize", "val_psnr", "--out",
                        str(out)]) == 0
    document = json.loads(out.read_text())
    best_psnr = front[front["front"] == 0].sort_values("val_psnr").iloc[-1]
    assert document["provenance"]["trial_id"] == best_psnr["trial_id"]
    assert document["train"]["monitor"] == "val_psnr"
    for argv, words in ((["--maximize", "val_ssim"], "val_ssim is not an objective"),
                        (["--where", "val_psnr>=1.2.3"], "METRIC OP NUMBER"),
                        (["--minimize", "val_psnr"], "use --maximize val_psnr")):
        assert export.main([plan.experiment_path, *argv, "--out", str(out)]) == 2
        assert words in capsys.readouterr().err
