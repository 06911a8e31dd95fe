"""Fast: the guide's "reduce training time" settings, with ASHA in place of patience.

60 epochs at most, batch 20, and the guide's patience of 12 epochs as ASHA's grace period. The
network keeps the guide's size; only the loss weights and the schedule are searched.

Objective: the highest ``val_score = val_psnr - 20 * val_identity_loss`` (dB), which trades 1 dB
of PSNR against 0.05 of identity loss (see ``tune_dsr.config.score``), so neither image quality
nor recognition can be given up for the other unnoticed.
"""

from __future__ import annotations

from typing import Any

DESCRIPTION = "short runs: maximise val_score = val_psnr - 20 * val_identity_loss"
METRIC = "val_score"
MODE = "max"
MAX_EPOCHS = 60
GRACE_PERIOD = 12
GUIDE = {"batch_size": 20}


def space(trial: Any) -> dict[str, Any]:
    trial.suggest_float("lambda_identity", 0.2, 0.8)
    trial.suggest_float("lambda_feature_match", 0.02, 0.4, log=True)
    trial.suggest_float("lambda_perceptual", 0.005, 0.08, log=True)
    trial.suggest_float("lambda_l1", 0.5, 2.0)
    trial.suggest_float("lr", 5e-5, 6e-4, log=True)
    trial.suggest_categorical("batch_size", [16, 20, 24, 32])
    trial.suggest_int("warmup_epochs", 1, 5)
    # The final run after the search stops early with the guide's patience for this preset.
    return {"multiscale_perceptual": True, "early_stop_patience": 12}
