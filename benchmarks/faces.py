"""Part "faces": the user's whole workflow on a real face set, against doing nothing and against
the pixel-only DSR trained alone.

``python -m benchmarks.run --only faces --data DIR --edgeface FILE`` (DIR in tune_dsr's layout,
with ``train_processed/``, ``val_processed/`` and ``test_processed/``; FILE the EdgeFace the DSR
trains against). One run:

1. search: ``recognition_first`` on the training and validation subjects, with the anchors, ASHA,
   the patience and ``--confirm`` as a user gets them (budget below);
2. export: the winner (the best confirmed mean) as a training config, with the verdict;
3. the final run: ``python -m tune_dsr.train --config best.json`` at the same epoch budget;
4. the pixel-only reference: the same network trained alone with the identity and
   feature-matching terms off (the guide's other values), the same budget and monitor;
5. ``evaluate`` on the test subjects (never seen by any of it): bicubic, the search's DSR and
   the pixel-only DSR, rank-1 and margin on the wide gallery (test subjects plus the training and
   validation subjects as distractors), with paired bootstrap intervals.

CPU pins, so that a search fits in about half an hour on two cores: width 48, depth 6 (the
guide's 112 x 16 is 20x the compute), batch 16, the bicubic skip on (from scratch a short run
stays below bicubic, issue "real faces"), λ_perceptual 0 (VGG19's ImageNet weights cannot be
downloaded here, and a random VGG is no perceptual loss). Everything else is searched.

A small set gives wide intervals: on 30 test probes one probe is 3.3 points of rank-1. The
numbers and what they mean are in docs/results.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Context, PartResult, Ratio, fmt
from tune_dsr.data import SPLITS as DATA_SPLITS
from tune_dsr.data import split_folder

SPACE = "recognition_first"
# Held fixed on the CPU (the guide's 112 x 16 DSR is 20x the compute): a small DSR, the bicubic
# skip on (from scratch a short run stays below bicubic), λ_perceptual 0 (VGG19's ImageNet
# weights cannot be downloaded here, and a random VGG is no perceptual loss).
CPU_PINS: dict[str, Any] = {"width": 48, "depth": 6, "batch_size": 16, "bicubic_residual": True,
                            "lambda_perceptual": 0.0}
# On a GPU only the perceptual term stays pinned (no weights); the DSR's size and the skip are
# searched as the preset has them.
GPU_PINS: dict[str, Any] = {"lambda_perceptual": 0.0}
PERCEPTUAL = "random"  # never used: λ_perceptual is pinned to 0
# With a held-out recogniser the search's objective: the smaller of the two margin gains over
# bicubic on the validation persons, so a DSR must help both recognisers to win
# (docs/results.md, "A gain that transfers").
TRANSFER_OBJECTIVE = "val_margin_gain_min"


@dataclass(frozen=True)
class Budget:
    """The search's size; the final run and the reference train `max_epochs` too.
    ``samples_per_epoch`` 0: every training pair each epoch."""

    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    confirm: int
    confirm_runs: int
    patience: int | None = None  # None: the grace period
    samples_per_epoch: int = 0
    # Epochs of the final run and of the pixel-only reference beside it (0: max_epochs): the
    # final run is the one long training a user runs after a short search.
    final_epochs: int = 0

    @property
    def final(self) -> int:
        return self.final_epochs or self.max_epochs


# Two cores, about 50 minutes on LFW (1,227 training faces of 178 persons, 347 validation
# faces): an epoch draws 600 of the training pairs (every person in play), so 14 epochs are
# about 7 passes over the set; ASHA's rungs at 3, 6 and 12 epochs; confirmation of the top two
# and the pixel-only anchor, one new run each (what it buys per epoch: docs/results.md); the
# final run and the pixel-only reference train twice as long (on LFW both were still improving
# after 7 passes).
FULL = Budget(num_samples=10, max_epochs=14, grace_period=3, reduction_factor=2, confirm=2,
              confirm_runs=1, patience=5, samples_per_epoch=600, final_epochs=28)
# A GPU runs the full set every epoch, the guide's DSR size among the searched ones.
GPU = Budget(num_samples=16, max_epochs=30, grace_period=5, reduction_factor=2, confirm=3,
             confirm_runs=1, patience=8, final_epochs=60)
# A second size in about half an hour on two cores (docs/results.md ran 16 px with it).
QUICK = Budget(num_samples=4, max_epochs=6, grace_period=2, reduction_factor=2, confirm=1,
               confirm_runs=1, patience=3, samples_per_epoch=600, final_epochs=12)
BUDGETS = {"full": FULL, "quick": QUICK}
DEMO = Budget(num_samples=3, max_epochs=2, grace_period=1, reduction_factor=2, confirm=1,
              confirm_runs=1)


def check_inputs(data: Path | None, edgeface: str | None,
                 held_out: list[str] | None = None) -> tuple[Path, str, list[str]]:
    """The data folder, the EdgeFace file and the held-out recognisers' files, or a ConfigError
    that says what is missing."""
    from tune_dsr.errors import ConfigError

    if data is None or edgeface is None:
        raise ConfigError("the faces part needs --data DIR (tune_dsr's layout: train_processed/, "
                          "val_processed/, test_processed/) and --edgeface FILE (the EdgeFace "
                          "checkpoint the DSR trains against)")
    data = data.expanduser().resolve()
    missing = [name for name in SPLITS if not (data / name / "hr_images").is_dir()]
    if missing:
        raise ConfigError(f"--data {data}: {', '.join(missing)} (each with hr_images/ and "
                          "vlr_images*/) missing; give a folder in tune_dsr's layout, e.g. one "
                          "written by python -m tune_dsr.synth")
    files = []
    for flag, spec in [("--edgeface", edgeface)] + [("--held-out", h) for h in held_out or []]:
        if not spec.startswith("random:"):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{flag} {spec}: no such file")
            spec = str(path)
        files.append(spec)
    return data, files[0], files[1:]


SPLITS = tuple(split_folder(split) for split in DATA_SPLITS)


def _train(config: Path, out: Path, log: Path) -> subprocess.Popen:
    """``python -m tune_dsr.train`` as a user runs it, one thread, output to `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "tune_dsr.train", "--config", str(config),
                                 "--out", str(out), "--no-progress"], stdout=f,
                                stderr=subprocess.STDOUT, env=env)


def _wait(processes: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    for name, process in processes.items():
        if process.wait() != 0:
            raise RuntimeError(f"the {name} training failed; its output: "
                               f"{logs[name].read_text()[-3000:]}")


def _paired(rows: list[dict[str, Any]], a: str, b: str, recogniser: str, key: str
            ) -> dict[str, float]:
    """a's per-probe `key` minus b's under one recogniser, persons resampled."""
    from tune_dsr.evaluation.pairs import paired_difference

    found = paired_difference(rows, (a, recogniser), (b, recogniser), metric=key)
    return {name: found[name] for name in ("difference", "low", "high")}


def _budget(ctx: Context) -> tuple[Budget, dict[str, Any]]:
    if ctx.demo:
        return DEMO, CPU_PINS
    if ctx.device.type == "cuda":
        return GPU, GPU_PINS
    return BUDGETS[ctx.faces_budget], CPU_PINS


def run(ctx: Context) -> PartResult:
    from tune_dsr.config import Config
    from tune_dsr.evaluation import probes as ev
    from tune_dsr.evaluation.protocols import evaluate_dsrs
    from tune_dsr.tuning.analysis import load_experiment
    from tune_dsr.tuning.experiment import write_json
    from tune_dsr.tuning.export import best_config_document
    from tune_dsr.tuning.service import SearchOptions, plan_search, run_search

    data, edgeface, held_out = check_inputs(ctx.data, ctx.edgeface, ctx.held_out)
    budget, pins = _budget(ctx)
    result = PartResult("faces")
    work = ctx.workdir / "faces"
    work.mkdir(parents=True, exist_ok=True)
    objective = TRANSFER_OBJECTIVE if held_out else None
    device = "cuda" if ctx.device.type == "cuda" else "cpu"
    result.say(f"Data {data} at {ctx.vlr_size or 'its only'} px; EdgeFace {edgeface}"
               + (f", held out {', '.join(held_out)} (the first also validates)" if held_out
                  else "")
               + f"; preset {SPACE}" + (f" for {objective}" if objective else "")
               + f" with {', '.join(f'{k}={v}' for k, v in pins.items())} held fixed; "
               f"{budget}.")
    started = time.perf_counter()

    # 1. search (+ confirmation)
    from benchmarks import raylocal

    gpus = 1 if device == "cuda" else 0
    raylocal.ensure(warm=False, num_gpus=gpus or None)
    plan = plan_search(SearchOptions(
        space=SPACE, data_root=str(data), edgeface=edgeface, perceptual_weights=PERCEPTUAL,
        val_edgeface=held_out[0] if held_out else None, objectives=objective,
        vlr_size=ctx.vlr_size, samples_per_epoch=budget.samples_per_epoch,
        pins={**pins, "device": device}, num_samples=budget.num_samples,
        max_epochs=budget.max_epochs, grace_period=budget.grace_period,
        reduction_factor=budget.reduction_factor, patience=budget.patience,
        confirm=budget.confirm, confirm_runs=budget.confirm_runs, cpus_per_trial=1,
        gpus=gpus, gpus_per_trial=0.5 if gpus else None,
        max_concurrent=2, storage_path=str(work / "tune"), name="faces", seed=ctx.seed))
    with contextlib.redirect_stdout(io.StringIO()):  # Tune's progress tables
        run_search(plan)
    search_seconds = time.perf_counter() - started
    raylocal.shutdown()

    # 2. export, with the verdict
    document = best_config_document(plan.experiment_path)
    document["train"] = {**document["train"], "epochs": budget.final}
    best_json = work / "best.json"
    write_json(str(best_json), document)
    prov = document["provenance"]
    result.say()
    result.say(prov["verdict"])

    # 3 and 4: the final run and the pixel-only reference, side by side, the same budget
    exported = Config.from_json(best_json)
    # The pixel-only anchor: the guide's values with the identity terms off, the search's pins
    # and budget, and the final run's monitor and patience.
    pixel = Config().replace(**{**plan.base, "epochs": budget.final}, lambda_identity=0.0,
                             lambda_feature_match=0.0, monitor=exported.train.monitor,
                             patience=exported.train.patience)
    pixel_json = work / "pixel_only.json"
    pixel.to_json(pixel_json)
    trained = time.perf_counter()
    logs = {"final": work / "final.log", "pixel-only": work / "pixel_only.log"}
    _wait({"final": _train(best_json, work / "final", logs["final"]),
           "pixel-only": _train(pixel_json, work / "pixel_only", logs["pixel-only"])}, logs)
    train_seconds = time.perf_counter() - trained

    # 5. evaluate on the test persons, under every recogniser
    split = ev.resolve_split(test_dir=data / "test_processed")
    dsrs = ev.load_dsrs([work / "final" / "best.pt", work / "pixel_only" / "best.pt"], device)
    probes = ev.load_probe_set(split, dsrs)
    distractors = [ev.DistractorFaces.scan(root, probes.hr_size)
                   for root in ev.default_distractor_roots(split)]
    recognisers = ev.load_recognisers([edgeface, *held_out], device)
    names = {"search": dsrs[0].model, "pixel-only": dsrs[1].model}
    report = evaluate_dsrs(probes, names, recognisers, distractors=distractors, per_probe=True,
                           resamples=4000, device=device)
    total_seconds = time.perf_counter() - started

    methods = ("bicubic", "pixel-only", "search")
    result.say()
    result.say(f"Test split: {len(probes)} probes of {len(probes.unique_subjects)} persons; "
               "intervals resample persons (all of a person's probes together), 4,000 times.")
    by_recogniser: dict[str, Any] = {}
    for block in (b for b in report["results"] if b["protocol"] == "wide"):
        rec = block["recogniser"]
        wide = block["methods"]
        rows = [r for r in report["probes"]
                if r["protocol"] == "wide" and r["recogniser"] == rec]
        result.say()
        result.say(f"{rec} ({block['role']}), wide gallery of {block['gallery_subjects']} "
                   "persons:")
        result.table(["method", "rank-1 (wide)", "95 % interval", "margin", "PSNR dB"],
                     [[m, f"{wide[m]['rank1']:.1%}",
                       "[" + ", ".join(f"{v:.1%}" for v in wide[m]["rank1_ci"]) + "]",
                       fmt(wide[m]["margin"], 4), fmt(wide[m]["psnr"], 2)] for m in methods])
        pairs = {f"{a} - {b}": {key: _paired(rows, a, b, rec, key) for key in ("rank1", "margin")}
                 for a, b in (("search", "bicubic"), ("search", "pixel-only"),
                              ("pixel-only", "bicubic"))}
        result.table(["paired difference", "rank-1 points [95 %]", "margin [95 %]"],
                     [[name, f"{100 * d['rank1']['difference']:+.1f} "
                             f"[{100 * d['rank1']['low']:+.1f}, {100 * d['rank1']['high']:+.1f}]",
                       f"{d['margin']['difference']:+.4f} "
                       f"[{d['margin']['low']:+.4f}, {d['margin']['high']:+.4f}]"]
                      for name, d in pairs.items()])
        result.say("most frequent wrong answers of the search's DSR: " + "; ".join(
            f"{w['predicted']} x{w['count']}" for w in wide["search"]["wrong_answers"][:5]))
        by_recogniser[rec] = {
            "role": block["role"], "pairs": pairs,
            "methods": {m: {k: wide[m][k] for k in ("rank1", "rank1_ci", "rank1_ci_probes",
                                                     "margin", "psnr", "accuracy")}
                        for m in methods},
            "wrong_answers": {m: wide[m]["wrong_answers"][:5] for m in methods}}
    exp = load_experiment(plan.experiment_path)
    final_epochs = len((work / "final" / "metrics.jsonl").read_text().splitlines())
    spent = prov["epochs_total"] + prov["confirm_epochs"] + final_epochs
    confirmed = budget.confirm + 1  # the top K and the pixel-only anchor
    budget_epochs = budget.num_samples * budget.max_epochs + (
        confirmed * budget.confirm_runs * budget.max_epochs) + budget.final
    result.say()
    result.say(f"Epochs: search {prov['epochs_total']} of {prov['epochs_full']} (saved "
               f"{prov['epochs_saved_by_asha']} by ASHA, {prov['epochs_saved_by_patience']} by "
               f"the patience of {plan.patience}), confirmation {prov['confirm_epochs']}; "
               f"wall: search {search_seconds:.0f} s, final + reference {train_seconds:.0f} s, "
               f"all {total_seconds:.0f} s.")
    result.say("Trials: " + "; ".join(
        f"{row.trial_id}{' (' + row.anchor + ')' if row.anchor else ''} {row.value:.4f} at "
        f"epoch {int(row.best_epoch)} of {row.epochs_run}"
        + (f", stopped by {row.stopped_by}" if row.stopped_by else "")
        for row in exp.trials.dropna(subset=["value"]).itertuples()))
    first = by_recogniser[next(iter(by_recogniser))]
    winner = first["methods"]
    result.ratios += [
        Ratio("faces rank-1 search vs bicubic", winner["search"]["rank1"],
              winner["bicubic"]["rank1"], "rank-1 on the test persons, wide gallery; "
              + _points(first["pairs"]["search - bicubic"]["rank1"])),
        Ratio("faces rank-1 search vs pixel-only", winner["search"]["rank1"],
              winner["pixel-only"]["rank1"], "rank-1; "
              + _points(first["pairs"]["search - pixel-only"]["rank1"])),
    ]
    for rec, found in list(by_recogniser.items())[1:]:
        result.ratios.append(Ratio(
            f"faces held-out rank-1 search vs bicubic ({rec})",
            found["methods"]["search"]["rank1"], found["methods"]["bicubic"]["rank1"],
            "rank-1 under a recogniser DSR never trained against; "
            + _points(found["pairs"]["search - bicubic"]["rank1"])))
    result.ratios += [
        Ratio("faces margin search vs bicubic", winner["search"]["margin"],
              winner["bicubic"]["margin"], "margin; "
              + _signed(first["pairs"]["search - bicubic"]["margin"])),
        Ratio("faces wall time: whole workflow vs one training", total_seconds,
              train_seconds, "s (search, confirmation, final run, evaluation vs the reference "
              "training run beside the final one)"),
        Ratio("faces epochs spent vs budget", spent, budget_epochs,
              f"epochs ({budget.num_samples} trials x {budget.max_epochs} + {confirmed} "
              f"x {budget.confirm_runs} confirmation runs x {budget.max_epochs} + the final "
              f"run's {budget.final})"),
    ]
    result.data.update(budget=vars(budget), pins=pins, provenance=prov,
                       recognisers=by_recogniser, vlr_size=probes.vlr_size,
                       objective=plan.metric,
                       seconds={"search": search_seconds, "train": train_seconds,
                                "total": total_seconds},
                       trials=json.loads(exp.trials.to_json(orient="records")),
                       confirmations=json.loads(exp.confirmations().to_json(orient="index")))
    return result


def _points(d: dict[str, float]) -> str:
    return (f"{100 * d['difference']:+.1f} points [{100 * d['low']:+.1f}, "
            f"{100 * d['high']:+.1f}] paired 95 % (persons)")


def _signed(d: dict[str, float]) -> str:
    return f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] paired 95 % (persons)"
