"""The front of a multi-objective search and the choice of one point of it, on trials frames
whose front is known by construction."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tune_dsr.errors import ConfigError
from tune_dsr.tuning.front import choose, describe, front_frame, parse_where

OBJECTIVES = ("val_margin_gain", "val_psnr")  # both better higher


def trials(*points: tuple[str, float, float, int, bool]) -> pd.DataFrame:
    """A trials frame as `load_experiment` builds it: (id, margin gain, PSNR, epochs, stopped)."""
    return pd.DataFrame([
        {"trial_id": tid, "anchor": "pixel-only" if tid == "a" else "", "value": gain,
         "best_epoch": 1, "epochs_run": epochs, "stopped_early": stopped,
         "stopped_by": "asha" if stopped else "", "metric/val_margin_gain": gain,
         "metric/val_psnr": psnr}
        for tid, gain, psnr, epochs, stopped in points])


FRAME = trials(("a", 0.03, 20.0, 8, False),   # front 0: best gain
               ("b", 0.02, 22.0, 8, False),   # front 0
               ("c", 0.00, 25.0, 8, False),   # front 0: best PSNR
               ("d", 0.01, 21.0, 2, True),    # dominated by b: front 1, stopped at epoch 2
               ("e", -0.01, 19.0, 1, True),   # dominated by everything: front 2
               ("f", math.nan, 30.0, 0, False))  # no epoch yet: left out


def test_the_front_is_the_non_dominated_trials_best_first():
    front = front_frame(FRAME, OBJECTIVES)
    assert list(front["trial_id"]) == ["a", "b", "c", "d", "e"]
    assert list(front["front"]) == [0, 0, 0, 1, 2]
    assert list(front["dominated"]) == [False, False, False, True, True]
    assert front.loc[front["trial_id"] == "d", "stopped_at"].item() == 2
    assert math.isnan(front.loc[front["trial_id"] == "a", "stopped_at"].item())
    # The extremes of front 0 have an infinite crowding distance (they are kept first).
    assert math.isinf(front["crowding"][0]) and math.isinf(front["crowding"][2])
    text = describe(front, OBJECTIVES)
    assert "3 of 5 trials" in text and "trial a (pixel-only anchor)" in text
    assert "2 dominated trial(s), 2 stopped early (at epochs 1, 2)" in text


def test_a_position_or_a_rule_chooses_a_point_of_the_front():
    front = front_frame(FRAME, OBJECTIVES)
    assert choose(front, OBJECTIVES, point=1).trial_id == "a"
    assert choose(front, OBJECTIVES, point=3).trial_id == "c"
    chosen = choose(front, OBJECTIVES, best="val_margin_gain",
                    where=parse_where(["val_psnr>=21.5"]))
    assert (chosen.trial_id, chosen.monitor) == ("b", "val_margin_gain")
    assert chosen.values == {"val_margin_gain": 0.02, "val_psnr": 22.0}
    assert choose(front, OBJECTIVES, best="val_psnr").trial_id == "c"
    both = choose(front, OBJECTIVES, where=parse_where(["val_psnr>20,val_margin_gain>0.01"]))
    assert both.trial_id == "b" and both.monitor == "val_margin_gain"


@pytest.mark.parametrize("kwargs, words", [
    ({"point": 4}, ["point=4", "3 point(s)", "from 1 to 3"]),
    ({"best": "val_ssim"}, ["val_ssim is not an objective", "val_margin_gain, val_psnr"]),
    ({"where": parse_where(["val_rank1>=0.5"])}, ["val_rank1 is not an objective"]),
    ({"best": "val_margin_gain", "where": parse_where(["val_psnr>=26"])},
     ["no point of the front meets val_psnr>=26", "closest is trial c",
      "val_psnr 25 misses val_psnr>=26 by 1"]),
    ({"point": 1, "best": "val_psnr"}, ["either point=N or a rule"]),
])
def test_rules_that_cannot_be_met_are_refused_by_name(kwargs, words):
    with pytest.raises(ConfigError) as info:
        choose(front_frame(FRAME, OBJECTIVES), OBJECTIVES, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_a_bad_condition_is_refused():
    with pytest.raises(ConfigError, match="METRIC OP NUMBER"):
        parse_where(["val_psnr=>24"])
    with pytest.raises(ConfigError, match="nothing to choose"):
        choose(front_frame(FRAME.iloc[5:], OBJECTIVES), OBJECTIVES, point=1)
