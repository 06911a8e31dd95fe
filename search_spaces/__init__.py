"""Search-space presets: one small module each (`recognition_first`, `quality_first`, `fast`).

A preset module defines

- ``space(trial)``: a define-by-run Optuna function; it only calls ``trial.suggest_*`` with config
  keys (see ``tune_dsr.config``) and returns a dict of fixed settings;
- ``METRIC``: the objective, a validation metric the trainer reports (`tune_dsr.config.METRICS`,
  which also says whether higher or lower is better; an optional ``MODE`` must agree with it);
- ``GUIDE``: the guide's own values for the preset, run as the first trial;
- optionally ``DESCRIPTION``, ``MAX_EPOCHS`` (default 100) and ``GRACE_PERIOD`` (default 10).

A user's own preset is a ``.py`` file with the same names, passed as ``--space path/to/file.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna

from tune_dsr.config import METRICS, Config
from tune_dsr.errors import ConfigError

BUILTIN = ("recognition_first", "quality_first", "fast")


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

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The searched parameters and their ranges (the space run on a throw-away trial)."""
        trial = _scratch_trial()
        self.space(trial)
        return dict(trial.distributions)

    def constants(self) -> dict[str, Any]:
        """The fixed settings the space returns."""
        return dict(self.space(_scratch_trial()) or {})

    def first_config(self) -> dict[str, Any]:
        """The guide's value of every searched parameter: the warm start, run as trial one."""
        guide = Config().replace(**self.guide).to_flat()
        return {key: guide[key] for key in self.distributions()}

    def describe(self) -> str:
        lines = [f"{self.name}: {self.description or self.metric}",
                 f"  objective: {self.mode} {self.metric}; max epochs {self.max_epochs}, "
                 f"ASHA grace period {self.grace_period}",
                 f"  guide's values (first trial): {self.guide or 'the guide defaults'}"]
        for key, dist in self.distributions().items():
            lines.append(f"  {key:22s} {_format_distribution(dist)}")
        constants = self.constants()
        if constants:
            lines.append(f"  fixed: {constants}")
        return "\n".join(lines)


def _scratch_trial() -> optuna.trial.Trial:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()


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
        spec.loader.exec_module(module)
        return module
    if name_or_path not in BUILTIN:
        raise ConfigError(f"unknown search space {name_or_path!r}; valid presets: "
                          f"{', '.join(BUILTIN)} (or a path to your own .py preset)")
    return importlib.import_module(f"search_spaces.{name_or_path}")


def load_preset(name_or_path: str) -> Preset:
    """A built-in preset by name, or a user's preset file; checked before any trial starts."""
    module = _load_module(name_or_path)
    where = f"search space {name_or_path!r}"
    missing = [n for n in ("space", "METRIC") if not hasattr(module, n)]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}; a preset defines space(trial) "
                          "and METRIC (see search_spaces/recognition_first.py)")
    if not callable(module.space):
        raise ConfigError(f"{where}: space must be a function space(trial) -> dict")
    if module.METRIC not in METRICS:
        raise ConfigError(f"{where}: METRIC={module.METRIC!r} is not a reported metric; choose "
                          f"one of {', '.join(METRICS)}")
    mode = METRICS[module.METRIC]
    if getattr(module, "MODE", mode) != mode:
        raise ConfigError(f"{where}: MODE={module.MODE!r} contradicts {module.METRIC}, for which "
                          f"{'higher' if mode == 'max' else 'lower'} is better; drop MODE")
    preset = Preset(
        name=Path(name_or_path).stem, space=module.space, metric=module.METRIC,
        mode=mode, guide=dict(getattr(module, "GUIDE", {})),
        description=getattr(module, "DESCRIPTION", (module.__doc__ or "").strip().split("\n")[0]),
        max_epochs=int(getattr(module, "MAX_EPOCHS", 100)),
        grace_period=int(getattr(module, "GRACE_PERIOD", 10)))
    _validate(preset, where)
    return preset


def _validate(preset: Preset, where: str) -> None:
    """Every suggested key and constant must be a valid config setting; the guide point in range."""
    try:
        distributions = preset.distributions()
        constants = preset.constants()
        sample = {k: d.to_external_repr(d.to_internal_repr(_inside(d)))
                  for k, d in distributions.items()}
        Config().replace(**{**sample, **constants})
        first = preset.first_config()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    for key, value in first.items():
        if not distributions[key]._contains(distributions[key].to_internal_repr(value)):
            raise ConfigError(f"{where}: the guide's {key}={value!r} lies outside its range "
                              f"{_format_distribution(distributions[key])}; widen the range")


def _inside(dist: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return dist.choices[0]
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    if isinstance(dist, optuna.distributions.IntDistribution):
        return low
    return math.sqrt(low * high) if dist.log else (low + high) / 2  # type: ignore[attr-defined]
