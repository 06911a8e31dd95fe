import logging

import optuna
import pytest

from tune_dsr.config import METRICS, Config, switch_key
from tune_dsr.errors import ConfigError
from tune_dsr.tuning.presets import BUILTIN, SearchSpace, load_preset, optional_weight, pin_space


def _guide(preset):
    """The guide anchor's point: the guide's value of every searched parameter."""
    return preset.anchor_points()["guide"]


@pytest.mark.parametrize("name", BUILTIN)
def test_preset_space_gives_valid_configs_offline(name):
    preset = load_preset(name)
    assert preset.mode == METRICS[preset.metric]
    first = _guide(preset)
    # FixedTrial: the space run offline with the guide's values gives a valid config.
    constants = preset.space(optuna.trial.FixedTrial(first)) or {}
    Config().replace(**{**first, **constants})
    for seed in range(5):  # and so does any sampled point
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
        constants = preset.space(trial) or {}
        Config().replace(**{**trial.params, **constants})


def test_guide_values_per_preset():
    rec = _guide(load_preset("recognition_first"))
    assert (rec["lambda_identity"], rec["lambda_feature_match"], rec["lambda_perceptual"]) == (
        0.60, 0.20, 0.01)
    assert (load_preset("recognition_first").metric, load_preset("recognition_first").mode) == (
        "val_margin", "max")
    quality = load_preset("quality_first")
    first = _guide(quality)
    assert (first["lambda_l1"], first["lambda_perceptual"], first["lambda_identity"]) == (
        1.5, 0.04, 0.40)
    assert (quality.metric, quality.mode) == ("val_psnr", "max")
    fast = load_preset("fast")
    assert _guide(fast)["batch_size"] == 20
    assert (fast.max_epochs, fast.grace_period, fast.metric, fast.mode) == (
        60, 12, "val_score", "max")
    assert fast.constants()["patience"] == 12


def test_log_scales_where_values_span_decades():
    dists = load_preset("recognition_first").distributions()
    for key in ("lr", "lambda_tv", "lambda_perceptual"):
        assert dists[key].log, key
    assert {"width", "depth", "bicubic_residual"} <= set(dists)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_preset_can_switch_the_identity_terms_off(name):
    """The search must be able to find out that a term hurts (on real faces, L1 alone won): each
    weight is drawn "off, or on with a log-uniform weight"."""
    dists = load_preset(name).distributions()
    for key in ("lambda_identity", "lambda_feature_match", "lambda_perceptual"):
        assert dists[switch_key(key)].choices == (False, True), key
        assert dists[key].log and dists[key].low > 0, key
    # A switched-off term is a zero weight; a switch that contradicts its weight is refused.
    assert Config().replace(lambda_identity_on=False, lambda_identity=0.0).loss.lambda_identity == 0
    with pytest.raises(ConfigError, match=r"lambda_identity_on=False.*lambda_identity=0\.5"):
        Config().replace(lambda_identity_on=False)


@pytest.mark.parametrize("name", BUILTIN)
def test_anchors_are_the_guide_then_pixel_only(name):
    preset = load_preset(name)
    points = preset.anchor_points()
    assert list(points) == ["guide", "pixel-only"]
    guide, pixel = points["guide"], points["pixel-only"]
    assert guide["lambda_identity_on"] and guide["lambda_feature_match_on"]
    assert not pixel["lambda_identity_on"] and not pixel["lambda_feature_match_on"]
    assert "lambda_identity" not in pixel and "lambda_feature_match" not in pixel
    # Everything else is the guide's.
    others = {k: v for k, v in guide.items() if not k.startswith(("lambda_identity",
                                                                   "lambda_feature_match"))}
    assert others.items() <= pixel.items()


def test_tpe_draws_the_terms_exactly_off_and_labels_the_anchors():
    """A real TPE study over recognition_first, rewarded for small identity weights: after the
    anchors it proposes trials with the terms off, whose weight is exactly 0."""
    preset = load_preset("recognition_first")
    anchors = preset.anchor_points({"width": 8, "depth": 1})
    space = SearchSpace(preset.space, {"width": 8, "depth": 1}, anchors)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=0, n_startup_trials=4))
    for point in anchors.values():
        study.enqueue_trial(point)
    configs = []

    def objective(trial: optuna.trial.Trial) -> float:
        settings = space(trial)
        config = Config().replace(**{**trial.params, **settings})
        configs.append((settings["anchor"], config))
        return -config.loss.lambda_identity - config.loss.lambda_feature_match

    study.optimize(objective, n_trials=16)
    assert [label for label, _ in configs[:2]] == ["guide", "pixel-only"]
    assert all(label == "" for label, _ in configs[2:])  # TPE's trials are not anchors
    assert configs[1][1].loss.lambda_identity == 0.0
    proposed = [config for _, config in configs[6:]]  # after the random start-up
    off = [c for c in proposed if c.loss.lambda_identity == 0.0]
    assert len(off) >= len(proposed) // 2, [c.loss.lambda_identity for c in proposed]
    assert all(c.model.width == 8 for _, c in configs)  # the pins held


