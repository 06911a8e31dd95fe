"""Face recognition after super-resolution, as the field reports it, against bicubic upscaling.

Each probe is a VLR face; every method turns it into a 112x112 face: HR (the real face, the upper
bound), bicubic (the do-nothing baseline) and each DSR. Each recogniser embeds the result and it
is identified against a gallery that holds each subject's mean HR embedding:

- protocol "guide": the gallery holds the probe set's own subjects (the training guide's test);
- protocol "wide": it also holds distractor subjects (by default the training and validation
  subjects beside the probe set), so a DSR that turns faces into training identities is caught.

Per method: rank-1, rank-5, the guide's accuracy and unknown rate at a threshold, the margin to
the best other subject, verification ROC-AUC / EER / TAR@FAR, PSNR and SSIM; 95 % bootstrap
intervals that resample persons (all of a person's probes together: LFW has up to six per
person, and they are not independent), paired differences against bicubic, per-subject
accuracy, the most frequent wrong answers and, on request, a threshold sweep. Recognisers after
the first are held out: a gain that only the recogniser DSR was trained against sees is
overfitting.

`evaluate_dsrs` takes loaded networks and data and returns a JSON-ready report
(`tune_dsr.evaluation.report` prints it).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tune_dsr.config import GUIDE_THRESHOLD
from tune_dsr.errors import CheckpointError, ConfigError
from tune_dsr.evaluation.probes import DistractorFaces, check_distractors

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from tune_dsr.data import PairedFaces

__all__ = ["BICUBIC", "HELD_OUT", "HR", "PROTOCOLS", "TRAINED_AGAINST", "UNDER",
           "check_threshold", "evaluate_dsrs"]

logger = logging.getLogger(__name__)

REPORT_FORMAT = "tune_dsr.evaluation/1"
PROTOCOLS = ("guide", "wide")
HR, BICUBIC = "HR", "bicubic"
TRAINED_AGAINST, HELD_OUT = "trained against", "held-out"
UNDER = 0.15
# What the bootstrap draws: whole persons, so a person's several probes count as one draw.
RESAMPLED = "persons"  # a subject below 15 % accuracy is "barely ever recognised"
# One row per probe x method x recogniser x protocol (``per_probe``), in this column order.
PROBE_FIELDS = ("probe", "subject", "method", "recogniser", "protocol", "predicted",
                "similarity", "correct", "rank", "margin", "psnr", "ssim")


def check_threshold(threshold: float) -> float:
    """The acceptance threshold must be a cosine similarity: a number in [-1, 1]."""
    if not isinstance(threshold, (int, float)) or not -1.0 <= float(threshold) <= 1.0:
        raise ConfigError(
            f"--threshold {threshold} is outside [-1, 1]: it is compared with a cosine "
            "similarity, which lies in [-1, 1], so every face (or none) would pass. Use the "
            f"guide's {GUIDE_THRESHOLD:g}, or the best threshold that --sweep reports.")
    return float(threshold)


@dataclass
class _ProbeOutputs:
    embeddings: dict[str, dict[str, Tensor]]  # method -> recogniser -> [N, D]
    psnr: dict[str, Tensor | None]
    ssim: dict[str, Tensor | None]
    seconds: float


def _run_probes(data: PairedFaces, dsrs: Mapping[str, nn.Module],
                recognisers: Mapping[str, nn.Module], batch_size: int,
                device: torch.device) -> _ProbeOutputs:
    """Every method on every probe, and every recogniser on every result, batch by batch (the
    super-resolved faces are never all held in memory)."""
    import torch

    from tune_dsr.data import bicubic_upscale, to_float
    from tune_dsr.quality import psnr, ssim
    from tune_dsr.recognition import embed

    methods = [HR, BICUBIC, *dsrs]
    embeddings: dict[str, dict[str, list[Tensor]]] = {m: {r: [] for r in recognisers}
                                                      for m in methods}
    quality: dict[str, list[Tensor]] = {m: [] for m in methods[1:]}
    structure: dict[str, list[Tensor]] = {m: [] for m in methods[1:]}
    started = time.perf_counter()
    with torch.no_grad():
        for index in torch.arange(len(data)).split(batch_size):
            vlr = to_float(data.vlr[index].to(device))
            hr = to_float(data.hr[index].to(device))
            faces = {HR: hr, BICUBIC: bicubic_upscale(vlr, data.hr_size)}
            for name, net in dsrs.items():
                faces[name] = net(vlr).float()
                if not torch.isfinite(faces[name]).all():
                    raise CheckpointError(f"DSR {name} produced NaN or infinite pixels; its "
                                          "weights are broken: use another checkpoint")
            for method, images in faces.items():
                if method != HR:
                    quality[method].append(psnr(images, hr).cpu())
                    structure[method].append(ssim(images, hr).cpu())
                for name, net in recognisers.items():
                    embeddings[method][name].append(embed(net, images).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return _ProbeOutputs(
        {m: {r: torch.cat(v) for r, v in by_rec.items()} for m, by_rec in embeddings.items()},
        {HR: None, **{m: torch.cat(v) for m, v in quality.items()}},
        {HR: None, **{m: torch.cat(v) for m, v in structure.items()}}, seconds)


def _distractor_gallery(distractors: Sequence[DistractorFaces],
                        recognisers: Mapping[str, nn.Module], batch_size: int,
                        device: torch.device
                        ) -> tuple[list[str], dict[str, Tensor]]:
    """Distractor subject names (sorted, merged across folders) and, per recogniser, their
    gallery rows (mean HR embedding per subject)."""
    import torch

    from tune_dsr.recognition import embed, embed_batches, gallery_means

    names = sorted({s for faces in distractors for s in faces.subjects})
    lookup = {name: i for i, name in enumerate(names)}
    labels = torch.tensor([lookup[s] for faces in distractors for s in faces.subjects],
                          dtype=torch.long)
    rows = {}
    with torch.no_grad():
        for name, net in recognisers.items():
            embeddings = torch.cat([embed_batches(functools.partial(embed, net),
                                                  faces.batches(batch_size), device)
                                    for faces in distractors])
            rows[name] = gallery_means(embeddings, labels, len(names))
    return names, rows


def _interval(values: Tensor, resamples: int, seed: int, groups: Tensor | None) -> list[float]:
    from tune_dsr.statistics import bootstrap_interval

    found = bootstrap_interval(values.float(), resamples=resamples, seed=seed, groups=groups)
    return [found.low, found.high]


def _mean(values: Tensor | None) -> float | None:
    return None if values is None else float(values.double().mean())


def evaluate_dsrs(data: PairedFaces, dsrs: Mapping[str, nn.Module],
             recognisers: Mapping[str, nn.Module], *,
             distractors: Sequence[DistractorFaces] | None = None,
             threshold: float = GUIDE_THRESHOLD,
             leave_one_out: bool = False, sweep: bool = False, batch_size: int = 32,
             device: str | torch.device = "cpu", resamples: int = 2000, seed: int = 0,
             per_probe: bool = False, method_info: Mapping[str, Mapping[str, Any]] | None = None,
             dataset_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate HR, bicubic and each DSR on `data`'s probes with each recogniser.

    `dsrs` maps a display name to a network (VLR [B,3,s,s] in [0,1] → [B,3,H,H]); `recognisers`
    maps a name to an EdgeFace-like network (images → (embedding, activations)); the first is
    the one the DSRs were trained against, the others are held out. `distractors`: HR faces of
    other subjects for the "wide" protocol (None or empty: the wide protocol is skipped). The
    networks must already be on `device`, in eval mode. Returns a JSON-ready dict
    (`format_report` prints it); with `per_probe`, its ``"probes"`` entry holds one row per
    probe × method × recogniser × protocol.
    """
    import torch

    from tune_dsr import recognition as rec
    from tune_dsr.statistics import paired_bootstrap

    threshold = check_threshold(threshold)
    if batch_size < 1 or resamples < 1:
        raise ConfigError(f"batch_size and resamples must be >= 1, but got batch_size="
                          f"{batch_size}, resamples={resamples}")
    if not recognisers:
        raise ConfigError("evaluate needs at least one recogniser")
    device = torch.device(device)
    distractors = list(distractors or [])
    check_distractors(data, distractors)
    methods = [HR, BICUBIC, *dsrs]
    if len(set(methods)) != len(methods):
        raise ConfigError(f"method names must be unique and not {HR!r}/{BICUBIC!r}, but got "
                          f"{list(dsrs)}")

    outputs = _run_probes(data, dsrs, recognisers, batch_size, device)
    logger.info("ran %d methods x %d recognisers on %d probes in %.1f s", len(methods),
                len(recognisers), len(data), outputs.seconds)
    distractor_names: list[str] = []
    distractor_rows: dict[str, Tensor] = {}
    if distractors:
        distractor_names, distractor_rows = _distractor_gallery(distractors, recognisers,
                                                                batch_size, device)

    labels = data.subject_index
    count = len(data.unique_subjects)
    protocols: dict[str, dict[str, Any]] = {
        "guide": {"gallery_subjects": count, "distractor_subjects": 0, "skipped": None},
        "wide": {"gallery_subjects": count + len(distractor_names),
                 "distractor_subjects": len(distractor_names),
                 "distractor_sources": [faces.source for faces in distractors],
                 "skipped": None if distractors else
                 "no distractor subjects: pass --distractor-dir, or evaluate a split that sits "
                 "beside train_processed/ and val_processed/"},
    }
    info = dict(method_info or {})
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "dataset": {"probes": len(data), "subjects": count, "vlr_size": data.vlr_size,
                    "hr_size": data.hr_size, "path": data.split_dir, **(dataset_info or {})},
        "settings": {"threshold": threshold, "leave_one_out": leave_one_out,
                     "resamples": resamples, "seed": seed, "level": 0.95,
                     "resampled": RESAMPLED},
        "methods": [{"name": HR, "kind": "hr"}, {"name": BICUBIC, "kind": "bicubic"}]
        + [{"name": name, "kind": "dsr", **info.get(name, {})} for name in dsrs],
        "recognisers": [{"name": name, "role": TRAINED_AGAINST if i == 0 else HELD_OUT}
                        for i, name in enumerate(recognisers)],
        "protocols": protocols,
        "quality": {m: {"psnr": _mean(outputs.psnr[m]), "ssim": _mean(outputs.ssim[m])}
                    for m in methods},
        "results": [],
        "speed": {"device": str(device), "probes": len(data), "seconds": outputs.seconds,
                  "probes_per_second": len(data) / max(outputs.seconds, 1e-9),
                  "methods": len(methods), "recognisers": len(recognisers)},
    }
    rows: list[dict[str, Any]] = []
    for r_index, recogniser in enumerate(recognisers):
        hr_embeddings = outputs.embeddings[HR][recogniser]
        gallery = rec.gallery_means(hr_embeddings, labels, count)
        if leave_one_out:
            lone = int((torch.bincount(labels, minlength=count) == 1).sum())
            if lone:
                logger.warning("leave-one-out: %d subjects have a single image, so their probes "
                               "cannot be identified (counted as wrong for every method)", lone)
        for protocol in PROTOCOLS:
            if protocols[protocol]["skipped"]:
                continue
            names = list(data.unique_subjects)
            extra = None
            if protocol == "wide":
                names += distractor_names
                extra = distractor_rows[recogniser]
            block: dict[str, Any] = {
                "recogniser": recogniser,
                "role": TRAINED_AGAINST if r_index == 0 else HELD_OUT,
                "protocol": protocol, "gallery_subjects": len(names), "methods": {}}
            found_by_method: dict[str, rec.Identification] = {}
            for method in methods:
                probes = outputs.embeddings[method][recogniser]
                if leave_one_out:
                    sim = rec.leave_one_out_similarities(probes, hr_embeddings, labels, count)
                else:
                    sim = rec.similarities(probes, gallery)
                if extra is not None:
                    sim = torch.cat([sim, rec.similarities(probes, extra)], dim=1)
                found = rec.identify(sim, labels, threshold)
                found_by_method[method] = found
                subjects = rec.per_subject_accuracy(found.correct, labels, names)
                entry: dict[str, Any] = dict(found.metrics())
                # Persons resampled (a person's probes together); the probe-level interval of
                # rank-1 beside it, comparable with reports that assumed independent faces.
                entry["rank1_ci"] = _interval(found.right, resamples, seed, labels)
                entry["accuracy_ci"] = _interval(found.correct, resamples, seed, labels)
                entry["rank1_ci_probes"] = _interval(found.right, resamples, seed, None)
                entry.update(rec.verification_metrics_from_similarity(sim, labels))
                entry.update(report["quality"][method])
                entry["per_subject"] = [s._asdict() for s in subjects]
                entry["subjects_under_15"] = rec.subjects_below(subjects, UNDER)
                entry["wrong_answers"] = [vars(w) for w in rec.wrong_answers(found, names, 10)]
                if sweep:
                    entry["sweep"] = vars(rec.threshold_sweep(found.best, found.right))
                block["methods"][method] = entry
                if per_probe:
                    rows += _probe_rows(data, method, recogniser, protocol, found, names,
                                        outputs)
            for method in dsrs:
                versus = {}
                for metric, attribute in (("rank1", "right"), ("accuracy", "correct")):
                    diff = paired_bootstrap(getattr(found_by_method[method], attribute),
                                            getattr(found_by_method[BICUBIC], attribute),
                                            resamples=resamples, seed=seed, groups=labels)
                    versus[metric] = {"difference": diff.estimate, "low": diff.low,
                                      "high": diff.high, "verdict": rec.verdict(diff)}
                block["methods"][method]["vs_bicubic"] = versus
            report["results"].append(block)
    if per_probe:
        report["probes"] = rows
    return report


def _probe_rows(data: PairedFaces, method: str, recogniser: str, protocol: str,
                found: Any, names: Sequence[str], outputs: _ProbeOutputs) -> list[dict[str, Any]]:
    psnr, ssim = outputs.psnr[method], outputs.ssim[method]
    predicted, best = found.predicted.tolist(), found.best.tolist()
    correct, rank, margin = found.correct.tolist(), found.rank.tolist(), found.margin.tolist()
    return [{"probe": data.names[i], "subject": data.subjects[i], "method": method,
             "recogniser": recogniser, "protocol": protocol, "predicted": names[predicted[i]],
             "similarity": round(best[i], 6), "correct": int(correct[i]), "rank": rank[i],
             "margin": round(margin[i], 6),
             "psnr": "" if psnr is None else round(float(psnr[i]), 4),
             "ssim": "" if ssim is None else round(float(ssim[i]), 5)}
            for i in range(len(data))]
