"""EdgeFace fine-tuning: the CosFace head, the loop (gradients, frozen blocks, epoch 0, the kept
epoch), resume after an interruption, the written recogniser as --edgeface in train, evaluate
and search, and bad input refused by name before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tune_dsr import demo
from tune_dsr import evaluate as evaluate_cli
from tune_dsr import finetune as finetune_cli
from tune_dsr import search as search_cli
from tune_dsr import train as train_cli
from tune_dsr.config import Config
from tune_dsr.finetuning.config import FinetuneConfig
from tune_dsr.finetuning.finetuner import FINETUNED_FILE, prepare_finetune
from tune_dsr.finetuning.head import CosFaceHead
from tune_dsr.models.checkpoints import load_edgeface, save_dsr
from tune_dsr.models.dsr import DSR

RANDOM_XXS = demo.RANDOM_NETWORKS["edgeface"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """The demo's faces: 12 training persons, 2 validation, 2 test, 4 faces each, 16 px."""
    root = tmp_path_factory.mktemp("finetune_faces")
    demo.make_data(root, **demo.TRAIN_DATA)
    return root


@pytest.fixture(scope="module")
def dsr_file(tmp_path_factory) -> Path:
    return demo.random_dsr(tmp_path_factory.mktemp("dsr") / "best.pt")


def small(faces: Path, dsr: Path | str = "bicubic", **settings) -> FinetuneConfig:
    return FinetuneConfig(train_dir=str(faces / "train_processed"),
                          val_dir=str(faces / "val_processed"), edgeface=RANDOM_XXS,
                          dsr=str(dsr), epochs=2, batch_size=8, warmup_epochs=1,
                          device="cpu").replace(**settings)


def run_main(module, argv: list[str], capsys) -> tuple[int, str]:
    code = module.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ------------------------------------------------------------------------------ the head

