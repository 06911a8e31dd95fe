"""Small, validated dataclass configs for one DSR cycle-training run.

Defaults are the training guide's values. A config is built from a plain dict (a Tune trial's
config, a JSON file, ``best.json`` from ``tune_dsr.export``) either nested by section
(``{"loss": {"lambda_identity": 0.6}}``) or flat (``{"lambda_identity": 0.6}``): every key name is
unique across sections, so a flat key finds its section by itself. Configs are frozen: Tune reuses
and serialises the dicts it hands out, so nothing here mutates what it was given.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tune_dsr.errors import ConfigError

__all__ = [
    "ANCHOR",
    "CONFIRMS",
    "CONFIRM_RUN",
    "GUIDE_ANCHOR",
    "HELD_OUT_PREFIX",
    "METRICS",
    "PERCEPTUAL_LAYERS",
    "PIXEL_ONLY",
    "TRIAL_LABELS",
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "direction",
    "score",
    "switch_key",
    "switches",
]


# Every metric an epoch reports that can rank runs, and which direction is better: the one
# registry used by `monitor`, the search presets, analysis, export and the tests.
METRICS: dict[str, str] = {
    # recognition on the validation subjects (never seen in training)
    "val_margin": "max",  # own-subject similarity minus the best other, training subjects included
    "val_margin_gain": "max",  # val_margin minus bicubic's
    "val_rank1_full": "max",  # rank-1 on a gallery of validation and training subjects
    "val_rank1_full_gain": "max",
    # mean over probes of sigmoid(margin / 0.05): rank-1 made smooth (tune_dsr.training.validation)
    "val_soft_rank1": "max",
    "val_soft_rank1_gain": "max",
    "val_rank1": "max",  # rank-1 on the validation subjects alone (the guide's gallery)
    "val_accuracy": "max",  # the guide's: right and similarity >= recognition_threshold
    "val_unknown_rate": "min",
    # The same under a held-out recogniser (``val_edgeface``): one the run never trains against,
    # so a gain here is not one network pleased (docs/results.md, "A gain that transfers").
    "val_heldout_margin": "max",
    "val_heldout_margin_gain": "max",
    "val_heldout_rank1_full": "max",
    "val_heldout_rank1_full_gain": "max",
    "val_heldout_soft_rank1": "max",
    "val_heldout_soft_rank1_gain": "max",
    # The smaller of the two margin gains (the trained-against and the held-out recogniser's;
    # without a held-out one, val_margin_gain): a DSR must help both to score.
    "val_margin_gain_min": "max",
    # image quality and loss terms
    "val_score": "max",
    "val_psnr": "max",
    "val_psnr_y": "max",
    "val_ssim": "max",
    "val_loss": "min",
    "val_l1_loss": "min",
    "val_perceptual_loss": "min",
    "val_identity_loss": "min",
    "val_feature_match_loss": "min",
    "val_tv_loss": "min",
}


# The metrics that only a run with a held-out validation recogniser (val_edgeface) reports.
HELD_OUT_PREFIX = "val_heldout_"


# A search trial's labels in its config (not settings): which anchor it runs ("" for TPE's),
# and, for a confirmation run, the search trial it repeats and which run of it it is.
ANCHOR, CONFIRMS, CONFIRM_RUN = "anchor", "confirms", "confirm_run"
TRIAL_LABELS = (ANCHOR, CONFIRMS, CONFIRM_RUN)
# The anchors every preset runs unless it declares its own: the guide's values, and the same
# with the identity and feature-matching terms off.
GUIDE_ANCHOR, PIXEL_ONLY = "guide", "pixel-only"

# The guide's acceptance threshold: a cosine similarity below it answers "unknown". The one
# owner of 0.35 (training validation, evaluate, compare and the library's defaults).
GUIDE_THRESHOLD = 0.35


def direction(metric: str) -> str:
    """"max" or "min": which way `metric` is better; ConfigError naming the known metrics."""
    try:
        return METRICS[metric]
    except KeyError:
        close = difflib.get_close_matches(metric, list(METRICS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{metric!r} is not a metric tune_dsr reports per epoch.{hint} "
                          f"Known metrics: {', '.join(METRICS)}.") from None


# One dB of PSNR is worth 0.01 of margin gain over bicubic. The published DSR gave up 1.5-2 dB
# of PSNR against bicubic and still identified more faces, and on real faces a PSNR- or
# loss-led search chose a DSR that identified fewer (docs/background.md, "Defects"): image
# quality must not be able to buy back a lost identity, so recognition weighs heavily.
SCORE_MARGIN_WEIGHT = 100.0

# The loss weights a search may switch off: each can come with a switch ``<weight>_on`` (true or
# false), which a search space draws before the weight itself so that TPE models "off" as a
# region (search_spaces.optional_weight). A config carries the switch only as bookkeeping: the
# weight is what trains, and the two must agree.
SWITCHABLE = ("lambda_perceptual", "lambda_identity", "lambda_feature_match", "lambda_tv")


def switch_key(weight: str) -> str:
    """The search's on/off switch of a loss weight (``lambda_identity_on``)."""
    return f"{weight}_on"


