"""python -m tune_dsr.train: the demo, resume, and bad input ending in one clear paragraph."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tune_dsr import train as train_cli
from tune_dsr.config import Config

REPO = Path(__file__).resolve().parents[1]
RANDOM_NETS = ["--edgeface", "random:edgeface_xxs", "--perceptual-weights", "random"]


def run_main(argv, capsys):
    code = train_cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_config_file(tmp_path: Path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model": {"width": 8, "depth": 1},
                                "train": {"batch_size": 4, "warmup_epochs": 1}}))
    return str(path)


def test_demo_runs_and_writes_its_outputs(tmp_path, capsys):
    code, out, _ = run_main(["--demo", "--epochs", "1", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0
    assert "Epoch 001 | train_loss=" in out and "(L1:" in out and "PSNR=" in out
    assert "          | val_loss=" in out and "Done: 1 epochs" in out
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (tmp_path / "demo" / name).is_file()


def test_vlr_size_comes_from_the_data_and_resume_goes_on(synthetic_root, tmp_path, capsys):
    out_dir = tmp_path / "run"
    common = ["--data-root", str(synthetic_root), *RANDOM_NETS, "--config",
              tiny_config_file(tmp_path), "--out", str(out_dir), "--no-progress"]
    # Neither --vlr-size nor the config file names a size: it is read off the data (16 px).
    code, out, err = run_main([*common, "--epochs", "1"], capsys)
    assert code == 0, err
    assert Config.from_json(out_dir / "config.json").model.vlr_size == 16
    # A size the data does not have is refused, naming the sizes it has.
    code, out, err = run_main([*common, "--epochs", "1", "--vlr-size", "32"], capsys)
    assert code == 2 and "vlr_images_32x32" in err and "vlr_size=16" in err
    code, out, err = run_main([*common, "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    assert "Epoch 002" in out and "Epoch 001" not in out
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1.0, 2.0]


@pytest.mark.parametrize("problem", ["no_data", "missing_dir", "bad_key", "bad_value",
                                     "missing_edgeface", "resume_without_state", "corrupt_image",
                                     "vgg_missing"])
def test_bad_input_is_one_paragraph_and_exit_2(problem, synthetic_root, tmp_path, capsys,
                                               monkeypatch):
    data = ["--data-root", str(synthetic_root)]
    argv = [*data, *RANDOM_NETS, "--out", str(tmp_path / "out")]
    expect: list[str]
    if problem == "no_data":
        argv, expect = [*RANDOM_NETS, "--out", str(tmp_path / "out")], ["no train_dir or val_dir"]
    elif problem == "missing_dir":
        argv[1], expect = str(tmp_path / "nowhere"), ["nowhere", "does not exist"]
    elif problem == "bad_key":
        config = tmp_path / "c.json"
        config.write_text(json.dumps({"loss": {"lambda_identiy": 0.5}}))
        argv += ["--config", str(config)]
        expect = ["c.json", "lambda_identiy", "lambda_identity"]
    elif problem == "bad_value":
        argv += ["--batch-size", "0"]
        expect = ["batch_size=0", "[1, 65536]"]
    elif problem == "missing_edgeface":
        argv += ["--edgeface", str(tmp_path / "edgeface_finetuned.pth")]
        expect = ["edgeface_finetuned.pth"]
    elif problem == "resume_without_state":
        argv += ["--resume"]
        expect = ["last.pt does not exist"]
    elif problem == "corrupt_image":
        copy = tmp_path / "data"
        shutil.copytree(synthetic_root, copy)
        victim = sorted((copy / "train_processed" / "hr_images").iterdir())[0]
        victim.write_bytes(victim.read_bytes()[:40])
        argv[1], expect = str(copy), [victim.name, "hr_images"]
    else:  # VGG19 ImageNet weights not in the (empty) hub cache, nothing downloadable
        argv += ["--perceptual-weights", "imagenet"]
        expect = ["vgg19-dcbb9e9d.pth", "--perceptual-weights"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    code, _, err = run_main(argv, capsys)
    assert code == 2
    for word in expect:
        assert word in err, (word, err)
    assert "Traceback" not in err and not (tmp_path / "out" / "best.pt").exists()


def test_real_cli_process_no_traceback_unless_debug(tmp_path):
    argv = [sys.executable, "-m", "tune_dsr.train", "--train-dir", str(tmp_path / "nope"),
            "--val-dir", str(tmp_path / "nope"), *RANDOM_NETS, "--out", str(tmp_path / "o")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "does not exist" in done.stderr
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    usage = subprocess.run([sys.executable, "-m", "tune_dsr.train"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert usage.returncode == 2 and "--out" in usage.stderr and "usage:" in usage.stderr