def test_pinned_space_holds_pins_and_searches_the_rest():
    def space(trial):
        trial.suggest_float("lr", 1e-4, 1e-3, log=True)
        trial.suggest_int("depth", 1, 4)
        fixed = optional_weight(trial, "lambda_identity", 0.1, 1.0)
        return {"width": 8, **fixed}

    pinned = pin_space(space, {"depth": 3, "lambda_identity": 0.0})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    assert pinned(trial) == {"width": 8, "depth": 3, "lambda_identity": 0.0}
    # Neither the pins nor the pinned weight's switch were asked of Optuna.
    assert set(trial.params) == {"lr"}


def test_user_preset_declares_its_anchors_and_patience(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from search_spaces import optional_weight\n"
        "METRIC = 'val_margin'\nPATIENCE = 4\nGUIDE = {'lr': 2e-4}\n"
        "ANCHORS = {'guide': {}, 'no-fm': {'lambda_feature_match': 0.0}, 'same': {}}\n"
        "def space(trial):\n    trial.suggest_float('lr', 1e-4, 1e-3, log=True)\n"
        "    return optional_weight(trial, 'lambda_feature_match', 0.01, 0.5)\n")
    preset = load_preset(str(path))
    assert preset.patience == 4
    points = preset.anchor_points()
    # 'same' is the guide's point again: run once, under the first label.
    assert points == {"guide": {"lr": 2e-4, "lambda_feature_match_on": True,
                                "lambda_feature_match": 0.15},
                      "no-fm": {"lr": 2e-4, "lambda_feature_match_on": False}}
    # A pin can make two anchors one point.
    assert list(preset.anchor_points({"lambda_feature_match": 0.0})) == ["guide"]


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
    assert (preset.name, preset.max_epochs, _guide(preset)) == ("mine", 7, {"lr": 2e-4})
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
    ("METRIC='val_psnr'\nANCHORS={'x': {'lerning_rate': 1e-4}}\n"
     "def space(t):\n    t.suggest_float('lr', 1e-4, 1e-3)\n",
     ["anchor 'x' sets lerning_rate", "does not search"]),
    ("METRIC='val_psnr'\nANCHORS={'x': {'width': 64}}\n"
     "def space(t):\n    t.suggest_float('lr', 1e-4, 1e-3)\n",
     ["anchor 'x' sets width, which the space does not search"]),
    ("METRIC='val_psnr'\nANCHORS={'off': {'lambda_identity': 0.0}}\n"
     "def space(t):\n    t.suggest_float('lambda_identity', 0.1, 1.0)\n",
     ["anchor 'off'", "lambda_identity=0.0 lies outside", "optional_weight"]),
    ("METRIC='val_psnr'\nANCHORS=['guide']\ndef space(t):\n    pass\n",
     ["ANCHORS must map labels to settings"]),
    ("METRIC='val_psnr'\nPATIENCE=0\ndef space(t):\n    pass\n", ["PATIENCE=0"]),
])
def test_bad_user_preset_is_refused(tmp_path, body, words):
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_preset(str(path))
    for word in words:
        assert word in str(err.value)


def test_searched_keys_leave_out_pins_and_their_switches():
    """What a search with pins asks Optuna for (the progress table's columns, the analysis's
    searched keys): a pinned weight's switch is answered by the pin, not searched."""
    searched = load_preset("recognition_first").searched({"lambda_perceptual": 0.0, "width": 48})
    assert "lambda_perceptual" not in searched and "lambda_perceptual_on" not in searched
    assert "width" not in searched and {"lambda_identity_on", "lambda_identity"} <= set(searched)


def test_a_pin_that_overrides_an_anchor_leaves_it_out(caplog):
    """--set lambda_identity=0.3 would run 'pixel-only' with the identity term on: left out."""
    preset = load_preset("recognition_first")
    with caplog.at_level(logging.WARNING, logger="search_spaces"):
        points = preset.anchor_points({"lambda_identity": 0.3})
    assert list(points) == ["guide"]
    assert "anchor 'pixel-only' left out: the pins hold lambda_identity at 0.3" in caplog.text


def test_default_pixel_only_switches_off_what_the_space_searches(tmp_path, caplog):
    path = tmp_path / "id_only.py"
    path.write_text(
        "from search_spaces import optional_weight\nMETRIC = 'val_margin'\n"
        "def space(trial):\n    trial.suggest_float('lr', 1e-4, 1e-3, log=True)\n"
        "    return optional_weight(trial, 'lambda_identity', 0.05, 1.0)\n")
    points = load_preset(str(path)).anchor_points()
    assert points["pixel-only"] == {"lr": 1.5e-4, "lambda_identity_on": False}
    # A space that cannot draw the terms at 0 gets no pixel-only anchor, and says so.
    path.write_text("METRIC = 'val_margin'\ndef space(trial):\n"
                    "    trial.suggest_float('lambda_identity', 0.1, 1.0)\n")
    with caplog.at_level(logging.WARNING, logger="search_spaces"):
        assert list(load_preset(str(path)).anchor_points()) == ["guide"]
    assert "no pixel-only anchor" in caplog.text
