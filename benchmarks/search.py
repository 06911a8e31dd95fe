"""Part "search": tune_dsr's ASHA + TPE against the guide's way of searching.

Both run through tune_dsr's own search service (`tune_dsr.tuning.service`: `plan_search`,
`run_search`), with the same preset space, the same number of configurations, the same seeded
TPE sampler and the same data, once per seed:

- tune_dsr: ASHA stops poor trials at its rungs (grace 1 epoch, reduction factor 3), beside the
  patience below.
- the guide's way: every configuration gets the full epoch budget, stopped only by the guide's
  patience (20 % of the budget, as 20 of 100 epochs in the guide); ASHA's grace period is the
  whole budget, so it never stops a trial.

Both start with the preset's anchors (the guide's values, then pixel-only) and confirm nothing
(``confirm=0``): what is compared is the search itself.

The objective comes from real trainings of a tiny DSR (C8 N1, 16 -> 32 px) on tiny synthetic
faces with random loss networks: cheap enough to run 2 x 3 searches, and its figures are a
model of a search, not a result about faces. The preset is `quality_first` (objective: validation
PSNR), with the network, batch size and warm-up held fixed: PSNR rises steadily in such short
runs, while `val_score`'s recognition margin from a random EdgeFace is mostly noise. What is
compared: the epochs spent (the cost of a search) and the best objective reached (its outcome).
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import time
from typing import Any

from benchmarks import raylocal
from benchmarks.common import Context, PartResult, Ratio, fmt

SPACE = "quality_first"  # searched here: the five loss weights, the learning rate, bicubic skip
PINS: dict[str, Any] = {"width": 8, "depth": 1, "hr_size": 32, "batch_size": 8,
                        "warmup_epochs": 1}
NETWORKS = {"edgeface": "random:edgeface_xxs", "perceptual_weights": "random"}
PATIENCE_SHARE = 0.2  # the guide: patience 20 of 100 epochs (the fast preset: 12 of 60)


def _run_one(ctx: Context, splits: dict[str, Any], way: str, seed: int, samples: int,
             epochs: int) -> dict[str, Any]:
    from tune_dsr.tuning.service import SearchOptions, plan_search, run_search

    guide = way == "guide"
    options = SearchOptions(
        space=SPACE, train_dir=str(splits["train"]), val_dir=str(splits["val"]), vlr_size=16,
        pins=PINS, num_samples=samples, max_epochs=epochs,
        grace_period=epochs if guide else 1, reduction_factor=3, cpus_per_trial=1,
        patience=max(1, round(PATIENCE_SHARE * epochs)), confirm=0,
        max_concurrent=1 if ctx.demo else 2,
        storage_path=str(ctx.workdir / "search"), name=f"{way}-seed{seed}", seed=seed,
        max_failures=0, **NETWORKS)
    plan = plan_search(options)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Tune's progress tables
        document = run_search(plan)
    provenance = document["provenance"]
    return {"seed": seed, "epochs": int(provenance["epochs_total"]),
            "epochs_full": int(provenance["epochs_full"]), "best": float(provenance["value"]),
            "trials": int(provenance.get("trials", samples)),
            "seconds": time.perf_counter() - started, "metric": provenance["metric"]}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def run(ctx: Context) -> PartResult:
    from tune_dsr.synthetic import make_synthetic_dataset

    result = PartResult("search")
    demo = ctx.demo
    seeds = [1] if demo else [1, 2, 3]
    samples = 2 if demo else 18
    epochs = 2 if demo else 9
    raylocal.ensure(warm=not ctx.demo)
    splits = make_synthetic_dataset(ctx.workdir / "search_faces", subjects=6 if demo else 10,
                                    per_subject=2 if demo else 4, vlr_sizes=(16,),
                                    hr_size=PINS["hr_size"], seed=0)
    result.say(f"Preset '{SPACE}' with {', '.join(f'{k}={v}' for k, v in PINS.items())} held "
               f"fixed; {samples} configurations of up to {epochs} epochs per search, seeds "
               f"{', '.join(map(str, seeds))}; {1 if demo else 2} trial(s) at a time (1 CPU "
               f"each); patience {max(1, round(PATIENCE_SHARE * epochs))} epochs in both. "
               "tune_dsr: ASHA grace 1, reduction factor 3. The guide's way: full budget.")
    runs: dict[str, list[dict[str, Any]]] = {"tune_dsr": [], "guide": []}
    for seed in seeds:
        for way in ("tune_dsr", "guide") if seed % 2 else ("guide", "tune_dsr"):
            runs[way].append(_run_one(ctx, splits, way, seed, samples, epochs))
    metric = runs["tune_dsr"][0]["metric"]
    rows = []
    for way, label in (("tune_dsr", "tune_dsr: ASHA + TPE"),
                       ("guide", "the guide's way: full budget + patience")):
        for run_ in runs[way]:
            rows.append([label, run_["seed"], run_["trials"],
                         f"{run_['epochs']} of {run_['epochs_full']}", fmt(run_["best"], 4),
                         fmt(run_["seconds"])])
    result.say()
    result.table(["search", "seed", "trials", "epochs run", f"best {metric}", "wall s"], rows)
    mean = {way: {key: _mean([r[key] for r in runs[way]]) for key in ("epochs", "best",
                                                                     "seconds")}
            for way in runs}
    if len(seeds) > 1:
        # Seed-to-seed spread within each way, pooled; the standard error of the difference of
        # two means of len(seeds) searches each.
        pooled = math.sqrt(statistics.fmean(
            [statistics.variance([r["best"] for r in runs[way]]) for way in runs]))
        error = pooled * math.sqrt(2 / len(seeds))
        gap = mean["tune_dsr"]["best"] - mean["guide"]["best"]
        result.say(f"Best {metric}, mean over seeds: tune_dsr {fmt(mean['tune_dsr']['best'], 4)}"
                   f", the guide's way {fmt(mean['guide']['best'], 4)}: a difference of "
                   f"{fmt(gap, 2)}, against a seed-to-seed standard deviation of {fmt(pooled, 2)}"
                   f" (pooled within each way; standard error of the difference {fmt(error, 2)})."
                   f" Same best within noise: {'yes' if abs(gap) <= 2 * error else 'NO'} "
                   "(|difference| <= 2 standard errors).")
        result.data["noise"] = {"pooled_sd": pooled, "difference_se": error, "difference": gap}
    result.ratios += [
        Ratio("search epochs", mean["tune_dsr"]["epochs"], mean["guide"]["epochs"], "epochs"),
        Ratio(f"search best {metric}", mean["tune_dsr"]["best"], mean["guide"]["best"],
              "dB" if metric.endswith("psnr") else metric),
        Ratio("search wall time", mean["tune_dsr"]["seconds"], mean["guide"]["seconds"], "s"),
    ]
    result.data.update(runs=runs, means=mean)
    return result
