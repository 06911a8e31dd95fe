"""Search-space presets, one small module each: `recognition_first`, `quality_first`, `fast`,
`balanced`.

What a preset defines (``space(trial)``, ``METRIC`` or ``OBJECTIVES``, ``GUIDE``, optionally
``ANCHORS``, ``MAX_EPOCHS``, ``GRACE_PERIOD``, ``PATIENCE``, ``DESCRIPTION``) and how it is loaded
and checked is `tune_dsr.tuning.presets`, the preset engine. This package holds only the presets
and what a preset needs: `optional_weight`, which draws a loss weight as "off, or on with a
log-uniform weight". A user's own preset is a ``.py`` file with the same names, passed as
``--space path/to/file.py``.
"""

from __future__ import annotations

from tune_dsr.tuning.presets import SearchSpace as _SearchSpace
from tune_dsr.tuning.presets import optional_weight

__all__ = ["optional_weight"]

# Experiments searched before the preset engine moved into the library pickled their space (in
# the searcher's state) as search_spaces.SearchSpace; this name lets them resume.
SearchSpace = _SearchSpace
