"""Part "signals": which validation signal of a training run best predicts its test recognition.

A search keeps, per trial, the epoch where its objective was best (``best.pt``) and crowns the
trial whose best objective is highest. Whether that finds the DSR that recognises unseen faces
best depends on the objective. This study trains several DSR configurations that a search could
produce (identity and feature-matching weights, learning rate, warm-up, seed; the network and
the rest pinned, `PINS`) with tune_dsr's own `Trainer`, and after every epoch measures the EMA
network on the *test* split with `tune_dsr.evaluation.protocols.evaluate_dsrs` (wide gallery: the
test subjects plus the training and validation subjects as distractors, the recogniser DSR
trained against).
It then scores each candidate validation signal (`SIGNALS`) against two test targets, rank-1
(what matters) and the mean margin (smoother):

- (a) "rho runs": Spearman correlation across runs between the signal's best value and the
  target at the epoch the signal picks (its best epoch), with the exact permutation p-value
  (one-sided; about 0.05 needs rho >= 0.64 with 8 runs, >= 0.83 with 6);
- (b) "rho pairs": Spearman over every (run, epoch) pair, with a 90 % interval from
  resampling whole runs (the epochs of one run are not independent); the best signal is the
  one with the highest rho pairs, and its lead over every other signal (and that of
  ``val_margin``, the recognition_first preset's metric) is bootstrapped the same way, paired;
- "rho within": the mean over runs of the Spearman across that run's epochs (epoch picking;
  in brackets how many runs it is defined for: a run whose target never moves has none);
- "mean at pick": the target at each run's picked epoch, averaged over runs;
- (c) the search's winner (the run with the best signal value; a tie between runs counts the
  mean of the tied runs), its target, the regret against the best target of any (run, epoch)
  (the oracle) and the gain over bicubic upscaling; (d) the same with the margin as target.

Losses are "lower is better" (`tune_dsr.config.METRICS`); every correlation is oriented so that
+1 means "better signal, better test". ``val_margin_gain`` is ``val_margin`` minus bicubic's
margin on the same validation set, a constant per data set, so the two rank identically.
``val_loss`` weighs its terms by each run's own λs, so across runs it compares different sums.
Validation runs under the trainer's autocast (bf16 where the CPU has it), the test in float32.

How to read it: with 6-8 runs and 30 test probes (one probe is 3.3 points of rank-1) only large
differences mean anything; a correlation across runs whose permutation p is above 0.05, or a
regret of one or two probes, is noise. Run it as a part (``python -m benchmarks.run --only
signals [--data DIR --edgeface FILE]``; without a face set: synthetic faces and random networks,
a smoke test of the machinery) or alone:

    python -m benchmarks.signals --data DIR --edgeface FILE [--runs N] [--epochs E] [--json OUT]

``--json`` keeps every per-epoch row (all validation metrics and the test figures);
``--reanalyse OUT`` prints the tables again from such a file without training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context, PartResult, Ratio, load_average, machine_lines
from tune_dsr.config import direction

# Validation signals a search could optimise (every one is reported each epoch).
SIGNALS = ("val_margin", "val_margin_gain", "val_rank1_full", "val_soft_rank1", "val_psnr",
           "val_loss", "val_identity_loss")
# Test targets: key in a row -> (label, unit, scale for printing).
TARGETS: dict[str, tuple[str, str, float]] = {
    "test_rank1": ("test rank-1 (wide gallery)", "points", 100.0),
    "test_margin": ("test margin (wide gallery)", "cosine", 1.0),
}
PRESET_SIGNAL = "val_margin"  # what search_spaces/recognition_first.py optimises today
BICUBIC = {"test_rank1": "test_bicubic_rank1", "test_margin": "test_bicubic_margin"}

# Held fixed in every run: a small DSR that trains in about ten seconds an epoch on two cores.
PINS: dict[str, Any] = {"width": 48, "depth": 6, "lambda_perceptual": 0.0,
                        "perceptual_weights": "random", "bicubic_residual": True,
                        "batch_size": 16, "device": "cpu", "amp": True, "patience": 0}
# The two configurations every study includes; the others are drawn (`plan_runs`).
FIXED_RUNS: tuple[tuple[str, dict[str, float]], ...] = (
    ("pixel-only", {"lambda_identity": 0.0, "lambda_feature_match": 0.0, "lr": 3e-4}),
    ("guide", {"lambda_identity": 0.6, "lambda_feature_match": 0.2, "lr": 1.5e-4}),
)
LAMBDA_IDENTITY = (0.0, 0.1, 0.3, 0.6)
LAMBDA_FEATURE_MATCH = (0.0, 0.05, 0.2)
LR_RANGE = (1e-4, 1e-3)
WARMUP_RANGE = (1, 3)
RANDOM_EDGEFACE = "random:edgeface_xxs"
SPLIT_NAMES = ("train_processed", "val_processed", "test_processed")
DEFAULT_RUNS, DEFAULT_EPOCHS = 8, 16
RESAMPLES = 200  # evaluate's bootstrap: only its point values are used here
PERMUTATION_SAMPLES = 20_000  # above EXACT_PERMUTATIONS runs, a sampled permutation test
EXACT_PERMUTATIONS = 8
RUN_BOOTSTRAP = 1000


# ============================================================================= statistics

def average_ranks(values: Any) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    a = np.asarray(values, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    ranks = np.empty(len(a))
    start = 0
    while start < len(a):
        stop = start
        while stop + 1 < len(a) and ordered[stop + 1] == ordered[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    scale = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / scale) if scale > 0 else math.nan


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than three pairs or
    a constant side."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs, but got {len(x)} and {len(y)} values")
    if len(x) < 3:
        return math.nan
    return _pearson(average_ranks(x), average_ranks(y))


def permutation_p(x: Any, y: Any, seed: int = 0) -> float:
    """One-sided p-value of Spearman(x, y) >= the observed one when y's order is random: exact
    for up to `EXACT_PERMUTATIONS` pairs, else from `PERMUTATION_SAMPLES` shuffles."""
    rho = spearman(x, y)
    if math.isnan(rho):
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    n = len(rx)
    if n <= EXACT_PERMUTATIONS:
        orders = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        orders = np.argsort(rng.random((PERMUTATION_SAMPLES, n)), axis=1)
    shuffled = ry[orders]
    cx = rx - rx.mean()
    cy = shuffled - shuffled.mean(axis=1, keepdims=True)
    rhos = (cy @ cx) / np.sqrt((cx @ cx) * (cy * cy).sum(axis=1))
    return float((rhos >= rho - 1e-9).mean())


# ============================================================================= the runs

@dataclass(frozen=True)
class RunPlan:
    """One training run: its name and the settings that vary between runs."""

    name: str
    lambda_identity: float
    lambda_feature_match: float
    lr: float
    warmup_epochs: int
    seed: int

    def settings(self) -> dict[str, Any]:
        return {"lambda_identity": self.lambda_identity,
                "lambda_feature_match": self.lambda_feature_match, "lr": self.lr,
                "warmup_epochs": self.warmup_epochs, "seed": self.seed}

    def describe(self) -> str:
        return (f"λ_id {self.lambda_identity:g}, λ_fm {self.lambda_feature_match:g}, lr "
                f"{self.lr:.2g}, warm-up {self.warmup_epochs}, seed {self.seed}")


def plan_runs(count: int, seed: int) -> list[RunPlan]:
    """The pixel-only and guide runs, then `count` - 2 drawn ones: the loss weights cycle
    through their values in a shuffled order, the learning rates are a Latin hypercube in log
    space, so few runs still cover the ranges. The same (count, seed) gives the same plans."""
    rng = np.random.default_rng([seed, 1])
    plans = []
    for index, (name, fixed) in enumerate(FIXED_RUNS[:count]):
        plans.append(RunPlan(name, fixed["lambda_identity"], fixed["lambda_feature_match"],
                             fixed["lr"], int(rng.integers(WARMUP_RANGE[0], WARMUP_RANGE[1] + 1)),
                             seed * 1000 + index + 1))
    drawn = count - len(plans)
    if drawn <= 0:
        return plans

    def cycle(values: tuple[float, ...]) -> list[float]:
        repeats = -(-drawn // len(values))
        return [float(v) for v in rng.permutation(np.tile(values, repeats))[:drawn]]

    identity, feature = cycle(LAMBDA_IDENTITY), cycle(LAMBDA_FEATURE_MATCH)
    low, high = math.log(LR_RANGE[0]), math.log(LR_RANGE[1])
    strata = (rng.permutation(drawn) + rng.random(drawn)) / drawn
    for k in range(drawn):
        index = len(plans)
        lr = float(f"{math.exp(low + (high - low) * strata[k]):.3g}")
        plans.append(RunPlan(f"drawn {k + 1}", identity[k], feature[k], lr,
                             int(rng.integers(WARMUP_RANGE[0], WARMUP_RANGE[1] + 1)),
                             seed * 1000 + index + 1))
    return plans


class EpochProbe:
    """Trainer callback: after every epoch, the EMA network on the test split (`evaluate`, wide
    gallery, the training recogniser), one row per epoch with every validation metric."""

    def __init__(self, run: int, plan: RunPlan, test: Any, distractors: list[Any],
                 recogniser: Any, resamples: int) -> None:
        self.run, self.plan, self.test = run, plan, test
        self.distractors, self.recogniser, self.resamples = distractors, recogniser, resamples
        self.rows: list[dict[str, Any]] = []
        self.eval_seconds = 0.0

    def on_batch_end(self, trainer: Any, batch: int, num_batches: int, loss: Any) -> None:
        return None

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        from tune_dsr.evaluation.protocols import evaluate_dsrs

        started = time.perf_counter()
        trainer.ema.eval()
        report = evaluate_dsrs(self.test, {"DSR": trainer.ema}, {"edgeface": self.recogniser},
                          distractors=self.distractors, device=trainer.device,
                          resamples=self.resamples, batch_size=32)
        blocks = {block["protocol"]: block["methods"] for block in report["results"]}
        wide, guide = blocks["wide"], blocks["guide"]
        self.eval_seconds += time.perf_counter() - started
        row: dict[str, Any] = {"run": self.run, "name": self.plan.name, **self.plan.settings()}
        row.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        row["epoch"] = int(metrics["epoch"])
        row.update(test_rank1=wide["DSR"]["rank1"], test_margin=wide["DSR"]["margin"],
                   test_bicubic_rank1=wide["bicubic"]["rank1"],
                   test_bicubic_margin=wide["bicubic"]["margin"],
                   test_hr_rank1=wide["HR"]["rank1"], test_rank1_guide=guide["DSR"]["rank1"],
                   test_psnr=wide["DSR"]["psnr"], test_bicubic_psnr=wide["bicubic"]["psnr"],
                   test_seconds=time.perf_counter() - started)
        self.rows.append(row)


@dataclass
class Study:
    """What to train and where: `data` holds the three splits; `edgeface` is the recogniser
    (a file or ``random:<variant>``)."""

    data: Path
    edgeface: str
    runs: int = DEFAULT_RUNS
    epochs: int = DEFAULT_EPOCHS
    seed: int = 0
    device: str = "cpu"
    resamples: int = RESAMPLES


def _cached(faces: Any) -> Any:
    """A scanned distractor folder decoded once (evaluate then reads it from memory)."""
    import torch

    from tune_dsr.evaluation.probes import DistractorFaces

    return DistractorFaces.from_tensor(torch.cat(list(faces.batches(64))), faces.subjects,
                                    source=faces.source)


def train_runs(study: Study, say: Any = print) -> tuple[list[RunPlan], list[dict[str, Any]],
                                                        dict[str, Any]]:
    """Train every planned run, probing the test split after each epoch; returns the plans, the
    per-epoch rows and timings."""
    from tune_dsr.config import Config
    from tune_dsr.data import load_pair_sets
    from tune_dsr.errors import DataError
    from tune_dsr.evaluation.probes import DistractorFaces, load_probe_set
    from tune_dsr.training.losses import load_loss_networks
    from tune_dsr.training.trainer import Trainer

    started = time.perf_counter()
    base = Config.from_dict({**PINS, "device": study.device, "epochs": study.epochs,
                             "edgeface": study.edgeface,
                             "train_dir": str(study.data / "train_processed"),
                             "val_dir": str(study.data / "val_processed")})
    base, train, val = load_pair_sets(base)
    test = load_probe_set(study.data / "test_processed", vlr_size=base.model.vlr_size)
    if test.vlr_size != base.model.vlr_size:
        raise DataError(f"the test split holds {test.vlr_size}px VLR faces, the training split "
                        f"{base.model.vlr_size}px; use one size for all three splits")
    distractors = [_cached(DistractorFaces.scan(study.data / name, test.hr_size))
                   for name in SPLIT_NAMES[:2]]
    identity_net, _ = load_loss_networks(study.edgeface, PINS["perceptual_weights"])
    setup = time.perf_counter() - started
    say(f"Data: train {len(train)} pairs / {len(train.unique_subjects)} subjects, val "
        f"{len(val)} / {len(val.unique_subjects)}, test {len(test)} / "
        f"{len(test.unique_subjects)} (+ {sum(len(set(d.subjects)) for d in distractors)} "
        f"distractor subjects); {base.model.vlr_size} px -> {base.model.hr_size} px; "
        f"recogniser {study.edgeface}. Set-up {setup:.0f} s.")

    plans = plan_runs(study.runs, study.seed)
    rows: list[dict[str, Any]] = []
    timings: list[dict[str, float]] = []
    for index, plan in enumerate(plans):
        run_started = time.perf_counter()
        probe = EpochProbe(index, plan, test, distractors, identity_net, study.resamples)
        config = base.replace(**plan.settings())
        # No VGG: λ_perceptual is pinned to 0, and validation would still run it every epoch.
        trainer = Trainer(config, train, val, identity_net, None, callbacks=[probe],
                          out_dir=None)
        trainer.fit()
        seconds = time.perf_counter() - run_started
        timings.append({"run": index, "seconds": seconds, "test_seconds": probe.eval_seconds})
        rows += probe.rows
        best = max(probe.rows, key=lambda r: r["test_rank1"])
        say(f"run {index + 1}/{len(plans)} {plan.name} ({plan.describe()}): "
            f"{len(probe.rows)} epoch(s) in {seconds:.0f} s ({probe.eval_seconds:.0f} s of it on "
            "the test split); "
            f"test rank-1 last {100 * probe.rows[-1]['test_rank1']:.1f} %, best "
            f"{100 * best['test_rank1']:.1f} % (epoch {best['epoch']}), bicubic "
            f"{100 * best['test_bicubic_rank1']:.1f} %")
    return plans, rows, {"setup_s": setup, "test_probes": len(test), "runs": timings}


# ============================================================================= the analysis

def _oriented(signal: str, value: float) -> float:
    return value if direction(signal) == "max" else -value


def _by_run(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    runs: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        runs.setdefault(row["run"], []).append(row)
    return {run: sorted(epochs, key=lambda r: r["epoch"]) for run, epochs in sorted(runs.items())}


def _pick(epochs: list[dict[str, Any]], signal: str) -> dict[str, Any]:
    """The row a run keeps as best.pt: the first epoch with the best oriented value (the trainer
    replaces best.pt only on a strict improvement)."""
    best = epochs[0]
    for row in epochs[1:]:
        if _oriented(signal, row[signal]) > _oriented(signal, best[signal]):
            best = row
    return best


def _pooled_spearman(runs: list[list[dict[str, Any]]], signal: str, target: str) -> float:
    pairs = [(_oriented(signal, r[signal]), r[target]) for epochs in runs for r in epochs]
    return spearman([p[0] for p in pairs], [p[1] for p in pairs])


def _run_draws(count: int, seed: int) -> np.ndarray:
    """`RUN_BOOTSTRAP` resamples (with replacement) of `count` runs' indices, one per row; the
    same for every signal, so that differences between signals are paired."""
    return np.random.default_rng([seed, 2]).integers(0, count, (RUN_BOOTSTRAP, count))


def _interval(values: np.ndarray) -> list[float]:
    finite = values[~np.isnan(values)]
    if not len(finite):
        return [math.nan, math.nan]
    return [float(np.quantile(finite, 0.05)), float(np.quantile(finite, 0.95))]


def score_signal(rows: list[dict[str, Any]], signal: str, target: str,
                 seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """Everything the tables report for one signal and one target (see the module docstring),
    and the run-bootstrap draws of (b)."""
    runs = _by_run(rows)
    picks = {run: _pick(epochs, signal) for run, epochs in runs.items()}
    values = [_oriented(signal, picks[run][signal]) for run in runs]
    at_pick = [picks[run][target] for run in runs]
    epochs_of = list(runs.values())
    draws = np.array([_pooled_spearman([epochs_of[i] for i in chosen], signal, target)
                      for chosen in _run_draws(len(epochs_of), seed)])
    within = [spearman([_oriented(signal, r[signal]) for r in epochs],
                       [r[target] for r in epochs]) for epochs in epochs_of]
    within = [w for w in within if not math.isnan(w)]
    top = max(values)
    tied = [run for run, value in zip(runs, values, strict=True) if value == top]
    winner_target = float(np.mean([picks[run][target] for run in tied]))
    oracle = max(r[target] for r in rows)
    bicubic = float(np.mean([r[BICUBIC[target]] for r in rows]))
    scores = {
        "signal": signal, "target": target,
        "picks": {str(run): {"epoch": picks[run]["epoch"], "value": picks[run][signal],
                             target: picks[run][target]} for run in runs},
        "rho_runs": spearman(values, at_pick), "rho_runs_p": permutation_p(values, at_pick, seed),
        "rho_pairs": _pooled_spearman(epochs_of, signal, target),
        "rho_pairs_interval90": _interval(draws),
        "rho_within_mean": float(np.mean(within)) if within else math.nan,
        "rho_within_runs": len(within),
        "mean_at_pick": float(np.mean(at_pick)),
        "winner_runs": tied, "winner_epochs": [picks[run]["epoch"] for run in tied],
        "winner": winner_target, "oracle": oracle, "regret": oracle - winner_target,
        "bicubic": bicubic, "vs_bicubic": winner_target - bicubic,
    }
    return scores, draws


def best_signal(scores: dict[str, dict[str, Any]]) -> str:
    """The signal that orders all (run, epoch) pairs most like the target does (rho pairs: it
    judges the epoch a run keeps and the run a search crowns at once), ties broken by rho runs,
    then by the smaller regret."""
    def key(signal: str) -> tuple[float, float, float]:
        s = scores[signal]
        pairs = -2.0 if math.isnan(s["rho_pairs"]) else round(s["rho_pairs"], 6)
        runs = -2.0 if math.isnan(s["rho_runs"]) else round(s["rho_runs"], 6)
        return (pairs, runs, -round(s["regret"], 9))

    return max(scores, key=key)


def _lead(a: tuple[dict[str, Any], np.ndarray], b: tuple[dict[str, Any], np.ndarray]
          ) -> dict[str, Any]:
    """How far signal a's rho pairs is above signal b's: the difference, its 90 % interval and
    the share of draws where a is ahead, from the same run-bootstrap draws (paired)."""
    difference = a[1] - b[1]
    finite = difference[~np.isnan(difference)]
    return {"difference": a[0]["rho_pairs"] - b[0]["rho_pairs"],
            "interval90": _interval(difference),
            "share_ahead": float(np.mean(finite > 0)) if len(finite) else math.nan,
            "identical": bool(len(finite) and np.all(finite == 0))}


def analyse(rows: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Per target: every signal's scores, the best signal, the paired run-bootstrap lead in rho
    pairs of the best signal and of the preset's (`PRESET_SIGNAL`) over every other one, and
    reference points that need no signal."""
    runs = _by_run(rows)
    out: dict[str, Any] = {}
    for target in TARGETS:
        scored = {s: score_signal(rows, s, target, seed) for s in SIGNALS}
        scores = {s: found[0] for s, found in scored.items()}
        chosen = best_signal(scores)
        leads = {reference: {other: _lead(scored[reference], scored[other])
                             for other in SIGNALS if other != reference}
                 for reference in dict.fromkeys((chosen, PRESET_SIGNAL))}
        out[target] = {
            "signals": scores, "best_signal": chosen, "leads": leads,
            "reference": {
                "mean_last_epoch": float(np.mean([e[-1][target] for e in runs.values()])),
                "mean_best_epoch": float(np.mean([max(r[target] for r in e)
                                                  for e in runs.values()])),
                "oracle": max(r[target] for r in rows),
                "bicubic": float(np.mean([r[BICUBIC[target]] for r in rows])),
            },
        }
    return out