_SWITCHES = {switch_key(weight): weight for weight in SWITCHABLE}


def switches(settings: dict[str, Any]) -> dict[str, bool]:
    """The switches that the weights among flat `settings` imply: on where a weight is above 0."""
    return {switch_key(key): settings[key] > 0 for key in SWITCHABLE if key in settings}

# VGG19 layers the perceptual loss can compare, in network order.
PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_4", "relu4_4")


def score(val_psnr: float, val_margin_gain: float) -> float:
    """Combined objective, higher is better: ``val_psnr + 100 * val_margin_gain`` (in dB).

    Selecting on PSNR alone (the original's defect 5) ignores recognition, the actual goal, and
    the identity loss rewards faces that look like training subjects; the margin's gain over
    bicubic (on a gallery that holds the training subjects) does not. 1 dB = 0.01 of margin.
    """
    return val_psnr + SCORE_MARGIN_WEIGHT * val_margin_gain


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {rule}.")


def _range(key: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    bad_low = value <= low if low_open else value < low
    if bad_low or value > high or (isinstance(value, float) and not math.isfinite(value)):
        left = "(" if low_open else "["
        _check(False, key, value, f"it must lie in {left}{low}, {high}]")


@dataclass(frozen=True)
class ModelConfig:
    """The DSR network: width C, depth N (residual blocks), input and output sizes."""

    # None: read it off the data (its only vlr_images* folder).
    vlr_size: int | None = None
    hr_size: int = 112
    width: int = 112
    depth: int = 16
    # Predict the residual over a bicubic upscale of the input (a global skip); off as in the guide.
    bicubic_residual: bool = False

    def __post_init__(self) -> None:
        _range("hr_size", self.hr_size, 16, 512)
        if self.vlr_size is not None:
            _range("vlr_size", self.vlr_size, 8, 64)
            _check(self.hr_size > self.vlr_size, "hr_size", self.hr_size,
                   f"it must be larger than vlr_size={self.vlr_size} (DSR upscales)")
        _range("width", self.width, 4, 512)
        _range("depth", self.depth, 1, 64)


@dataclass(frozen=True)
class LossConfig:
    """Weights of the five loss terms and of the multi-scale perceptual layers."""

    lambda_l1: float = 1.0
    lambda_perceptual: float = 0.02
    lambda_identity: float = 0.50
    lambda_feature_match: float = 0.15
    lambda_tv: float = 3e-6
    # VGG19 layers of the perceptual loss and their weights; the guide's earlier version used
    # {"relu1_2": 1/3, "relu2_2": 1/3, "relu3_4": 1/3}.
    perceptual_layers: dict[str, float] = field(
        default_factory=lambda: {"relu1_2": 0.4, "relu2_2": 0.3, "relu3_4": 0.2, "relu4_4": 0.1})

    def __post_init__(self) -> None:
        for name in ("lambda_l1", "lambda_perceptual", "lambda_identity",
                     "lambda_feature_match", "lambda_tv"):
            _range(name, getattr(self, name), 0.0, 100.0)
        layers = self.perceptual_layers
        unknown = [name for name in layers if name not in PERCEPTUAL_LAYERS]
        _check(not unknown, "perceptual_layers", layers,
               f"unknown layer(s) {unknown}; choose from {', '.join(PERCEPTUAL_LAYERS)}")
        _check(all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                   and math.isfinite(w) for w in layers.values()) and sum(layers.values()) > 0,
               "perceptual_layers", layers,
               "weights must be finite, non-negative numbers and not all zero")


