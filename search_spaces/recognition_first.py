"""Recognition first: the guide's "prioritise recognition over image quality" settings.

Objective: the highest ``val_margin``: per validation face (subjects never seen in training), the
cosine similarity of its SR embedding to its own subject minus the highest similarity to any
other subject, the training subjects included. Unlike the identity loss it falls when DSR makes
a face look like someone it trained on (identity hallucination), and it is continuous, so ASHA
can compare trials after a few epochs. The identity, feature-matching and perceptual terms are
each drawn "off, or on with a log-uniform weight", and the pixel-only anchor (both identity
terms off) runs right after the guide's values: the search can find out that a term hurts.
"""

from __future__ import annotations

from typing import Any

from search_spaces import optional_weight

DESCRIPTION = "prioritise recognition: maximise the validation margin (training subjects too)"
METRIC = "val_margin"
MAX_EPOCHS = 100
GRACE_PERIOD = 10
# The guide's own values for this preset; the first trial runs them (other knobs: guide defaults).
GUIDE = {"lambda_identity": 0.60, "lambda_feature_match": 0.20, "lambda_perceptual": 0.01}


def space(trial: Any) -> dict[str, Any]:
    fixed = optional_weight(trial, "lambda_identity", 0.02, 1.0)
    fixed |= optional_weight(trial, "lambda_feature_match", 0.01, 0.5)
    fixed |= optional_weight(trial, "lambda_perceptual", 0.002, 0.05)
    trial.suggest_float("lambda_l1", 0.5, 1.5)
    trial.suggest_float("lambda_tv", 1e-7, 1e-5, log=True)
    trial.suggest_float("lr", 5e-5, 5e-4, log=True)
    trial.suggest_categorical("batch_size", [12, 16, 20, 24])
    trial.suggest_int("warmup_epochs", 1, 8)
    trial.suggest_categorical("width", [96, 112, 128])
    trial.suggest_int("depth", 12, 20, step=2)
    trial.suggest_categorical("bicubic_residual", [False, True])
    return fixed
