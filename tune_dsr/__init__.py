"""tune_dsr: Ray Tune + Optuna hyperparameter search for DSR face super-resolution.

DSR turns very-low-resolution faces into 112x112 faces that a frozen, fine-tuned EdgeFace can still
identify. `tune_dsr.train` runs one training, `tune_dsr.search` many under ASHA and Optuna,
`tune_dsr.export` hands the best configuration back to `tune_dsr.train`.
"""

__version__ = "0.1.0"