@dataclass(frozen=True)
class DataConfig:
    """Where the paired faces are and how they are augmented."""

    train_dir: str | None = None
    val_dir: str | None = None
    augment: bool = True
    # Cap on images per split (0: all); for smoke tests and quick searches.
    max_images: int = 0
    # Training pairs drawn afresh each epoch (0: every pair, every epoch). Unlike max_images,
    # every training person is still seen: a cheaper epoch, not a smaller data set.
    samples_per_epoch: int = 0

    def __post_init__(self) -> None:
        _range("max_images", self.max_images, 0, 10**9)
        _range("samples_per_epoch", self.samples_per_epoch, 0, 10**9)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation schedule, the networks used as losses and the run's bookkeeping."""

    epochs: int = 100
    batch_size: int = 16
    lr: float = 1.5e-4
    weight_decay: float = 1e-6
    warmup_epochs: int = 5
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # Epochs without improvement of `monitor` before stopping; 0 switches early stopping off.
    patience: int = 20
    # What "best" means for the saved model and early stopping (a key of METRICS).
    monitor: str = "val_margin"
    # Cosine similarity below which a validation face counts as "unknown" (the guide's 0.35).
    recognition_threshold: float = GUIDE_THRESHOLD
    seed: int = 42
    # Mixed precision where the hardware computes it natively: bf16 on CUDA (fp16 with loss
    # scaling on older GPUs) and on CPUs with AVX-512 BF16 or AMX; float32 elsewhere.
    amp: bool = True
    # Images and conv weights in NHWC: faster convolutions with oneDNN (CPU) and cuDNN.
    channels_last: bool = True
    # torch.compile DSR for training: pays a compile at the start of every run and trial.
    compile: bool = False
    device: str = "auto"
    edgeface: str = "edgeface_finetuned.pth"
    perceptual_weights: str = "imagenet"
    # A second recogniser for validation only, never trained against ("" for none): reported as
    # val_heldout_* every epoch, and usable as the monitor or a search's objective.
    val_edgeface: str = ""

    def __post_init__(self) -> None:
        _range("epochs", self.epochs, 1, 100_000)
        _range("batch_size", self.batch_size, 1, 65_536)
        _range("lr", self.lr, 0.0, 1.0, low_open=True)
        _range("weight_decay", self.weight_decay, 0.0, 1.0)
        _range("warmup_epochs", self.warmup_epochs, 0, 100_000)
        _range("grad_clip", self.grad_clip, 0.0, 1e6)
        _range("ema_decay", self.ema_decay, 0.0, 1.0)
        _check(self.ema_decay < 1.0, "ema_decay", self.ema_decay,
               "it must be below 1 (1 would freeze the EMA weights); 0 turns EMA off")
        _range("patience", self.patience, 0, 100_000)
        _check(self.monitor in METRICS, "monitor", self.monitor,
               f"choose one of {', '.join(METRICS)}")
        _check(not self.monitor.startswith(HELD_OUT_PREFIX) or bool(self.val_edgeface),
               "monitor", self.monitor, "a held-out metric needs a held-out recogniser: set "
               "val_edgeface (--val-edgeface FILE)")
        _range("recognition_threshold", self.recognition_threshold, -1.0, 1.0)
        _range("seed", self.seed, 0, 2**32 - 1)
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "device", self.device, "use 'auto', 'cpu', 'cuda' or 'cuda:N'")


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a JSON value against a field's annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is dict:
        _check(isinstance(value, dict) and all(isinstance(k, str) for k in value), key, value,
               "it must be an object of names to numbers")
        _, item = typing.get_args(annotation)
        return {k: _coerce(f"{key}.{k}", v, item) for k, v in value.items()}
    if annotation is bool:
        _check(isinstance(value, bool), key, value, "it must be true or false")
    elif annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value,
               "it must be an integer")
    elif annotation is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value,
               "it must be a number")
        value = float(value)
        _check(math.isfinite(value), key, value, "it must be finite")
    elif annotation is str:
        _check(isinstance(value, str), key, value, "it must be a string")
    return value