# ============================================================================= the report

def _rho(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _amount(value: float, target: str, signed: bool = False) -> str:
    scale = TARGETS[target][2]
    digits = 1 if scale == 100.0 else 3
    return f"{scale * value:{'+' if signed else ''}.{digits}f}"


def _lead_cell(lead: dict[str, Any]) -> str:
    if lead["identical"]:
        return "equal in every draw"
    low, high = lead["interval90"]
    share = "n/a" if math.isnan(lead["share_ahead"]) else f"{lead['share_ahead']:.0%}"
    verdict = "clearly ahead" if low > 0 else ("clearly behind" if high < 0 else "unclear")
    return f"{_rho(lead['difference'])} [{_rho(low)}, {_rho(high)}] {share}: {verdict}"


def report(result: PartResult, plans: list[RunPlan], rows: list[dict[str, Any]],
           analysis: dict[str, Any]) -> None:
    """The tables and the ratio lines."""
    runs = _by_run(rows)
    result.say()
    result.say("Runs (test figures: wide gallery, EMA weights, every epoch):")
    table = []
    for run, epochs in runs.items():
        plan = plans[run]
        best = max(epochs, key=lambda r: (r["test_rank1"], -r["epoch"]))
        table.append([run + 1, plan.name, f"{plan.lambda_identity:g}",
                      f"{plan.lambda_feature_match:g}", f"{plan.lr:.2g}", plan.warmup_epochs,
                      plan.seed, f"{100 * epochs[-1]['test_rank1']:.1f}",
                      f"{100 * best['test_rank1']:.1f} @{best['epoch']}",
                      f"{epochs[-1]['test_margin']:.3f}", f"{epochs[-1]['val_margin']:.3f}",
                      f"{100 * epochs[-1]['val_rank1_full']:.1f}",
                      f"{epochs[-1]['val_psnr']:.2f}"])
    result.table(["run", "name", "λ_id", "λ_fm", "lr", "warm-up", "seed", "test r1 last",
                  "test r1 best @ep", "test margin last", "val margin last", "val r1 last",
                  "val PSNR last"], table)
    bicubic = analysis["test_rank1"]["reference"]["bicubic"]
    result.say(f"Bicubic on the same test probes: rank-1 {100 * bicubic:.1f} %, margin "
               f"{analysis['test_margin']['reference']['bicubic']:.3f}.")

    for target, (label, unit, _) in TARGETS.items():
        block = analysis[target]
        ref = block["reference"]
        result.say()
        result.say(f"Target: {label} ({unit}). Oracle (best of any run and epoch) "
                   f"{_amount(ref['oracle'], target)}; mean over runs at the last epoch "
                   f"{_amount(ref['mean_last_epoch'], target)}, at each run's best test epoch "
                   f"{_amount(ref['mean_best_epoch'], target)}; bicubic "
                   f"{_amount(ref['bicubic'], target)}.")
        table = []
        for signal, s in block["signals"].items():
            low, high = s["rho_pairs_interval90"]
            winner = ", ".join(f"{run + 1}@{epoch}" for run, epoch in
                               zip(s["winner_runs"], s["winner_epochs"], strict=True))
            table.append([signal, direction(signal),
                          f"{_rho(s['rho_runs'])} (p {_p(s['rho_runs_p'])})",
                          f"{_rho(s['rho_pairs'])} [{_rho(low)}, {_rho(high)}]",
                          f"{_rho(s['rho_within_mean'])} ({s['rho_within_runs']})",
                          _amount(s["mean_at_pick"], target), winner,
                          _amount(s["winner"], target), _amount(s["regret"], target),
                          _amount(s["vs_bicubic"], target, signed=True)])
        result.table(["signal", "better", "(a) rho runs (p)", "(b) rho pairs [90 %]",
                      "rho within (runs)", "mean at pick", "winner run@ep", "winner", "regret",
                      "vs bicubic"], table)
        chosen = block["best_signal"]
        references = list(block["leads"])
        whose = " and of ".join(references)
        result.say(f"Best predictor of {label}: {chosen} (highest rho pairs; {PRESET_SIGNAL} is "
                   f"recognition_first's metric). Lead in rho pairs of {whose} over each signal: "
                   "difference [90 % interval] and the share of the paired run-bootstrap draws "
                   "where it is ahead; an interval above 0 means clearly ahead (with 6-8 runs "
                   "the run bootstrap is rough and rather too narrow than too wide):")
        leads = []
        for other in SIGNALS:
            cells = []
            for reference in references:
                lead = block["leads"][reference].get(other)
                cells.append(_lead_cell(lead) if lead else "-")
            leads.append([other, *cells])
        result.table(["signal", *(f"{r} minus signal" for r in references)], leads)

    picks_table = []
    for signal in SIGNALS:
        s = analysis["test_rank1"]["signals"][signal]
        picks_table.append([signal] + [f"{p['epoch']} ({100 * p['test_rank1']:.0f})"
                                       for p in s["picks"].values()])
    result.say()
    result.say("Epoch each signal keeps per run (test rank-1 % there):")
    result.table(["signal"] + [f"run {run + 1}" for run in runs], picks_table)

    rank1 = analysis["test_rank1"]
    chosen = rank1["best_signal"]
    current = PRESET_SIGNAL
    for signal in dict.fromkeys((chosen, current)):
        result.ratios.append(Ratio(f"signals test rank-1, winner by {signal} vs bicubic",
                                   100 * rank1["signals"][signal]["winner"], 100 * bicubic,
                                   "% rank-1"))
    result.ratios.append(Ratio(f"signals test rank-1, winner by {chosen} vs the oracle",
                               100 * rank1["signals"][chosen]["winner"],
                               100 * rank1["reference"]["oracle"], "% rank-1"))


def _finite(value: Any) -> Any:
    """NaN and infinities as None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _conclude(result: PartResult, plans: list[RunPlan], rows: list[dict[str, Any]], seed: int,
              probes: int | None, note: str) -> None:
    """Analyse the rows, print the tables and the caveat, keep the analysis in the data."""
    analysis = analyse(rows, seed)
    report(result, plans, rows, analysis)
    epochs = max(row["epoch"] for row in rows)
    probe_note = (f"{probes} test probes (one probe is {100 / probes:.1f} points of rank-1)"
                  if probes else "few test probes")
    result.say()
    result.say(f"Read with care: {len(plans)} runs of {epochs} epoch(s), {probe_note}. {note}")
    result.data["analysis"] = analysis


def study_part(study: Study, name: str = "signals") -> PartResult:
    """Train, probe, analyse and print; the raw rows land in the result's data."""
    result = PartResult(name)
    result.say(f"{study.runs} runs x {study.epochs} epochs on {study.device}, pins: "
               + ", ".join(f"{k}={v}" for k, v in PINS.items() if k != "device")
               + f"; plan seed {study.seed}.")
    started = time.perf_counter()
    plans, rows, timings = train_runs(study, result.say)
    wall = time.perf_counter() - started
    _conclude(result, plans, rows, study.seed, timings["test_probes"],
              f"Study wall time {wall:.0f} s.")
    result.data.update(settings={"runs": study.runs, "epochs": study.epochs, "seed": study.seed,
                                 "device": study.device, "edgeface": study.edgeface,
                                 "data": str(study.data), "pins": PINS,
                                 "resamples": study.resamples},
                       plans=[{"name": p.name, **p.settings()} for p in plans], rows=rows,
                       timings=timings, study_wall_s=wall)
    return result


def reanalyse_part(document: dict[str, Any], name: str = "signals") -> PartResult:
    """The tables again from a ``--json`` document's rows, without training."""
    result = PartResult(name)
    settings = document["settings"]
    plans = [RunPlan(**plan) for plan in document["plans"]]
    result.say(f"Re-analysis of the rows written by: {document.get('command', '?')}")
    result.say(f"{settings['runs']} runs x {settings['epochs']} epochs on {settings['device']}, "
               f"plan seed {settings['seed']}, recogniser {settings['edgeface']}, data "
               f"{settings['data']}.")
    wall = document.get("study_wall_s", document.get("wall_s"))
    _conclude(result, plans, document["rows"], settings["seed"],
              document.get("timings", {}).get("test_probes"),
              f"Study wall time {wall:.0f} s (when trained)." if wall else "")
    result.data.update({key: document[key] for key in ("settings", "plans", "rows", "timings")
                        if key in document}, study_wall_s=wall)
    return result


# ============================================================================= entry points

def _synthetic(workdir: Path) -> Path:
    from tune_dsr.demo import make_data

    splits = make_data(workdir / "signals_faces", subjects=30, per_subject=4)
    return splits["train"].parent


def run(ctx: Context) -> PartResult:
    """The suite's part: on the real set of ``--data``/``--edgeface`` where given, else on
    synthetic faces and random networks (the machinery, not a result)."""
    runs, epochs = (3, 2) if ctx.demo else (DEFAULT_RUNS, DEFAULT_EPOCHS)
    if ctx.data is not None and ctx.edgeface is not None:
        from benchmarks.faces import check_inputs

        data, edgeface = check_inputs(ctx.data, ctx.edgeface)
        study = Study(data, edgeface, runs=runs, epochs=epochs, device=str(ctx.device))
    else:
        study = Study(_synthetic(ctx.workdir), RANDOM_EDGEFACE, runs=runs, epochs=epochs,
                      device=str(ctx.device))
    return study_part(study)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.signals",
        description="Which validation signal of a DSR run best predicts its test recognition.")
    p.add_argument("--data", metavar="DIR",
                   help="folder with train_processed/, val_processed/, test_processed/ (default: "
                        "synthetic faces and random networks, a smoke test)")
    p.add_argument("--edgeface", metavar="FILE",
                   help="the EdgeFace checkpoint to train against and test with (needed with "
                        f"--data; default without it: {RANDOM_EDGEFACE})")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                   help=f"training runs, at least 3 (default {DEFAULT_RUNS})")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help=f"epochs per run (default {DEFAULT_EPOCHS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the run plans (default 0)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the runs train (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--json", metavar="OUT", help="write every per-epoch row and score here")
    p.add_argument("--reanalyse", metavar="JSON",
                   help="train nothing: print the tables again from the rows of a --json file "
                        "this command wrote")
    return p


