import optuna
import pytest

from search_spaces import BUILTIN, load_preset
from tune_dsr.config import METRICS, Config
from tune_dsr.errors import ConfigError


@pytest.mark.parametrize("name", BUILTIN)
def test_preset_space_gives_valid_configs_offline(name):
    preset = load_preset(name)
    assert preset.mode == METRICS[preset.metric]
    first = preset.first_config()
    # FixedTrial: the space run offline with the guide's values gives a valid config.
    constants = preset.space(optuna.trial.FixedTrial(first)) or {}
    Config().replace(**first, **constants)
    for seed in range(5):  # and so does any sampled point
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
        constants = preset.space(trial) or {}
        Config().replace(**trial.params, **constants)


def test_guide_values_per_preset():
    rec = load_preset("recognition_first").first_config()
    assert (rec["lambda_identity"], rec["lambda_feature_match"], rec["lambda_perceptual"]) == (
        0.60, 0.20, 0.01)
    assert (load_preset("recognition_first").metric, load_preset("recognition_first").mode) == (
        "val_margin", "max")
    quality = load_preset("quality_first")
    first = quality.first_config()
    assert (first["lambda_l1"], first["lambda_perceptual"], first["lambda_identity"]) == (
        1.5, 0.04, 0.40)
    assert (quality.metric, quality.mode) == ("val_psnr", "max")
    fast = load_preset("fast")
    assert fast.first_config()["batch_size"] == 20
    assert (fast.max_epochs, fast.grace_period, fast.metric, fast.mode) == (
        60, 12, "val_score", "max")
    assert fast.constants()["early_stop_patience"] == 12


def test_log_scales_where_values_span_decades():
    dists = load_preset("recognition_first").distributions()
    for key in ("lr", "lambda_tv", "lambda_perceptual"):
        assert dists[key].log, key
    assert {"width", "depth", "bicubic_residual"} <= set(dists)


def test_recognition_first_can_switch_the_identity_terms_off():
    """The search must be able to find out that a term hurts (on real faces, L1 alone won)."""
    dists = load_preset("recognition_first").distributions()
    for key in ("lambda_identity", "lambda_feature_match"):
        assert dists[key].low == 0.0 and not dists[key].log, key
    Config().replace(lambda_identity=0.0, lambda_feature_match=0.0)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_preset("recognition_frist")
    for name in BUILTIN:
        assert name in str(err.value)


def test_user_preset_file(tmp_path):
    good = tmp_path / "mine.py"
    good.write_text(
        "METRIC = 'val_psnr'\nMODE = 'max'\nGUIDE = {'lr': 2e-4}\nMAX_EPOCHS = 7\n"
        "def space(trial):\n    trial.suggest_float('lr', 1e-4, 1e-3, log=True)\n"
        "    return {'width': 64}\n")
    preset = load_preset(str(good))
    assert (preset.name, preset.max_epochs, preset.first_config()) == ("mine", 7, {"lr": 2e-4})
    assert "mine" in preset.describe() and "[0.0001, 0.001] (log)" in preset.describe()


@pytest.mark.parametrize("body, words", [
    ("def space(trial):\n    pass\n", ["lacks METRIC"]),
    ("METRIC='accuracy'\nMODE='max'\ndef space(t):\n    pass\n", ["METRIC='accuracy'"]),
    ("METRIC='val_psnr'\nMODE='min'\ndef space(t):\n    pass\n",
     ["MODE='min' contradicts val_psnr", "higher is better"]),
    ("METRIC='val_psnr'\nMODE='max'\ndef space(t):\n    t.suggest_float('lrate', 1e-4, 1e-3)\n",
     ["unknown config key 'lrate'"]),
    ("METRIC='val_psnr'\nMODE='max'\nGUIDE={'lr': 0.1}\n"
     "def space(t):\n    t.suggest_float('lr', 1e-4, 1e-3)\n", ["lr=0.1 lies outside"]),
])
def test_bad_user_preset_is_refused(tmp_path, body, words):
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_preset(str(path))
    for word in words:
        assert word in str(err.value)
