"""The intervals: probes or persons resampled, the cluster-robust half-width, the t interval."""

from __future__ import annotations

import math

import pytest
import torch

from tune_dsr.statistics import (
    bootstrap_interval,
    bootstrap_means,
    paired_bootstrap,
    paired_half_width,
    t_interval,
)


def _persons(count: int, per_person: int) -> torch.Tensor:
    return torch.arange(count).repeat_interleave(per_person)


def test_one_probe_per_person_resamples_exactly_like_probes() -> None:
    values = torch.rand(40, generator=torch.Generator().manual_seed(0))
    by_probe = bootstrap_means(values, resamples=300, seed=4)
    by_person = bootstrap_means(values, resamples=300, seed=4, groups=torch.arange(40))
    assert torch.allclose(by_probe, by_person)


def test_persons_whose_probes_agree_give_a_wider_interval_than_independent_faces() -> None:
    """30 persons of 6 probes, each person all right or all wrong: 30 draws, not 180."""
    hits = torch.tensor([float(p % 2) for p in range(30)]).repeat_interleave(6)
    groups = _persons(30, 6)
    probes = bootstrap_interval(hits, resamples=4000, seed=0)
    persons = bootstrap_interval(hits, resamples=4000, seed=0, groups=groups)
    assert probes.estimate == persons.estimate == pytest.approx(0.5)
    probe_width, person_width = probes.high - probes.low, persons.high - persons.low
    # The binomial widths: 2 * 1.96 * sqrt(.25 / n) for n = 180 and n = 30.
    assert probe_width == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 180), rel=0.2)
    assert person_width == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 30), rel=0.2)
    assert person_width > 2 * probe_width


def test_a_resample_of_persons_weighs_each_probe_once() -> None:
    """Persons of different sizes: each resample's mean is its probes' mean (a ratio), so the
    estimate is the probe mean, and a person that is drawn twice counts its probes twice."""
    values = torch.tensor([1.0, 1.0, 1.0, 0.0])  # person 0: three hits; person 1: one miss
    groups = torch.tensor([0, 0, 0, 1])
    means = bootstrap_means(values, resamples=2000, seed=1, groups=groups)
    assert set(torch.unique(means).tolist()) <= {0.0, 0.75, 1.0}
    assert bootstrap_interval(values, groups=groups).estimate == 0.75


def test_paired_bootstrap_over_persons_cancels_person_difficulty() -> None:
    """A DSR that is right on every probe bicubic gets right plus one more per person: the
    difference is the same for every person, so its person-level interval has no width."""
    groups = _persons(10, 4)
    bicubic = torch.tensor([1.0, 0.0, 0.0, 0.0] * 10)
    dsr = torch.tensor([1.0, 1.0, 0.0, 0.0] * 10)
    found = paired_bootstrap(dsr, bicubic, resamples=500, groups=groups)
    assert (found.estimate, found.low, found.high) == pytest.approx((0.25, 0.25, 0.25))
    with pytest.raises(ValueError, match="one group per value"):
        paired_bootstrap(dsr, bicubic, groups=groups[:-1])


def test_cluster_robust_half_width() -> None:
    differences = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    sums, n, g = torch.tensor([1.0, 1.0, 2.0]), 6, 3
    mean = differences.mean()
    expected = 1.959964 * math.sqrt(g / (g - 1) * float(((sums - 2 * mean) ** 2).sum()) / n ** 2)
    assert paired_half_width(differences, groups) == pytest.approx(expected)
    assert paired_half_width(differences) == pytest.approx(
        1.959964 * float(differences.std()) / math.sqrt(n))
    assert math.isnan(paired_half_width(differences, torch.zeros(6)))  # one person
    assert math.isnan(paired_half_width(torch.tensor([0.3])))


def test_t_interval() -> None:
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == mean - low == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(t_interval([1.0])[1])
