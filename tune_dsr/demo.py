"""The built-in demo: synthetic faces, random loss networks, small DSRs. No data, no weights, CPU.

`python -m tune_dsr.train --demo` and `python -m tune_dsr.search --demo` take their settings from
here, so the two never drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["FINETUNE", "FINETUNE_DSR", "RANDOM_NETWORKS", "SEARCH_BUDGET", "SEARCH_DATA",
           "SEARCH_PINS", "TRAIN", "TRAIN_DATA", "make_data", "random_dsr"]

# Random, fixed-seed loss networks: nothing to download, meaningless for real training.
RANDOM_NETWORKS: dict[str, Any] = {"edgeface": "random:edgeface_xxs",
                                   "perceptual_weights": "random"}

# `train --demo`: a small DSR for 3 epochs, about half a minute on two CPU cores. It learns the
# residual over bicubic upscaling: in three epochs a DSR from scratch is still a grey blur.
TRAIN: dict[str, Any] = {**RANDOM_NETWORKS, "vlr_size": 16, "width": 32, "depth": 4, "epochs": 3,
                         "batch_size": 8, "warmup_epochs": 1, "lr": 1e-3,
                         "bicubic_residual": True}

# `search --demo`: a tiny DSR held fixed (pinned, not searched) and a short search.
SEARCH_PINS: dict[str, Any] = {"width": 24, "depth": 2, "batch_size": 8}
SEARCH_BUDGET: dict[str, Any] = {"num_samples": 6, "max_epochs": 4, "grace_period": 1,
                                 "reduction_factor": 2, "patience": 2}

# `finetune --demo`: a random EdgeFace fine-tuned for two epochs on a random DSR's faces.
FINETUNE: dict[str, Any] = {"edgeface": RANDOM_NETWORKS["edgeface"], "epochs": 2,
                            "batch_size": 8, "warmup_epochs": 1}
# The random DSR whose faces `finetune --demo` learns from (and `cycle --demo` starts with).
FINETUNE_DSR: dict[str, Any] = {"vlr_size": 16, "width": 16, "depth": 2,
                                "bicubic_residual": True}

# Synthetic subjects and images per subject: train --demo, search --demo.
TRAIN_DATA = {"subjects": 16, "per_subject": 4}
SEARCH_DATA = {"subjects": 12, "per_subject": 4}


def make_data(out: str | Path, subjects: int = 16, per_subject: int = 4) -> dict[str, Path]:
    """Synthetic faces (16 px VLR, 112 px HR) split by subject under `out`; returns the splits.

    The same arguments always write the same images (seed 0).
    """
    from tune_dsr.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(Path(out), subjects=subjects, per_subject=per_subject,
                                  vlr_sizes=(16,), seed=0)


def random_dsr(path: str | Path) -> Path:
    """A randomly initialised small DSR (`FINETUNE_DSR`) saved as a DSR checkpoint at `path`."""
    import torch

    from tune_dsr.config import Config
    from tune_dsr.models.checkpoints import save_dsr
    from tune_dsr.models.dsr import DSR

    torch.manual_seed(0)
    config = Config().replace(**FINETUNE_DSR)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_dsr(path, DSR(config.model).eval(), config, {}, 0)
    return path
