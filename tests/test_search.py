"""End-to-end searches with real Ray Tune (local, 2 CPUs), real Optuna and real torch training.

One search of six trials is shared by several tests: ASHA stops some, the guide's configuration is
the first trial, stopped trials are PRUNED in the Optuna study, one trial diverges (NaN) and fails
alone, another diverges once and is retried from its checkpoint, and the best trial is exported and
trained again.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import optuna
import pytest
import torch

from search_spaces import load_preset
from tune_dsr import search as search_cli
from tune_dsr import train as train_cli
from tune_dsr.analysis import load_trials, trials_frame
from tune_dsr.config import Config

pytestmark = pytest.mark.slow

MAX_EPOCHS = 4
# bicubic_residual pinned on: without it a new net starts mid-grey and its first epochs look so
# bad that every later trial beats it, which leaves ASHA nothing to stop in a six-trial test.
TINY_PINS = ["--set", "width=8", "--set", "depth=1", "--set", "batch_size=4",
             "--set", "bicubic_residual=true"]


def search_args(root: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["--space", "recognition_first",
            "--train-dir", str(root / "train_processed"), "--val-dir", str(root / "val_processed"),
            "--edgeface", "random:edgeface_xxs", "--perceptual-weights", "random", *TINY_PINS,
            "--storage-path", str(storage), "--name", name, "--seed", "7", *extra]


def make_poisoned(marker_dir: str, poison: dict[int, tuple[int, bool]],
                  spare: dict | None = None):
    """The real trial function, with a real NaN in DSR's output for chosen trials.

    `poison` maps a trial's start order (0: the first trial to start, not counting trials whose
    config matches `spare`) to (the first epoch with NaN, whether every run is poisoned or only
    the first, before a retry).
    """

    def poisoned(config, train_set, val_set):
        from ray import tune

        from tune_dsr.models.dsr import DSR
        from tune_dsr.trainable import train_dsr

        if spare and all(config[k] == v for k, v in spare.items()):
            train_dsr(config, train_set, val_set)
            return
        trial_id = tune.get_context().get_trial_id()
        slot, retry = 0, False
        while True:  # claim the next start slot, or find ours again on a retry
            marker = Path(marker_dir, f"slot_{slot}")
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if marker.read_text() == trial_id:
                    retry = True
                    break
                slot += 1
                continue
            os.write(fd, trial_id.encode())
            os.close(fd)
            break
        handle = None
        first_epoch, every_run = poison.get(slot, (0, False))
        if first_epoch and (every_run or not retry):
            size = int(config["batch_size"])
            per_epoch = -(-len(train_set) // size) + -(-len(val_set) // size)
            calls = {"n": 0}

            def hook(module, inputs, output):
                if isinstance(module, DSR):
                    calls["n"] += 1
                    if calls["n"] > (first_epoch - 1) * per_epoch:
                        return output * float("nan")
                return None

            handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            train_dsr(config, train_set, val_set)
        finally:
            if handle is not None:
                handle.remove()

    return poisoned


def _run(storage: Path, markers: Path, root: Path, name: str, poison, *extra: str,
         spare: dict | None = None) -> dict:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    args = search_cli.build_parser().parse_args(search_args(root, storage, name, *extra))
    plan = search_cli.plan_from_args(args)
    document = search_cli.run_search(plan, function=make_poisoned(str(markers), poison, spare))
    experiment = Path(plan.experiment_path)
    study = optuna.load_study(study_name=name,
                              storage=f"sqlite:///{experiment / search_cli.STUDY_FILE}")
    return {"plan": plan, "document": document, "experiment": experiment, "study": study,
            "markers": markers, "trials": load_trials(str(experiment))}


@pytest.fixture(scope="module")
def finished_search(ray_session, synthetic_root, tmp_path_factory):
    """Six trials; the first one after the guide's to start diverges in epoch 1 on every run."""
    guide = load_preset("recognition_first").first_config()
    return _run(tmp_path_factory.mktemp("tune"), tmp_path_factory.mktemp("markers"),
                synthetic_root, "e2e", {0: (1, True)},
                "--num-samples", "6", "--max-epochs", str(MAX_EPOCHS), "--grace-period", "1",
                "--reduction-factor", "2", "--max-concurrent", "2", "--max-failures", "1",
                spare={"lambda_identity": guide["lambda_identity"], "lr": guide["lr"]})


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
    pinned = {"width", "depth", "batch_size", "bicubic_residual"}
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
            assert ot.value == pytest.approx(trial.history[-1]["val_identity_loss"])
        if not trial.error:  # every epoch reached Optuna as an intermediate value
            assert sorted(ot.intermediate_values) == list(range(1, trial.epochs_run + 1))


