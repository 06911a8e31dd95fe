"""End-to-end searches with real Ray Tune (local, 2 CPUs), real Optuna and real torch training.

One search of six trials is shared by several tests: ASHA stops some, the guide's configuration is
the first trial, stopped trials are PRUNED in the Optuna study, one trial diverges (NaN) and fails
alone, another diverges once and is retried from its checkpoint, and the best trial is exported and
trained again.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from search_spaces import load_preset
from tests.conftest import SEARCH_EPOCHS, SEARCH_PINS, search_options
from tests.helpers import run_poisoned_search
from tune_dsr import train as train_cli
from tune_dsr.analysis import trials_frame
from tune_dsr.config import Config
from tune_dsr.experiment import BEST_FILE, STUDY_FILE

pytestmark = pytest.mark.slow

MAX_EPOCHS = SEARCH_EPOCHS


def _optuna_trial_for(study, tune_config):
    matches = [t for t in study.trials
               if t.params.get("lambda_identity") == tune_config["lambda_identity"]
               and t.params.get("lr") == tune_config["lr"]]
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


def test_guide_configuration_is_the_first_trial(finished_search):
    first = finished_search["study"].trials[0]
    preset = load_preset("recognition_first")
    pinned = set(SEARCH_PINS)
    expected = {k: v for k, v in preset.first_config().items() if k not in pinned}
    assert first.params == expected
    guide_runs = [t for t in finished_search["trials"]
                  if all(t.config[k] == v for k, v in expected.items())]
    assert len(guide_runs) == 1 and guide_runs[0].history  # it really ran


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
            assert ot.value == pytest.approx(trial.history[-1]["val_margin"])
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


def test_best_config_written_exported_and_trained(finished_search, tmp_path, capsys):
    experiment = finished_search["experiment"]
    best = json.loads((experiment / BEST_FILE).read_text())
    frame = trials_frame(str(experiment), "val_margin", "max")
    assert best["provenance"]["trial_id"] == frame.iloc[0]["trial_id"]
    assert best["provenance"]["value"] == pytest.approx(frame.iloc[0]["value"])
    assert (experiment / STUDY_FILE).is_file()
    winner = next(t for t in finished_search["trials"]
                  if t.trial_id == best["provenance"]["trial_id"])
    # The trial kept the model and the picture of its best epoch by the search's objective.
    assert (Path(winner.path) / "best.pt").is_file() and (Path(winner.path) / "best.png").is_file()

    out = tmp_path / "best.json"
    assert search_cli_export(str(experiment), "--out", str(out)) == 0
    exported = json.loads(out.read_text())
    assert exported["provenance"]["trial_id"] == best["provenance"]["trial_id"]
    assert 0 <= exported["metrics"]["val_accuracy"] <= exported["metrics"]["val_rank1"] <= 1
    config = Config.from_json(out)
    # The final run keeps the epoch the search would have picked, with the guide's patience.
    assert config.train.monitor == "val_margin" and config.train.early_stop_patience == 20
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
