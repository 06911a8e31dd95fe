"""The cycle: every stage in its own folder, the summary with the fair control, stage-by-stage
resume that never re-runs a finished stage, and folders of another cycle refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tune_dsr import cycle as cycle_cli
from tune_dsr.cycling.cycle import CONTROL, CYCLE1, FINETUNED, ORIGINAL, STAGE1, STAGES

QUICK = ["--epochs", "1", "--finetune-epochs", "1", "--resamples", "200", "--device", "cpu"]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    code = cycle_cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> list[str]:
    """The demo's faces outside the cycle folders, so that a copied cycle is the same cycle."""
    from tune_dsr import demo

    root = tmp_path_factory.mktemp("cycle_faces")
    demo.make_data(root, **demo.TRAIN_DATA)
    return ["--data-root", str(root)]


@pytest.fixture(scope="module")
def demo_cycle(tmp_path_factory, demo_data) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cycle") / "c"
    code = cycle_cli.main(["--demo", *demo_data, *QUICK, "--out", str(out)])
    assert code == 0
    return out, (out / "4_evaluate" / "summary.md").read_text()


def test_demo_runs_every_stage_and_summarises_with_the_fair_control(demo_cycle):
    out, markdown = demo_cycle
    for stage in STAGES:
        record = json.loads((out / stage / "done.json").read_text())
        assert record["stage"] == stage
    assert (out / "2_finetune" / "edgeface_finetuned.pth").is_file()
    assert (out / "3_dsr" / "config.json").is_file()
    trained_against = json.loads((out / "3_dsr" / "config.json").read_text())["train"]
    assert trained_against["edgeface"] == str(out / "2_finetune" / "edgeface_finetuned.pth")
    summary = json.loads((out / "4_evaluate" / "summary.json").read_text())
    assert summary["recognisers"] == [ORIGINAL, FINETUNED, CONTROL]
    assert set(summary["rank1"]["wide"]) == set(summary["rank1"]["guide"]) == {
        "bicubic", STAGE1, CYCLE1}
    assert summary["gallery_persons"] == {"wide": 16, "guide": 2}
    names = [c["name"] for c in summary["comparisons"]]
    assert any(name.startswith("the fair control") for name in names)
    fair = next(c for c in summary["comparisons"] if c["name"].startswith("the fair control"))
    assert fair["a"] == [CYCLE1, FINETUNED] and fair["b"] == ["bicubic", CONTROL]
    for protocol in ("wide", "guide"):
        assert fair[protocol]["low"] <= fair[protocol]["difference"] <= fair[protocol]["high"]
    assert "| cycle-1 DSR |" in markdown and "the fair control" in markdown
    assert summary["finetune"]["control"]["epochs_run"] == 1


def test_resume_runs_only_the_stages_not_finished(demo_cycle, demo_data, tmp_path, capsys):
    source, _ = demo_cycle
    out = tmp_path / "c"
    shutil.copytree(source, out)
    # The cycle as a kill during stage 3 leaves it: stage 3 started, stage 4 not.
    (out / "3_dsr" / "done.json").unlink()
    shutil.rmtree(out / "4_evaluate")
    finished = {s: (out / s / "done.json").stat().st_mtime_ns
                for s in ("1_dsr", "2_finetune", "2_control")}
    code, text = run_main(["--demo", *demo_data, *QUICK, "--out", str(out), "--resume"], capsys)
    assert code == 0, text
    assert finished == {s: (out / s / "done.json").stat().st_mtime_ns for s in finished}
    assert (out / "3_dsr" / "done.json").is_file() and (out / "4_evaluate" / "summary.md").is_file()


def test_a_cycle_is_not_overwritten_and_another_cycles_folders_are_refused(
        demo_cycle, demo_data, tmp_path, capsys):
    source, _ = demo_cycle
    out = tmp_path / "c"
    shutil.copytree(source, out)
    code, text = run_main(["--demo", *demo_data, *QUICK, "--out", str(out)], capsys)
    assert code == 2 and "already holds a cycle" in text

    code, text = run_main(["--demo", *demo_data, "--epochs", "1", "--finetune-epochs", "2",
                           "--device", "cpu", "--out", str(out), "--resume"], capsys)
    assert code == 2 and "holds another cycle" in text and "finetune" in text

    stage = out / "2_control" / "stage.json"
    stage.write_text(json.dumps({"cycle": "0123456789ab", "stage": "2_control"}))
    before = (out / "2_control" / "edgeface_finetuned.pth").read_bytes()
    code, text = run_main(["--demo", *demo_data, *QUICK, "--out", str(out), "--resume"], capsys)
    assert code == 2 and "belongs to another cycle" in text and "2_control" in text
    assert (out / "2_control" / "edgeface_finetuned.pth").read_bytes() == before


def test_bad_inputs_are_refused_before_any_work(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "train_processed").mkdir(parents=True)
    (root / "val_processed").mkdir()
    code, text = run_main(["--data-root", str(root), "--edgeface", "random:edgeface_xxs",
                           "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "test_processed" in text
    with pytest.raises(SystemExit) as stopped:
        cycle_cli.main(["--demo", "--config", "a.json", "--dsr", "b.pt", "--out",
                        str(tmp_path / "o")])
    assert stopped.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
