"""Recognition on the validation subjects, measured so that it cannot be fooled.

An identity loss can teach DSR to pull an unseen face towards the identities it trained on. On a
gallery of the validation subjects alone that goes unseen (the face is still closer to its own
subject than to the few other validation subjects), so the gallery here also holds every
training subject as a distractor, and the margin (own-subject similarity minus the best other
one) falls as soon as a face drifts towards anyone else. Bicubic upscaling of the same faces,
measured once on the same galleries, says whether DSR beats doing nothing.

All of it is computed once per run with the frozen recogniser (the galleries and bicubic's
figures); per epoch only the SR embeddings that validation computes anyway are compared with
the galleries, a few matrix products.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tune_dsr.data import PairedFaces, bicubic_upscale
from tune_dsr.errors import ConfigError
from tune_dsr.recognition import embed_batches, gallery_means, identify, similarities
from tune_dsr.statistics import paired_half_width

__all__ = [
    "DISTRACTOR_IMAGES_PER_SUBJECT",
    "SOFT_RANK1_TEMPERATURE",
    "Embed",
    "ValidationGallery",
    "distractor_rows",
    "soft_rank1",
]

logger = logging.getLogger(__name__)

# Training images per subject that enrol it as a distractor: enough for a stable mean, and a cap
# on the one-off cost for large training sets.
DISTRACTOR_IMAGES_PER_SUBJECT = 8

# Soft rank-1: each probe counts sigmoid(margin / T) instead of margin > 0. At T = 0.05 a probe
# identified by a cosine margin of 0.1 counts 0.88, one lost by 0.1 counts 0.12: it moves with
# every probe like the margin, but saturates like rank-1, so a few faces pushed far past the
# decision do not outweigh many near it (docs/results.md measures which signal predicts test
# rank-1).
SOFT_RANK1_TEMPERATURE = 0.05


def soft_rank1(margins: Tensor) -> Tensor:
    """Per probe: sigmoid(margin / `SOFT_RANK1_TEMPERATURE`), a smooth stand-in for a rank-1 hit."""
    return torch.sigmoid(margins / SOFT_RANK1_TEMPERATURE)


Embed = Callable[[Tensor], Tensor]  # float images in [0, 1] on the device -> embeddings [B, D]


def distractor_rows(train_set: PairedFaces, val_subjects: set[str]
                     ) -> tuple[Tensor, Tensor, list[str]]:
    """Indices of the training images that enrol distractors, their rows, and the subjects.

    Training subjects that also appear in validation are left out: they are not distractors but
    the same people, and the splits should be by subject (a warning says so).
    """
    shared = sorted(val_subjects & set(train_set.unique_subjects))
    if shared:
        logger.warning("%d subject(s) appear in both the training and the validation split (%s): "
                       "the splits should be by subject; they are left out of the distractors",
                       len(shared), ", ".join(shared[:5]))
    kept = [s for s in train_set.unique_subjects if s not in val_subjects]
    row_of = {subject: row for row, subject in enumerate(kept)}
    taken: dict[str, int] = {}
    indices, rows = [], []
    for index, subject in enumerate(train_set.subjects):
        if subject in row_of and taken.get(subject, 0) < DISTRACTOR_IMAGES_PER_SUBJECT:
            taken[subject] = taken.get(subject, 0) + 1
            indices.append(index)
            rows.append(row_of[subject])
    return torch.tensor(indices, dtype=torch.long), torch.tensor(rows, dtype=torch.long), kept


@dataclass(frozen=True)
class ValidationGallery:
    """The two galleries of a run and bicubic's figures on them.

    ``own`` holds one row per validation subject (the guide's gallery); ``full`` the same rows
    followed by one per training subject. ``labels`` [N] is each validation image's subject row
    in both; ``names`` the subject of each row of ``full``.
    """

    own: Tensor
    full: Tensor
    labels: Tensor
    names: tuple[str, ...]
    threshold: float
    bicubic: dict[str, float]
    # Bicubic's per-probe figures on the full gallery, for the paired gains' intervals.
    bicubic_probes: dict[str, Tensor]

    @classmethod
    def build(cls, embed: Embed, train_set: PairedFaces, val_set: PairedFaces,
              threshold: float, device: torch.device, batch: int = 64) -> ValidationGallery:
        """Enrol the subjects from their HR images and measure bicubic (once per run)."""
        labels = val_set.subject_index
        own = gallery_means(embed_batches(embed, val_set.hr.split(batch), device), labels,
                            len(val_set.unique_subjects))
        indices, rows, kept = distractor_rows(train_set, set(val_set.unique_subjects))
        enrolled = train_set.hr[indices].split(batch)
        distractors = (gallery_means(embed_batches(embed, enrolled, device), rows, len(kept))
                       if kept else own.new_zeros(0, own.shape[1]))
        full = torch.cat([own, distractors])
        if full.shape[0] < 2:
            raise ConfigError("recognition needs at least two subjects to tell apart: the "
                              "validation split holds one subject and the training split no "
                              "other; use splits by subject with several subjects each")
        names = (*val_set.unique_subjects, *kept)
        gallery = cls(own.cpu(), full.cpu(), labels.cpu(), names, threshold, {}, {})
        bicubic = embed_batches(embed, val_set.vlr.split(batch), device,
                                lambda vlr: bicubic_upscale(vlr, val_set.hr_size))
        figures, probes = gallery._measure(bicubic)
        return cls(gallery.own, gallery.full, gallery.labels, names, threshold, figures, probes)

    @property
    def distractors(self) -> int:
        return int(self.full.shape[0] - self.own.shape[0])

    def _measure(self, embeddings: Tensor) -> tuple[dict[str, float], dict[str, Tensor]]:
        """``rank1``, ``accuracy``, ``unknown_rate`` (own gallery, the guide's protocol),
        ``rank1_full``, ``margin`` and ``soft_rank1`` (full gallery) of probe `embeddings`, and
        the per-probe values behind the full-gallery ones."""
        embeddings = embeddings.detach().float().cpu()
        guide = identify(similarities(embeddings, self.own), self.labels, self.threshold)
        wide = identify(similarities(embeddings, self.full), self.labels, self.threshold)
        own_metrics = guide.metrics()
        probes = {"rank1_full": wide.right.float(), "margin": wide.margin,
                  "soft_rank1": soft_rank1(wide.margin)}
        figures = {"rank1": own_metrics["rank1"], "accuracy": own_metrics["accuracy"],
                   "unknown_rate": own_metrics["unknown_rate"],
                   **{name: values.mean().item() for name, values in probes.items()}}
        return figures, probes

    def report(self, embeddings: Tensor) -> dict[str, float]:
        """The validation metrics of an epoch: DSR's, bicubic's and DSR's gains over bicubic,
        each gain with the 95 % half-width of its paired per-probe difference, clustered by
        person (``..._ci``)."""
        found, probes = self._measure(embeddings)
        out = {f"val_{name}": value for name, value in found.items()}
        out.update({f"val_bicubic_{name}": value for name, value in self.bicubic.items()})
        for name, values in probes.items():
            difference = values - self.bicubic_probes[name]
            out[f"val_{name}_gain"] = difference.mean().item()
            # Persons, not faces, are the independent draws (a person's faces agree).
            out[f"val_{name}_gain_ci"] = paired_half_width(difference, self.labels)
        return out
