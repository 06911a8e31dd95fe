"""The preset engine: loading a search-space preset, checking it, its anchors and its ranges.

The presets themselves are small modules in the ``search_spaces`` package (`recognition_first`,
`quality_first`, `fast`, `balanced`), or a user's ``.py`` file. A preset module defines

- ``space(trial)``: a define-by-run Optuna function; it only calls ``trial.suggest_*`` with config
  keys (see ``tune_dsr.config``) and returns a dict of fixed settings;
- ``METRIC``: the objective, a validation metric the trainer reports (`tune_dsr.config.METRICS`,
  which also says whether higher or lower is better; an optional ``MODE`` must agree with it);
- ``GUIDE``: the guide's own values for the preset;
- or, instead of ``METRIC``, ``OBJECTIVES``: two or three metrics searched together for their
  Pareto front (`balanced`); the first is the one a trial keeps its best epoch by;
- optionally ``DESCRIPTION``, ``MAX_EPOCHS`` (default 100), ``GRACE_PERIOD`` (default 10),
  ``PATIENCE`` (epochs a trial may go without beating its own best before it ends; default the
  grace period) and ``ANCHORS``.

Anchors are the configurations run before TPE proposes anything, labelled in the results: by
default ``guide`` (the guide's values) and ``pixel-only`` (the same with the identity and
feature-matching terms off), the ablation that says whether those terms help at all. ``ANCHORS``
maps a label to settings over ``GUIDE``, e.g. ``{"guide": {}, "no-fm":
{"lambda_feature_match": 0.0}}``; an anchor may set only searched keys.

A loss term the search may find useless is drawn with `optional_weight`: first on or off, then,
when on, a log-uniform weight. TPE then models "off" as a region it can sample, not as the lower
end of a range it never reaches.

A user's own preset is a ``.py`` file with the same names, passed as ``--space path/to/file.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna

from tune_dsr.config import (
    ANCHOR,
    GUIDE_ANCHOR,
    METRICS,
    PIXEL_ONLY,
    SWITCHABLE,
    Config,
    switch_key,
    switches,
)
from tune_dsr.errors import ConfigError

BUILTIN = ("recognition_first", "quality_first", "fast", "balanced")

__all__ = [
    "BUILTIN",
    "PIXEL_ONLY_OFF",
    "Preset",
    "SearchSpace",
    "check_objectives",
    "in_range",
    "load_preset",
    "optional_weight",
    "pin_space",
]

logger = logging.getLogger(__name__)

# The ablation every preset runs unless it declares its own anchors: the identity terms off.
PIXEL_ONLY_OFF = ("lambda_identity", "lambda_feature_match")


def optional_weight(trial: Any, key: str, low: float, high: float) -> dict[str, Any]:
    """Draw the loss weight `key` as "off, or on with a log-uniform weight in [low, high]".

    The switch is the categorical ``<key>_on``; the weight is suggested only when it is on.
    Returns the settings to merge into the space's return value: ``{key: 0.0}`` when off, else
    nothing (the suggested weight is the setting).
    """
    if key not in SWITCHABLE:
        raise ConfigError(f"optional_weight({key!r}): only {', '.join(SWITCHABLE)} can be "
                          "switched off")
    if trial.suggest_categorical(switch_key(key), [False, True]):
        trial.suggest_float(key, low, high, log=True)
        return {}
    return {key: 0.0}


@dataclass(frozen=True)
class Preset:
    name: str
    space: Callable[[Any], dict[str, Any] | None]
    metric: str
    mode: str
    guide: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    max_epochs: int = 100
    grace_period: int = 10
    patience: int | None = None  # None: the search's grace period
    # label -> settings over the guide's: the preset's ANCHORS, else the defaults (load_preset)
    anchors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Two or three objectives searched together (a Pareto front); `metric` is the first.
    objectives: tuple[str, ...] = ()

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every searched parameter and its range, conditional ones included (the space run on a
        throw-away trial and on each anchor)."""
        trial = _scratch_trial()
        self.space(trial)
        found = dict(trial.distributions)
        for label, settings in self.anchor_settings().items():
            found.update(_replay(self.space, {**self.guide, **settings}, f"anchor {label!r}")[1])
        return found

    def searched(self, pins: dict[str, Any] | None = None
                 ) -> dict[str, optuna.distributions.BaseDistribution]:
        """The distributions a search with `pins` asks Optuna for: the preset's, less the pins
        and the switches of pinned weights (a pin answers its switch)."""
        held = set(pins or {}) | {switch_key(k) for k in pins or {} if k in SWITCHABLE}
        return {k: d for k, d in self.distributions().items() if k not in held}

    def constants(self) -> dict[str, Any]:
        """The fixed settings the space returns, every optional term on (a term drawn off
        returns its zero weight as a setting of that trial alone)."""
        values = {**Config().replace(**self.guide).to_flat(),
                  **{switch_key(key): True for key in SWITCHABLE}}
        return dict(self.space(_Lenient(values, "")) or {})

    def anchor_settings(self) -> dict[str, dict[str, Any]]:
        """Each anchor's label and its settings over the guide's (see the module's docstring)."""
        return {label: dict(settings) for label, settings in self.anchors.items()}

    def anchor_points(self, pins: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Label -> the searched parameters' values of each anchor, as Optuna is told them
        (switches included; keys held by `pins` left out). Anchors that come out the same
        point (a pin can make them so) are run once, under the first label."""
        pins = dict(pins or {})
        points: dict[str, dict[str, Any]] = {}
        for label, settings in self.anchor_settings().items():
            # A pin that overrides what the anchor is about would run it under a false label.
            overridden = sorted(k for k in settings if k in pins and pins[k] != settings[k])
            if overridden:
                logger.warning("anchor %r left out: the pins hold %s at %s", label,
                               ", ".join(overridden),
                               ", ".join(repr(pins[k]) for k in overridden))
                continue
            params, _ = _replay(self.space, {**self.guide, **settings}, f"anchor {label!r}", pins)
            if params in points.values():
                logger.warning("anchor %r is the same point as another anchor under these "
                               "pins; it runs once", label)
                continue
            points[label] = params
        return points

    def describe(self) -> str:
        lines = [f"{self.name}: {self.description or self.metric}",
                 (f"  objectives: {', '.join(f'{METRICS[m]} {m}' for m in self.objectives)} "
                  "(their Pareto front; a trial keeps its best epoch by the first)"
                  if self.objectives else f"  objective: {self.mode} {self.metric}")
                 + f"; max epochs {self.max_epochs}, "
                 f"ASHA grace period {self.grace_period}, patience "
                 f"{self.patience or 'the grace period'}",
                 f"  guide's values: {self.guide or 'the guide defaults'}",
                 "  anchors (run first): " + "; ".join(
                     f"{label} {settings or '(the guide)'}"
                     for label, settings in self.anchor_settings().items())]
        for key, dist in self.distributions().items():
            lines.append(f"  {key:22s} {_format_distribution(dist)}")
        constants = self.constants()
        if constants:
            lines.append(f"  fixed: {constants}")
        return "\n".join(lines)


def _scratch_trial() -> _Lenient:
    """A trial that answers every suggestion with a value inside its range: enough to read a
    space's distributions and constants, with no Optuna study (which would log its creation)."""
    return _Lenient({}, "")


def _default_anchors(space: Callable[[Any], Any], guide: dict[str, Any]
                     ) -> dict[str, dict[str, Any]]:
    """The guide's values, and pixel-only: the identity terms the space searches switched off.
    A space that cannot draw them at 0 (a range above 0, no optional_weight) gets no pixel-only
    anchor, and says so."""
    anchors: dict[str, dict[str, Any]] = {GUIDE_ANCHOR: {}}
    searched = _all_keys(space)
    off = {key: 0.0 for key in PIXEL_ONLY_OFF if key in searched}
    if off:
        try:
            _replay(space, {**guide, **off}, f"anchor {PIXEL_ONLY!r}")
            anchors[PIXEL_ONLY] = off
        except ConfigError as exc:
            logger.warning("no pixel-only anchor for this preset: %s", exc)
    return anchors


def in_range(dist: optuna.distributions.BaseDistribution, value: Any) -> bool:
    """Whether Optuna's `dist` could have drawn `value` (0 on a log scale: no)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except ValueError:  # e.g. 0 for a log-uniform distribution
        return False


class _ReplayTrial:
    """Answers a space's ``suggest_*`` calls from a flat config (a switch from its weight: on when
    the weight is positive), recording every answer and its distribution; a value outside its
    range is refused."""

    def __init__(self, values: dict[str, Any], where: str) -> None:
        self.values, self.where = values, where
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {}

    def _answer(self, name: str, dist: optuna.distributions.BaseDistribution) -> Any:
        if name not in self.values:
            raise ConfigError(f"{self.where}: the space suggests {name!r}, which is not a "
                              "config key or a loss-weight switch")
        value = self.values[name]
        if not in_range(dist, value):
            raise ConfigError(f"{self.where}: {name}={value!r} lies outside its range "
                              f"{_format_distribution(dist)}; widen the range"
                              + (" or draw the weight with search_spaces.optional_weight"
                                 if value == 0 else ""))
        self.params[name], self.distributions[name] = value, dist
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> Any:
        return self._answer(name, optuna.distributions.FloatDistribution(low, high, step=step,
                                                                         log=log))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> Any:
        return self._answer(name, optuna.distributions.IntDistribution(low, high, step=step,
                                                                       log=log))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._answer(name, optuna.distributions.CategoricalDistribution(choices))


def _replay(space: Callable[[Any], Any], settings: dict[str, Any], where: str,
            pins: dict[str, Any] | None = None
            ) -> tuple[dict[str, Any], dict[str, optuna.distributions.BaseDistribution]]:
    """The params and distributions the space suggests for the config of `settings` over the
    guide's defaults (`pins` held, as a search holds them)."""
    try:
        values = Config().replace(**settings).to_flat()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    values.update(switches(values))
    trial = _ReplayTrial(values, where)
    pin_space(space, dict(pins or {}))(trial)
    return trial.params, trial.distributions


