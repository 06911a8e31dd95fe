"""The search CLI: bad arguments fail before any trial, --list-spaces, resume after a kill, and
trials spread over a two-node Ray cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import SEARCH_PINS, as_flags
from tune_dsr import demo
from tune_dsr import search as search_cli
from tune_dsr.tuning.analysis import load_experiment
from tune_dsr.tuning.experiment import BEST_FILE, CONFIRM_DIR, STUDY_FILE
from tune_dsr.tuning.records import load_trials

REPO = Path(__file__).resolve().parents[1]
TINY = ["--edgeface", demo.RANDOM_NETWORKS["edgeface"],
        "--perceptual-weights", demo.RANDOM_NETWORKS["perceptual_weights"],
        *as_flags(SEARCH_PINS)]
def subprocess_env() -> dict[str, str]:
    """A search run as its own process: one torch thread, as in the trials (see conftest).
    Read at call time: it must carry what the session's Ray put in the environment (its
    authentication token) for a driver to join it."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def data_args(root: Path) -> list[str]:
    return ["--train-dir", str(root / "train_processed"), "--val-dir", str(root / "val_processed")]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    code = search_cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("extra, words", [
    (["--space", "recognition_frist"], ["unknown search space", "recognition_first",
                                        "quality_first", "fast"]),
    (["--gpus", "1", "--gpus-per-trial", "2"], ["--gpus-per-trial=2.0 is larger than --gpus"]),
    (["--gpus", "0.5", "--gpus-per-trial", "1"], ["larger than --gpus"]),
    (["--gpus", "1", "--gpus-per-trial", "0"], ["would leave the GPUs idle"]),
    (["--reduction-factor", "1"], ["--reduction-factor=1.0 must be above 1"]),
    (["--max-epochs", "3", "--grace-period", "5"], ["--grace-period=5 exceeds --max-epochs=3"]),
    (["--set", "lerning_rate=0.1"], ["unknown config key 'lerning_rate'", "Valid keys"]),
    (["--set", "lr=5"], ["lr=5", "(0.0, 1.0]"]),
    (["--set", "width"], ["write KEY=VALUE"]),
    (["--storage-path", "ftp://host/x"], ["unsupported URI scheme"]),
    (["--num-samples", "2", "--confirm", "3"], ["--confirm=3", "the 2 trials the search runs"]),
    (["--patience", "0"], ["--patience=0 must be at least 1"]),
    (["--confirm-runs", "0"], ["--confirm-runs=0 must be at least 1"]),
    (["--objectives", "val_psnr,val_psnr"], ["--objectives", "val_psnr given twice"]),
    (["--objectives", "val_psnr,val_sharpness"], ["'val_sharpness' is not a metric"]),
    (["--objectives", "val_psnr,val_ssim,val_loss,val_margin"],
     ["give one metric, or two or three metrics"]),
    (["--objectives", "val_heldout_margin_gain"], ["val_heldout_margin_gain needs a held-out "
                                                   "recogniser", "--val-edgeface"]),
    (["--space", "balanced", "--confirm", "2"], ["--confirm=2", "a search of several returns a "
                                                 "front"]),
])
def test_bad_arguments_fail_before_anything_starts(extra, words, search_root, tmp_path,
                                                  capsys):
    storage = tmp_path / "results"
    code, text = run_main([*data_args(search_root), *TINY, "--storage-path", str(storage),
                           "--name", "x", *extra], capsys)
    assert code == 2
    for word in words:
        assert word in text
    assert "Traceback" not in text
    assert not (storage / "x").exists()


def test_gpus_that_are_not_there(search_root, tmp_path, capsys):
    import torch

    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    code, text = run_main([*data_args(search_root), *TINY, "--gpus", "8",
                           "--storage-path", str(tmp_path)], capsys)
    assert code == 2 and "CUDA device(s)" in text


def test_missing_data_and_unreadable_edgeface(search_root, tmp_path, capsys):
    storage = tmp_path / "results"
    code, text = run_main(["--train-dir", str(tmp_path / "nowhere"), "--val-dir",
                           str(tmp_path / "nowhere"), *TINY, "--storage-path", str(storage),
                           "--name", "x"], capsys)
    assert code == 2 and "nowhere" in text and "does not exist" in text
    code, text = run_main(["--data-root", str(tmp_path)], capsys)
    assert code == 2 and "train_processed" in text
    code, text = run_main(["--storage-path", str(storage)], capsys)
    assert code == 2 and "no data" in text

    broken = tmp_path / "edgeface_finetuned.pth"
    broken.write_bytes(b"this is not a checkpoint")
    code, text = run_main([*data_args(search_root), *TINY, "--edgeface", str(broken),
                           "--storage-path", str(storage), "--name", "x"], capsys)
    assert code == 2 and str(broken) in text and "Traceback" not in text
    assert not (storage / "x").exists()
    # The same file as the held-out validation recogniser: refused by its setting's name.
    code, text = run_main([*data_args(search_root), *TINY, "--val-edgeface", str(broken),
                           "--storage-path", str(storage), "--name", "x"], capsys)
    assert code == 2 and "--val-edgeface" in text and str(broken) in text
    assert "Traceback" not in text and not (storage / "x").exists()


