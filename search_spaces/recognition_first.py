"""Recognition first: the guide's "prioritise recognition over image quality" settings.

Objective: the lowest validation identity loss (1 - cosine similarity of EdgeFace embeddings of
SR and HR faces), the closest per-epoch signal to recognition accuracy.
"""

from __future__ import annotations

from typing import Any

DESCRIPTION = "prioritise recognition: minimise val identity loss"
METRIC = "val_identity_loss"
MODE = "min"
MAX_EPOCHS = 100
GRACE_PERIOD = 10
# The guide's own values for this preset; the first trial runs them (other knobs: guide defaults).
GUIDE = {"lambda_identity": 0.60, "lambda_feature_match": 0.20, "lambda_perceptual": 0.01}


def space(trial: Any) -> dict[str, Any]:
    trial.suggest_float("lambda_identity", 0.3, 1.0)
    trial.suggest_float("lambda_feature_match", 0.02, 0.5, log=True)
    trial.suggest_float("lambda_perceptual", 0.002, 0.05, log=True)
    trial.suggest_float("lambda_l1", 0.5, 1.5)
    trial.suggest_float("lambda_tv", 1e-7, 1e-5, log=True)
    trial.suggest_float("lr", 5e-5, 5e-4, log=True)
    trial.suggest_categorical("batch_size", [12, 16, 20, 24])
    trial.suggest_int("warmup_epochs", 1, 8)
    trial.suggest_categorical("width", [96, 112, 128])
    trial.suggest_int("depth", 12, 20, step=2)
    trial.suggest_categorical("bicubic_residual", [False, True])
    return {"multiscale_perceptual": True}
