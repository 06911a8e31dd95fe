"""The 95 % intervals tune_dsr reports, in one place.

Three kinds, each for its own question:

- **bootstrap** (`bootstrap_interval`, `paired_bootstrap`): a figure over the probes of a test
  set, such as rank-1 or the margin (`evaluate`). Faces come in persons: LFW has up to six probes
  per person, and a person that is hard for one method is hard for the others, so with
  ``groups`` (each probe's person) whole persons are resampled, all of a person's probes
  together; without it, single probes (independent faces, as the older reports assumed).
- **normal** (`paired_half_width`): the per-epoch gain over bicubic on the validation faces,
  computed every epoch, where a bootstrap would cost more than the metric itself. With
  ``groups`` it is the cluster-robust (persons) standard error of a mean of per-probe values.
- **Student t** (`t_interval`): the mean of a few confirmation runs of one configuration.

A person-level interval is never narrower on average than a probe-level one when a person's
probes agree more with each other than with other persons' probes, which is the case for faces.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch is imported where a tensor is computed: t_interval needs none
    from torch import Tensor

__all__ = [
    "LEVEL",
    "Interval",
    "bootstrap_interval",
    "bootstrap_means",
    "paired_bootstrap",
    "paired_half_width",
    "t_interval",
    "verdict",
]

LEVEL = 0.95
# z of a two-sided 95 % normal interval.
Z95 = 1.959964
# Two-sided 95 % Student t quantiles by degrees of freedom (beyond: 30's, the wider one).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
# Elements of one resample block: a few tens of MB of indices at a time.
_CHUNK_ELEMENTS = 1 << 22


class Interval(NamedTuple):
    """A point estimate (the mean over all probes) and its interval."""

    estimate: float
    low: float
    high: float


def _group_sums(values: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Per group: the sum of its values and its count (groups relabelled 0..G-1)."""
    import torch

    groups = groups.detach().flatten().cpu().long()
    if groups.numel() != values.numel():
        raise ValueError(f"groups must give one group per value, but got {groups.numel()} "
                         f"groups for {values.numel()} values")
    _, index = torch.unique(groups, return_inverse=True)
    count = int(index.max()) + 1
    sums = torch.zeros(count, dtype=torch.float64).index_add_(0, index, values)
    sizes = torch.bincount(index, minlength=count).double()
    return sums, sizes


def bootstrap_means(values: Tensor, resamples: int = 2000, seed: int = 0,
                    groups: Tensor | None = None) -> Tensor:
    """Means of `resamples` resamples (with replacement) of a per-probe vector [N], float64 [R].

    With `groups` [N] (each probe's person), persons are drawn instead of probes, and each
    resample's mean is its probes' mean (total over the drawn persons / their probe count).
    Seeded: the same seed and the same N (or the same groups) draw the same indices, so two
    vectors over the same probes are resampled identically (`paired_bootstrap` relies on it).
    """
    import torch

    values = values.detach().double().flatten().cpu()
    if values.numel() == 0:
        raise ValueError("cannot bootstrap an empty vector")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, but got resamples={resamples}")
    if groups is None:
        sums, sizes = values, torch.ones_like(values)
    else:
        sums, sizes = _group_sums(values, groups)
    n = sums.numel()
    generator = torch.Generator().manual_seed(int(seed))
    rows = max(1, _CHUNK_ELEMENTS // n)
    means = []
    for start in range(0, resamples, rows):
        index = torch.randint(n, (min(rows, resamples - start), n), generator=generator)
        means.append(sums[index].sum(dim=1) / sizes[index].sum(dim=1))
    return torch.cat(means)


def bootstrap_interval(values: Tensor, resamples: int = 2000, level: float = LEVEL,
                       seed: int = 0, groups: Tensor | None = None) -> Interval:
    """The mean of a per-probe vector (0/1 hits or real values) with its percentile interval,
    resampling probes, or persons with `groups`."""
    import torch

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), but got level={level}")
    means = bootstrap_means(values, resamples, seed, groups)
    tail = (1.0 - level) / 2.0
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return Interval(values.detach().double().mean().item(), low.item(), high.item())


def paired_bootstrap(a: Tensor, b: Tensor, resamples: int = 2000, level: float = LEVEL,
                     seed: int = 0, groups: Tensor | None = None) -> Interval:
    """Mean of ``a − b`` over the same probes, with its interval: both methods are resampled with
    the same probes (or persons, with `groups`), so probe difficulty cancels out. Identical
    inputs give (0, 0, 0)."""
    if a.shape != b.shape:
        raise ValueError(f"paired vectors must have the same shape, but got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    return bootstrap_interval(a.double() - b.double(), resamples, level, seed, groups)


def verdict(difference: Interval) -> str:
    """"better" / "worse" only where the interval of a difference excludes 0."""
    if difference.low > 0:
        return "better"
    if difference.high < 0:
        return "worse"
    return "no clear difference"


def paired_half_width(differences: Tensor, groups: Tensor | None = None) -> float:
    """95 % half-width of the mean of per-probe paired differences (normal approximation).

    With `groups` (each probe's person) the standard error is cluster-robust: the mean is
    Σd / n over persons' sums, and its variance G/(G−1) · Σ_g (D_g − mean·n_g)² / n². NaN
    (unknown) for fewer than two probes, or fewer than two persons.
    """

    values = differences.detach().double().flatten().cpu()
    n = values.numel()
    if n < 2:
        return math.nan
    if groups is None:
        return float(Z95 * values.std(unbiased=True) / n ** 0.5)
    sums, sizes = _group_sums(values, groups)
    count = sums.numel()
    if count < 2:
        return math.nan
    mean = values.mean()
    variance = count / (count - 1) * ((sums - mean * sizes) ** 2).sum() / float(n) ** 2
    return float(Z95 * variance.sqrt())


def t_interval(values: Iterable[float]) -> tuple[float, float, float]:
    """Mean and 95 % Student t interval of a few runs' values (NaN bounds for one run)."""
    data = [float(v) for v in values]
    mean = statistics.fmean(data) if data else math.nan
    if len(data) < 2:
        return mean, math.nan, math.nan
    # Between the table's rows, the row below: the wider interval (beyond 30: 30's).
    t = _T95[max(k for k in _T95 if k <= len(data) - 1)]
    half = t * statistics.stdev(data) / math.sqrt(len(data))
    return mean, mean - half, mean + half