def _refuse(message: str) -> int:
    print(f"python -m benchmarks.signals: {message}", file=sys.stderr)
    return 2


def _write_json(path: str, command: str, machine: list[str], wall: float,
                result: PartResult) -> None:
    document = {"command": command, "machine": machine, "wall_s": wall,
                "ratios": [{"name": q.name, "ratio": q.value, "tune_dsr": q.x, "baseline": q.y,
                            "unit": q.unit} for q in result.ratios],
                "text": result.text, **result.data}
    Path(path).write_text(json.dumps(_finite(document), indent=1) + "\n")
    print(f"wrote {path}")


def _print_ratios(result: PartResult) -> None:
    print("\nRatios, R = X / Y:")
    for ratio in result.ratios:
        print(ratio.line())


def _reanalyse(args: argparse.Namespace, command: str) -> int:
    try:
        document = json.loads(Path(args.reanalyse).read_text())
        result = reanalyse_part(document)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _refuse(f"--reanalyse {args.reanalyse}: not a JSON file this command wrote "
                       f"({type(exc).__name__}: {exc})")
    _print_ratios(result)
    if args.json:
        _write_json(args.json, document.get("command", "?"), document.get("machine", []),
                    document.get("wall_s", math.nan), result)
        print(f"(re-analysed by: {command})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m benchmarks.signals " + shlex.join(sys.argv[1:] if argv is None
                                                             else argv)
    if args.reanalyse:
        return _reanalyse(args, command)
    if args.runs < 3:
        return _refuse(f"--runs {args.runs}: a rank correlation needs at least 3 runs")
    if args.epochs < 1:
        return _refuse(f"--epochs {args.epochs}: at least 1")
    edgeface = args.edgeface or RANDOM_EDGEFACE
    if not edgeface.startswith("random:") and not Path(edgeface).expanduser().is_file():
        return _refuse(f"the EdgeFace file {edgeface} does not exist; pass --edgeface FILE")
    if args.data:
        data = Path(args.data).expanduser().resolve()
        missing = [name for name in SPLIT_NAMES if not (data / name).is_dir()]
        if missing:
            return _refuse(f"{data} lacks {', '.join(f'{m}/' for m in missing)}; --data must "
                           f"hold {', '.join(f'{s}/' for s in SPLIT_NAMES)}")
        if args.edgeface is None:
            return _refuse("--data needs --edgeface FILE (the recogniser to train against)")

    from benchmarks.common import setup_torch
    from tune_dsr.errors import USER_ERRORS

    # Loading the int8 EdgeFace file trips two deprecation notices inside torch: noise here.
    for notice in ("TypedStorage is deprecated", "torch.quantize_per_tensor"):
        warnings.filterwarnings("ignore", message=notice, category=UserWarning)
    device = setup_torch(args.device, args.threads)
    print("tune_dsr benchmark: validation signals against test recognition"
          + ("" if args.data else " (synthetic faces, random networks: a smoke test)"))
    for line in machine_lines(device, command.strip()):
        print("  " + line)
    print(flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tune_dsr_signals_") as tmp:
        root = data if args.data else _synthetic(Path(tmp))
        study = Study(root, str(Path(edgeface).expanduser()) if args.edgeface else edgeface,
                      runs=args.runs, epochs=args.epochs, seed=args.seed, device=str(device))
        try:
            result = study_part(study)
        except USER_ERRORS as exc:
            return _refuse(str(exc))
    wall = time.perf_counter() - started
    print(f"\nload average at end (1/5/15 min): {load_average()}; wall time {wall:.0f} s")
    _print_ratios(result)
    if args.json:
        _write_json(args.json, command, machine_lines(device, command), wall, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
