"""Face recognition figures from embeddings: identification, verification and their uncertainty.

Everything here works on plain tensors (CPU is fine) and knows nothing of DSR. A recogniser is
any network called as ``net(images) -> (embedding, activations)`` (EdgeFace's convention);
`embed` and `embed_batches` are the one place that calls it on faces. Then:

- a *gallery* is a matrix of L2-normalised rows, one per enrolled subject (`gallery_means`);
  rows beyond the probes' own subjects are *distractors* (for example the training subjects);
- a *similarity matrix* [N probes, C gallery rows] holds cosine similarities (`similarities`, or
  `leave_one_out_similarities` when each probe's own HR image must not help enrol its subject);
- probe ``labels`` [N] index the gallery row of each probe's true subject.

From a similarity matrix come the guide's identification (`identify`: rank-1/5, the thresholded
accuracy and unknown rate), the `margin` between the own subject and the best other one,
verification over all probe-vs-subject pairs (`verification_metrics`: ROC-AUC, EER, TAR at a
fixed FAR), per-subject accuracy, the most frequent wrong answers and a threshold sweep.
Their 95 % intervals come from `tune_dsr.statistics` (re-exported here: `bootstrap_interval`,
`paired_bootstrap`, `verdict`): test sets are a few hundred probes, where one probe moves
accuracy by several tenths of a point.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tune_dsr.config import GUIDE_THRESHOLD
from tune_dsr.data import to_float
from tune_dsr.statistics import Interval, bootstrap_interval, paired_bootstrap, verdict

__all__ = [
    "Identification",
    "Interval",
    "SubjectAccuracy",
    "ThresholdSweep",
    "WrongAnswer",
    "bootstrap_interval",
    "embed",
    "embed_batches",
    "gallery_means",
    "identify",
    "leave_one_out_similarities",
    "margin",
    "paired_bootstrap",
    "per_subject_accuracy",
    "similarities",
    "subjects_below",
    "threshold_sweep",
    "verdict",
    "verification_metrics_from_similarity",
    "wrong_answers",
]

# The cosine similarity given to a probe's own subject when leave-one-out leaves that subject
# with no image at all: the lowest possible, so the probe counts as not identified.
NOT_ENROLLED = -1.0


# ----------------------------------------------------------------------------- embeddings

def embed(net: nn.Module, images: Tensor) -> Tensor:
    """The recogniser's face embeddings [B, D] (float32) of float images in [0, 1]."""
    return net(images)[0].float()


def embed_batches(embed_fn: Callable[[Tensor], Tensor], batches: Iterable[Tensor],
                  device: torch.device | str,
                  transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Embeddings of uint8 face batches, in order, gathered on the CPU: each batch goes to
    `device` as floats in [0, 1], through `transform` (e.g. bicubic upscaling of VLR faces),
    then `embed_fn` (images -> embeddings, e.g. ``lambda x: embed(net, x)``)."""
    out = []
    for batch in batches:
        images = to_float(batch.to(device))
        out.append(embed_fn(transform(images) if transform else images).float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- galleries

def _check_labels(labels: Tensor, rows: int, what: str = "gallery rows") -> Tensor:
    labels = labels.long().flatten()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= rows):
        raise ValueError(f"labels must index the {rows} {what}, but range over "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def gallery_means(embeddings: Tensor, labels: Tensor, count: int | None = None) -> Tensor:
    """One enrolment row per subject: the L2-normalised mean of its L2-normalised embeddings.

    `labels` [N] gives each embedding's subject in ``0 .. count-1`` (`count` defaults to
    ``max(labels) + 1``). Embeddings are normalised first so that no image weighs more for its
    norm. A subject without embeddings gets a zero row (similarity 0 to every probe). Returns a
    float32 [count, D] on the embeddings' device.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], but got {tuple(embeddings.shape)}")
    count = int(labels.max()) + 1 if count is None and labels.numel() else int(count or 0)
    labels = _check_labels(labels, count, "subjects").to(embeddings.device)
    if labels.numel() != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings but {labels.numel()} labels")
    unit = F.normalize(embeddings.float(), dim=1)
    sums = torch.zeros(count, unit.shape[1], device=unit.device)
    sums.index_add_(0, labels, unit)
    return F.normalize(sums, dim=1)