def pin_space(space: Callable[[Any], Any], pins: dict[str, Any]) -> Callable[[Any], Any]:
    """The define-by-run `space` with `pins` held fixed (not suggested, not searched)."""
    return SearchSpace(space, pins) if pins else space


class SearchSpace:
    """A preset's space as a search runs it (picklable, for the experiment): `pins` are answered
    without asking Optuna (a pinned weight answers its switch too), and with `anchors` each trial
    says which anchor it is (``anchor`` in its config: the label, or "" for TPE's)."""

    # Experiments pickled before anchors existed hold no such attribute.
    anchors: dict[str, dict[str, Any]] = {}  # noqa: RUF012 - read only

    def __init__(self, space: Callable[[Any], Any], pins: dict[str, Any],
                 anchors: dict[str, dict[str, Any]] | None = None) -> None:
        self.space, self.pins, self.anchors = space, dict(pins), dict(anchors or {})

    def __call__(self, trial: Any) -> dict[str, Any]:
        settings = {**(self.space(_PinnedTrial(trial, self.pins)) or {}), **self.pins}
        if self.anchors:
            # Every trial carries the key (Tune's reporter looks it up): "" for TPE's trials.
            params = dict(trial.params)
            settings[ANCHOR] = next(
                (name for name, point in self.anchors.items() if point == params), "")
        return settings


