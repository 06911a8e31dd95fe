"""Damaged experiment files: each reader names the file and what is wrong with it.

A crash (or a hand edit) can leave any file of an experiment cut short or wrong. A damaged
trial folder, Tune state or study is left out with a warning naming the file, and the rest of the
experiment still ranks and exports; a damaged search plan is refused with the file, the problem
and the fix. Small experiment folders written here by hand, plus one copy of the shared real
search (`finished_search`), damaged after copying.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from tune_dsr import export as export_cli
from tune_dsr.errors import ConfigError
from tune_dsr.tuning.analysis import load_experiment
from tune_dsr.tuning.experiment import PLAN_FILE, SearchPlan, write_json
from tune_dsr.tuning.export import best_config_document
from tune_dsr.tuning.records import unfinished_trials

DAMAGE = "a crash while writing it, or a hand edit"
# Each trial's val_margin per epoch: a is the best (0.30), b has three epochs (a middle line to
# damage), c two.
TRIALS = {"a": [0.10, 0.30], "b": [0.20, 0.22, 0.21], "c": [0.15, 0.12]}


def write_experiment(root: Path, trials: dict[str, list[float]] = TRIALS) -> Path:
    """An experiment folder as a search writes it: search_plan.json, and per trial params.json,
    result.json (one JSON line per epoch) and progress.csv."""
    SearchPlan(space="recognition_first", metric="val_margin", mode="max", base={"epochs": 4},
               pins={}, storage_path=str(root), name="hand", num_samples=len(trials),
               max_epochs=4, grace_period=1, reduction_factor=2, gpus=0, gpus_per_trial=0,
               cpus_per_trial=1, max_concurrent=0, time_budget=None, seed=0, max_failures=0,
               checkpoint_every=1).save()
    experiment = root / "hand"
    for trial_id, margins in trials.items():
        folder = experiment / f"trial_{trial_id}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps({"epochs": 4, "lr": 1e-3, "anchor": ""}))
        rows = [{"epoch": e, "trial_id": trial_id, "val_margin": m}
                for e, m in enumerate(margins, start=1)]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "progress.csv").write_text("epoch,trial_id,val_margin\n" + "".join(
            f"{r['epoch']},{trial_id},{r['val_margin']}\n" for r in rows))
    return experiment


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    return write_experiment(tmp_path)


def warnings_of(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# ----------------------------------------------------------------------------- the plan: refused

def test_half_written_plan_is_refused_with_the_file_named(experiment: Path) -> None:
    plan = experiment / PLAN_FILE
    text = plan.read_text()
    plan.write_text(text[: len(text) // 2])
    for read in (lambda: SearchPlan.load(str(experiment)), lambda: load_experiment(experiment),
                 lambda: best_config_document(str(experiment))):
        with pytest.raises(ConfigError) as error:
            read()
        message = str(error.value)
        assert f"{plan} is not valid JSON (" in message and DAMAGE in message
        assert f"restore {PLAN_FILE}" in message  # the fix
    # An empty plan says so.
    plan.write_text("")
    with pytest.raises(ConfigError, match=r"is not valid JSON \(Expecting value at line 1, "
                                          r"column 1, it is empty\)"):
        SearchPlan.load(str(experiment))


def test_plan_that_is_a_list_is_refused(experiment: Path) -> None:
    (experiment / PLAN_FILE).write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match=rf"{PLAN_FILE} holds a JSON list where a JSON object "
                                          "belongs: a crash while writing it, or a hand edit"):
        load_experiment(experiment)


def test_plan_with_missing_or_wrongly_typed_fields_names_them(experiment: Path) -> None:
    plan = experiment / PLAN_FILE
    raw = json.loads(plan.read_text())
    del raw["metric"], raw["max_epochs"]
    raw.update(num_samples="ten", anchors={"guide": 3}, time_budget=True)
    plan.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as error:
        SearchPlan.load(str(experiment))
    assert str(error.value).startswith(
        f"{plan} is not a complete search plan (missing metric, max_epochs; num_samples is the "
        "string 'ten', not a whole number; time_budget is true, not a number or null; anchors "
        "is a JSON object, not a JSON object of JSON objects): ")


def test_plan_keys_this_version_does_not_read_are_left_out(experiment: Path) -> None:
    """A plan from an older tune_dsr (``extra``) or a newer one still loads."""
    plan = experiment / PLAN_FILE
    before = SearchPlan.load(str(experiment))
    raw = json.loads(plan.read_text())
    plan.write_text(json.dumps({**raw, "extra": {"note": 1}, "from_the_future": [1]}))
    assert SearchPlan.load(str(experiment)) == before
    assert not hasattr(before, "extra")


# ----------------------------------------------------------------------------- trials: left out

def cut(text: str) -> str:
    return text[: len(text) // 2]


def garbage_middle_line(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join([lines[0], "garbage\n", *lines[2:]])


@pytest.mark.parametrize(("name", "damage", "problem"), [
    ("params.json", cut, "params.json is not valid JSON (Expecting value at line 1, column 21)"),
    ("params.json", lambda text: "[1, 2]", "params.json holds a JSON list where a JSON object "
                                           "belongs"),
    ("result.json", garbage_middle_line, "result.json line 2 is not valid JSON (Expecting value "
                                         "at column 1)"),
    ("result.json", lambda text: text.replace('"epoch": 2', '"epoch": "two"'),
     "result.json line 2 has epoch 'two', not a number"),
    ("progress.csv", lambda text: text + "4,b,0.2,extra,fields\n",
     "progress.csv is not a readable CSV table (Expected 3 fields in line 5, saw 5)"),
    ("result.json", lambda text: text.encode() + b"\xff\n",
     "result.json is not UTF-8 text (invalid start byte at byte 149)"),
])
def test_damaged_trial_is_left_out_and_the_rest_exported(
        experiment: Path, caplog: pytest.LogCaptureFixture, name: str, damage: Any,
        problem: str) -> None:
    path = experiment / "trial_b" / name
    damaged = damage(path.read_text())
    path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
    with caplog.at_level(logging.WARNING):
        exp = load_experiment(experiment)
    message = f"{experiment / 'trial_b'}/{problem}"
    assert message in warnings_of(caplog) and DAMAGE in warnings_of(caplog)
    assert "Trial folder trial_b left out" in warnings_of(caplog)
    assert [r.trial_id for r in exp.records] == ["a", "c"]
    assert len(exp.damaged) == 1 and exp.damaged[0].startswith(message)
    assert exp.top(None)["trial_id"].tolist() == ["a", "c"]
    document = best_config_document(str(experiment))
    assert document["provenance"]["trial_id"] == "a"
    assert document["provenance"]["left_out"] == exp.damaged


def test_truncated_last_line_is_a_trial_being_written(experiment: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Text after the last newline is a line Ray is still writing: no warning, the epochs
    before it count."""
    for name, tail in (("result.json", '{"epoch": 3, "trial_id": "a", "val_mar'),
                       ("progress.csv", "3,a,0.")):
        with open(experiment / "trial_a" / name, "a") as f:
            f.write(tail)
    with caplog.at_level(logging.WARNING):
        exp = load_experiment(experiment)
    assert warnings_of(caplog) == "" and exp.damaged == []
    assert exp.trial("a").epochs_run == 2 and exp.top(1)["trial_id"].iloc[0] == "a"