def similarities(probes: Tensor, gallery: Tensor) -> Tensor:
    """Cosine similarity of every probe embedding [N, D] to every gallery row [C, D]: [N, C]."""
    return F.normalize(probes.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T


def leave_one_out_similarities(probes: Tensor, sources: Tensor, labels: Tensor,
                               count: int | None = None) -> Tensor:
    """Like ``similarities(probes, gallery_means(sources, labels, count))``, except that probe i's
    own subject is enrolled without ``sources[i]`` (its own HR image).

    Without this an HR probe is compared with a mean that contains itself, which flatters the
    upper bound. `sources` [N, D] are aligned with `probes` and `labels`. A subject with a single
    image has nothing left to enrol for its own probe: that similarity is -1 (`NOT_ENROLLED`), so
    the probe counts as not identified. Returns [N, count]; append distractor columns with
    ``torch.cat([loo, similarities(probes, distractors)], 1)``.
    """
    if probes.shape != sources.shape:
        raise ValueError(f"probes {tuple(probes.shape)} and sources {tuple(sources.shape)} must "
                         "be aligned (source i is probe i's own gallery image)")
    count = int(labels.max()) + 1 if count is None else int(count)
    labels = _check_labels(labels, count, "subjects").to(probes.device)
    unit = F.normalize(sources.float(), dim=1)
    sums = torch.zeros(count, unit.shape[1], device=unit.device)
    sums.index_add_(0, labels, unit)
    probe_unit = F.normalize(probes.float(), dim=1)
    sim = probe_unit @ F.normalize(sums, dim=1).T
    own = sums[labels] - unit  # each probe's own subject without its own image
    empty = own.norm(dim=1) < 1e-6
    own_sim = (probe_unit * F.normalize(own, dim=1)).sum(1)
    own_sim = torch.where(empty, torch.full_like(own_sim, NOT_ENROLLED), own_sim)
    return sim.scatter(1, labels[:, None], own_sim[:, None])


# ----------------------------------------------------------------------------- identification

@dataclass(frozen=True)
class Identification:
    """Per-probe answers of closed-set identification on a gallery (all tensors [N], on CPU).

    ``predicted``: the most similar gallery row; ``best``: its similarity; ``rank``: 1-based rank
    of the true subject (ties broken as argmax breaks them, so ``rank == 1`` iff ``right``);
    ``true_similarity``: the similarity to the own subject; ``margin``: own minus the best other
    row; ``threshold``: the guide's acceptance threshold.
    """

    labels: Tensor
    predicted: Tensor
    best: Tensor
    rank: Tensor
    true_similarity: Tensor
    margin: Tensor
    threshold: float

    @property
    def right(self) -> Tensor:
        """The most similar subject is the true one (rank-1 hit, no threshold)."""
        return self.predicted == self.labels

    @property
    def known(self) -> Tensor:
        """The best similarity reaches the threshold (else the answer is "unknown")."""
        return self.best >= self.threshold

    @property
    def correct(self) -> Tensor:
        """The guide's success: right AND known."""
        return self.right & self.known

    def metrics(self) -> dict[str, float]:
        """``rank1``, ``rank5``, ``accuracy`` (right and ≥ threshold), ``unknown_rate`` and
        ``margin`` (mean), each a fraction or a mean over probes."""
        if not len(self.labels):
            raise ValueError("no probes to identify")
        return {"rank1": self.right.float().mean().item(),
                "rank5": (self.rank <= 5).float().mean().item(),
                "accuracy": self.correct.float().mean().item(),
                "unknown_rate": (~self.known).float().mean().item(),
                "margin": self.margin.mean().item()}


# Elements of a similarity matrix handled at once: bounded memory for large galleries (17k probes
# against 16k subjects with distractors is a 1 GB matrix; its masks and copies would be more).
_CHUNK_ELEMENTS = 1 << 22


def _row_chunks(rows: int, columns: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, columns))
    return [slice(start, min(rows, start + step)) for start in range(0, rows, step)]