class _PinnedTrial:
    def __init__(self, trial: Any, pins: dict[str, Any]) -> None:
        self._trial, self._pins = trial, pins
        self._switches = switches(pins)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr

        def suggest(key: str, *args: Any, **kwargs: Any) -> Any:
            if key in self._pins:
                return self._pins[key]
            if key in self._switches:
                return self._switches[key]
            return attr(key, *args, **kwargs)
        return suggest


class _Lenient(_ReplayTrial):
    """A replay that answers any key, in range or not (a value it lacks: one inside the range)."""

    def _answer(self, name: str, dist: optuna.distributions.BaseDistribution) -> Any:
        self.distributions[name] = dist
        self.params[name] = self.values.get(name, _inside(dist))
        return self.params[name]


def _all_keys(space: Callable[[Any], Any]) -> set[str]:
    """Every key the space can suggest: it is run with each switch on."""
    values = Config().to_flat()
    values.update({switch_key(key): True for key in SWITCHABLE})
    trial = _Lenient(values, "")
    space(trial)
    return set(trial.distributions)


def _format_distribution(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"one of {list(dist.choices)}"
    if isinstance(dist, (optuna.distributions.FloatDistribution,
                         optuna.distributions.IntDistribution)):
        scale = " (log)" if dist.log else ""
        step = f" step {dist.step}" if dist.step not in (None, 1) else ""
        return f"[{dist.low:g}, {dist.high:g}]{scale}{step}"
    return repr(dist)


def _load_module(name_or_path: str) -> ModuleType:
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--space {name_or_path}: no such file")
        spec = importlib.util.spec_from_file_location(f"user_space_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"--space {name_or_path}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        # Registered so the searcher (which holds `space`) can be pickled with the experiment.
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(spec.name, None)
            raise _preset_failure(path, "cannot be imported", exc) from exc
        return module
    if name_or_path not in BUILTIN:
        raise ConfigError(f"unknown search space {name_or_path!r}; valid presets: "
                          f"{', '.join(BUILTIN)} (or a path to your own .py preset)")
    return importlib.import_module(f"search_spaces.{name_or_path}")


def _preset_failure(path: Path, what: str, exc: BaseException) -> ConfigError:
    """A user's preset file that failed: the file, the line Python names (for a syntax error,
    or the deepest frame of a traceback inside the file), what went wrong and what to do."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    if line is None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if Path(f.filename).resolve() == path.resolve()]
        line = frames[-1].lineno if frames else None
    where = f"{path}" + (f", line {line}" if line else "")
    detail = exc.msg if isinstance(exc, SyntaxError) else str(exc) or "no message"
    return ConfigError(f"--space {path}: the preset {what} ({type(exc).__name__} at {where}: "
                       f"{detail}); fix the file (python {path} shows the same error), or use "
                       f"a built-in preset: {', '.join(BUILTIN)}")


def load_preset(name_or_path: str) -> Preset:
    """A built-in preset by name, or a user's preset file; checked before any trial starts.

    A user's file that fails to import, or whose ``space()`` fails when it is run on the
    guide's values and the anchors, is refused by name (ConfigError: the file and the line)."""
    try:
        return _load_preset(name_or_path)
    except ConfigError:
        raise
    except Exception as exc:
        path = Path(name_or_path).expanduser()
        if name_or_path in BUILTIN or not path.is_file():
            raise
        raise _preset_failure(path, "failed when its space(trial) or constants were run",
                              exc) from exc


def _load_preset(name_or_path: str) -> Preset:
    module = _load_module(name_or_path)
    where = f"search space {name_or_path!r}"
    objectives = tuple(getattr(module, "OBJECTIVES", ()))
    # The objective: METRIC, else the first of OBJECTIVES (the module itself is left as it is).
    metric = getattr(module, "METRIC", objectives[0] if objectives else None)
    missing = [n for n, v in (("space", getattr(module, "space", None)), ("METRIC", metric))
               if v is None]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}; a preset defines space(trial) "
                          "and METRIC (see search_spaces/recognition_first.py)")
    try:
        objectives = check_objectives(objectives, "OBJECTIVES") if objectives else ()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if objectives and objectives[0] != metric:
        raise ConfigError(f"{where}: METRIC={metric!r} must be the first of OBJECTIVES "
                          f"({objectives[0]!r}), the one a trial keeps its best epoch by")
    if not callable(module.space):
        raise ConfigError(f"{where}: space must be a function space(trial) -> dict")
    if metric not in METRICS:
        raise ConfigError(f"{where}: METRIC={metric!r} is not a reported metric; choose "
                          f"one of {', '.join(METRICS)}")
    mode = METRICS[metric]
    if getattr(module, "MODE", mode) != mode:
        raise ConfigError(f"{where}: MODE={module.MODE!r} contradicts {metric}, for which "
                          f"{'higher' if mode == 'max' else 'lower'} is better; drop MODE")
    anchors = getattr(module, "ANCHORS", None)
    if anchors is not None and (not isinstance(anchors, dict) or not anchors or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in anchors.items())):
        raise ConfigError(f"{where}: ANCHORS must map labels to settings, e.g. "
                          "{'guide': {}, 'pixel-only': {'lambda_identity': 0.0}}")
    patience = getattr(module, "PATIENCE", None)
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ConfigError(f"{where}: PATIENCE={patience!r} must be a whole number of epochs >= 1")
    guide = dict(getattr(module, "GUIDE", {}))
    try:
        anchors = ({k: dict(v) for k, v in anchors.items()} if anchors is not None
                   else _default_anchors(module.space, guide))
    except ConfigError as exc:  # e.g. a GUIDE key that is not a setting
        raise ConfigError(f"{where}: {exc}") from exc
    preset = Preset(
        name=Path(name_or_path).stem, space=module.space, metric=metric,
        mode=mode, guide=guide,
        description=getattr(module, "DESCRIPTION", (module.__doc__ or "").strip().split("\n")[0]),
        max_epochs=int(getattr(module, "MAX_EPOCHS", 100)),
        grace_period=int(getattr(module, "GRACE_PERIOD", 10)), patience=patience,
        anchors=anchors, objectives=objectives)
    _validate(preset, where)
    return preset


