import json
import math

import pytest
import torch

from tune_dsr.config import Config
from tune_dsr.errors import ConfigError
from tune_dsr.models.dsr import load_dsr
from tune_dsr.trainer import Callback, Trainer, TrainingDiverged, WarmupCosine

EXPECTED_KEYS = {
    "epoch", "lr", "train_loss", "val_loss", "val_psnr", "val_psnr_y", "val_ssim", "val_score",
    "images_per_s", "epoch_seconds", "train_psnr", "val_accuracy", "val_rank1",
    "val_unknown_rate",
    *(f"{split}_{term}_loss" for split in ("train", "val")
      for term in ("l1", "perceptual", "identity", "feature_match", "tv")),
}


class Recorder(Callback):
    def __init__(self):
        self.epochs, self.batches = [], 0

    def on_batch_end(self, trainer, batch, num_batches, loss):
        self.batches += 1

    def on_epoch_end(self, trainer, metrics):
        self.epochs.append(dict(metrics))


def _trainer(config, tiny_sets, loss_nets, **kwargs):
    identity_net, vgg = loss_nets
    return Trainer(config, *tiny_sets, identity_net, vgg, **kwargs)


def test_callback_gets_every_metric_each_epoch(tiny_config, tiny_sets, loss_nets, tmp_path):
    recorder = Recorder()
    trainer = _trainer(tiny_config, tiny_sets, loss_nets, callbacks=[recorder], out_dir=tmp_path)
    result = trainer.fit()
    assert result.epochs_run == 2 and len(recorder.epochs) == 2
    assert recorder.batches == 2 * math.ceil(len(tiny_sets[0]) / 4)
    for metrics in recorder.epochs:
        assert set(metrics) >= EXPECTED_KEYS
        assert all(math.isfinite(v) for v in metrics.values())
    assert [m["epoch"] for m in recorder.epochs] == [1.0, 2.0]
    assert recorder.epochs[0]["val_identity_loss"] > 0
    for metrics in recorder.epochs:
        assert 0 <= metrics["val_accuracy"] <= metrics["val_rank1"] <= 1
        assert 0 <= metrics["val_unknown_rate"] <= 1
    # Files: config, per-epoch metrics, resumable state, best model with EMA weights and metrics.
    assert Config.from_json(tmp_path / "config.json") == tiny_config
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1.0, 2.0]
    _, config, metrics = load_dsr(tmp_path / "best.pt")
    assert config == tiny_config and metrics["epoch"] == result.best_epoch
    best_state = torch.load(tmp_path / "best.pt", weights_only=True)["model_state_dict"]
    if result.best_epoch == 2:
        assert all(torch.equal(v, trainer.ema.state_dict()[k]) for k, v in best_state.items())


def test_training_lowers_the_loss(tiny_config, tiny_sets, loss_nets):
    config = tiny_config.replace(epochs=6, warmup_epochs=1, lr=3e-3, ema_decay=0.0)
    recorder = Recorder()
    _trainer(config, tiny_sets, loss_nets, callbacks=[recorder]).fit()
    losses = [m["train_loss"] for m in recorder.epochs]
    assert losses[-1] < losses[0]


def test_resume_continues_exactly(tiny_config, tiny_sets, loss_nets, tmp_path):
    config = tiny_config.replace(epochs=4)
    straight = _trainer(config, tiny_sets, loss_nets)
    straight.fit()

    first = _trainer(config.replace(epochs=4), tiny_sets, loss_nets, out_dir=tmp_path)

    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, metrics):
            if trainer.epoch == 2:
                raise KeyboardInterrupt  # "killed" after epoch 2's state is on disk

    first.callbacks.append(StopAfterTwo())
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    torch.manual_seed(1234)  # a fresh process would not share the global RNG state either
    resumed = _trainer(config, tiny_sets, loss_nets)
    resumed.load_state(tmp_path / "last.pt")
    assert resumed.epoch == 2
    resumed.fit()
    for name in ("model", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [h["val_loss"] for h in straight.history] == [h["val_loss"] for h in resumed.history]


def test_early_stopping_with_patience_and_off(tiny_config, tiny_sets, loss_nets):
    # lr 0 after warm-up: nothing improves, so patience 1 stops after epoch 2.
    config = tiny_config.replace(epochs=5, early_stop_patience=1, monitor="val_loss",
                                 warmup_epochs=0, lr=1e-9)
    result = _trainer(config, tiny_sets, loss_nets).fit()
    assert result.stopped_early and result.epochs_run < 5
    result = _trainer(config.replace(early_stop_patience=0, epochs=3), tiny_sets,
                      loss_nets).fit()
    assert not result.stopped_early and result.epochs_run == 3


def test_nan_loss_stops_with_epoch_and_term(tiny_config, tiny_sets, loss_nets):
    trainer = _trainer(tiny_config, tiny_sets, loss_nets)
    with torch.no_grad():
        trainer.model.tail.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"the total loss became nan at epoch 1"):
        trainer.fit()


def test_state_file_loads_with_weights_only(tiny_config, tiny_sets, loss_nets, tmp_path):
    trainer = _trainer(tiny_config.replace(epochs=1), tiny_sets, loss_nets, out_dir=tmp_path)
    trainer.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["config"] == tiny_config.replace(epochs=1).to_dict()
    for key in ("model_state_dict", "ema_state_dict", "optimizer_state_dict",
                "scheduler_state_dict", "scaler_state_dict", "rng_cpu", "epoch", "best_value"):
        assert key in state


def test_resume_refuses_other_model_and_best_pt(tiny_config, tiny_sets, loss_nets, tmp_path):
    _trainer(tiny_config.replace(epochs=1), tiny_sets, loss_nets, out_dir=tmp_path).fit()
    other = _trainer(tiny_config.replace(width=12), tiny_sets, loss_nets)
    with pytest.raises(ConfigError, match=r"model config"):
        other.load_state(tmp_path / "last.pt")
    with pytest.raises(ConfigError, match=r"best\.pt cannot be resumed"):
        other.load_state(tmp_path / "best.pt")


def test_size_mismatch_is_a_clear_error(tiny_config, tiny_sets, loss_nets):
    with pytest.raises(ConfigError, match=r"16px VLR.*vlr_size=32"):
        _trainer(tiny_config.replace(vlr_size=32), tiny_sets, loss_nets)


def test_warmup_then_cosine():
    schedule = WarmupCosine(warmup=5, epochs=100)
    assert [schedule(e) for e in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert schedule(5) == 1.0
    assert schedule(52) == pytest.approx(0.5, abs=0.02)
    assert 0 < schedule(99) < 0.01