def margin(similarity: Tensor, labels: Tensor) -> Tensor:
    """Per probe: similarity to its own subject minus the highest similarity to any other gallery
    row (distractors included), [N]. Positive means identified with room to spare; a DSR that
    makes faces look like someone else pushes it below zero even where rank-1 on a small gallery
    still looks fine. Needs at least two gallery rows."""
    if similarity.ndim != 2 or similarity.shape[1] < 2:
        raise ValueError(f"margin needs a [N, C] similarity matrix with C >= 2 gallery rows, but "
                         f"got {tuple(similarity.shape)}")
    labels = _check_labels(labels, similarity.shape[1]).to(similarity.device)
    out = []
    for rows in _row_chunks(*similarity.shape):
        sim, own_row = similarity[rows], labels[rows, None]
        others = sim.scatter(1, own_row, -math.inf)
        out.append(sim.gather(1, own_row).squeeze(1) - others.max(dim=1).values)
    return torch.cat(out)


def identify(similarity: Tensor, labels: Tensor,
             threshold: float = GUIDE_THRESHOLD) -> Identification:
    """Identify each probe as its most similar gallery row ([N, C] similarities, true rows
    `labels` [N]); "unknown" below `threshold` (the guide's 0.35). See `Identification`."""
    if similarity.ndim != 2 or similarity.shape[0] != labels.numel():
        raise ValueError(f"similarity must be [N, C] with N = {labels.numel()} labels, but got "
                         f"{tuple(similarity.shape)}")
    sim = similarity.detach().float().cpu()
    labels = _check_labels(labels.cpu(), sim.shape[1])
    best, predicted = sim.max(dim=1)
    true = sim.gather(1, labels[:, None]).squeeze(1)
    columns = torch.arange(sim.shape[1])
    rank = torch.empty_like(labels)
    for rows in _row_chunks(*sim.shape):
        part, own, row_labels = sim[rows], true[rows, None], labels[rows, None]
        ahead = (part > own) | ((part == own) & (columns[None, :] < row_labels))
        rank[rows] = 1 + ahead.sum(dim=1)
    spare = margin(sim, labels) if sim.shape[1] > 1 else torch.full_like(best, math.nan)
    return Identification(labels=labels, predicted=predicted, best=best, rank=rank,
                          true_similarity=true, margin=spare, threshold=float(threshold))


# ----------------------------------------------------------------------------- verification

class _ImpostorCounts:
    """For each distinct genuine score v_k: how many impostor scores are > v_k and = v_k.

    This is all an exact ROC needs: TAR only changes at genuine scores, and between two of them
    the curve runs flat. Impostor scores arrive in chunks, so they are never all in memory.
    """

    def __init__(self, genuine: Tensor) -> None:
        genuine = genuine.detach().double().flatten().cpu()
        if genuine.numel() == 0:
            raise ValueError("need genuine scores, but got none")
        self.values, self.genuine_counts = torch.unique(genuine, return_counts=True)  # ascending
        self.below = torch.zeros(self.values.numel() + 1, dtype=torch.float64)
        self.equal = torch.zeros(self.values.numel(), dtype=torch.float64)
        self.impostors = 0

    def add(self, impostor: Tensor) -> None:
        x = impostor.detach().double().flatten().cpu()
        if x.numel() == 0:
            return
        lower = torch.searchsorted(self.values, x, right=False)  # genuine values < x
        upper = torch.searchsorted(self.values, x, right=True)  # genuine values <= x
        m = self.values.numel()
        self.below += torch.bincount(lower, minlength=m + 1).double()
        tied = upper > lower
        self.equal += torch.bincount(lower[tied], minlength=m).double()[:m]
        self.impostors += x.numel()

    def roc(self) -> tuple[Tensor, Tensor]:
        if self.impostors == 0:
            raise ValueError("need impostor scores, but got none (a gallery needs two subjects)")
        # below[c]: impostors with exactly c genuine values under them, i.e. above v_0..v_{c-1}.
        above = self.below.flip(0).cumsum(0).flip(0)[1:]  # impostors > v_k
        at_least = above + self.equal  # impostors >= v_k
        order = torch.arange(self.values.numel() - 1, -1, -1)  # strictest threshold first
        tar = self.genuine_counts.double()[order].cumsum(0) / float(self.genuine_counts.sum())
        previous = torch.cat([torch.zeros(1, dtype=torch.float64), tar[:-1]])
        n = float(self.impostors)
        # Per genuine value: Q (impostors above it accepted, TAR unchanged), then P (it and its
        # tied impostors accepted together: a diagonal, which counts a tie as half).
        far = torch.stack([above[order] / n, at_least[order] / n], 1).flatten()
        tars = torch.stack([previous, tar], 1).flatten()
        zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        return torch.cat([zero, far, one]), torch.cat([zero, tars, one])


