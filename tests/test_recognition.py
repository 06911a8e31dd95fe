"""Recognition figures on hand-built embeddings whose answers are known by hand."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import verification_scores
from tune_dsr.recognition import (
    Interval,
    bootstrap_interval,
    gallery_means,
    identify,
    leave_one_out_similarities,
    margin,
    paired_bootstrap,
    per_subject_accuracy,
    similarities,
    subjects_below,
    threshold_sweep,
    verdict,
    verification_metrics,
    verification_metrics_from_similarity,
    wrong_answers,
)


def unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


def probe_with(similarity_row: list[float]) -> torch.Tensor:
    """A probe whose cosine similarity to the basis vector e_j is similarity_row[j] (the rest of
    its unit length goes into an extra, unused axis)."""
    row = torch.tensor(similarity_row, dtype=torch.float64)
    rest = math.sqrt(max(0.0, 1.0 - float(row.pow(2).sum())))
    return torch.cat([row, torch.tensor([rest], dtype=torch.float64)]).float()


# ----------------------------------------------------------------------------- galleries

def test_gallery_means_normalise_then_average():
    # Subject 0: two images along x with very different norms; subject 1: x and y.
    embeddings = torch.tensor([[10.0, 0.0], [0.1, 0.0], [1.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    gallery = gallery_means(embeddings, labels, count=3)
    assert gallery.shape == (3, 2)
    assert torch.allclose(gallery[0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(gallery[1], unit(1.0, 1.0))  # norms do not weigh
    assert torch.equal(gallery[2], torch.zeros(2))  # no images: zero row
    assert torch.allclose(gallery.norm(dim=1)[:2], torch.ones(2))


def test_leave_one_out_leaves_the_probes_own_image_out():
    sources = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])  # subject 2 has a single image
    probes = sources.clone()
    loo = leave_one_out_similarities(probes, sources, labels, count=3)
    plain = similarities(probes, gallery_means(sources, labels, 3))
    # Probe 0 (x) vs subject 0 without itself = y: 0. Probe 1 (y) vs x: 0.
    assert loo[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert loo[1, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert plain[0, 0].item() == pytest.approx(math.sqrt(0.5), abs=1e-6)
    # Other subjects' columns are the plain means.
    assert torch.allclose(loo[0, 1:], plain[0, 1:])
    # Subject 2's only image cannot enrol it for its own probe: -1.
    assert loo[4, 2].item() == -1.0
    with pytest.raises(ValueError, match="aligned"):
        leave_one_out_similarities(probes[:2], sources, labels)


# ----------------------------------------------------------------------------- identification

@pytest.fixture(scope="module")
def known_case():
    """6 subjects on the basis axes; 4 probes with chosen similarities to each subject."""
    gallery = torch.eye(6, 7)
    rows = [
        [0.80, 0.10, 0.00, 0.00, 0.00, 0.00],  # subject 0: right, known, margin 0.70
        [0.30, 0.20, 0.10, 0.00, 0.00, 0.00],  # subject 1: rank 2, wrong (answer 0), margin -0.10
        [0.05, 0.10, 0.25, 0.00, 0.00, 0.00],  # subject 2: right but unknown at 0.35, margin 0.15
        [0.50, 0.45, 0.40, 0.35, 0.30, 0.20],  # subject 5: rank 6, margin -0.30
    ]
    probes = torch.stack([probe_with(r) for r in rows])
    labels = torch.tensor([0, 1, 2, 5])
    return probes, gallery, labels


def test_identify_hand_built(known_case):
    probes, gallery, labels = known_case
    sim = similarities(probes, gallery)
    found = identify(sim, labels, threshold=0.35)
    assert found.predicted.tolist() == [0, 0, 2, 0]
    assert found.rank.tolist() == [1, 2, 1, 6]
    assert found.right.tolist() == [True, False, True, False]
    assert found.known.tolist() == [True, False, False, True]
    assert found.correct.tolist() == [True, False, False, False]
    assert torch.allclose(found.margin, torch.tensor([0.70, -0.10, 0.15, -0.30]), atol=1e-5)
    metrics = identify(sim, labels, 0.35).metrics()
    assert metrics["rank1"] == pytest.approx(0.5)
    assert metrics["rank5"] == pytest.approx(0.75)
    assert metrics["accuracy"] == pytest.approx(0.25)
    assert metrics["unknown_rate"] == pytest.approx(0.5)
    assert metrics["margin"] == pytest.approx((0.70 - 0.10 + 0.15 - 0.30) / 4, abs=1e-5)
    assert torch.allclose(margin(sim, labels), found.margin)


def test_ties_are_broken_like_argmax():
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1]])
    found = identify(sim, torch.tensor([0, 1]))
    assert found.predicted.tolist() == [0, 0]
    assert found.rank.tolist() == [1, 2]  # rank 1 exactly when the answer is right
    assert found.right.tolist() == [True, False]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="C >= 2"):
        margin(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="index"):
        identify(torch.zeros(2, 3), torch.tensor([0, 3]))


# ------------------------------------------------------------------ identity hallucination

def hallucinating_case(val_subjects: int = 5, train_subjects: int = 5, per_subject: int = 4,
                       dim: int = 64, seed: int = 0):
    """Embeddings of a DSR that hallucinates training identities.

    Every subject has its own (near-orthogonal) direction. HR faces sit on their subject's
    direction. The "hallucinating" DSR turns a validation subject's probes mostly into a TRAINING
    subject (0.9 of the direction) with a little of their own (0.3), so among validation subjects
    alone their own is still the nearest. The "faithful" DSR keeps the own direction. Returns
    (hr, hallucinated, faithful, labels, train_gallery).
    """
    generator = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0].T
    val_dirs, train_dirs = directions[:val_subjects], directions[val_subjects:][:train_subjects]
    labels = torch.arange(val_subjects).repeat_interleave(per_subject)
    noise = 0.05 * torch.randn(len(labels), dim, generator=generator)
    hr = val_dirs[labels] + noise
    lookalike = train_dirs[labels % train_subjects]
    hallucinated = 0.9 * lookalike + 0.3 * val_dirs[labels] + noise
    faithful = val_dirs[labels] + 0.3 * noise
    train_gallery = F.normalize(train_dirs, dim=1)
    return hr, hallucinated, faithful, labels, train_gallery


def test_identity_hallucination_shows_in_the_wide_gallery_and_the_margin():
    hr, hallucinated, faithful, labels, train_gallery = hallucinating_case()
    gallery = gallery_means(hr, labels)
    narrow = {name: identify(similarities(emb, gallery), labels, 0.35).metrics()
              for name, emb in (("hallucinated", hallucinated), ("faithful", faithful))}
    wide_gallery = torch.cat([gallery, train_gallery])
    wide = {name: identify(similarities(emb, wide_gallery), labels, 0.35).metrics()
            for name, emb in (("hallucinated", hallucinated), ("faithful", faithful))}
    # On the validation-only gallery both look perfect...
    assert narrow["hallucinated"]["rank1"] == 1.0 and narrow["faithful"]["rank1"] == 1.0
    # ...but with the training subjects as distractors the hallucinating DSR collapses,
    assert wide["hallucinated"]["rank1"] == 0.0
    assert wide["faithful"]["rank1"] == 1.0
    # and its margin is negative, while the faithful one's stays large.
    assert wide["hallucinated"]["margin"] < -0.4
    assert wide["faithful"]["margin"] > 0.8
    # The wrong answers name the training identities it hallucinates.
    names = [f"val{i}" for i in range(5)] + [f"train{i}" for i in range(5)]
    found = identify(similarities(hallucinated, wide_gallery), labels, 0.35)
    answers = wrong_answers(found, names)
    assert {a.predicted for a in answers} == {f"train{i}" for i in range(5)}
    assert all(a.count == 4 and a.accepted == 4 for a in answers)
    assert answers[0].sources == {"val0": 4}


# ----------------------------------------------------------------------------- verification

def roc_auc(genuine, impostor):
    return verification_metrics(genuine, impostor)["roc_auc"]


def equal_error_rate(genuine, impostor):
    return verification_metrics(genuine, impostor)["eer"]


def tar_at_far(genuine, impostor, far):
    metrics = verification_metrics(genuine, impostor, fars=(far,))
    (value,) = [v for k, v in metrics.items() if k.startswith("tar_at_far")]
    return value


# The library's one vector form is verification_metrics; these read one figure each.
GENUINE = torch.tensor([0.9, 0.8, 0.7, 0.4])
IMPOSTOR = torch.tensor([0.6, 0.5, 0.3, 0.2])


def test_verification_by_hand():
    # Pairs genuine > impostor: 4 + 4 + 4 + 2 = 14 of 16.
    assert roc_auc(GENUINE, IMPOSTOR) == pytest.approx(14 / 16)
    # At t = 0.6: FAR 1/4 (0.6 accepted), FRR 1/4 (0.4 rejected).
    assert equal_error_rate(GENUINE, IMPOSTOR) == pytest.approx(0.25)
    # FAR <= 1/4 allows accepting one impostor: t in (0.5, 0.6] accepts 3 of 4 genuine.
    assert tar_at_far(GENUINE, IMPOSTOR, 0.25) == pytest.approx(0.75)
    # FAR <= 1e-2 with 4 impostors allows none: t above 0.6, still 3 of 4 genuine.
    assert tar_at_far(GENUINE, IMPOSTOR, 1e-2) == pytest.approx(0.75)
    assert tar_at_far(GENUINE, IMPOSTOR, 1.0) == 1.0
    metrics = verification_metrics(GENUINE, IMPOSTOR)
    assert set(metrics) == {"roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3"}


def test_verification_ties_and_extremes():
    tied = torch.tensor([0.5, 0.5])
    assert roc_auc(tied, tied) == pytest.approx(0.5)
    assert equal_error_rate(tied, tied) == pytest.approx(0.5)
    assert tar_at_far(tied, tied, 1e-2) == 0.0  # accepting a tie would accept every impostor
    # One tie across classes counts half: genuine [0.7, 0.5] vs impostor [0.5, 0.1].
    assert roc_auc(torch.tensor([0.7, 0.5]), torch.tensor([0.5, 0.1])) == pytest.approx(3.5 / 4)
    separated = (torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2, 0.3]))
    assert roc_auc(*separated) == 1.0 and equal_error_rate(*separated) == 0.0
    assert tar_at_far(*separated, 1e-3) == 1.0
    reversed_ = (torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9]))
    assert roc_auc(*reversed_) == 0.0 and equal_error_rate(*reversed_) == 1.0
    # EER exact where FRR = FAR at a threshold: genuine [0.9, 0.3], impostor [0.5, 0.1];
    # ROC (0,0) (0,.5) (.5,.5) (.5,1): at t = 0.5 both are 1/2.
    assert equal_error_rate(torch.tensor([0.9, 0.3]), torch.tensor([0.5, 0.1])) == 0.5
    # Otherwise interpolated on the crossing segment: ROC (0,1/3) -> (1,1/3) meets FRR = FAR
    # (FRR is 2/3 along it) at FAR 2/3.
    assert equal_error_rate(torch.tensor([0.9, 0.4, 0.3]), torch.tensor([0.5])) == \
        pytest.approx(2 / 3)


def test_verification_scores_split_genuine_and_impostor():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.4]])
    genuine, impostor = verification_scores(sim, torch.tensor([0, 1]))
    assert sorted(genuine.tolist()) == pytest.approx([0.8, 0.9])
    assert sorted(impostor.tolist()) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="two subjects"):
        roc_auc(genuine, torch.tensor([]))


def test_large_galleries_are_done_in_blocks_with_the_same_answers(monkeypatch):
    from tune_dsr import recognition

    generator = torch.Generator().manual_seed(4)
    sim = torch.rand(40, 30, generator=generator).round(decimals=2)  # many ties
    labels = torch.randint(30, (40,), generator=generator)
    whole = identify(sim, labels)
    scores = verification_scores(sim, labels)
    expected = verification_metrics(*scores)
    assert verification_metrics_from_similarity(sim, labels) == expected
    monkeypatch.setattr(recognition, "_CHUNK_ELEMENTS", 7)  # blocks of a row or less
    blocked = identify(sim, labels)
    for name in ("predicted", "best", "rank", "true_similarity", "margin"):
        assert torch.equal(getattr(blocked, name), getattr(whole, name)), name
    assert verification_metrics_from_similarity(sim, labels) == pytest.approx(expected)
    assert verification_metrics(*scores) == pytest.approx(expected)
    # Against brute force over every pair and every threshold.
    genuine, impostor = scores
    pairs = genuine[:, None] - impostor[None, :]
    assert expected["roc_auc"] == pytest.approx(
        ((pairs > 0).double() + 0.5 * (pairs == 0).double()).mean().item())
    for rate in (0.05, 0.01):
        thresholds = torch.cat([torch.unique(sim.flatten()), torch.tensor([math.inf])])
        far = (impostor[None, :] >= thresholds[:, None]).double().mean(1)
        tar = (genuine[None, :] >= thresholds[:, None]).double().mean(1)
        assert tar_at_far(genuine, impostor, rate) == tar[far <= rate].max().item()


# ----------------------------------------------------------------------------- bootstrap

def test_bootstrap_interval_contains_the_estimate_and_narrows():
    generator = torch.Generator().manual_seed(1)
    small = (torch.rand(50, generator=generator) < 0.6).float()
    large = (torch.rand(5000, generator=generator) < 0.6).float()
    a, b = bootstrap_interval(small), bootstrap_interval(large)
    for interval, values in ((a, small), (b, large)):
        assert interval.estimate == pytest.approx(values.mean().item())
        assert interval.low <= interval.estimate <= interval.high
    assert (b.high - b.low) < (a.high - a.low) / 5
    # Seeded: the same call gives the same interval.
    assert bootstrap_interval(small, seed=3) == bootstrap_interval(small, seed=3)


def test_paired_bootstrap():
    generator = torch.Generator().manual_seed(2)
    hits = (torch.rand(300, generator=generator) < 0.5).float()
    assert paired_bootstrap(hits, hits) == Interval(0.0, 0.0, 0.0)
    assert verdict(paired_bootstrap(hits, hits)) == "no clear difference"
    better = hits.clone()
    better[hits == 0] = (torch.rand(int((hits == 0).sum()), generator=generator) < 0.5).float()
    difference = paired_bootstrap(better, hits)
    assert difference.estimate == pytest.approx((better - hits).mean().item())
    assert verdict(difference) == "better" and verdict(paired_bootstrap(hits, better)) == "worse"


def test_bootstrap_is_fast():
    values = (torch.rand(20000) < 0.4).float()
    started = time.perf_counter()
    bootstrap_interval(values, resamples=2000)
    assert time.perf_counter() - started < 5.0


# ----------------------------------------------------------------------------- breakdowns

def test_per_subject_accuracy_and_sweep():
    names = ["a", "b", "c", "d"]
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    correct = torch.tensor([1, 1, 0, 0, 0, 1, 0, 0, 0]).bool()
    rows = per_subject_accuracy(correct, labels, names)
    assert [(r.subject, r.correct, r.probes) for r in rows] == [("b", 0, 2), ("c", 1, 4),
                                                                 ("a", 2, 3)]
    assert rows[1].accuracy == pytest.approx(0.25)
    assert subjects_below(rows) == 1 and subjects_below(rows, 0.3) == 2

    best = torch.tensor([0.9, 0.6, 0.5, 0.4, 0.2])
    right = torch.tensor([True, True, False, True, False])
    sweep = threshold_sweep(best, right, [0.0, 0.3, 0.45, 0.55, 0.7, 1.0])
    assert sweep.correct == [3, 3, 2, 2, 1, 0]
    assert sweep.wrong == [2, 1, 1, 0, 0, 0]
    assert sweep.unknown == [0, 1, 2, 3, 4, 5]
    assert (sweep.best_threshold, sweep.best_correct) == (0.3, 3)  # most right, fewest wrong
    full = threshold_sweep(best, right)
    assert len(full.thresholds) == 201 and full.thresholds[0] == -1.0 and full.thresholds[-1] == 1.0
    # Most right (3) and fewest wrong (1) for t in (0.2, 0.4]: the middle of 0.21 .. 0.40.
    assert full.best_threshold == pytest.approx(0.30) and full.best_correct == 3
    # The sweep agrees with identify at the guide's threshold.
    assert full.correct[full.thresholds.index(0.35)] == 3
