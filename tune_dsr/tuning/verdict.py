"""What a search hands back and whether it helped: the `Winner` (the configuration export
takes, with its confirmation runs) and the `Verdict` (its gain over bicubic on validation, and
against the pixel-only anchor), the text the search and export print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tune_dsr.config import PIXEL_ONLY
from tune_dsr.tuning.records import TrialRecord

__all__ = ["GAIN_OF", "Verdict", "Winner"]

# The recognition gain over bicubic that the verdict reports for an objective (default: margin).
GAIN_OF = {"val_margin": "val_margin_gain", "val_rank1_full": "val_rank1_full_gain",
           "val_soft_rank1": "val_soft_rank1_gain", "val_margin_gain": "val_margin_gain",
           "val_rank1_full_gain": "val_rank1_full_gain",
           "val_soft_rank1_gain": "val_soft_rank1_gain",
           "val_heldout_margin": "val_heldout_margin_gain",
           "val_heldout_margin_gain": "val_heldout_margin_gain",
           "val_heldout_rank1_full": "val_heldout_rank1_full_gain",
           "val_heldout_rank1_full_gain": "val_heldout_rank1_full_gain",
           "val_heldout_soft_rank1": "val_heldout_soft_rank1_gain",
           "val_heldout_soft_rank1_gain": "val_heldout_soft_rank1_gain",
           # the verdict's interval is the trained-against gain's; the held-out one is beside it
           "val_margin_gain_min": "val_margin_gain"}


@dataclass(frozen=True)
class Winner:
    """The configuration a search hands back: its search trial, anchor label, the value it is
    ranked by (the confirmed mean, or the search trial's best) and its confirmation runs."""

    trial_id: str
    anchor: str
    value: float
    runs: int  # confirmation runs (0: not confirmed)
    low: float  # 95 % t interval of the confirmed mean (NaN for fewer than two runs)
    high: float
    run_records: list[TrialRecord] = field(default_factory=list, repr=False)

    @property
    def confirmed(self) -> bool:
        return self.runs > 0


@dataclass(frozen=True)
class Verdict:
    """Whether the search found a DSR that clearly helps recognition on validation.

    ``gain`` is the winner's recognition gain over bicubic (``gain_metric``, e.g. the margin's)
    at its best epoch, averaged over its confirmation runs where it has them, with the 95 %
    half-width of the per-probe paired difference; ``rank1_gain`` likewise. It *clearly beats
    bicubic* when the gain's interval excludes 0 and its best epoch came after the learning-rate
    warm-up (before it, the network has barely moved from bicubic upscaling). ``pixel_only`` is
    the pixel-only anchor's value of the objective (its confirmed mean where confirmed); the
    winner *beats* it only when that value lies outside the winner's confirmed interval.
    """

    metric: str
    winner: Winner
    gain_metric: str
    gain: float
    gain_half_width: float
    rank1_gain: float
    rank1_half_width: float
    best_epochs: list[int]
    warmup_epochs: int
    pixel_only: float | None
    beats_bicubic: bool
    beats_pixel_only: bool | None
    text: str

    @classmethod
    def of(cls, metric: str, mode: str, winner: Winner, gain_metric: str, gain: float,
           half: float, rank1: float, rank1_half: float, best_epochs: list[int], warmup: int,
           pixel_only: float | None) -> Verdict:
        in_warmup = bool(best_epochs) and max(best_epochs) <= warmup
        known = math.isfinite(gain) and math.isfinite(half)
        clear = known and gain - half > 0 and not in_warmup
        sign = 1.0 if mode == "max" else -1.0
        # Ahead of the pixel-only anchor only where its value lies outside the winner's confirmed
        # interval: two configurations within one seed's noise are a tie, not a ranking.
        within = (pixel_only is not None and math.isfinite(winner.low)
                  and winner.low <= pixel_only <= winner.high)
        beats_pixel = (None if pixel_only is None or winner.anchor == PIXEL_ONLY
                       else sign * (winner.value - pixel_only) > 0 and not within)
        which = (f"trial {winner.trial_id}" + (f" ({winner.anchor} anchor)" if winner.anchor
                                                else ""))
        how = (f"mean of {winner.runs} confirmation run(s)" if winner.confirmed
               else "its search run")
        epochs = ", ".join(str(e) for e in best_epochs) or "?"
        lines = [f"Winner: {which}, {metric} {winner.value:.4f} ({how}"
                 + (f", 95 % interval [{winner.low:.4f}, {winner.high:.4f}]"
                    if math.isfinite(winner.low) else "") + f"; best epoch {epochs})."]
        def interval(value: float, half_width: float, low: float, high: float, form: str) -> str:
            if not math.isfinite(half_width):
                return "(interval unknown)"
            # A rank-1 gain lies in [-1, 1] whatever the normal approximation says.
            return (f"[{max(low, value - half_width):{form}}, "
                    f"{min(high, value + half_width):{form}}]")

        lines.append(f"Gain over bicubic on validation: {gain_metric} {gain:+.4f} "
                     f"{interval(gain, half, -math.inf, math.inf, '+.4f')}, rank-1 "
                     f"{rank1:+.1%} {interval(rank1, rank1_half, -1.0, 1.0, '+.1%')} (95 %, "
                     "paired over the validation persons).")
        if winner.anchor == PIXEL_ONLY:
            lines.append("The winner is the pixel-only anchor: the identity terms did not help "
                         "on this data.")
        elif pixel_only is not None and within:
            lines.append(f"Against the pixel-only anchor ({metric} {pixel_only:.4f}): no clear "
                         f"difference ({sign * (winner.value - pixel_only):+.4f}; it lies within "
                         "the winner's 95 % interval).")
        elif pixel_only is not None:
            lines.append(f"Against the pixel-only anchor ({metric} {pixel_only:.4f}): "
                         + ("better" if beats_pixel else "not better")
                         + f" by {sign * (winner.value - pixel_only):+.4f}.")
        if clear:
            lines.append("It clearly beats bicubic upscaling on validation.")
        else:
            why = []
            if in_warmup:
                why.append(f"its best epoch ({epochs}) lies within its learning-rate warm-up "
                           f"({warmup} epochs), when the network has barely moved from bicubic")
            if not known:
                why.append("the interval of its gain over bicubic is unknown (an experiment "
                           "from before tune_dsr reported it, or a single validation face)")
            elif gain - half <= 0:
                why.append("its gain over bicubic " + (
                    "is negative" if gain + half < 0 else "has an interval that includes 0"))
            lines.append("No configuration clearly beat doing nothing (bicubic upscaling): "
                         + " and ".join(why) + ".")
        return cls(metric, winner, gain_metric, gain, half, rank1, rank1_half, best_epochs,
                   warmup, pixel_only, clear, beats_pixel, "\n".join(lines))