def roc_curve(genuine: Tensor, impostor: Tensor) -> tuple[Tensor, Tensor]:
    """Exact ROC of the rule "accept if score ≥ t": (far, tar), float64, from t = +inf down.

    Its vertices: a flat run while only impostors pass, then each distinct genuine score with
    its tied impostors (a diagonal: a tie counts half, as in the Mann–Whitney statistic).
    """
    counts = _ImpostorCounts(genuine)
    flat = impostor.detach().flatten()
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        counts.add(flat[start:start + _CHUNK_ELEMENTS])
    return counts.roc()


def _auc(far: Tensor, tar: Tensor) -> float:
    return float(torch.trapezoid(tar, far))


def _eer(far: Tensor, tar: Tensor) -> float:
    gap = 1.0 - tar - far  # FRR − FAR: 1 at the start, −1 at the end, never increasing
    k = int(torch.nonzero(gap <= 0)[0])
    if gap[k] == 0:
        return float(far[k])
    step = (gap[k - 1] / ((far[k] - far[k - 1]) + (tar[k] - tar[k - 1]))).item()
    return float(far[k - 1] + step * (far[k] - far[k - 1]))


def _tar_at(far: Tensor, tar: Tensor, rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"far must lie in [0, 1], but got far={rate}")
    return float(tar[far <= rate * (1 + 1e-12)].max())  # the start point (0, 0) always qualifies


def _far_key(far: float) -> str:
    exponent = math.log10(far) if far > 0 else math.nan
    if math.isfinite(exponent) and abs(exponent - round(exponent)) < 1e-9:
        return f"tar_at_far_1e{round(exponent)}"
    return f"tar_at_far_{far:g}"


def _metrics_from_roc(far: Tensor, tar: Tensor, fars: Sequence[float]) -> dict[str, float]:
    out = {"roc_auc": _auc(far, tar), "eer": _eer(far, tar)}
    for rate in fars:
        out[_far_key(rate)] = _tar_at(far, tar, rate)
    return out


def verification_metrics(genuine: Tensor, impostor: Tensor,
                         fars: Sequence[float] = (1e-2, 1e-3)) -> dict[str, float]:
    """``roc_auc`` (P(genuine > impostor) + ½·P(tie)), ``eer`` (where the false-reject rate meets
    the false-accept rate along the piecewise-linear ROC: exact at a threshold where both are
    equal, else interpolated on the crossing segment) and ``tar_at_far_1e-2``,
    ``tar_at_far_1e-3`` (one per `fars`: the highest true-accept rate of any threshold whose
    false-accept rate is at most that; no interpolation, so with fewer than 1/far impostor scores
    no impostor may be accepted) of genuine and impostor score vectors."""
    return _metrics_from_roc(*roc_curve(genuine, impostor), fars)


def verification_metrics_from_similarity(similarity: Tensor, labels: Tensor,
                                         fars: Sequence[float] = (1e-2, 1e-3)
                                         ) -> dict[str, float]:
    """`verification_metrics` over every probe-vs-gallery-row pair of a [N, C] similarity
    matrix (genuine: the own subject; impostor: all other rows), a block of rows at a time."""
    sim = similarity.detach().float().cpu()
    labels = _check_labels(labels.cpu(), sim.shape[1])
    counts = _ImpostorCounts(sim.gather(1, labels[:, None]))
    for rows in _row_chunks(*sim.shape):
        part = sim[rows]
        own = torch.zeros_like(part, dtype=torch.bool)
        own.scatter_(1, labels[rows, None], True)
        counts.add(part[~own])
    return _metrics_from_roc(*counts.roc(), fars)