def test_storage_path_that_cannot_be_written(ray_session, search_root, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, text = run_main([*data_args(search_root), *TINY,
                           "--storage-path", str(blocker / "results"), "--name", "x"], capsys)
    assert code == 2 and "--storage-path=" in text and "cannot be written" in text


def test_storage_check_finds_the_path_shared_on_one_node(ray_session, tmp_path):
    from tune_dsr.tuning.optuna_asha import check_storage_reachable

    assert check_storage_reachable(str(tmp_path / "shared")) == []
    assert list((tmp_path / "shared").iterdir()) == []  # the marker is cleaned up


def test_a_preset_whose_anchor_names_an_unknown_key(search_root, tmp_path, capsys):
    preset = tmp_path / "mine.py"
    preset.write_text("METRIC = 'val_margin'\nANCHORS = {'guide': {}, 'odd': {'lerning_rate': 1}}\n"
                      "def space(trial):\n    trial.suggest_float('lr', 1e-4, 1e-3, log=True)\n")
    code, text = run_main([*data_args(search_root), *TINY, "--space", str(preset),
                           "--storage-path", str(tmp_path / "results"), "--name", "x"], capsys)
    assert code == 2 and "anchor 'odd'" in text and "lerning_rate" in text
    assert not (tmp_path / "results" / "x").exists()


def test_list_spaces(capsys):
    code, text = run_main(["--list-spaces"], capsys)
    assert code == 0
    for words in ("recognition_first", "quality_first", "max val_psnr", "fast", "max val_score",
                  "lambda_identity", "(log)", "anchors (run first): guide", "pixel-only"):
        assert words in text


def test_resume_needs_an_experiment(tmp_path, capsys):
    code, text = run_main(["--resume", "--storage-path", str(tmp_path), "--name", "gone"],
                          capsys)
    assert code == 2 and "search_plan.json missing" in text
    code, text = run_main(["--resume", "--storage-path", str(tmp_path)], capsys)
    assert code == 2 and "--resume needs --name" in text


def _statuses(experiment: Path) -> dict[str, str]:
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being written
        return {}
    return {json.loads(e[0])["trial_id"]: json.loads(e[0])["status"] for e in data["trial_data"]}


def _driver(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**subprocess_env(), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    return subprocess.Popen([sys.executable, "-m", "tune_dsr.search", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_finished(driver: subprocess.Popen, experiment: Path, count: int) -> None:
    deadline = time.monotonic() + 240
    while sum(s == "TERMINATED" for s in _statuses(experiment).values()) < count:
        assert driver.poll() is None, ("the search ended before it could be stopped: "
                                       + (driver.stderr.read() if driver.stderr else "")[-3000:])
        assert time.monotonic() < deadline, f"{count} trials did not finish in time"
        time.sleep(0.5)


@pytest.mark.heavy
@pytest.mark.slow
def test_interrupted_then_killed_search_resumes_without_rerunning_trials(
        ray_session, search_root, tmp_path, capsys):
    """Ctrl-C in the search, then a kill in the confirmation runs: each resume goes on where
    the last left off, and no finished trial or confirmation run is run again."""
    storage, name = tmp_path / "results", "killed"
    experiment = storage / name
    confirm = experiment / CONFIRM_DIR
    resume = ["--resume", "--storage-path", str(storage), "--name", name]

    # Ctrl-C: Tune saves the experiment; the CLI says it is unfinished and how to go on.
    driver = _driver([*data_args(search_root), *TINY, "--num-samples", "3", "--max-epochs",
                      "2", "--grace-period", "2", "--max-concurrent", "1", "--confirm", "1",
                      "--confirm-runs", "2", "--storage-path", str(storage), "--name", name],
                     tmp_path)
    _wait_for_finished(driver, experiment, 1)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-2000:]
    assert f"--resume --storage-path {storage} --name {name}" in err
    assert not confirm.exists()  # an interrupted search confirms nothing

    # Resumed: the search ends, the confirmation runs start; then killed outright, with no
    # chance to save anything on the way out.
    driver = _driver(resume, tmp_path)
    try:
        _wait_for_finished(driver, confirm, 1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
        driver.wait()
    # ASHA's rungs came back with the search (a plain Tuner.restore starts them empty): the
    # trials that had reached epoch 2 before the Ctrl-C.
    err = driver.stderr.read() if driver.stderr else ""
    assert re.search(r"Restored ASHA rungs: .*\(2\.0, [12]\)", err), err[-3000:]
    rows_before = {}
    for folder in (experiment, confirm):
        finished = {t for t, s in _statuses(folder).items() if s == "TERMINATED"}
        rows_before.update({t.trial_id: (Path(t.path) / "progress.csv").read_text()
                            for t in load_trials(str(folder)) if t.trial_id in finished})
    assert len(rows_before) == 4  # three trials and one confirmation run

    code, _ = run_main(resume, capsys)
    assert code == 0
    trials = load_trials(str(experiment))
    assert len(trials) == 3 and all(t.epochs_run == 2 and not t.error for t in trials)
    # The search's best configuration and the pixel-only anchor, two new runs each.
    search_order = load_experiment(experiment).top(None, confirmed=False)
    confirmed = {search_order["trial_id"].iloc[0],
                 search_order.loc[search_order["anchor"] == "pixel-only", "trial_id"].item()}
    runs = load_trials(str(confirm))
    assert len(runs) == 2 * len(confirmed)
    assert all(r.epochs_run == 2 and not r.error for r in runs)
    assert sorted(r.config["confirm_run"] for r in runs) == sorted([1, 2] * len(confirmed))
    assert {r.config["confirms"] for r in runs} == confirmed
    for trial in [*trials, *runs]:  # finished trials were not run again
        if trial.trial_id in rows_before:
            assert (Path(trial.path) / "progress.csv").read_text() == rows_before[trial.trial_id]
    study = optuna.load_study(study_name=name,
                              storage=f"sqlite:///{experiment / STUDY_FILE}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert optuna.trial.TrialState.RUNNING not in states
    assert (experiment / BEST_FILE).is_file()


CLUSTER_SCRIPT = textwrap.dedent("""
    import sys
    import time

    import ray
    from ray.cluster_utils import Cluster
    from tune_dsr import search

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1},
                      connect=False, shutdown_at_exit=True)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    # Joined, then wait until the second node's CPU is schedulable: a Tune run that starts while
    # the cluster still shows one CPU runs its trials one after another, all on the head.
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=True)
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    code = search.main(sys.argv[1:] + ["--address", cluster.address])
    ray.shutdown()
    cluster.shutdown()
    sys.exit(code)
""")


@pytest.mark.heavy
@pytest.mark.slow
def test_two_node_cluster_runs_trials_on_both_nodes(search_root, tmp_path):
    storage, name = tmp_path / "shared_results", "cluster"
    script = tmp_path / "cluster_search.py"
    script.write_text(CLUSTER_SCRIPT)
    # Four trials of two epochs: with one CPU per node two run at once, one on each node. (With
    # two one-epoch trials the second could be handed the first's finished actor, since trials
    # reuse actors, before a worker on the second node had started: a flaky test.)
    argv = [*data_args(search_root), *TINY, "--num-samples", "4", "--max-epochs", "2",
            "--grace-period", "2", "--max-concurrent", "2", "--confirm", "0", "--storage-path",
            str(storage), "--name", name]
    done = subprocess.run([sys.executable, str(script), *argv], cwd=tmp_path, timeout=400,
                          env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Ray cluster: 2 nodes" in done.stderr
    trials = load_trials(str(storage / name))
    assert len(trials) == 4 and all(t.history for t in trials)
    nodes = {r["node_id"] for t in trials for r in t.history}
    assert len(nodes) == 2  # trials ran on both nodes ...
    assert (storage / name / BEST_FILE).is_file()  # ... into one experiment folder


BROKEN_PRESETS = {
    "syntax": ('METRIC = "val_margin"\ndef space(trial)\n    return {}\n', 2, "SyntaxError"),
    "import": ('import no_such_module_here\nMETRIC = "val_margin"\n', 1, "ModuleNotFoundError"),
    "space": ('METRIC = "val_margin"\n\ndef space(trial):\n'
              '    trial.suggest_float("lr", 1e-4, 1e-3, log=True)\n'
              '    return {"lambda_l1": 1 / 0}\n', 5, "ZeroDivisionError"),
    "constants": ('METRIC = "val_margin"\nANCHORS = {"x": {"lr": [1, 2][5]}}\n'
                  'def space(trial):\n    return {}\n', 2, "IndexError"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_PRESETS))
def test_a_broken_preset_file_is_refused_by_name_and_line(kind, tmp_path, capsys):
    """The file itself, broken four ways: named with its line, exit 2, before Ray or the demo's
    faces, nothing written."""
    text, line, error = BROKEN_PRESETS[kind]
    preset = tmp_path / f"my_{kind}.py"
    preset.write_text(text)
    storage = tmp_path / "results"
    code, out = run_main(["--space", str(preset), "--demo", "--storage-path", str(storage)],
                         capsys)
    assert code == 2
    assert f"{preset}, line {line}" in out and error in out and "fix the file" in out
    assert "Traceback" not in out and not storage.exists()


def test_a_set_that_contradicts_a_switch_is_refused_before_the_demo_writes(tmp_path, capsys):
    storage = tmp_path / "results"
    code, out = run_main(["--demo", "--set", "lambda_identity=0", "--set",
                          "lambda_identity_on=true", "--storage-path", str(storage)], capsys)
    assert code == 2 and "lambda_identity_on=True" in out and not storage.exists()
