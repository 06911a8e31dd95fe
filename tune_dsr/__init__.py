"""tune_dsr: Ray Tune + Optuna hyperparameter search for DSR face super-resolution.

DSR turns very-low-resolution faces into 112x112 faces that a frozen, fine-tuned EdgeFace can still
identify. The commands: ``python -m tune_dsr.train`` runs one training, ``tune_dsr.search`` many
under ASHA and Optuna, ``tune_dsr.export`` hands the best configuration back to ``train``, and
``tune_dsr.evaluate`` and ``tune_dsr.compare`` measure the result on unseen subjects against
bicubic upscaling; ``tune_dsr.finetune`` fine-tunes EdgeFace on a DSR's faces and
``tune_dsr.cycle`` runs the guide's whole cycle. Each is a thin shell over the library, in
layers:

- ``config``, ``errors``, ``data``, ``synthetic``, ``recognition``, ``quality``, ``hardware``:
  the settings, the faces, and the figures everything else shares;
- ``models``: DSR, EdgeFace and every checkpoint file (``models.checkpoints``);
- ``training``: the loop (``training.trainer``, which knows nothing of Ray), the losses and the
  in-loop validation galleries;
- ``tuning``: the search service, its Ray and Optuna glue, the experiment folder, its analysis
  and the export of a configuration;
- ``evaluation``: the probe sets, the protocols against bicubic, the report, the picture grid;
- ``finetuning``: EdgeFace fine-tuned on DSR's faces (its config, CosFace head and loop);
- ``cycling``: the cycle's stages, their folders and its summary.

The front door below imports on first use, so ``import tune_dsr`` stays free of torch and Ray::

    from tune_dsr import Config, SearchOptions, plan_search, run_search, load_experiment

"The guide" in docstrings and comments is the user's DSR cycle-training guide, and "the original"
the system it describes; docs/background.md summarises both, their defaults and their defects.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

# One owner: pyproject.toml's version, as the installed package's metadata has it.
try:
    __version__ = importlib.metadata.version("tune_dsr")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_HOMES = {
    "Config": "tune_dsr.config",
    "ConfigError": "tune_dsr.errors",
    "Trainer": "tune_dsr.training.trainer",
    "prepare_run": "tune_dsr.training.trainer",
    "SearchOptions": "tune_dsr.tuning.options",
    "plan_search": "tune_dsr.tuning.service",
    "resume_plan": "tune_dsr.tuning.service",
    "run_search": "tune_dsr.tuning.service",
    "load_experiment": "tune_dsr.tuning.analysis",
    "best_config_document": "tune_dsr.tuning.export",
    "evaluate_dsrs": "tune_dsr.evaluation.protocols",
    "format_report": "tune_dsr.evaluation.report",
    "FinetuneConfig": "tune_dsr.finetuning.config",
    "prepare_finetune": "tune_dsr.finetuning.finetuner",
    "plan_cycle": "tune_dsr.cycling.cycle",
    "run_cycle": "tune_dsr.cycling.cycle",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
