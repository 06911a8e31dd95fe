"""Part "gpu" (CUDA only): how well trials use one GPU.

- images/s of one trial: tune_dsr's `Trainer` training epochs on the GPU in this process (its
  default fast paths), and its peak GPU memory (`torch.cuda.max_memory_allocated`);
- FLOPs per training image, counted by `torch.utils.flop_counter.FlopCounterMode` over one
  training step (DSR forward and backward, the loss networks' forward and backward);
- the GPU's measured bf16 matmul rate (large square matmuls), and the fraction of it that one
  trial and packed trials reach (FLOPs per image x images/s);
- aggregate images/s of 1, 2, 4 and 8 trials packed on the GPU as Ray Tune trials with
  fractional GPUs (1/k each, every trial its own process), through tune_dsr's trainable: the
  sum over trials of their median training images/s from epoch 2 on.

Without CUDA the part prints "not measured (no CUDA)" and gives no ratio.
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any

import torch

from benchmarks.common import Context, PartResult, Ratio, fmt, median

GUIDE = {"width": 112, "depth": 16}
NETWORKS = {"edgeface": "random:edgeface_xxs", "perceptual_weights": "random"}


def bf16_matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """The GPU's measured dense bf16 matmul rate, TFLOP/s (the best of three timings)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best / 1e12


def _trainer(settings: dict[str, Any], train: Any, val: Any) -> Any:
    from tune_dsr.config import Config
    from tune_dsr.training.losses import load_loss_networks
    from tune_dsr.training.trainer import Trainer

    identity, vgg = load_loss_networks(settings["edgeface"], settings["perceptual_weights"])
    return Trainer(Config().replace(**settings), train, val, identity, vgg)


def flops_per_image(trainer: Any, batch: int) -> float:
    """FLOPs of one training step (forward and backward) per image, counted in float32 eager
    (the count does not depend on the precision or the kernels)."""
    from torch.utils.flop_counter import FlopCounterMode

    from tune_dsr.data import to_float

    device = trainer.device
    vlr = to_float(trainer.train_set.vlr[:batch].to(device))
    hr = to_float(trainer.train_set.hr[:batch].to(device))
    counter = FlopCounterMode(display=False)
    with counter:
        sr = trainer.model(vlr)
        terms = trainer.loss(sr, hr)
        terms["total"].backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(vlr)


def packed(ctx: Context, train: Any, val: Any, settings: dict[str, Any], trials: int
           ) -> tuple[float, list[float]]:
    """`trials` Tune trials at once on one GPU (1/trials each); their summed median images/s
    from epoch 2 on, and each trial's."""
    import ray
    from ray import tune

    from tune_dsr.tuning.trainable import make_trainable

    cpus = min(1.0, ray.cluster_resources().get("CPU", 2) / trials)
    trainable = make_trainable(train, val, cpus=cpus, gpus=1 / trials, objective="val_score")
    tuner = tune.Tuner(
        trainable, param_space=settings,
        tune_config=tune.TuneConfig(num_samples=trials),
        run_config=tune.RunConfig(name=f"gpu_packed_{trials}",
                                  storage_path=str(ctx.workdir / "gpu"), verbose=0))
    with contextlib.redirect_stdout(io.StringIO()):
        results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"a packed GPU trial failed: {errors[0]}")
    speeds = []
    for r in results:
        history = r.metrics_dataframe
        speeds.append(float(history["images_per_s"].iloc[1:].median()))
    return sum(speeds), speeds


def run(ctx: Context) -> PartResult:
    result = PartResult("gpu")
    if not torch.cuda.is_available():
        result.say("gpu: not measured (no CUDA)")
        return result
    from benchmarks import raylocal
    from tune_dsr.data import PairedFaces
    from tune_dsr.synthetic import make_synthetic_dataset

    device = torch.device("cuda")
    demo = ctx.demo
    hr_size = 32 if demo else 112
    splits = make_synthetic_dataset(ctx.workdir / "gpu_faces", subjects=6,
                                    per_subject=4 if demo else 64, vlr_sizes=(16,),
                                    hr_size=hr_size, seed=0)
    train = PairedFaces.load(splits["train"], vlr_size=16, hr_size=hr_size)
    val = PairedFaces.load(splits["val"], vlr_size=16, hr_size=hr_size, max_images=16)
    batch = 4 if demo else 16
    epochs = 2 if demo else 4
    settings = {**NETWORKS, **GUIDE, "vlr_size": 16, "hr_size": hr_size, "batch_size": batch,
                "epochs": epochs, "warmup_epochs": 1, "patience": 0,
                "monitor": "val_score", "device": "cuda", "seed": 42}
    result.say(f"{torch.cuda.get_device_name(device)}; guide DSR C112 N16, 16 -> {hr_size}px, "
               f"batch {batch}, {len(train)} training pairs per epoch, tune_dsr's default "
               "fast paths.")

    rate = bf16_matmul_tflops(device, 2048 if demo else 8192)
    trainer = _trainer(settings, train, val)
    flops = flops_per_image(trainer, batch)
    trainer._train_epoch()  # warm-up: cuDNN autotuning, allocator
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(1 if demo else 3):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        trainer._train_epoch()
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    one = len(train) / median(seconds)
    del trainer
    torch.cuda.empty_cache()

    def utilisation(images_per_s: float) -> float:
        return flops * images_per_s / 1e12 / rate

    rows = [["one trial, in this process", fmt(one), fmt(peak_mib),
             f"{utilisation(one):.1%}", ""]]
    raylocal.ensure(num_gpus=1, warm=not demo)
    aggregate = {}
    for trials in (1, 2) if demo else (1, 2, 4, 8):
        total, each = packed(ctx, train, val, settings, trials)
        aggregate[trials] = total
        rows.append([f"{trials} Tune trial(s) packed ({fmt(1 / trials)} GPU each)", fmt(total),
                     "", f"{utilisation(total):.1%}",
                     ", ".join(fmt(speed) for speed in each)])
    result.say(f"FLOPs per training image: {fmt(flops / 1e9)} GFLOP; measured bf16 matmul "
               f"rate: {fmt(rate)} TFLOP/s.")
    result.table(["run", "images/s", "peak GPU MiB per trial", "of the bf16 matmul rate",
                  "images/s of each trial"], rows)
    best = max(aggregate, key=lambda k: aggregate[k])
    result.ratios += [
        Ratio(f"gpu packed {best} trials vs 1", aggregate[best], aggregate[1], "images/s"),
        Ratio("gpu one trial vs bf16 matmul rate", flops * one / 1e12, rate, "TFLOP/s"),
        Ratio(f"gpu {best} packed trials vs bf16 matmul rate", flops * aggregate[best] / 1e12,
              rate, "TFLOP/s"),
    ]
    result.data = {"flops_per_image": flops, "bf16_tflops": rate, "one_trial_images_per_s": one,
                   "peak_mib": peak_mib, "packed": aggregate}
    return result
