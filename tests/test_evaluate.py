"""The evaluation CLI and library end to end on tiny synthetic faces, and every refused input."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune_dsr.config import Config
from tune_dsr.errors import CheckpointError
from tune_dsr.evaluate import main
from tune_dsr.evaluation.probes import load_dsrs, load_probe_set, resolve_split
from tune_dsr.evaluation.protocols import evaluate_dsrs
from tune_dsr.models.checkpoints import load_dsr, read_dsr_checkpoint, save_dsr
from tune_dsr.models.dsr import DSR

EDGEFACE = "random:edgeface_xxs"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tune_dsr.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("eval_faces")
    # 30 subjects: 24 train, 3 val, 3 test (2 images each): 6 probes, 27 distractors.
    make_synthetic_dataset(out, subjects=30, per_subject=2, vlr_sizes=(16,), seed=0)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("eval_ckpt")
    torch.manual_seed(0)
    config = Config().replace(vlr_size=16, width=8, depth=1)
    save_dsr(folder / "best.pt", DSR(config.model), config, {"val_psnr": 20.0}, epoch=3)
    other = Config().replace(vlr_size=32, width=8, depth=1)
    save_dsr(folder / "vlr32.pt", DSR(other.model), other, {}, epoch=1)
    (folder / "notes.txt").write_text("this is not a checkpoint\n")
    return {"best": folder / "best.pt", "vlr32": folder / "vlr32.pt",
            "text": folder / "notes.txt", "folder": folder}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tables_sweep_csv_and_default_distractors(root, checkpoints, capsys, tmp_path):
    table = tmp_path / "probes.csv"
    code, out, err = run(capsys, "--test-dir", str(root / "test_processed"),
                         "--dsr", str(checkpoints["best"]), "--edgeface", EDGEFACE,
                         "--sweep", "--csv", str(table), "--device", "cpu")
    assert code == 0, err
    for text in ("protocol guide", "protocol wide", "3 subjects + 27 distractor subjects",
                 "rank-1 [95% CI]", "TAR@1e-3", "vs bicubic", "best threshold for best.pt",
                 "under 15 %", "most frequent wrong answers", "probes/s"):
        assert text in out, text
    hr_row = next(line for line in out.splitlines() if line.startswith("HR "))
    assert hr_row.split()[-2:] == ["n/a", "n/a"]  # no PSNR/SSIM for the upper bound
    with open(table) as f:
        rows = list(csv.DictReader(f))
    # 6 probes x 3 methods (HR, bicubic, best.pt) x 1 recogniser x 2 protocols.
    assert len(rows) == 6 * 3 * 1 * 2
    assert {r["method"] for r in rows} == {"HR", "bicubic", "best.pt"}
    assert {r["protocol"] for r in rows} == {"guide", "wide"}
    assert set(rows[0]) >= {"probe", "subject", "method", "recogniser", "protocol", "predicted",
                            "similarity", "correct", "margin", "psnr", "ssim"}
    # A probe identified at rank 1 has a positive margin over every other gallery subject.
    assert all((float(r["margin"]) > 0) == (r["rank"] == "1") for r in rows)


def test_json_two_recognisers_and_leave_one_out(root, checkpoints, capsys):
    code, out, err = run(capsys, "--test-dir", str(root / "test_processed"),
                         "--dsr", str(checkpoints["best"]), "--edgeface", EDGEFACE, EDGEFACE,
                         "--leave-one-out", "--json", "--device", "cpu", "--resamples", "200")
    assert code == 0, err
    report = json.loads(out)
    assert {"dataset", "settings", "methods", "recognisers", "protocols", "quality", "results",
            "speed"} <= set(report)
    assert report["settings"]["leave_one_out"] is True
    assert [r["role"] for r in report["recognisers"]] == ["trained against", "held-out"]
    assert report["protocols"]["wide"]["distractor_subjects"] == 27
    assert len(report["results"]) == 4  # 2 recognisers x 2 protocols
    block = report["results"][0]
    assert list(block["methods"]) == ["HR", "bicubic", "best.pt"]
    dsr = block["methods"]["best.pt"]
    for key in ("rank1", "rank1_ci", "rank5", "accuracy", "accuracy_ci", "unknown_rate",
                "margin", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "psnr", "ssim",
                "per_subject", "subjects_under_15", "wrong_answers", "vs_bicubic"):
        assert key in dsr, key
    assert dsr["rank1_ci"][0] <= dsr["rank1"] <= dsr["rank1_ci"][1]
    assert dsr["vs_bicubic"]["rank1"]["verdict"] in ("better", "worse", "no clear difference")
    assert block["methods"]["HR"]["psnr"] is None
    assert report["methods"][2]["epoch"] == 3 and report["methods"][2]["weights"] == "ema"


def test_the_text_says_which_recogniser_is_held_out(root, checkpoints, capsys):
    code, out, _ = run(capsys, "--test-dir", str(root / "test_processed"),
                       "--dsr", str(checkpoints["best"]), "--edgeface", EDGEFACE, EDGEFACE,
                       "--device", "cpu", "--resamples", "100")
    assert code == 0
    assert out.count("HELD-OUT recogniser") == 2  # its guide and wide tables
    assert out.count("the recogniser DSR was trained against") == 2


def test_wide_protocol_skipped_without_distractors(root, checkpoints, capsys, tmp_path):
    alone = tmp_path / "alone"
    shutil.copytree(root / "test_processed", alone / "test_processed")
    code, out, _ = run(capsys, "--data-root", str(alone), "--dsr", str(checkpoints["best"]),
                       "--edgeface", EDGEFACE, "--device", "cpu", "--resamples", "100")
    assert code == 0
    assert "Wide protocol skipped" in out and "protocol wide" not in out
    # An explicit --distractor-dir brings it back.
    code, out, _ = run(capsys, "--data-root", str(alone), "--dsr", str(checkpoints["best"]),
                       "--edgeface", EDGEFACE, "--device", "cpu", "--resamples", "100",
                       "--distractor-dir", str(root / "val_processed"))
    assert code == 0 and "3 subjects + 3 distractor subjects" in out


def test_library_dsr_equal_to_bicubic_makes_no_difference(root):
    class Bicubic(nn.Module):
        def forward(self, vlr: torch.Tensor) -> torch.Tensor:
            return F.interpolate(vlr, size=(112, 112), mode="bicubic",
                                 align_corners=False).clamp(0, 1)

    from tune_dsr.models.checkpoints import load_edgeface

    data = load_probe_set(resolve_split(test_dir=root / "test_processed"), vlr_size=16)
    report = evaluate_dsrs(data, {"same": Bicubic()}, {"r": load_edgeface(EDGEFACE)},
                      resamples=200, per_probe=True)
    same = report["results"][0]["methods"]["same"]
    assert same["rank1"] == report["results"][0]["methods"]["bicubic"]["rank1"]
    for metric in ("rank1", "accuracy"):
        assert same["vs_bicubic"][metric] == {"difference": 0.0, "low": 0.0, "high": 0.0,
                                              "verdict": "no clear difference"}
    assert report["protocols"]["wide"]["skipped"]  # no distractors given to the library
    assert len(report["probes"]) == 6 * 3


# ----------------------------------------------------------------------------- checkpoints

def test_trainer_states_give_their_ema_weights(checkpoints, tmp_path):
    config = Config().replace(vlr_size=16, width=8, depth=1)
    raw, ema = DSR(config.model), DSR(config.model)
    for p in ema.parameters():
        nn.init.constant_(p, 0.01)
    state = {"format": "tune_dsr.trainer_state/1", "config": config.to_dict(), "epoch": 2,
             "model_state_dict": raw.state_dict(), "ema_state_dict": ema.state_dict(),
             "best_metrics": {"val_psnr": 12.0}}
    trial = tmp_path / "trial"
    for name in ("checkpoint_000001", "checkpoint_000010"):
        (trial / name).mkdir(parents=True)
        torch.save(state, trial / name / "state.pt")
    model, loaded_config, metrics = load_dsr(trial)  # a trial folder: its newest checkpoint
    assert loaded_config == config and metrics == {"val_psnr": 12.0}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  ema.state_dict().values(), strict=True))
    found = read_dsr_checkpoint(trial / "checkpoint_000001")
    assert found.path == trial / "checkpoint_000001" / "state.pt" and found.weights == "ema"
    assert found.epoch == 2
    labels = [d.label for d in load_dsrs([checkpoints["best"], trial / "checkpoint_000010"])]
    assert labels == ["best.pt", "checkpoint_000010"]


# ----------------------------------------------------------------------------- bad input

class Payload:
    """Unpickling this calls open(marker, "w"): a file appears if the pickle is ever run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def refused(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    return err


def test_missing_and_empty_dataset_root(checkpoints, capsys, tmp_path):
    err = refused(capsys, "--test-dir", str(tmp_path / "nowhere"),
                  "--dsr", str(checkpoints["best"]), "--edgeface", EDGEFACE)
    assert "nowhere" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    err = refused(capsys, "--test-dir", str(tmp_path / "empty"),
                  "--dsr", str(checkpoints["best"]), "--edgeface", EDGEFACE)
    assert "empty" in err


def test_checkpoint_for_another_vlr_size(root, checkpoints, capsys):
    err = refused(capsys, "--test-dir", str(root / "test_processed"),
                  "--dsr", str(checkpoints["vlr32"]), "--edgeface", EDGEFACE)
    assert "vlr32.pt" in err and "32x32" in err and "16x16" in err


def test_not_a_checkpoint(root, checkpoints, capsys, tmp_path):
    err = refused(capsys, "--test-dir", str(root / "test_processed"),
                  "--dsr", str(checkpoints["text"]), "--edgeface", EDGEFACE)
    assert "notes.txt" in err and "not a PyTorch checkpoint" in err
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    err = refused(capsys, "--test-dir", str(root / "test_processed"),
                  "--dsr", str(tmp_path / "other.pt"), "--edgeface", EDGEFACE)
    assert "other.pt" in err and "not a tune_dsr DSR checkpoint" in err
    err = refused(capsys, "--test-dir", str(root / "test_processed"),
                  "--dsr", str(tmp_path / "missing.pt"), "--edgeface", EDGEFACE)
    assert "missing.pt" in err and "does not exist" in err


def _save_with_torch(document, path):
    torch.save(document, path)


def _save_with_pickle(document, path):
    path.write_bytes(pickle.dumps(document))


@pytest.mark.parametrize("save", [_save_with_torch, _save_with_pickle])
def test_malicious_pickle_is_never_run(root, capsys, tmp_path, save):
    marker = tmp_path / "pwned"
    # The payload is live: unpickling a twin really creates its file.
    twin = tmp_path / "twin"
    pickle.loads(pickle.dumps(Payload(twin))).close()
    assert twin.exists()
    evil = tmp_path / "evil.pt"
    config = Config().replace(vlr_size=16, width=8, depth=1)
    document = {"format": "tune_dsr.dsr/1", "config": config.to_dict(),
                "model_state_dict": DSR(config.model).state_dict(), "hook": Payload(marker)}
    save(document, evil)
    err = refused(capsys, "--test-dir", str(root / "test_processed"), "--dsr", str(evil),
                  "--edgeface", EDGEFACE)
    assert not marker.exists()
    assert "evil.pt" in err and "refusing to unpickle" in err and "open" in err
    assert "weights_only" not in err  # never advises switching the safe loader off


def test_unreadable_edgeface(root, checkpoints, capsys, tmp_path):
    from tune_dsr.models.edgeface import build_edgeface

    whole = tmp_path / "edgeface_xxs.pt"
    torch.save(build_edgeface("edgeface_xxs").state_dict(), whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    err = refused(capsys, "--test-dir", str(root / "test_processed"),
                  "--dsr", str(checkpoints["best"]), "--edgeface", str(truncated))
    assert "truncated.pt" in err and "EdgeFace" in err


def test_threshold_outside_the_cosine_range(root, checkpoints, capsys):
    err = refused(capsys, "--test-dir", str(root / "test_processed"),
                  "--dsr", str(checkpoints["best"]), "--edgeface", EDGEFACE, "--threshold", "1.5")
    assert "--threshold 1.5" in err and "[-1, 1]" in err


def test_distractors_that_share_the_probes_subjects(root, checkpoints, capsys):
    err = refused(capsys, "--test-dir", str(root / "test_processed"),
                  "--dsr", str(checkpoints["best"]), "--edgeface", EDGEFACE,
                  "--distractor-dir", str(root / "test_processed"))
    assert "distractors must be other identities" in err


def test_debug_shows_the_exception(root, checkpoints):
    with pytest.raises(CheckpointError, match="32x32"):
        main(["--test-dir", str(root / "test_processed"), "--dsr", str(checkpoints["vlr32"]),
              "--edgeface", EDGEFACE, "--debug"])


def test_distractor_faces_are_decoded_as_the_probes_are(tmp_path):
    """A 16-bit distractor face is scaled to 8 bits, as the probes' decoder does, not clipped."""
    import numpy as np
    from PIL import Image

    from tune_dsr.evaluation.probes import DistractorFaces

    hr = tmp_path / "other_processed" / "hr_images"
    hr.mkdir(parents=True)
    half = np.full((112, 112), 32768, dtype=np.uint16)
    Image.fromarray(half).save(hr / "Ann-Other_0001.png")
    Image.new("RGB", (112, 112), (10, 20, 30)).save(hr / "Bob-Other_0001.png")
    faces = DistractorFaces.scan(hr.parent)
    (batch,) = list(faces.batches(8))
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 112, 112)
    assert int(batch[0].float().mean().round()) == 128  # scaled, where a clip gives 255
    assert batch[1, :, 0, 0].tolist() == [10, 20, 30]
