"""The training loop on in-memory faces (8 px -> 32 px) with the boring identity network."""

import json
import math

import pytest
import torch

from tests.helpers import BoringIdentityNet
from tune_dsr.config import HELD_OUT_PREFIX, METRICS, Config
from tune_dsr.errors import CheckpointError, ConfigError
from tune_dsr.models.checkpoints import load_dsr
from tune_dsr.training.trainer import Callback, Trainer, TrainingDiverged, WarmupCosine

EXPECTED_KEYS = {
    *(m for m in METRICS if not m.startswith(HELD_OUT_PREFIX)), "epoch", "lr", "train_loss",
    "images_per_s", "epoch_seconds", "train_psnr",
    "val_bicubic_rank1", "val_bicubic_rank1_full", "val_bicubic_margin", "val_bicubic_accuracy",
    "val_bicubic_unknown_rate", "val_bicubic_soft_rank1", "epochs_since_best",
    "val_margin_gain_ci", "val_rank1_full_gain_ci", "val_soft_rank1_gain_ci",
    *(f"train_{term}_loss" for term in ("l1", "perceptual", "identity", "feature_match", "tv")),
}


class Recorder(Callback):
    def __init__(self):
        self.epochs, self.batches = [], 0

    def on_batch_end(self, trainer, batch, num_batches, loss):
        self.batches += 1

    def on_epoch_end(self, trainer, metrics):
        self.epochs.append(dict(metrics))


def _trainer(config, memory_sets, boring_nets, **kwargs):
    identity_net, vgg = boring_nets
    return Trainer(config, *memory_sets, identity_net, vgg, **kwargs)


def test_callback_gets_every_metric_each_epoch(unit_config, memory_sets, boring_nets, tmp_path):
    recorder = Recorder()
    trainer = _trainer(unit_config, memory_sets, boring_nets, callbacks=[recorder],
                       out_dir=tmp_path)
    result = trainer.fit()
    assert result.epochs_run == 2 and len(recorder.epochs) == 2
    assert recorder.batches == 2 * math.ceil(len(memory_sets[0]) / 4)
    for metrics in recorder.epochs:
        assert set(metrics) >= EXPECTED_KEYS, EXPECTED_KEYS - set(metrics)
        assert all(math.isfinite(v) for v in metrics.values())
        assert 0 <= metrics["val_accuracy"] <= metrics["val_rank1"] <= 1
        assert 0 <= metrics["val_unknown_rate"] <= 1
        assert metrics["val_margin_gain"] == pytest.approx(
            metrics["val_margin"] - metrics["val_bicubic_margin"])
        assert metrics["val_score"] == pytest.approx(
            metrics["val_psnr"] + 100 * metrics["val_margin_gain"])
    assert [m["epoch"] for m in recorder.epochs] == [1.0, 2.0]
    assert recorder.epochs[0]["val_identity_loss"] > 0
    # Files: config, per-epoch metrics, resumable state, best model with EMA weights and metrics.
    assert Config.from_json(tmp_path / "config.json") == unit_config
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1.0, 2.0]
    _, config, metrics = load_dsr(tmp_path / "best.pt")
    assert config == unit_config and metrics["epoch"] == result.best_epoch
    assert (tmp_path / "best.png").is_file()


def test_a_held_out_recogniser_is_measured_beside_the_trained_against_one(
        unit_config, memory_sets, boring_nets, tmp_path):
    """val_heldout_* from a second network that DSR never trains against; the smaller of the two
    margin gains is val_margin_gain_min; a held-out metric can be the monitor only with one."""
    other = BoringIdentityNet(seed=5)
    recorder = Recorder()
    config = unit_config.replace(val_edgeface="random:edgeface_xxs", monitor="val_margin_gain_min")
    trainer = _trainer(config, memory_sets, boring_nets, callbacks=[recorder], held_out=other)
    trainer.fit()
    for metrics in recorder.epochs:
        assert set(metrics) >= set(METRICS)
        assert metrics["val_heldout_margin"] != metrics["val_margin"]  # another network
        assert metrics["val_heldout_margin_gain"] == pytest.approx(
            metrics["val_heldout_margin"] - metrics["val_heldout_bicubic_margin"])
        assert metrics["val_margin_gain_min"] == min(metrics["val_margin_gain"],
                                                     metrics["val_heldout_margin_gain"])
        assert math.isfinite(metrics["val_heldout_margin_gain_ci"])
    plain = Recorder()
    _trainer(unit_config, memory_sets, boring_nets, callbacks=[plain]).fit()
    assert not any(k.startswith(HELD_OUT_PREFIX) for k in plain.epochs[0])
    assert plain.epochs[0]["val_margin_gain_min"] == plain.epochs[0]["val_margin_gain"]
    with pytest.raises(ConfigError, match=r"monitor='val_heldout_margin'.*val_edgeface"):
        unit_config.replace(monitor="val_heldout_margin")


def test_samples_per_epoch_draws_a_fresh_part_of_the_set_each_epoch(unit_config, memory_sets,
                                                                   boring_nets):
    """Four of the 18 training pairs an epoch (one batch); the draw is seeded by (seed, epoch),
    so each epoch takes another four."""
    seen = []

    class Batches(Callback):
        def on_batch_end(self, trainer, batch, num_batches, loss):
            seen.append((trainer.epoch, num_batches))

    trainer = _trainer(unit_config.replace(samples_per_epoch=4), memory_sets, boring_nets,
                       callbacks=[Batches()])
    result = trainer.fit()
    assert seen == [(0, 1), (1, 1)]  # one batch of 4 per epoch, not ceil(18 / 4)
    assert all(m["images_per_s"] > 0 for m in trainer.history) and result.epochs_run == 2
    # More than the set: every pair, as without the setting.
    assert _trainer(unit_config.replace(samples_per_epoch=100), memory_sets,
                    boring_nets).epoch_samples == len(memory_sets[0])