def test_damaged_tune_state_leaves_the_statuses_unknown(experiment: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    state = experiment / "experiment_state-2026-01-01_00-00-00.json"
    entry = json.dumps({"trial_id": "a", "status": "RUNNING"})
    state.write_text(json.dumps({"trial_data": [[entry, "{}"]]})[:30])
    with caplog.at_level(logging.WARNING):
        exp = load_experiment(experiment)
        assert unfinished_trials(str(experiment)) == []
    assert f"{state} is not valid JSON (" in warnings_of(caplog)
    assert "Trial statuses unknown" in warnings_of(caplog)
    assert exp.statuses == {} and len(exp.records) == 3
    # A state whose trial entries are not Tune's.
    state.write_text(json.dumps({"trial_data": [["not json"]]}))
    with caplog.at_level(logging.WARNING):
        assert load_experiment(experiment).statuses == {}
    assert f"{state} trial_data[0] is not valid JSON (" in warnings_of(caplog)


# ----------------------------------------------------------------------------- export

def test_export_with_no_finished_trial_says_there_is_nothing_yet(tmp_path: Path) -> None:
    for root, trials, so_far in ((tmp_path / "started", {"a": [], "b": []}, "2 trial(s) so far"),
                                 (tmp_path / "planned", {}, "no trial has started")):
        experiment = write_experiment(root, trials)
        with pytest.raises(ConfigError) as error:
            best_config_document(str(experiment))
        message = str(error.value)
        assert message.startswith(f"nothing to export yet from {experiment}: no trial has "
                                  "finished an epoch with a val_margin value")
        assert so_far in message and "--resume" in message and "1 to 0" not in message
    failed = write_experiment(tmp_path / "failed", {"a": [], "b": []})
    for trial_id in ("a", "b"):
        (failed / f"trial_{trial_id}" / "error.txt").write_text("TrainingDiverged")
    with pytest.raises(ConfigError, match=r"\(2 trial\(s\) so far, 2 failed\); every trial "
                                          "failed: read their error.txt"):
        best_config_document(str(failed))


def test_export_names_a_params_json_that_is_no_training_config(experiment: Path) -> None:
    """Valid JSON, but edited into a config training cannot use: the file and the key named."""
    params = experiment / "trial_a" / "params.json"
    params.write_text(json.dumps({**json.loads(params.read_text()), "lerning_rate": 1}))
    with pytest.raises(ConfigError, match=rf"{params} \(trial a\) is not a training "
                                          "config: .*'lerning_rate'.*export another trial"):
        best_config_document(str(experiment))
    assert best_config_document(str(experiment), rank=2)["provenance"]["trial_id"] == "b"


def test_rank_out_of_range_says_the_valid_range(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path / "three")
    for rank in (0, 4):
        with pytest.raises(ConfigError, match=rf"--rank {rank}: .* has 3 configuration\(s\) "
                                              "with a val_margin value; give a rank from 1 to 3"):
            best_config_document(str(experiment), rank=rank)
    one = write_experiment(tmp_path / "one", {"a": [0.1]})
    with pytest.raises(ConfigError, match=r"give rank 1$"):
        best_config_document(str(one), rank=2)


def test_export_cli_refuses_a_damaged_plan_and_warns_of_a_damaged_trial(
        experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "best.json"
    plan = experiment / PLAN_FILE
    text = plan.read_text()
    plan.write_text(cut(text))
    assert export_cli.main([str(experiment), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {plan} is not valid JSON (" in err and not out.exists()

    plan.write_text(text)
    (experiment / "trial_c" / "params.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        assert export_cli.main([str(experiment), "--out", str(out)]) == 0
    assert f"{experiment / 'trial_c' / 'params.json'} is not valid JSON" in warnings_of(caplog)
    assert json.loads(out.read_text())["provenance"]["trial_id"] == "a"


# ----------------------------------------------------------------------------- writes

def test_write_json_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "best.json"
    write_json(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]
    plain = tmp_path / "plain"
    plain.write_text("")  # the permissions a plain write gives (the umask's)
    assert target.stat().st_mode == plain.stat().st_mode
    plain.unlink()

    # A document that cannot be written leaves the old file whole.
    with pytest.raises(TypeError):
        write_json(str(target), {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}

    # The rename fails (the target is a folder): the temporary file is removed.
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(OSError):
        write_json(str(folder), {"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "folder.json"]
    assert list(folder.iterdir()) == []


# ----------------------------------------------------------------------------- the real search

@pytest.mark.slow
def test_damaged_copy_of_the_real_search(finished_search: dict[str, Any], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    """A copy of the shared search with a trial's params.json cut short, Tune's state and the
    study overwritten: the winner, its searched keys and the other trials are unchanged."""
    experiment = tmp_path / "e2e"
    shutil.copytree(finished_search["experiment"], experiment)
    before = load_experiment(experiment)
    winner = before.winner().trial_id
    victim = before.top(None)["trial_id"].iloc[-1]  # the last ranked: neither winner nor confirmed
    folder = experiment / Path(before.trial(victim).path).name
    (folder / "params.json").write_text(cut((folder / "params.json").read_text()))
    (state,) = experiment.glob("experiment_state-*.json")
    state.write_text(cut(state.read_text()))
    (experiment / "optuna_study.db").write_bytes(b"not a database" * 100)

    with caplog.at_level(logging.WARNING):
        exp = load_experiment(experiment)
        document = best_config_document(str(experiment))
    for damaged in (folder / "params.json", state, experiment / "optuna_study.db"):
        assert f"{damaged} is not " in warnings_of(caplog)
    assert sorted(r.trial_id for r in exp.records) == sorted(
        r.trial_id for r in before.records if r.trial_id != victim)
    assert exp.winner().trial_id == winner == document["provenance"]["trial_id"]
    assert set(document["provenance"]["searched"]) == set(before.searched)
    assert len(document["provenance"]["left_out"]) == 3

    plan = experiment / PLAN_FILE
    plan.write_text(cut(plan.read_text()))
    assert export_cli.main([str(experiment), "--out", str(tmp_path / "x.json")]) == 2
    assert f"{plan} is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