def test_nan_trial_fails_alone_and_the_search_goes_on(finished_search):
    trials = finished_search["trials"]
    failed = [t for t in trials if t.error]
    assert [t.trial_id for t in failed] == [(finished_search["markers"] / "slot_0").read_text()]
    error = next(Path(failed[0].path).glob("error.txt")).read_text()
    assert "TrainingDiverged" in error and "the total loss became nan at epoch 1" in error
    assert sum(1 for t in trials if not t.error and t.history) == 5


def test_failed_trial_is_retried_from_its_last_checkpoint(ray_session, synthetic_root, tmp_path):
    """--max-failures 1: a trial that diverges in epoch 2 once goes on from its epoch-1 state."""
    run = _run(tmp_path / "tune", tmp_path, synthetic_root, "retry", {0: (2, False)},
               "--num-samples", "1", "--max-epochs", "3", "--max-failures", "1")
    (trial,) = run["trials"]
    assert not trial.error and trial.epochs_run == 3
    # From scratch, epoch 1 would be reported twice; from its checkpoint it goes on at epoch 2.
    progress = (Path(trial.path) / "progress.csv").read_text().splitlines()
    epoch_column = progress[0].split(",").index("epoch")
    assert [float(row.split(",")[epoch_column]) for row in progress[1:]] == [1.0, 2.0, 3.0]
    assert "the total loss became nan at epoch 2" in (Path(trial.path) / "error.txt").read_text()
    assert run["study"].trials[0].state == optuna.trial.TrialState.COMPLETE


def test_best_config_written_exported_and_trained(finished_search, tmp_path, capsys):
    experiment = finished_search["experiment"]
    best = json.loads((experiment / search_cli.BEST_FILE).read_text())
    frame = trials_frame(str(experiment), "val_identity_loss", "min")
    assert best["provenance"]["trial_id"] == frame.iloc[0]["trial_id"]
    assert best["provenance"]["value"] == pytest.approx(frame.iloc[0]["value"])
    assert (experiment / search_cli.STUDY_FILE).is_file()

    out = tmp_path / "best.json"
    assert search_cli_export(str(experiment), "--out", str(out)) == 0
    exported = json.loads(out.read_text())
    assert exported["provenance"]["trial_id"] == best["provenance"]["trial_id"]
    assert 0 <= exported["metrics"]["val_accuracy"] <= exported["metrics"]["val_rank1"] <= 1
    config = Config.from_json(out)
    assert config.train.epochs == MAX_EPOCHS and config.train.early_stop_patience == 20
    assert config.model.width == 8 and config.data.train_dir.endswith("train_processed")
    winner = next(t for t in finished_search["trials"]
                  if t.trial_id == exported["provenance"]["trial_id"])
    assert config.loss.lambda_identity == winner.config["lambda_identity"]

    second = tmp_path / "second.json"
    assert search_cli_export(str(experiment), "--metric", "val_psnr", "--mode", "max",
                             "--rank", "2", "--out", str(second)) == 0
    assert json.loads(second.read_text())["provenance"]["rank"] == 2

    final = tmp_path / "final"
    capsys.readouterr()
    assert train_cli.main(["--config", str(out), "--out", str(final), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"Epoch {MAX_EPOCHS:03d}" in printed or "early stop" in printed
    assert (final / "best.pt").is_file() and Config.from_json(final / "config.json") == config


def search_cli_export(*argv: str) -> int:
    from tune_dsr import export

    return export.main(list(argv))


def test_export_errors(finished_search, tmp_path, capsys):
    experiment = str(finished_search["experiment"])
    assert search_cli_export(experiment, "--rank", "99", "--out", str(tmp_path / "x.json")) == 2
    assert "give a rank from 1 to" in capsys.readouterr().err
    assert search_cli_export(experiment, "--metric", "val_lfw_accuracy", "--mode", "max",
                             "--out", str(tmp_path / "x.json")) == 2
    assert "metric 'val_lfw_accuracy' was not reported" in capsys.readouterr().err
    assert search_cli_export(str(tmp_path / "nothing"), "--out", str(tmp_path / "x.json")) == 2
    assert "does not exist" in capsys.readouterr().err


def _output_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.extend(v for k, v in out.data.items() if k.startswith("text/"))
    return "\n".join(parts)


def test_analysis_notebook_runs_on_the_search(finished_search, monkeypatch):
    """notebooks/analyze_search.ipynb, top to bottom in a fresh kernel, on this experiment (with
    COMPLETE, PRUNED and FAIL trials)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "analyze_search.ipynb"
    monkeypatch.setenv("TUNE_DSR_EXPERIMENT", str(finished_search["experiment"]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(notebook, as_version=4)
    # Raises CellExecutionError, naming the cell, if any cell fails.
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}}).execute()
    text = _output_text(nb)
    best = json.loads((finished_search["experiment"] / search_cli.BEST_FILE).read_text())
    assert best["provenance"]["trial_id"] in text
    assert "python -m tune_dsr.export" in text and "PRUNED" in text
