"""python -m tune_dsr.train: the demo, resume, and bad input ending in one clear paragraph."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tune_dsr import demo
from tune_dsr import train as train_cli
from tune_dsr.config import Config

REPO = Path(__file__).resolve().parents[1]
RANDOM_NETS = ["--edgeface", demo.RANDOM_NETWORKS["edgeface"],
               "--perceptual-weights", demo.RANDOM_NETWORKS["perceptual_weights"]]


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
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "best.png"):
        assert (tmp_path / "demo" / name).is_file()
    config = Config.from_json(tmp_path / "demo" / "config.json")
    assert (config.model.width, config.model.depth) == (demo.TRAIN["width"], demo.TRAIN["depth"])


def test_set_overrides_config_file_and_flags(synthetic_root, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, _, err = run_main(["--data-root", str(synthetic_root), *RANDOM_NETS, "--config",
                             tiny_config_file(tmp_path), "--epochs", "1", "--set", "width=6",
                             "--set", 'perceptual_layers={"relu1_2": 1.0}', "--set",
                             "monitor=val_psnr", "--out", str(out_dir), "--no-progress"], capsys)
    assert code == 0, err
    config = Config.from_json(out_dir / "config.json")
    assert config.model.width == 6 and config.model.depth == 1  # --set over the file's width
    assert config.loss.perceptual_layers == {"relu1_2": 1.0}
    assert config.train.monitor == "val_psnr"


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
    assert code == 2 and "vlr_images_32x32" in err and "--vlr-size=16" in err
    code, out, err = run_main([*common, "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    assert "Epoch 002" in out and "Epoch 001" not in out
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1.0, 2.0]


def assert_refused(argv: list[str], words: list[str], tmp_path: Path, capsys) -> None:
    """Exit 2, one paragraph naming `words`, no traceback, nothing trained."""
    code, _, err = run_main(argv, capsys)
    assert code == 2
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err and not (tmp_path / "out" / "best.pt").exists()


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "0"], ["--batch-size=0", "[1, 65536]"]),
    (["--seed", "-1"], ["--seed=-1"]),
    (["--max-images", "-2"], ["--max-images=-2"]),
    (["--out", "{tmp}/file.txt/run"], ["--out", "file.txt"]),
    (["--edgeface", "{tmp}/edgeface_finetuned.pth"], ["edgeface_finetuned.pth"]),
    (["--resume"], ["last.pt does not exist"]),
    # VGG19 ImageNet weights not in the (empty) hub cache, and nothing can be downloaded.
    (["--perceptual-weights", "imagenet"], ["vgg19-dcbb9e9d.pth", "--perceptual-weights"]),
    (["--set", "lambda_identiy=0.5"], ["lambda_identiy", "lambda_identity"]),
    (["--set", "width"], ["write KEY=VALUE"]),
])
def test_bad_flag_is_one_paragraph_and_exit_2(extra, words, synthetic_root, tmp_path, capsys,
                                              monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    (tmp_path / "file.txt").write_text("not a folder")
    argv = ["--data-root", str(synthetic_root), *RANDOM_NETS, "--out", str(tmp_path / "out"),
            *(item.format(tmp=tmp_path) for item in extra)]
    assert_refused(argv, words, tmp_path, capsys)


def test_no_data_or_missing_data(tmp_path, capsys):
    assert_refused([*RANDOM_NETS, "--out", str(tmp_path / "out")], ["no train_dir or val_dir"],
                   tmp_path, capsys)
    assert_refused(["--data-root", str(tmp_path / "nowhere"), *RANDOM_NETS, "--out",
                    str(tmp_path / "out")], ["nowhere", "does not exist"], tmp_path, capsys)


def test_bad_key_in_the_config_file(synthetic_root, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"loss": {"lambda_identiy": 0.5}}))
    assert_refused(["--data-root", str(synthetic_root), *RANDOM_NETS, "--config", str(config),
                    "--out", str(tmp_path / "out")],
                   ["c.json", "lambda_identiy", "lambda_identity"], tmp_path, capsys)


def test_corrupt_image(synthetic_root, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(synthetic_root, copy)
    victim = sorted((copy / "train_processed" / "hr_images").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])
    assert_refused(["--data-root", str(copy), *RANDOM_NETS, "--out", str(tmp_path / "out")],
                   [victim.name, "hr_images"], tmp_path, capsys)


def test_real_cli_process_no_traceback_unless_debug(tmp_path):
    argv = [sys.executable, "-m", "tune_dsr.train", "--train-dir", str(tmp_path / "nope"),
            "--val-dir", str(tmp_path / "nope"), *RANDOM_NETS, "--out", str(tmp_path / "o")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "does not exist" in done.stderr
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    usage = subprocess.run([sys.executable, "-m", "tune_dsr.train"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert usage.returncode == 2 and "--out" in usage.stderr and "usage:" in usage.stderr


def test_a_vlr_size_the_data_lacks_and_splits_of_different_sizes(tmp_path, capsys):
    """Refused by name before any training, exit 2: a --vlr-size the data root does not hold
    (the error lists the sizes it has), a root whose splits hold different sizes, and a
    held-out recogniser file that is not an EdgeFace."""
    from tune_dsr.synthetic import make_synthetic_dataset

    root = tmp_path / "faces"
    make_synthetic_dataset(root, subjects=6, per_subject=2, vlr_sizes=(8, 16), seed=0, hr_size=32)
    out = tmp_path / "run"
    hr32 = ["--set", "hr_size=32"]
    code, _, err = run_main(["--data-root", str(root), *RANDOM_NETS, *hr32, "--vlr-size", "12",
                             "--out", str(out)], capsys)
    assert code == 2 and "--vlr-size=12" in err and "vlr_images_8x8/" in err
    assert "vlr_images_16x16/" in err and "Traceback" not in err
    broken = tmp_path / "not_edgeface.pt"
    broken.write_bytes(b"not a checkpoint")
    code, _, err = run_main(["--data-root", str(root), *RANDOM_NETS, *hr32, "--vlr-size", "8",
                             "--val-edgeface", str(broken), "--out", str(out)], capsys)
    assert code == 2 and "--val-edgeface" in err and str(broken) in err
    assert not (out / "metrics.jsonl").exists()
    shutil.rmtree(root / "val_processed" / "vlr_images_8x8")
    shutil.rmtree(root / "train_processed" / "vlr_images_16x16")
    code, _, err = run_main(["--data-root", str(root), *RANDOM_NETS, *hr32, "--out", str(out)],
                            capsys)
    assert code == 2 and "training VLR images are 8px, validation ones 16px" in err
    assert not (out / "metrics.jsonl").exists()
