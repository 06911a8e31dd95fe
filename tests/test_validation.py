"""Recognition in the loop: the wide gallery and the margin catch identity hallucination."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import memory_faces
from tune_dsr.data import PairedFaces
from tune_dsr.statistics import paired_half_width
from tune_dsr.training.validation import (
    ValidationGallery,
    bicubic_upscale,
    soft_rank1,
)

DIM = 8
VAL_SUBJECTS, TRAIN_SUBJECTS = ["0100", "0101"], ["0000", "0001", "0002"]


def _axes(*weights: tuple[int, float]) -> torch.Tensor:
    vector = torch.zeros(DIM)
    for axis, weight in weights:
        vector[axis] = weight
    return F.normalize(vector, dim=0)


@pytest.fixture
def constructed_gallery() -> ValidationGallery:
    """Validation subjects on axes 0 and 1, training subjects on axes 2, 3 and 4; four probes,
    two per validation subject."""
    own = torch.stack([_axes((0, 1.0)), _axes((1, 1.0))])
    training = torch.stack([_axes((2, 1.0)), _axes((3, 1.0)), _axes((4, 1.0))])
    labels = torch.tensor([0, 0, 1, 1])
    bicubic_margins = torch.full((4,), 0.05)
    return ValidationGallery(own, torch.cat([own, training]), labels,
                             (*VAL_SUBJECTS, *TRAIN_SUBJECTS), 0.35,
                             {"rank1": 0.5, "accuracy": 0.5, "unknown_rate": 0.0,
                              "rank1_full": 0.5, "margin": 0.05,
                              "soft_rank1": soft_rank1(bicubic_margins).mean().item()},
                             {"rank1_full": torch.tensor([1.0, 0.0, 1.0, 0.0]),
                              "margin": bicubic_margins, "soft_rank1": soft_rank1(bicubic_margins)})


def test_a_dsr_that_copies_training_identities_is_caught(constructed_gallery):
    """Faithful probes sit on their own subject's axis (plus a neutral axis 7); hallucinating
    ones keep some of their own subject but lean towards a training subject (axes 2, 3)."""
    faithful = torch.stack([_axes((0, 0.8), (7, 0.2)), _axes((0, 0.8), (7, 0.3)),
                            _axes((1, 0.8), (7, 0.2)), _axes((1, 0.8), (7, 0.3))])
    hallucinating = torch.stack([_axes((0, 0.5), (2, 0.8)), _axes((0, 0.5), (3, 0.8)),
                                 _axes((1, 0.5), (2, 0.8)), _axes((1, 0.5), (3, 0.8))])
    honest = constructed_gallery.report(faithful)
    copied = constructed_gallery.report(hallucinating)
    # On the validation subjects alone (the guide's gallery) both look perfect ...
    assert honest["val_rank1"] == copied["val_rank1"] == 1.0
    assert honest["val_accuracy"] == copied["val_accuracy"] == 1.0
    # ... with the training subjects in the gallery, the copier identifies no one,
    assert honest["val_rank1_full"] == 1.0 and copied["val_rank1_full"] == 0.0
    # and its margin is negative: every probe is closer to a training subject than to its own.
    assert honest["val_margin"] > 0.9 and copied["val_margin"] < -0.3
    own, other = 0.5 / (0.5**2 + 0.8**2) ** 0.5, 0.8 / (0.5**2 + 0.8**2) ** 0.5
    assert copied["val_margin"] == pytest.approx(own - other, abs=1e-6)
    # The gains say whether DSR beats bicubic (rank-1 0.5, margin 0.05 here).
    assert copied["val_rank1_full_gain"] == pytest.approx(-0.5)
    assert honest["val_margin_gain"] == pytest.approx(honest["val_margin"] - 0.05)
    assert copied["val_bicubic_margin"] == 0.05


def test_gains_come_with_paired_intervals_and_a_soft_rank1(constructed_gallery):
    """Each gain over bicubic has the 95 % half-width of its paired differences, persons as the
    draws; the soft rank-1 is the mean of sigmoid(margin / 0.05) and rises and falls with
    rank-1."""
    faithful = torch.stack([_axes((0, 0.8), (7, 0.2)), _axes((0, 0.8), (7, 0.3)),
                            _axes((1, 0.8), (7, 0.2)), _axes((1, 0.8), (7, 0.3))])
    report = constructed_gallery.report(faithful)
    # Rank-1 differences per probe: [0, 1, 0, 1] (bicubic missed probes 2 and 4).
    differences = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert report["val_rank1_full_gain"] == pytest.approx(0.5)
    # Each of the two persons gained exactly one of its two probes: between persons the gain
    # does not vary, so the person-level half-width is 0, where treating the four faces as
    # independent would give 1.96 s / 2.
    assert report["val_rank1_full_gain_ci"] == pytest.approx(0.0, abs=1e-12)
    assert paired_half_width(differences) == pytest.approx(1.959964 * differences.std().item()
                                                           / 2)
    # The margins differ within a person, and the two persons' pairs are alike: again no
    # spread between persons.
    assert report["val_margin_gain_ci"] == pytest.approx(0.0, abs=1e-9)
    # Every faithful probe is identified with a margin near 0.95: soft rank-1 close to 1.
    assert report["val_soft_rank1"] > 0.99 and report["val_soft_rank1_gain"] > 0
    assert soft_rank1(torch.tensor([0.0])).item() == 0.5
    assert soft_rank1(torch.tensor([0.1])).item() == pytest.approx(0.8808, abs=1e-4)
    assert math.isnan(paired_half_width(torch.tensor([0.3])))  # one probe: spread unknown


def _embed_with(net):
    return lambda images: net(images)[0]


def test_build_enrols_training_subjects_and_measures_bicubic(memory_sets, boring_nets):
    train, val = memory_sets
    identity_net, _ = boring_nets
    gallery = ValidationGallery.build(_embed_with(identity_net), train, val, 0.35,
                                      torch.device("cpu"), batch=4)
    assert gallery.own.shape == (2, 16) and gallery.full.shape == (2 + 6, 16)
    assert gallery.names == (*val.unique_subjects, *train.unique_subjects)
    assert gallery.distractors == 6 and torch.equal(gallery.labels, val.subject_index)
    assert torch.allclose(gallery.full.norm(dim=1), torch.ones(8))
    # bicubic's figures are those of the bicubic faces, measured on the same galleries
    bicubic = bicubic_upscale(val.vlr.float() / 255, val.hr_size)
    measured = gallery.report(identity_net(bicubic)[0])
    assert {f"val_{k}": v for k, v in gallery.bicubic.items()} == pytest.approx(
        {f"val_{k}": measured[f"val_{k}"] for k in gallery.bicubic})
    assert measured["val_margin_gain"] == pytest.approx(0.0, abs=1e-6)  # bicubic vs itself
    # The HR faces, which enrolled their own subjects, are all identified: the upper bound.
    assert gallery.report(identity_net(val.hr.float() / 255)[0])["val_rank1_full"] == 1.0


def test_a_subject_in_both_splits_is_not_a_distractor(memory_sets, boring_nets, caplog):
    train, val = memory_sets
    leaky = memory_faces([*train.unique_subjects, val.unique_subjects[0]], 3, seed=0)
    identity_net, _ = boring_nets
    with caplog.at_level(logging.WARNING, logger="tune_dsr.training.validation"):
        gallery = ValidationGallery.build(_embed_with(identity_net), leaky, val, 0.35,
                                          torch.device("cpu"))
    assert gallery.distractors == len(train.unique_subjects)  # the shared subject left out
    assert "appear in both the training and the validation split" in caplog.text


def test_one_subject_and_no_distractor_is_refused(boring_nets):
    from tune_dsr.errors import ConfigError

    one = memory_faces(["0100"], 2)
    same: PairedFaces = memory_faces(["0100"], 2, seed=3)
    with pytest.raises(ConfigError, match="at least two subjects"):
        ValidationGallery.build(_embed_with(boring_nets[0]), same, one, 0.35,
                                torch.device("cpu"))
