"""Where ASHA compares trials: the one computation of its rungs, for Ray's ASHAScheduler (as
analysis reports them) and for the Pareto-aware ASHA (`tune_dsr.tuning.pareto_asha`)."""

from __future__ import annotations

__all__ = ["rung_milestones"]


def rung_milestones(grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """``grace_period × reduction_factor^k`` strictly below `max_t`, lowest first: the rungs of
    one ASHA bracket, as Ray's ASHAScheduler sets them (a rung on `max_t` itself decides
    nothing: a trial there ends anyway)."""
    milestones: list[float] = []
    milestone = grace_period
    while milestone < max_t:
        milestones.append(milestone)
        milestone = grace_period * reduction_factor ** len(milestones)
    return milestones
