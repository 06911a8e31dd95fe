"""Paired differences between any two (method, recogniser) readings of the same probes.

`evaluate_dsrs` compares each DSR with bicubic under one recogniser. The cycle needs more: a DSR
read by one recogniser against another DSR (or bicubic) read by another, e.g. the cycle-1 DSR
under the fine-tuned EdgeFace against bicubic under an EdgeFace fine-tuned on bicubic. Both
readings cover the same probes, so the difference is paired, and persons are resampled (a
person's probes together) as everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tune_dsr.statistics import paired_bootstrap, verdict

__all__ = ["Reading", "paired_difference"]

Reading = tuple[str, str]  # (method, recogniser) as named in evaluate_dsrs's probe rows


def _values(rows: Sequence[dict[str, Any]], reading: Reading, protocol: str, metric: str
            ) -> tuple[list[str], list[str], torch.Tensor]:
    method, recogniser = reading
    chosen = sorted(((r["probe"], r) for r in rows if r["method"] == method
                     and r["recogniser"] == recogniser and r["protocol"] == protocol),
                    key=lambda pair: pair[0])
    if not chosen:
        raise KeyError(f"no probe rows for method {method!r} under {recogniser!r} "
                       f"({protocol} protocol)")
    values = [float(r["rank"] == 1) if metric == "rank1" else float(r[metric])
              for _, r in chosen]
    return [p for p, _ in chosen], [r["subject"] for _, r in chosen], torch.tensor(values)


def paired_difference(rows: Sequence[dict[str, Any]], a: Reading, b: Reading, *,
                      metric: str = "rank1", protocol: str = "wide", resamples: int = 4000,
                      seed: int = 0) -> dict[str, Any]:
    """Mean of `a`'s per-probe `metric` (``rank1``, ``correct`` or ``margin``) minus `b`'s, with
    its 95 % interval from a paired bootstrap over persons, and the verdict."""
    probes_a, subjects, values_a = _values(rows, a, protocol, metric)
    probes_b, _, values_b = _values(rows, b, protocol, metric)
    if probes_a != probes_b:
        raise ValueError(f"{a} and {b} were not read on the same probes")
    persons = sorted(set(subjects))
    groups = torch.tensor([persons.index(s) for s in subjects])
    diff = paired_bootstrap(values_a, values_b, resamples=resamples, seed=seed, groups=groups)
    return {"a": list(a), "b": list(b), "metric": metric, "difference": diff.estimate,
            "low": diff.low, "high": diff.high, "verdict": verdict(diff)}
