import json

import pytest

from tune_dsr.config import METRICS, PERCEPTUAL_LAYERS, Config, direction, score
from tune_dsr.errors import ConfigError


def test_defaults_are_the_guides():
    c = Config()
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.train.weight_decay) == (
        100, 16, 1.5e-4, 1e-6)
    assert (c.loss.lambda_l1, c.loss.lambda_perceptual, c.loss.lambda_identity,
            c.loss.lambda_feature_match, c.loss.lambda_tv) == (1.0, 0.02, 0.5, 0.15, 3e-6)
    assert (c.train.grad_clip, c.train.ema_decay, c.train.warmup_epochs,
            c.train.patience, c.train.seed) == (1.0, 0.999, 5, 20, 42)
    assert c.loss.perceptual_layers == {"relu1_2": 0.4, "relu2_2": 0.3, "relu3_4": 0.2,
                                        "relu4_4": 0.1}
    assert c.model.vlr_size is None  # read off the data
    assert c.train.monitor == "val_margin"  # README, "Choosing the best epoch"
    assert (c.model.hr_size, c.model.width, c.model.depth, c.model.bicubic_residual) == (
        112, 112, 16, False)


def test_flat_and_nested_dicts_agree_and_round_trip(tmp_path):
    flat = Config.from_dict({"lambda_identity": 0.6, "width": 64, "epochs": 7})
    nested = Config.from_dict({"loss": {"lambda_identity": 0.6}, "model": {"width": 64},
                               "train": {"epochs": 7}})
    assert flat == nested
    path = tmp_path / "c.json"
    flat.to_json(path)
    assert Config.from_json(path) == flat
    assert Config.from_dict(flat.to_flat()) == flat


def test_int_accepted_for_float_and_given_dict_not_mutated():
    raw = {"lambda_l1": 2, "lr": 1}
    before = dict(raw)
    c = Config.from_dict(raw)
    assert c.loss.lambda_l1 == 2.0 and isinstance(c.loss.lambda_l1, float)
    assert raw == before


@pytest.mark.parametrize("raw, words", [
    ({"lambda_idnetity": 0.5}, ["lambda_idnetity", "lambda_identity", "Valid keys"]),
    ({"loss": {"width": 3}}, ["'width'", "section 'loss'"]),
    ({"lr": -1.0}, ["lr=-1.0", "(0.0, 1.0]"]),
    ({"epochs": 0}, ["epochs=0", "[1, 100000]"]),
    ({"batch_size": 2.5}, ["batch_size=2.5", "integer"]),
    ({"augment": "yes"}, ["augment='yes'", "true or false"]),
    ({"vlr_size": 128}, ["vlr_size=128", "[8, 64]"]),
    ({"monitor": "accuracy"}, ["monitor='accuracy'", "val_margin", "val_psnr"]),
    ({"perceptual_layers": {"relu5_4": 1.0}}, ["perceptual_layers", "relu5_4", "relu4_4"]),
    ({"perceptual_layers": {"relu1_2": -1}}, ["perceptual_layers", "non-negative"]),
    ({"perceptual_layers": {"relu1_2": True}}, ["perceptual_layers.relu1_2=True", "number"]),
    ({"perceptual_layers": [0.4, 0.6]}, ["perceptual_layers", "object of names"]),
    ({"ema_decay": 1.0}, ["ema_decay=1.0", "below 1"]),
])
def test_bad_values_name_key_value_and_rule(raw, words):
    with pytest.raises(ConfigError) as err:
        Config.from_dict(raw)
    for word in words:
        assert word in str(err.value)


def test_bad_json_file_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"lr": 0.1,}')
    with pytest.raises(ConfigError, match=r"bad\.json is not valid JSON"):
        Config.from_json(path)
    path.write_text(json.dumps({"lambda_tv": "big"}))
    with pytest.raises(ConfigError, match=r"bad.json: lambda_tv='big'"):
        Config.from_json(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.from_json(tmp_path / "missing.json")


def test_provenance_is_ignored_and_score_is_documented():
    c = Config.from_dict({"provenance": {"trial_id": "x"}, "metrics": {}, "lr": 1e-4})
    assert c.train.lr == 1e-4
    assert score(30.0, 0.02) == pytest.approx(32.0)  # 1 dB for 0.01 of margin gain
    assert score(30.0, -0.01) == pytest.approx(29.0)


def test_metric_registry_directions():
    assert direction("val_margin") == "max" and direction("val_identity_loss") == "min"
    assert all(METRICS[m] == "min" for m in METRICS if m.endswith("_loss"))
    assert direction("val_unknown_rate") == "min"
    with pytest.raises(ConfigError, match=r"'val_margn'.*Did you mean 'val_margin'"):
        direction("val_margn")


def test_perceptual_layers_from_json_and_by_flat_key(tmp_path):
    layers = {"relu1_2": 0.5, "relu3_4": 0.5}
    config = Config().replace(perceptual_layers=layers)
    path = tmp_path / "c.json"
    config.to_json(path)
    assert Config.from_json(path).loss.perceptual_layers == layers
    assert set(PERCEPTUAL_LAYERS) >= set(Config().loss.perceptual_layers)