def check_objectives(objectives: Any, name: str = "objectives",
                     single: bool = False) -> tuple[str, ...]:
    """Two or three distinct reported metrics (a comma-separated string or a sequence), in
    order, or with `single` also one (a single-objective search for it instead of the preset's
    metric); ConfigError naming what is wrong (the known metrics for an unknown one)."""
    if isinstance(objectives, str):
        objectives = [part.strip() for part in objectives.split(",")]
    found = tuple(objectives)
    given = f"{name}={','.join(map(str, found))}"
    if not (1 if single else 2) <= len(found) <= 3:
        raise ConfigError(f"{given}: give " + ("one metric, or " if single else "")
                          + "two or three metrics, comma-separated, e.g. "
                          "val_margin_gain,val_psnr")
    for metric in found:
        if metric not in METRICS:
            raise ConfigError(f"{given}: {metric!r} is not a metric tune_dsr reports per epoch; "
                              f"choose from {', '.join(METRICS)}")
    repeated = sorted({m for m in found if found.count(m) > 1})
    if repeated:
        raise ConfigError(f"{given}: {', '.join(repeated)} given twice; each objective once")
    return found


def _validate(preset: Preset, where: str) -> None:
    """Every suggested key and constant must be a valid config setting; every anchor (the guide
    first) in range and setting only searched keys."""
    try:
        trial = _scratch_trial()
        constants = preset.space(trial) or {}
        Config().replace(**{**trial.params, **constants})
        searched = _all_keys(preset.space)
        for label, settings in preset.anchor_settings().items():
            unsearched = [k for k in settings if k not in searched]
            if unsearched:
                raise ConfigError(f"anchor {label!r} sets {', '.join(unsearched)}, which the "
                                  "space does not search; an anchor may set only searched keys "
                                  f"({', '.join(sorted(searched))})")
        preset.anchor_points()  # each in range
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _inside(dist: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return dist.choices[0]
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    if isinstance(dist, optuna.distributions.IntDistribution):
        return low
    return math.sqrt(low * high) if dist.log else (low + high) / 2  # type: ignore[attr-defined]
