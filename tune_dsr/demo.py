"""The built-in demo: synthetic faces, random loss networks, small DSRs. No data, no weights, CPU.

`python -m tune_dsr.train --demo` and `python -m tune_dsr.search --demo` take their settings from
here, so the two never drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["RANDOM_NETWORKS", "SEARCH_BUDGET", "SEARCH_DATA", "SEARCH_PINS", "TRAIN",
           "TRAIN_DATA", "make_data"]

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
