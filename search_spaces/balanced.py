"""Balanced: image quality and recognition searched together, for the whole trade-off at once.

The guide's presets are three points on one trade-off ("prioritise recognition", "improve image
quality", "reduce training time"). This preset searches the trade-off itself: two objectives, the
recognition margin's gain over bicubic upscaling (``val_margin_gain``, on a gallery that also
holds the training subjects) and ``val_psnr``, and returns their Pareto front instead of one
winner. A trial keeps its best epoch by the first objective; its point on the front is both
objectives at that epoch (the model its best.pt holds). The space and the guide's values are
`recognition_first`'s, so the two searches compare on equal terms.
"""

from __future__ import annotations

from search_spaces.recognition_first import GUIDE, space

__all__ = ["DESCRIPTION", "GRACE_PERIOD", "GUIDE", "MAX_EPOCHS", "OBJECTIVES", "space"]

DESCRIPTION = "the trade-off: the Pareto front of recognition gain over bicubic and PSNR"
OBJECTIVES = ("val_margin_gain", "val_psnr")
MAX_EPOCHS = 100
GRACE_PERIOD = 10
