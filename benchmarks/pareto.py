"""Part "pareto": the Pareto-aware ASHA against the same multi-objective search with every trial
at the full budget.

Both run through tune_dsr's own search service with the same preset space, objectives, seeded
multi-objective TPE, anchors and data, once per seed; the only difference is the scheduler:

- tune_dsr: `ParetoASHA` (grace 1 epoch, reduction factor 3) stops, at each rung, the trials
  outside the best third by non-dominated sorting (crowding distance inside a front);
- full budget: every trial runs every epoch (ASHA's grace period is the whole budget).

The patience is off in both (the budget), so the scheduler alone makes the difference. What is
compared: the epochs spent and the hypervolume of the front each search found (the area of
objective space its trials dominate, against a reference corner shared by both searches of a
seed: the worst value of each objective that either search saw).

The objectives: validation PSNR (max) against the identity loss (min), on a tiny DSR (C8 N1,
16 -> 32 px) with random loss networks and synthetic faces, searching `quality_first`'s loss
weights. The two pull apart for real here (a larger identity weight lowers the identity loss
and costs PSNR), unlike the recognition margin, which a random EdgeFace makes mostly noise; the
figures model a search, they are not a result about faces (docs/results.md has the real front).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from typing import Any

from benchmarks import raylocal
from benchmarks.common import Context, PartResult, Ratio, fmt

SPACE = "quality_first"
OBJECTIVES = ("val_psnr", "val_identity_loss")
PINS: dict[str, Any] = {"width": 8, "depth": 1, "hr_size": 32, "batch_size": 8,
                        "warmup_epochs": 1}
NETWORKS = {"edgeface": "random:edgeface_xxs", "perceptual_weights": "random"}


def _run_one(ctx: Context, splits: dict[str, Any], way: str, seed: int, samples: int,
             epochs: int) -> dict[str, Any]:
    from tune_dsr.tuning.analysis import load_experiment
    from tune_dsr.tuning.service import SearchOptions, plan_search, run_search

    options = SearchOptions(
        space=SPACE, objectives=",".join(OBJECTIVES), train_dir=str(splits["train"]),
        val_dir=str(splits["val"]), vlr_size=16, pins=PINS, num_samples=samples,
        max_epochs=epochs, grace_period=epochs if way == "full" else 1, reduction_factor=3,
        patience=epochs, cpus_per_trial=1, max_concurrent=1 if ctx.demo else 2,
        storage_path=str(ctx.workdir / "pareto"), name=f"{way}-seed{seed}", seed=seed,
        max_failures=0, **NETWORKS)
    plan = plan_search(options)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Tune's progress tables
        run_search(plan)
    seconds = time.perf_counter() - started
    front = load_experiment(plan.experiment_path).front()
    points = front[list(OBJECTIVES)].to_numpy(dtype=float)
    return {"seed": seed, "epochs": int(front["epochs_run"].sum()), "points": points,
            "on_front": int((front["front"] == 0).sum()), "trials": len(front),
            "seconds": seconds}


def run(ctx: Context) -> PartResult:
    import numpy as np

    from tune_dsr.config import direction
    from tune_dsr.synthetic import make_synthetic_dataset
    from tune_dsr.tuning.pareto_asha import hypervolume

    result = PartResult("pareto")
    demo = ctx.demo
    seeds = [1] if demo else [1, 2, 3]
    samples = 3 if demo else 18
    epochs = 2 if demo else 9
    raylocal.ensure(warm=not demo)
    splits = make_synthetic_dataset(ctx.workdir / "pareto_faces", subjects=6 if demo else 10,
                                    per_subject=2 if demo else 4, vlr_sizes=(16,),
                                    hr_size=PINS["hr_size"], seed=0)
    modes = [direction(m) for m in OBJECTIVES]
    result.say(f"Preset '{SPACE}' searched for {' and '.join(OBJECTIVES)} together, with "
               f"{', '.join(f'{k}={v}' for k, v in PINS.items())} held fixed; {samples} "
               f"configurations of up to {epochs} epochs per search, seeds "
               f"{', '.join(map(str, seeds))}; patience off. tune_dsr: ParetoASHA grace 1, "
               "reduction factor 3. Full budget: every trial to the end.")
    runs: dict[str, list[dict[str, Any]]] = {"pareto_asha": [], "full": []}
    rows = []
    for seed in seeds:
        pair = {way: _run_one(ctx, splits, way, seed, samples, epochs)
                for way in (("pareto_asha", "full") if seed % 2 else ("full", "pareto_asha"))}
        seen = np.vstack([pair[way]["points"] for way in pair])
        signs = np.array([1.0 if m == "max" else -1.0 for m in modes])
        # The shared reference: each objective's worst value either search saw.
        reference = (np.nanmin(seen * signs, axis=0) * signs).tolist()
        for way, found in pair.items():
            found["hypervolume"] = hypervolume(found["points"], modes, reference)
            found["reference"] = reference
            runs[way].append(found)
            rows.append([way, seed, found["trials"], found["on_front"],
                         f"{found['epochs']} of {samples * epochs}",
                         fmt(found["hypervolume"], 4), fmt(found["seconds"])])
    result.say()
    result.table(["search", "seed", "trials", "on the front", "epochs run", "hypervolume",
                  "wall s"], rows)
    mean = {way: {key: statistics.fmean(r[key] for r in runs[way])
                  for key in ("epochs", "hypervolume", "seconds")} for way in runs}
    per_epoch = {way: mean[way]["hypervolume"] / max(mean[way]["epochs"], 1) for way in runs}
    result.ratios += [
        Ratio("pareto epochs", mean["pareto_asha"]["epochs"], mean["full"]["epochs"], "epochs"),
        Ratio("pareto hypervolume", mean["pareto_asha"]["hypervolume"],
              mean["full"]["hypervolume"], "(PSNR dB x identity loss)"),
        Ratio("pareto hypervolume per epoch", per_epoch["pareto_asha"], per_epoch["full"],
              "per epoch"),
        Ratio("pareto wall time", mean["pareto_asha"]["seconds"], mean["full"]["seconds"], "s"),
    ]
    result.data.update(runs={way: [{k: v for k, v in r.items() if k != "points"}
                                   | {"points": r["points"].tolist()} for r in runs[way]]
                             for way in runs}, means=mean)
    return result
