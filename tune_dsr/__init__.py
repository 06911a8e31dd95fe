"""tune_dsr: Ray Tune + Optuna hyperparameter search for DSR face super-resolution.

DSR turns very-low-resolution faces into 112x112 faces that a frozen, fine-tuned EdgeFace can still
identify. `tune_dsr.train` runs one training, `tune_dsr.search` many under ASHA and Optuna (the
service behind it is `tune_dsr.tuning`), `tune_dsr.export` hands the best configuration back to
`tune_dsr.train`, and `tune_dsr.evaluate` and `tune_dsr.compare` measure the result on unseen
subjects against bicubic upscaling.

"The guide" in docstrings and comments is the user's DSR cycle-training guide, and "the original"
the system it describes; docs/background.md summarises both, their defaults and their defects.
"""

__version__ = "0.2.0"
