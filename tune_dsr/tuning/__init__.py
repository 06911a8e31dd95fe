"""The search layer: the service, its Ray and Optuna glue, the trainable, the experiment folder,
its analysis and the export of a configuration.

    from tune_dsr.tuning import SearchOptions, plan_search, run_search, load_experiment

The names below are imported on first use, so that ``import tune_dsr.tuning`` (and every command
line that only parses its arguments) stays free of Ray and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "SearchOptions": "options", "plan_search": "service", "resume_plan": "service",
    "run_search": "service", "load_experiment": "analysis", "Experiment": "analysis",
    "best_config_document": "export", "SearchPlan": "experiment",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