def test_cosface_margin_raises_the_loss_and_both_sides_get_gradients():
    torch.manual_seed(0)
    embeddings = torch.randn(6, 16, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    plain, margined = CosFaceHead(16, 3, 30.0, 0.0), CosFaceHead(16, 3, 30.0, 0.35)
    margined.weight.data.copy_(plain.weight.data)
    loss_plain, _ = plain(embeddings, labels)
    loss, cosines = margined(embeddings, labels)
    assert loss > loss_plain  # the margin asks for more than the right answer
    loss.backward()
    assert embeddings.grad.abs().sum() > 0 and margined.weight.grad.abs().sum() > 0
    assert cosines.shape == (6, 3) and cosines.abs().max() <= 1 + 1e-5
    centres = torch.randn(3, 16)
    margined.init_from(centres)
    assert torch.allclose(margined.weight, torch.nn.functional.normalize(centres, dim=1))


# ------------------------------------------------------------------------------ the loop

def test_finetuning_trains_the_unfrozen_blocks_and_writes_a_loadable_recogniser(
        faces, dsr_file, tmp_path):
    run = prepare_finetune(small(faces, dsr_file, freeze_stages=2), tmp_path / "ft")
    before = {k: v.clone() for k, v in run.backbone.state_dict().items()}
    result = run.fit()
    after = run.backbone.state_dict()
    frozen = [k for k in before if k.startswith(("model.stem.", "model.stages.0."))]
    trained = [k for k in before if k.startswith("model.stages.3.")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)

    history = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").open()]
    assert [h["epoch"] for h in history] == [0, 1, 2]  # epoch 0: the recogniser as given
    assert all(0 <= h["val_rank1_full"] <= 1 and 0 <= h["train_rank1_full"] <= 1
               for h in history)
    assert history[1]["train_loss"] > 0 and "train_loss" not in history[0]

    document = torch.load(tmp_path / "ft" / FINETUNED_FILE, weights_only=True)
    assert document["epoch"] == result.best_epoch
    assert document["metrics"]["val_soft_rank1"] == result.best_metrics["val_soft_rank1"]
    assert set(document["subject_to_id"]) == set(run.train_set.unique_subjects)
    assert document["config"]["head"] == "cosface"
    assert document["config"]["provenance"]["dsr"] == str(dsr_file)
    assert document["arcface_state_dict"]["weight"].shape == (12, 512)

    # What load_edgeface reads back is the network that was saved: the same embeddings.
    run.save_recogniser(tmp_path / "now.pth", result.history[-1])
    loaded = load_edgeface(str(tmp_path / "now.pth"))
    images = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(loaded(images)[0], run.ema(images)[0], atol=1e-5)
    assert all(not p.requires_grad for p in loaded.parameters())


class Interrupt:
    """Stops a run after an epoch, as a kill would, once its files are written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_batch_end(self, run, batch, num_batches, loss) -> None:
        return None

    def on_epoch_end(self, run, metrics) -> None:
        if metrics["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_an_interruption_ends_where_a_straight_run_ends(faces, dsr_file,
                                                                     tmp_path):
    config = small(faces, dsr_file, epochs=3)
    straight = prepare_finetune(config, tmp_path / "straight")
    straight.fit()
    with pytest.raises(KeyboardInterrupt):
        prepare_finetune(config, tmp_path / "cut", callbacks=[Interrupt(2)]).fit()
    resumed = prepare_finetune(config, tmp_path / "cut", resume=True)
    assert resumed.epoch == 2
    resumed.fit()
    for key, value in straight.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key
    assert [h["val_margin"] for h in resumed.history] == \
        [h["val_margin"] for h in straight.history]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ the command

def test_demo_and_its_recogniser_as_edgeface_in_train_and_evaluate(tmp_path, capsys):
    code, text = run_main(finetune_cli, ["--demo", "--out", str(tmp_path / "ft")], capsys)
    assert code == 0, text
    assert "Epoch 000 | as given" in text and "Epoch 002" in text
    recogniser = tmp_path / "ft" / FINETUNED_FILE
    assert recogniser.is_file() and list((tmp_path / "ft").glob("events.out.tfevents.*"))

    code, text = run_main(train_cli, ["--demo", "--out", str(tmp_path / "dsr"), "--epochs", "1",
                                      "--edgeface", str(recogniser)], capsys)
    assert code == 0, text
    assert Config.from_json(tmp_path / "dsr" / "config.json").train.edgeface == str(recogniser)

    code, text = run_main(evaluate_cli, [
        "--test-dir", str(tmp_path / "dsr" / "demo_data" / "test_processed"),
        "--dsr", str(tmp_path / "dsr" / "best.pt"), "--edgeface", str(recogniser), RANDOM_XXS,
        "--resamples", "100", "--json"], capsys)
    assert code == 0, text
    report = json.loads(text[text.index("{"):])
    assert [r["spec"] for r in report["recognisers"]] == [str(recogniser), RANDOM_XXS]


def test_its_recogniser_as_edgeface_in_a_search(ray_session, tmp_path, capsys):
    code, text = run_main(finetune_cli, ["--demo", "--out", str(tmp_path / "ft"),
                                         "--epochs", "1"], capsys)
    assert code == 0, text
    recogniser = tmp_path / "ft" / FINETUNED_FILE
    code, text = run_main(search_cli, [
        "--demo", "--edgeface", str(recogniser), "--num-samples", "1", "--max-epochs", "1",
        "--grace-period", "1", "--storage-path", str(tmp_path / "tune"), "--name", "cycle1"],
        capsys)
    assert code == 0, text
    trials = list((tmp_path / "tune" / "cycle1").glob("*/params.json"))
    assert trials and json.loads(trials[0].read_text())["edgeface"] == str(recogniser)


# ------------------------------------------------------------------------------ bad input

def dsr_for(tmp_path: Path, vlr_size: int) -> Path:
    config = Config().replace(vlr_size=vlr_size, width=8, depth=1)
    save_dsr(tmp_path / f"dsr{vlr_size}.pt", DSR(config.model), config, {}, 1)
    return tmp_path / f"dsr{vlr_size}.pt"


def data_flags(faces: Path) -> list[str]:
    return ["--data-root", str(faces), "--edgeface", RANDOM_XXS, "--device", "cpu"]


def test_a_dsr_for_another_vlr_size_is_refused(faces, tmp_path, capsys):
    code, text = run_main(finetune_cli, [*data_flags(faces), "--dsr",
                                         str(dsr_for(tmp_path, 8)), "--out",
                                         str(tmp_path / "o")], capsys)
    assert code == 2 and "8 px" in text and "16 px" in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()


def test_a_finetuned_recogniser_given_as_dsr_is_refused(faces, tmp_path, capsys):
    code, text = run_main(finetune_cli, ["--demo", "--out", str(tmp_path / "ft"), "--epochs",
                                         "1"], capsys)
    assert code == 0, text
    code, text = run_main(finetune_cli, [*data_flags(faces), "--dsr",
                                         str(tmp_path / "ft" / FINETUNED_FILE),
                                         "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "is a fine-tuned EdgeFace recogniser, not a DSR" in text


def test_a_file_that_is_not_an_edgeface_is_refused(faces, tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "not_edgeface.pt")
    code, text = run_main(finetune_cli, ["--data-root", str(faces), "--edgeface",
                                         str(tmp_path / "not_edgeface.pt"), "--out",
                                         str(tmp_path / "o")], capsys)
    assert code == 2 and "not_edgeface.pt" in text and "EdgeFace architecture" in text


def test_persons_with_one_face_each_are_refused_and_counted(tmp_path, capsys):
    root = tmp_path / "single"
    demo.make_data(root, subjects=10, per_subject=1)
    code, text = run_main(finetune_cli, [*data_flags(root), "--out", str(tmp_path / "o")],
                          capsys)
    assert code == 2
    assert "holds 8 person(s), 8 of them with a single face" in text


def test_a_finished_run_is_not_overwritten_without_resume(faces, tmp_path, capsys):
    out = tmp_path / "ft"
    assert run_main(finetune_cli, [*data_flags(faces), "--epochs", "1", "--batch-size", "8",
                                   "--out", str(out)], capsys)[0] == 0
    kept = (out / FINETUNED_FILE).read_bytes()
    code, text = run_main(finetune_cli, [*data_flags(faces), "--out", str(out)], capsys)
    assert code == 2 and "already holds a fine-tuning run" in text and "--resume" in text
    assert (out / FINETUNED_FILE).read_bytes() == kept
    code, text = run_main(finetune_cli, [*data_flags(faces), "--lr", "1e-3", "--resume",
                                         "--out", str(out)], capsys)
    assert code == 2 and "other settings" in text and "lr=5e-05" in text


@pytest.mark.parametrize("extra, words", [
    (["--set", "margin=2"], ["margin=2", "[0.0, 1.0]"]),
    (["--set", "monitor=val_psnr"], ["monitor='val_psnr'", "val_soft_rank1"]),
    (["--freeze-stages", "5"], ["--freeze-stages=5", "below 5"]),
    (["--hr-fraction", "1.5"], ["--hr-fraction=1.5"]),
    (["--set", "marginn=0.2"], ["unknown config key 'marginn'", "margin"]),
])
def test_bad_settings_are_refused_by_name(extra, words, faces, tmp_path, capsys):
    code, text = run_main(finetune_cli, [*data_flags(faces), *extra, "--out",
                                         str(tmp_path / "o")], capsys)
    assert code == 2, text
    for word in words:
        assert word in text
    assert not (tmp_path / "o" / "last.pt").exists()
