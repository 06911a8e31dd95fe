"""Fast: the guide's "reduce training time" settings, with ASHA in place of patience.

60 epochs at most, batch 20, and the guide's patience of 12 epochs as ASHA's grace period. The
network keeps the guide's size; only the loss weights and the schedule are searched.

Objective: the highest ``val_score = val_psnr + 100 * val_margin_gain`` (dB): PSNR plus the gain
of the recognition margin over bicubic upscaling, 1 dB for 0.01 of margin (see
``tune_dsr.config.score``), so neither image quality nor recognition can be given up for the
other unnoticed, and recognition weighs heavily.
"""

from __future__ import annotations

from typing import Any

from search_spaces import optional_weight

DESCRIPTION = "short runs: maximise val_score = val_psnr + 100 * val_margin_gain"
METRIC = "val_score"
MAX_EPOCHS = 60
GRACE_PERIOD = 12
GUIDE = {"batch_size": 20}


def space(trial: Any) -> dict[str, Any]:
    fixed = optional_weight(trial, "lambda_identity", 0.05, 0.8)
    fixed |= optional_weight(trial, "lambda_feature_match", 0.02, 0.4)
    fixed |= optional_weight(trial, "lambda_perceptual", 0.005, 0.08)
    trial.suggest_float("lambda_l1", 0.5, 2.0)
    trial.suggest_float("lr", 5e-5, 6e-4, log=True)
    trial.suggest_categorical("batch_size", [16, 20, 24, 32])
    trial.suggest_int("warmup_epochs", 1, 5)
    # The final run after the search stops early with the guide's patience for this preset.
    return {**fixed, "patience": 12}