def _unknown_key_error(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{where}.{hint} Valid keys: {', '.join(valid)}.")


@dataclass(frozen=True)
class Config:
    """Everything one training run needs, in four sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # Keys a JSON file or a Tune trial may carry that are not settings: export's provenance,
    # and a search trial's labels (which anchor it is, which trial a confirmation run repeats).
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"provenance", "metrics", "$schema", *TRIAL_LABELS})
    # Keys renamed since: configs and checkpoints written before still load.
    RENAMED: ClassVar[dict[str, str]] = {"early_stop_patience": "patience"}

    @classmethod
    def flat_keys(cls) -> dict[str, str]:
        """Every setting's key mapped to its section name."""
        return {name: section for section, sub in _SECTIONS.items()
                for name in _field_types(sub)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Config | None = None) -> Config:
        """Build a config from nested sections and/or flat keys, over `base` (default: the guide).

        Raises ConfigError naming the key, the value and what is allowed.
        """
        if not isinstance(raw, dict):
            raise ConfigError(f"a config must be a JSON object (dict), got {type(raw).__name__}")
        base = base or cls()
        flat_sections = cls.flat_keys()
        updates: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        switches: dict[str, bool] = {}
        for key, value in raw.items():
            if key in cls.IGNORED_KEYS:
                continue
            key = cls.RENAMED.get(key, key)
            if key in _SWITCHES:
                switches[key] = _coerce(key, value, bool)
                continue
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"section {key!r} must be an object, got {value!r}")
                valid = list(_field_types(_SECTIONS[key]))
                for given_key, sub_value in value.items():
                    sub_key = str(cls.RENAMED.get(given_key, given_key))
                    if sub_key not in valid:
                        raise _unknown_key_error(sub_key, valid, f" in section {key!r}")
                    updates[key][sub_key] = sub_value
            elif key in flat_sections:
                updates[flat_sections[key]][key] = value
            else:
                raise _unknown_key_error(key, list(_SECTIONS) + list(flat_sections), "")
        sections = {}
        for name, sub in _SECTIONS.items():
            types_ = _field_types(sub)
            values = {k: _coerce(k, v, types_[k]) for k, v in updates[name].items()}
            sections[name] = dataclasses.replace(getattr(base, name), **values)
        config = cls(**sections)
        for key, on in switches.items():
            weight = getattr(config.loss, _SWITCHES[key])
            _check(on == (weight > 0), key, on,
                   f"it says the term is {'on' if on else 'off'} but {_SWITCHES[key]}={weight}; "
                   "a switched-off term has weight 0 and a switched-on one a positive weight")
        return config

    @classmethod
    def from_json(cls, path: str | Path, base: Config | None = None) -> Config:
        """Read a config from a JSON file; errors name the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                              f"column {exc.colno}") from exc
        try:
            return cls.from_dict(raw, base)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def replace(self, **flat: Any) -> Config:
        """A copy with some flat keys changed (validated like `from_dict`)."""
        return Config.from_dict(flat, base=self)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (JSON-ready)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    def to_flat(self) -> dict[str, Any]:
        """One flat dict of every setting, as Tune and Optuna see them."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
