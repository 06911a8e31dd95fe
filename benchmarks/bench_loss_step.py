"""One DSR training step with tune_dsr's DSRLoss versus the original system's pass pattern.

tune_dsr runs each frozen loss network twice per step: once on SR with autograd (so identity and
feature matching train DSR) and once on HR under ``no_grad``; identity and feature matching share
the two EdgeFace passes. The original ran EdgeFace four times per step (SR and HR for identity,
then both again for feature matching; REFERENCE.md, defect 3), the HR passes outside ``no_grad``.

The baseline here, `FourPassLoss`, reproduces that pass pattern with defects 1 and 2 repaired
(its SR passes keep autograd, its HR activations are kept), so that both variants compute the
same loss and the same gradient (checked before timing): what is measured is the cost of the
extra passes alone. Everything else in the step (DSR, VGG, AdamW, clipping) is identical.

    python benchmarks/bench_loss_step.py            # ~3 min on 2 CPU cores (1 thread)
    python benchmarks/bench_loss_step.py --quick    # smoke run, ~20 s (mostly imports)
    python benchmarks/bench_loss_step.py --device cuda

Per variant it reports the median step time over interleaved repeats, images/s, how that time
splits between the loss networks (their forward and backward, and EdgeFace's forward alone) and
DSR (forward, backward, optimiser), the bytes autograd saved for backward, and the step's peak
memory: on CUDA from ``torch.cuda.max_memory_allocated`` over the first step; on CPU as the rise
of peak RSS over a step that follows one warm-up step, in a fresh subprocess per variant.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _util import (
    add_common_flags,
    interleaved,
    load_line,
    machine_lines,
    median,
    now,
    setup,
    table,
    usable_cores,
)
from torch import Tensor, nn

from tune_dsr.config import LossConfig, ModelConfig
from tune_dsr.losses import DSRLoss, Perceptual, load_loss_networks, total_variation
from tune_dsr.models.dsr import DSR

VLR_SIZE, HR_SIZE, QUICK_HR_SIZE = 16, 112, 64
EDGEFACE = "random:edgeface_xxs"  # the default; --edgeface picks another
LR, WEIGHT_DECAY, GRAD_CLIP = 1.5e-4, 1e-6, 1.0  # the guide's optimiser settings


@dataclass(frozen=True)
class Case:
    label: str
    width: int
    depth: int


CASES = {"guide": Case("guide DSR C112 N16", 112, 16), "small": Case("small DSR C32 N4", 32, 4)}
VARIANTS = {"original": "original pattern (4 EdgeFace passes)", "tune_dsr": "tune_dsr DSRLoss"}


class FourPassLoss(nn.Module):
    """The original step's pass pattern: EdgeFace on SR and on HR for the identity term, then on
    SR and HR again for feature matching, none of the HR passes under ``no_grad``. The other terms
    are computed exactly as `DSRLoss` does, so the two losses agree to rounding."""

    def __init__(self, config: LossConfig, identity_net: nn.Module, perceptual: Perceptual) -> None:
        super().__init__()
        self.config = config
        self.identity_net = identity_net
        self.perceptual = perceptual

    def forward(self, sr: Tensor, hr: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        terms = {"l1": F.l1_loss(sr, hr), "tv": total_variation(sr)}
        with torch.no_grad():
            hr_vgg = self.perceptual.features(hr)
        sr_vgg = self.perceptual.features(sr)
        terms["perceptual"] = sum(
            (w * F.l1_loss(s, h) for w, s, h in
             zip(self.perceptual.layer_weights, sr_vgg, hr_vgg, strict=True)), sr.new_zeros(()))
        # Identity: one pass on each image, embeddings only.
        sr_embedding, _ = self.identity_net(sr)
        hr_embedding, _ = self.identity_net(hr)
        cosine = F.cosine_similarity(sr_embedding.float(), hr_embedding.float(), dim=1)
        terms["identity"] = (1.0 - cosine).mean()
        # Feature matching: both images through EdgeFace again, activations only.
        _, sr_acts = self.identity_net(sr)
        _, hr_acts = self.identity_net(hr)
        terms["feature_match"] = torch.stack(
            [F.l1_loss(s.float(), h.float()) for s, h in zip(sr_acts, hr_acts, strict=True)]
        ).mean()
        terms["total"] = (cfg.lambda_l1 * terms["l1"] + cfg.lambda_perceptual * terms["perceptual"]
                          + cfg.lambda_identity * terms["identity"]
                          + cfg.lambda_feature_match * terms["feature_match"]
                          + cfg.lambda_tv * terms["tv"])
        return terms


class EdgeFaceMeter:
    """Hooks on the shared EdgeFace: how often it ran, how many of those runs built an autograd
    graph, and its forward time (its backward cannot be told apart from VGG's)."""

    def __init__(self, net: nn.Module, device: torch.device) -> None:
        self.device = device
        self.runs = self.graphed = 0
        self.seconds = self._started = 0.0
        net.register_forward_pre_hook(self._before)
        net.register_forward_hook(self._after)

    def reset(self) -> None:
        self.runs = self.graphed = 0
        self.seconds = 0.0

    def _before(self, module: nn.Module, args: object) -> None:
        self._started = now(self.device)

    def _after(self, module: nn.Module, args: object, output: tuple[Tensor, object]) -> None:
        self.seconds += now(self.device) - self._started
        self.runs += 1
        self.graphed += int(output[0].requires_grad)


@dataclass
class Nets:
    identity: nn.Module
    vgg: nn.Sequential
    config: LossConfig
    meter: EdgeFaceMeter

    def loss(self, variant: str) -> nn.Module:
        perceptual = Perceptual(self.vgg, self.config)
        if variant == "tune_dsr":
            return DSRLoss(self.config, self.identity, perceptual)
        return FourPassLoss(self.config, self.identity, perceptual)


def load_nets(edgeface: str, device: torch.device) -> Nets:
    identity, vgg = load_loss_networks(edgeface, "random")
    identity = identity.to(device)
    # Default λs: all five terms weigh more than 0, so every network runs.
    return Nets(identity, vgg.to(device), LossConfig(), EdgeFaceMeter(identity, device))


def make_batch(batch: int, hr_size: int, device: torch.device,
               seed: int = 1) -> tuple[Tensor, Tensor]:
    """Smooth random 'faces' in [0, 1] and their antialiased bilinear VLR versions (speed does
    not depend on content)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 14, 14, generator=generator)
    hr = F.interpolate(coarse, size=(hr_size, hr_size), mode="bilinear", align_corners=False)
    vlr = F.interpolate(hr, size=(VLR_SIZE, VLR_SIZE), mode="bilinear", antialias=True,
                        align_corners=False)
    return vlr.clamp(0, 1).to(device), hr.clamp(0, 1).to(device)


@dataclass
class Phases:
    total: float
    loss_nets: float  # the loss's forward, and its backward down to the gradient w.r.t. SR
    edgeface_forward: float  # part of loss_nets: EdgeFace's forward passes
    dsr: float  # DSR forward, DSR backward, clipping and the optimiser step


class Runner:
    """One variant of one case: its own DSR and AdamW (same initial weights for every variant)."""

    def __init__(self, case: Case, variant: str, nets: Nets, batch: int, device: torch.device,
                 hr_size: int = HR_SIZE) -> None:
        torch.manual_seed(0)
        self.device = device
        self.nets = nets
        self.model = DSR(ModelConfig(vlr_size=VLR_SIZE, hr_size=hr_size, width=case.width,
                                     depth=case.depth)).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR,
                                           weight_decay=WEIGHT_DECAY)
        self.loss = nets.loss(variant).to(device)
        self.vlr, self.hr = make_batch(batch, hr_size, device)
        self.frozen_storages = {p.untyped_storage().data_ptr()
                                for module in (self.model, nets.identity, nets.vgg)
                                for p in module.parameters()}
        self.first: dict[str, float] | None = None

    def step(self) -> Phases:
        device, meter = self.device, self.nets.meter
        marks: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        meter.reset()
        t0 = now(device)
        sr = self.model(self.vlr)
        t1 = now(device)
        # Fires once the gradient w.r.t. SR is complete: the loss networks' backward is done and
        # DSR's own backward starts.
        sr.register_hook(lambda grad: marks.__setitem__("sr_grad", now(device)))
        terms = self.loss(sr, self.hr)
        terms["total"].backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        t2 = now(device)
        if not torch.isfinite(terms["total"]):
            raise SystemExit(f"the loss is {terms['total'].item()}: the benchmark diverged")
        loss_nets = marks["sr_grad"] - t1
        return Phases(total=t2 - t0, loss_nets=loss_nets, edgeface_forward=meter.seconds,
                      dsr=(t2 - t0) - loss_nets)

    def __call__(self) -> Phases:
        if self.first is None:  # the warm-up step also takes the memory and pass counts
            with self._measure() as first:
                phases = self.step()
            first["edgeface_runs"] = self.nets.meter.runs
            first["edgeface_graphed"] = self.nets.meter.graphed
            self.first = first
            return phases
        return self.step()

    @contextmanager
    def _measure(self) -> Iterator[dict[str, float]]:
        saved: dict[int, int] = {}

        def pack(tensor: Tensor) -> Tensor:
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self.frozen_storages:  # weights are not activation memory
                saved[ptr] = storage.nbytes()
            return tensor

        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        out: dict[str, float] = {}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield out
        out["saved_mib"] = sum(saved.values()) / 2**20
        if cuda:
            torch.cuda.synchronize(self.device)
            out["peak_mib"] = (torch.cuda.max_memory_allocated(self.device) - before) / 2**20


def check_same_math(nets: Nets, device: torch.device) -> str:
    """Both variants must give the same terms and the same gradient, or the timing compares
    different work; and an HR pass outside no_grad must record no graph (frozen net, HR without
    gradient), which is why the original's missing no_grad costs no memory."""
    torch.manual_seed(0)
    model = DSR(ModelConfig(vlr_size=VLR_SIZE, hr_size=HR_SIZE, width=8, depth=1)).to(device)
    vlr, hr = make_batch(2, HR_SIZE, device, seed=2)
    results = []
    for variant in ("tune_dsr", "original"):
        sr = model(vlr)
        terms = nets.loss(variant)(sr, hr)
        grads = torch.autograd.grad(terms["total"], list(model.parameters()))
        results.append((terms, torch.cat([g.flatten() for g in grads])))
    (terms_a, grad_a), (terms_b, grad_b) = results
    term_diff = max(abs(terms_a[k].item() - terms_b[k].item()) for k in terms_a)
    grad_diff = ((grad_a - grad_b).abs().max() / grad_a.abs().max().clamp_min(1e-12)).item()
    if term_diff > 1e-5 or grad_diff > 1e-4:
        raise SystemExit(f"the baseline does not compute tune_dsr's loss: max |Δterm| "
                         f"{term_diff:.2e}, max relative |Δgrad| {grad_diff:.2e}")
    with torch.enable_grad():
        embedding, _ = nets.identity(hr)
    if embedding.requires_grad:
        raise SystemExit("EdgeFace on HR built an autograd graph: the loss network is not frozen")
    return (f"check: both variants give the same terms (max |Δ| {term_diff:.1e}) and DSR "
            f"gradient (max relative |Δ| {grad_diff:.1e}); an HR pass outside no_grad builds "
            "no graph (frozen EdgeFace, HR needs no gradient)")


# ----------------------------------------------------------------------------- CPU peak memory

# glibc keeps freed memory resident for reuse, so a process's RSS says little about what a step
# needs. In the probe processes every allocation above 64 KiB is its own mapping, unmapped on free:
# RSS then follows live memory, and the peak RSS rise over a step is that step's peak need.
_PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_rss_kib() -> int:
    """VmHWM: the counter getrusage's ru_maxrss is read from. ru_maxrss itself is not used: it
    also keeps the peak seen when any thread of the process exited, which clear_refs does not
    reset (a probe saw the set-up's 1.3 GB peak come back through it)."""
    peak = _status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def probe(case_key: str, variant: str, edgeface: str, batch: int, threads: int, hr_size: int,
          steps: int) -> None:
    """In a fresh process: how far the last of `steps` steps raises peak RSS (JSON on stdout)."""
    device = setup("cpu", threads)
    runner = Runner(CASES[case_key], variant, load_nets(edgeface, device), batch, device, hr_size)
    delta: float | None = None
    for _ in range(steps):  # the first step also allocates AdamW's state and one-off caches
        gc.collect()
        reset = _reset_peak_rss()
        before = _current_rss_kib()
        peak_before = _peak_rss_kib()
        runner.step()
        peak = _peak_rss_kib()
        # Without the reset, a step whose peak stays below an earlier one (building VGG19 makes
        # its 0.5 GB classifier) cannot be seen: report nothing rather than a wrong number.
        delta = (peak - before) / 1024 if reset or peak > peak_before else None
    print(json.dumps({"rss_delta_mib": delta}))


def run_probes(jobs: list[tuple[str, str]], edgeface: str, batch: int, threads: int,
               hr_size: int, steps: int, concurrent: int) -> dict[tuple[str, str], float | None]:
    """One subprocess per (case, variant), `concurrent` at a time (RSS does not depend on it)."""
    env = {**os.environ, **_PROBE_ENV}

    def start(job: tuple[str, str]) -> subprocess.Popen[str]:
        command = [sys.executable, str(Path(__file__).resolve()), "--_probe", *job,
                   "--edgeface", edgeface, "--batch", str(batch), "--threads", str(threads),
                   "--_hr", str(hr_size), "--_steps", str(steps)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    def finish(job: tuple[str, str], process: subprocess.Popen[str]) -> float | None:
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"memory probe {job[0]}/{job[1]} failed:\n{stderr}")
        return json.loads(stdout.strip().splitlines()[-1])["rss_delta_mib"]

    peaks: dict[tuple[str, str], float | None] = {}
    for first in range(0, len(jobs), concurrent):
        running = [(job, start(job)) for job in jobs[first:first + concurrent]]
        peaks.update((job, finish(job, process)) for job, process in running)
    return peaks


# ----------------------------------------------------------------------------- main

def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser)
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (default 16; 2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per variant, median reported (default 3; 1 with --quick)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps per variant first (>= 1; the first one also counts "
                             "EdgeFace runs and saved tensors, and on CUDA the peak memory)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES),
                        help="which DSR sizes to measure (default: both)")
    parser.add_argument("--edgeface", default=EDGEFACE,
                        help=f"the identity network, random:<variant> or a checkpoint path "
                             f"(default {EDGEFACE})")
    parser.add_argument("--no-rss", action="store_true",
                        help="CPU: skip the per-variant subprocesses that measure peak RSS")
    parser.add_argument("--_probe", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_hr", type=int, default=HR_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--_steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch = args.batch or (2 if args.quick else 16)
    if args._probe:
        probe(*args._probe, args.edgeface, batch, args.threads, args._hr, args._steps)
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    if batch < 1 or repeats < 1 or args.warmup < 1:
        parser.error("--batch, --repeats and --warmup must each be >= 1")
    # --quick: smaller HR images too (VGG and DSR's last stages scale with them); its numbers
    # only show that the script runs.
    hr_size = QUICK_HR_SIZE if args.quick else HR_SIZE

    started = time.perf_counter()
    device = setup(args.device, args.threads)
    print("bench_loss_step: one DSR training step (forward, five-term loss, backward, clip, "
          "AdamW)")
    for line in machine_lines(device):
        print("  " + line)
    print(f"  batch {batch}, VLR {VLR_SIZE} -> HR {hr_size}, EdgeFace {args.edgeface}, random "
          f"VGG19, float32, warm-up {args.warmup}, repeats {repeats} (interleaved), median "
          "reported")
    nets = load_nets(args.edgeface, device)
    print("  " + check_same_math(nets, device))

    timings: dict[tuple[str, str], tuple[list[Phases], dict[str, float]]] = {}
    for case_key in args.cases:
        runners = {v: Runner(CASES[case_key], v, nets, batch, device, hr_size) for v in VARIANTS}
        results = interleaved(dict(runners), args.warmup, repeats)
        for variant, runner in runners.items():
            timings[case_key, variant] = (results[variant], runner.first or {})  # type: ignore
        del runners, results

    peaks: dict[tuple[str, str], float | None] = {}
    if device.type == "cpu" and not args.no_rss:
        # --quick: only the small DSR and one step: the code path is exercised, no more.
        probe_cases = ["small"] if args.quick else args.cases
        jobs = [(c, v) for c in probe_cases if c in args.cases for v in VARIANTS]
        concurrent = 2 if args.quick or 2 * args.threads <= usable_cores() else 1
        peaks = run_probes(jobs, args.edgeface, batch, args.threads, hr_size,
                           1 if args.quick else 2, concurrent)

    rows, summaries = [], []
    for case_key in args.cases:
        case = CASES[case_key]
        stats = {}
        for variant in VARIANTS:
            phases, first = timings[case_key, variant]
            total = median([p.total for p in phases])
            loss_nets = median([p.loss_nets for p in phases])
            peak = first.get("peak_mib", peaks.get((case_key, variant)))
            stats[variant] = (total, loss_nets, first.get("saved_mib"), peak)
            fastest, slowest = min(p.total for p in phases), max(p.total for p in phases)
            rows.append([
                case.label, VARIANTS[variant],
                f"{first['edgeface_runs']:.0f} ({first['edgeface_graphed']:.0f})",
                f"{total * 1e3:.0f}", f"{fastest * 1e3:.0f}-{slowest * 1e3:.0f}",
                f"{batch / total:.2f}",
                f"{loss_nets * 1e3:.0f} ({loss_nets / total:.0%})",
                f"{median([p.edgeface_forward for p in phases]) * 1e3:.0f}",
                f"{median([p.dsr for p in phases]) * 1e3:.0f}",
                _fmt(first.get("saved_mib")), _fmt(peak)])
        (t_o, l_o, s_o, p_o), (t_n, l_n, s_n, p_n) = stats["original"], stats["tune_dsr"]
        line = (f"{case.label}: step x{t_o / t_n:.2f} ({t_o * 1e3:.0f} -> {t_n * 1e3:.0f} ms), "
                f"loss networks x{l_o / l_n:.2f}")
        if s_o and s_n:
            line += f"; saved for backward x{s_n / s_o:.2f}"
        if p_o and p_n:
            line += f", peak memory x{p_n / p_o:.2f}"
        summaries.append(line)

    peak_label = "peak Δ MiB (cuda)" if device.type == "cuda" else "peak RSS Δ MiB (subproc.)"
    print()
    print(table(["case", "variant", "EdgeFace runs (graphed)", "ms/step", "min-max ms",
                 "images/s", "loss nets ms (share)", "of which EdgeFace fwd ms", "DSR+optim ms",
                 "saved for bwd MiB", peak_label], rows))
    print()
    print("speed-up = original-pattern time / tune_dsr time; memory = tune_dsr / original:")
    for line in summaries:
        print("  " + line)
    print(f"  {load_line()}; wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