# ----------------------------------------------------------------------------- breakdowns

class SubjectAccuracy(NamedTuple):
    subject: str
    accuracy: float
    correct: int
    probes: int


def per_subject_accuracy(correct: Tensor, labels: Tensor,
                         names: Sequence[str]) -> list[SubjectAccuracy]:
    """Accuracy of each subject that has probes, worst first (ties by name); `names` [C] names
    the gallery rows that `labels` index."""
    labels = _check_labels(labels.cpu(), len(names))
    hits = torch.bincount(labels, weights=correct.cpu().double(), minlength=len(names))
    totals = torch.bincount(labels, minlength=len(names))
    rows = [SubjectAccuracy(names[i], hits[i].item() / int(totals[i]), round(hits[i].item()),
                            int(totals[i])) for i in torch.nonzero(totals).flatten().tolist()]
    return sorted(rows, key=lambda row: (row.accuracy, row.subject))


def subjects_below(rows: Sequence[SubjectAccuracy], limit: float = 0.15) -> int:
    """How many subjects have an accuracy under `limit` (15 %: barely ever recognised)."""
    return sum(row.accuracy < limit for row in rows)


@dataclass(frozen=True)
class WrongAnswer:
    """A subject given as the answer for other subjects' probes: ``count`` rank-1 errors, of which
    ``accepted`` passed the threshold; ``sources`` maps true subject → count, most first."""

    predicted: str
    count: int
    accepted: int
    sources: dict[str, int]


def wrong_answers(identification: Identification, names: Sequence[str],
                  top: int = 10) -> list[WrongAnswer]:
    """The most frequent wrong rank-1 answers, by subject name: a subject that many different
    probes turn into is an identity the super-resolution hallucinates."""
    wrong = ~identification.right
    predicted = identification.predicted[wrong].tolist()
    truth = identification.labels[wrong].tolist()
    accepted = identification.known[wrong].tolist()
    counts = Counter(predicted)
    out = []
    for row, count in sorted(counts.items(), key=lambda kv: (-kv[1], names[kv[0]]))[:top]:
        sources = Counter(names[t] for p, t in zip(predicted, truth, strict=True) if p == row)
        taken = sum(a for p, a in zip(predicted, accepted, strict=True) if p == row)
        out.append(WrongAnswer(names[row], count, int(taken),
                               dict(sorted(sources.items(), key=lambda kv: (-kv[1], kv[0])))))
    return out


@dataclass(frozen=True)
class ThresholdSweep:
    """Correct / wrong / unknown counts per threshold; the best threshold has the most correct
    answers, then the fewest wrong ones; of several such thresholds (a run), the middle one."""

    thresholds: list[float]
    correct: list[int]
    wrong: list[int]
    unknown: list[int]
    best_threshold: float
    best_correct: int


def threshold_sweep(best: Tensor, right: Tensor,
                    thresholds: Sequence[float] | Tensor | None = None) -> ThresholdSweep:
    """Sweep the acceptance threshold (default: −1 to 1 in steps of 0.01) over each probe's best
    similarity `best` [N] and whether that answer is the true subject `right` [N]."""
    if thresholds is None:
        steps = torch.arange(-100, 101, dtype=torch.float64) / 100
    else:
        steps = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    best = best.detach().cpu().flatten()
    right = right.detach().cpu().flatten().bool()
    # Compare in the scores' own precision, as `identify` does, so both agree at the boundary.
    known = best[None, :] >= steps.to(best.dtype)[:, None]
    correct = (known & right).sum(1)
    wrong = (known & ~right).sum(1)
    unknown = (~known).sum(1)
    key = correct * (best.numel() + 1) - wrong  # most correct, then fewest wrong
    # Both counts only fall as the threshold rises, so the ties form one run of thresholds: take
    # its middle, the choice that is least at the mercy of one probe's similarity.
    run = torch.nonzero(key == key.max()).flatten()
    pick = int(run[(len(run) - 1) // 2])
    values = [round(float(t), 6) for t in steps]
    return ThresholdSweep(values, correct.tolist(), wrong.tolist(), unknown.tolist(),
                          values[pick], int(correct[pick]))
