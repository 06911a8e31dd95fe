"""EdgeFace fine-tuned on DSR's faces: the first half of the guide's cycle.

`config` holds the run's settings, `head` the margin classifier over the training persons,
`finetuner` the loop (warm-up then cosine, EMA, validation on unseen persons each epoch) and the
file it hands on: a recogniser in the original project's fine-tuned format, which ``train``,
``search``, ``evaluate`` and ``compare`` read as ``--edgeface``. ``python -m tune_dsr.finetune``
is its command.
"""

__all__: list[str] = []