def test_best_pt_holds_the_ema_weights_of_each_new_best_epoch(unit_config, memory_sets,
                                                               boring_nets, tmp_path):
    checked = []

    class CheckBestFile(Callback):
        def on_epoch_end(self, trainer, metrics):
            if trainer.best_epoch != trainer.epoch:
                return  # not a new best: best.pt still holds an earlier epoch
            saved = torch.load(tmp_path / "best.pt", weights_only=True)
            assert saved["epoch"] == trainer.epoch
            ema = trainer.ema.state_dict()
            assert all(torch.equal(v, ema[k]) for k, v in saved["model_state_dict"].items())
            checked.append(trainer.epoch)

    _trainer(unit_config, memory_sets, boring_nets, out_dir=tmp_path,
             callbacks=[CheckBestFile()]).fit()
    assert checked[0] == 1  # the first epoch is always a new best


def test_training_lowers_the_loss(unit_config, memory_sets, boring_nets):
    config = unit_config.replace(epochs=6, warmup_epochs=1, lr=3e-3, ema_decay=0.0)
    recorder = Recorder()
    _trainer(config, memory_sets, boring_nets, callbacks=[recorder]).fit()
    losses = [m["train_loss"] for m in recorder.epochs]
    assert losses[-1] < losses[0]


def test_resume_continues_exactly(unit_config, memory_sets, boring_nets, tmp_path):
    config = unit_config.replace(epochs=4)
    straight = _trainer(config, memory_sets, boring_nets)
    straight.fit()

    first = _trainer(config.replace(epochs=4), memory_sets, boring_nets, out_dir=tmp_path)

    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, metrics):
            if trainer.epoch == 2:
                raise KeyboardInterrupt  # "killed" after epoch 2's state is on disk

    first.callbacks.append(StopAfterTwo())
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    torch.manual_seed(1234)  # a fresh process would not share the global RNG state either
    resumed = _trainer(config, memory_sets, boring_nets)
    resumed.load_state(tmp_path / "last.pt")
    assert resumed.epoch == 2
    resumed.fit()
    for name in ("model", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [h["val_loss"] for h in straight.history] == [h["val_loss"] for h in resumed.history]


def test_early_stopping_with_patience_and_off(unit_config, memory_sets, boring_nets):
    # lr 0 after warm-up: nothing improves, so patience 1 stops after epoch 2.
    config = unit_config.replace(epochs=5, patience=1, monitor="val_loss",
                                 warmup_epochs=0, lr=1e-9)
    recorder = Recorder()
    result = _trainer(config, memory_sets, boring_nets, callbacks=[recorder]).fit()
    assert result.stopped_early and result.epochs_run < 5
    # Each epoch reports how long the monitor has gone without a new best (the patience
    # count a search reads to tell a patience stop from ASHA's); it ends at the patience.
    since = [m["epochs_since_best"] for m in recorder.epochs]
    best = [m["best_val_loss"] for m in recorder.epochs]
    assert since[-1] == 1 and since[0] == 0
    for epoch in range(len(since)):
        new_best = epoch == 0 or best[epoch] != best[epoch - 1]
        assert (since[epoch] == 0) == new_best
        assert since[epoch] == 0 or since[epoch] == since[epoch - 1] + 1
    result = _trainer(config.replace(patience=0, epochs=3), memory_sets,
                      boring_nets).fit()
    assert not result.stopped_early and result.epochs_run == 3


def test_nan_loss_stops_with_epoch_and_term(unit_config, memory_sets, boring_nets):
    trainer = _trainer(unit_config, memory_sets, boring_nets)
    with torch.no_grad():
        trainer.model.tail.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"the total loss became nan during epoch 1"):
        trainer.fit()


def test_state_file_loads_with_weights_only(unit_config, memory_sets, boring_nets, tmp_path):
    trainer = _trainer(unit_config.replace(epochs=1), memory_sets, boring_nets, out_dir=tmp_path)
    trainer.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["config"] == unit_config.replace(epochs=1).to_dict()
    for key in ("model_state_dict", "ema_state_dict", "optimizer_state_dict",
                "scheduler_state_dict", "scaler_state_dict", "rng_cpu", "epoch", "best_value"):
        assert key in state


def test_resume_refuses_other_model_and_best_pt(unit_config, memory_sets, boring_nets, tmp_path):
    _trainer(unit_config.replace(epochs=1), memory_sets, boring_nets, out_dir=tmp_path).fit()
    other = _trainer(unit_config.replace(width=12), memory_sets, boring_nets)
    with pytest.raises(ConfigError, match=r"model config"):
        other.load_state(tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"best\.pt cannot be resumed"):
        other.load_state(tmp_path / "best.pt")


def test_size_mismatch_is_a_clear_error(unit_config, memory_sets, boring_nets):
    with pytest.raises(ConfigError, match=r"8px VLR.*vlr_size=16"):
        _trainer(unit_config.replace(vlr_size=16), memory_sets, boring_nets)


def test_warmup_then_cosine():
    schedule = WarmupCosine(warmup=5, epochs=100)
    assert [schedule(e) for e in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert schedule(5) == 1.0
    assert schedule(52) == pytest.approx(0.5, abs=0.02)
    assert 0 < schedule(99) < 0.01
