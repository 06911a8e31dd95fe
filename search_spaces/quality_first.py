"""Quality first: the guide's "improve image quality (if PSNR too low)" settings.

Objective: the highest validation PSNR (RGB, the guide's definition).
"""

from __future__ import annotations

from typing import Any

from search_spaces import optional_weight

DESCRIPTION = "prioritise image quality: maximise val PSNR"
METRIC = "val_psnr"
MAX_EPOCHS = 100
GRACE_PERIOD = 10
GUIDE = {"lambda_l1": 1.5, "lambda_perceptual": 0.04, "lambda_identity": 0.40}


def space(trial: Any) -> dict[str, Any]:
    trial.suggest_float("lambda_l1", 0.8, 2.5)
    fixed = optional_weight(trial, "lambda_perceptual", 0.005, 0.1)
    fixed |= optional_weight(trial, "lambda_identity", 0.05, 0.7)
    fixed |= optional_weight(trial, "lambda_feature_match", 0.01, 0.3)
    trial.suggest_float("lambda_tv", 1e-7, 1e-5, log=True)
    trial.suggest_float("lr", 5e-5, 5e-4, log=True)
    trial.suggest_categorical("batch_size", [12, 16, 20, 24])
    trial.suggest_int("warmup_epochs", 1, 8)
    trial.suggest_categorical("width", [96, 112, 128])
    trial.suggest_int("depth", 12, 20, step=2)
    trial.suggest_categorical("bicubic_residual", [False, True])
    return fixed
