"""Parts "overhead" and "memory": what running a training as a Ray Tune trial costs.

overhead: the same training run three ways, interleaved: the bare `Trainer.fit()` loop, the same
writing a run folder (best.pt, the picture grid, metrics.jsonl, as a trial does), and as a Tune
trial through tune_dsr's own trainable (`tune_dsr.tuning.trainable.train_dsr` behind
`make_trainable`).
Per epoch (epochs 2 on: the first pays one-off work) it compares the time between two epochs'
ends; and it times a trial's start-up, from `Tuner.fit()` to the end of the first epoch less one
epoch: Tune's set-up, the trial's process and imports, its data from the object store, the loss
networks and the Trainer.

memory: host memory of one trial (the overhead part's Tune run) and of four concurrent trials
(two with --demo). Every trial is handed the same large set through the object store
(`tune.with_parameters`, as a search does), reads all of it, and trains for real on its first
pairs, the bare runs' data; a sampler reads every trial process's /proc/PID/smaps_rollup
meanwhile, and each trial says whether the set's bytes sit in a shared mapping or in its
private memory.

The trial function `probe_train_dsr` wraps tune_dsr's own `train_dsr` and only notes its process
id, start time and memory first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray.tune import Callback as TuneCallback

from benchmarks import raylocal
from benchmarks.common import Context, PartResult, Ratio, fmt, median, proc_memory_mib, spread
from tune_dsr.config import Config
from tune_dsr.data import PairedFaces
from tune_dsr.tuning.trainable import (  # imported by a trial as it unpickles
    make_trainable,
    train_dsr,
)

PROBE_DIR = "_bench_probe_dir"  # config keys the probe reads and removes before train_dsr
TRAIN_PAIRS = "_bench_train_pairs"
OBJECTIVE = "val_score"
NETWORKS = {"edgeface": "random:edgeface_xxs", "perceptual_weights": "random"}
PRIVATE = "private memory (a copy)"


def _process_started_at() -> float:
    """This process's start as a Unix time (Linux: /proc/self/stat and the boot time)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return float("nan")


def _mapping_of(address: int) -> str:
    """What holds `address` in this process: a file or shared-memory mapping (the object store),
    or anonymous private memory (the heap: a copy)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        parts = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if start <= address < end:
            path = parts[5].strip() if len(parts) > 5 else ""
            if not path or path.startswith("["):
                return PRIVATE
            return f"shared mapping {Path(path.split(' (deleted)')[0]).name}"
    return "unknown"


def probe_train_dsr(config: dict[str, Any], train_set: PairedFaces, val_set: PairedFaces,
                    **kwargs: Any) -> None:
    """tune_dsr's trial function, after noting the process, the time and the memory at entry.

    With ``_bench_train_pairs`` = n it trains on the first n pairs (a view) while holding the
    whole set, every byte of which it has read once (that read is timed, to be left out of the
    start-up)."""
    entry = time.time()
    settings = {k: v for k, v in config.items() if k not in (PROBE_DIR, TRAIN_PAIRS)}
    pairs = config.get(TRAIN_PAIRS)
    started = time.perf_counter()
    checksum = int(train_set.vlr.sum()) + int(train_set.hr.sum()) if pairs else 0
    record = {"pid": os.getpid(), "entry": entry, "process_started": _process_started_at(),
              "read_s": time.perf_counter() - started,
              "memory_at_entry": proc_memory_mib(), "checksum": checksum,
              "data_mapping": _mapping_of(train_set.hr.data_ptr())}
    folder = Path(config[PROBE_DIR])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}-{entry:.6f}.json").write_text(json.dumps(record))
    if pairs:
        train_set = PairedFaces(train_set.names[:pairs], train_set.vlr[:pairs],
                                train_set.hr[:pairs], train_set.split_dir)
    train_dsr(settings, train_set, val_set, **kwargs)


def _probes(folder: Path) -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")),
                  key=lambda r: r["entry"])


class MemorySampler:
    """Samples the memory of the probe-reported trial processes every `period` s, keeping the peak
    of their sum for rss, pss and uss, and each process's peak."""

    def __init__(self, folder: Path, period: float = 0.1) -> None:
        self.folder, self.period = folder, period
        self.peak_sum: dict[str, float] = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
        self.peak_each: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            pids = {int(p.name.split("-")[0]) for p in self.folder.glob("*.json")}
            totals = dict.fromkeys(self.peak_sum, 0.0)
            for pid in pids:
                memory = proc_memory_mib(pid)
                if not memory:
                    continue
                each = self.peak_each.setdefault(pid, dict.fromkeys(self.peak_sum, 0.0))
                for key in totals:
                    totals[key] += memory[key]
                    each[key] = max(each[key], memory[key])
            for key, value in totals.items():
                self.peak_sum[key] = max(self.peak_sum[key], value)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ResultClock(TuneCallback):
    """A Tune callback: the driver's time of arrival of every reported result."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float, dict[str, Any]]] = []

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        self.arrivals.append((trial.trial_id, time.time(), dict(result)))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Tune's progress tables go to stdout; the suite prints its own."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def run_tune(train: PairedFaces, val: PairedFaces, settings: dict[str, Any], storage: Path,
             name: str, *, trials: int = 1, cpus: float = 1.0
             ) -> tuple[float, Any, list[dict[str, Any]]]:
    """Run `trials` identical trials of `probe_train_dsr`; returns the time `Tuner.fit()` was
    called, the result clock and the probes (sorted by entry)."""
    from ray import tune

    probes = storage / f"{name}-probes"
    trainable = make_trainable(train, val, cpus=cpus, gpus=0, objective=OBJECTIVE,
                               function=probe_train_dsr)
    clock = ResultClock()
    tuner = tune.Tuner(
        trainable, param_space={**settings, PROBE_DIR: str(probes)},
        tune_config=tune.TuneConfig(num_samples=trials),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=[clock],
                                  verbose=0))
    fit_called = time.time()
    with _quiet():
        results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"a benchmark trial failed: {errors[0]}")
    return fit_called, clock, _probes(probes)


# ----------------------------------------------------------------------------- the runs

def big_set(base: PairedFaces, total_mib: float, seed: int = 0) -> PairedFaces:
    """`base` followed by random filler pairs up to `total_mib` MiB: a trial that trains on the
    first len(base) pairs trains on `base` while holding a large set (content does not matter to
    memory). The filler's subjects are new ones."""
    pair_bytes = 3 * (base.vlr_size**2 + base.hr_size**2)
    filler = max(0, int(total_mib * 2**20) // pair_bytes - len(base))
    generator = torch.Generator().manual_seed(seed)
    names = [f"{9000 + i % 50:04d}_{i // 50:05d}.png" for i in range(filler)]
    vlr = torch.randint(0, 256, (filler, 3, base.vlr_size, base.vlr_size), dtype=torch.uint8,
                        generator=generator)
    hr = torch.randint(0, 256, (filler, 3, base.hr_size, base.hr_size), dtype=torch.uint8,
                       generator=generator)
    return PairedFaces([*base.names, *names], torch.cat([base.vlr, vlr]),
                       torch.cat([base.hr, hr]), base.split_dir)


@dataclass
class Inputs:
    train: PairedFaces  # what every run trains on
    val: PairedFaces
    big: PairedFaces  # `train` plus filler: what the Tune trials are handed
    settings: dict[str, Any]  # the flat config of every run


_INPUTS: dict[Path, Inputs] = {}
_ONE_TRIAL: dict[Path, list[dict[str, Any]]] = {}  # memory of the overhead part's Tune runs


def inputs(ctx: Context) -> Inputs:
    """The same data and settings for both parts (built once per suite run)."""
    if ctx.workdir not in _INPUTS:
        from tune_dsr.synthetic import make_synthetic_dataset

        hr_size = 32 if ctx.demo else 112
        splits = make_synthetic_dataset(ctx.workdir / "trial_faces", subjects=6,
                                        per_subject=2 if ctx.demo else 4, vlr_sizes=(16,),
                                        hr_size=hr_size, seed=0)
        train = PairedFaces.load(splits["train"], vlr_size=16, hr_size=hr_size)
        val = PairedFaces.load(splits["val"], vlr_size=16, hr_size=hr_size)
        big = big_set(train, 32 if ctx.demo else 256)
        settings = {**NETWORKS, "vlr_size": 16, "hr_size": hr_size, "width": 32, "depth": 4,
                    "batch_size": 4 if ctx.demo else 16, "epochs": 2 if ctx.demo else 3,
                    "warmup_epochs": 1, "patience": 0, "monitor": OBJECTIVE,
                    "device": "cpu", "seed": 42}
        _INPUTS[ctx.workdir] = Inputs(train, val, big, settings)
    return _INPUTS[ctx.workdir]


def _mib(data: PairedFaces) -> float:
    return (data.vlr.nbytes + data.hr.nbytes) / 2**20


def tune_run(ctx: Context, name: str, trials: int) -> dict[str, Any]:
    """`trials` identical trials at once, each handed the big set and training on its first pairs
    (`Inputs.train`), their memory sampled meanwhile. They share --threads CPUs (at most Ray's 2);
    a trial sets its torch threads to its whole CPUs, as the bare runs use --threads."""
    data = inputs(ctx)
    settings = {**data.settings, TRAIN_PAIRS: len(data.train)}
    folder = ctx.workdir / f"{name}-probes"
    with MemorySampler(folder) as sampler:
        fit_called, clock, probes = run_tune(data.big, data.val, settings, ctx.workdir, name,
                                             trials=trials, cpus=min(ctx.threads, 2) / trials)
    return {"fit_called": fit_called, "arrivals": clock.arrivals, "probes": probes,
            "peak_sum": dict(sampler.peak_sum), "peak_each": dict(sampler.peak_each),
            "processes": len(sampler.peak_each)}


# ----------------------------------------------------------------------------- overhead

def _bare_epochs(settings: dict[str, Any], train: PairedFaces, val: PairedFaces,
                 out_dir: Path | None) -> list[float]:
    """Trainer.fit() as the train command runs it; the seconds between consecutive epoch ends."""
    from tune_dsr.training.losses import load_loss_networks
    from tune_dsr.training.trainer import Callback, Trainer

    marks: list[float] = []

    class Clock(Callback):
        def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
            marks.append(time.perf_counter())

    config = Config().replace(**settings)
    identity, vgg = load_loss_networks(settings["edgeface"], settings["perceptual_weights"])
    extra: dict[str, Any] = {"save_last": False} if out_dir is not None else {}
    trainer = Trainer(config, train, val, identity, vgg, callbacks=[Clock()], out_dir=out_dir,
                      **extra)
    started = time.perf_counter()
    trainer.fit()
    return [b - a for a, b in zip([started, *marks[:-1]], marks, strict=True)]


def run_overhead(ctx: Context) -> PartResult:
    result = PartResult("overhead")
    raylocal.ensure(warm=not ctx.demo)
    data = inputs(ctx)
    settings = data.settings
    rounds = 1 if ctx.demo else 2
    result.say(f"One training of {settings['epochs']} epochs ({len(data.train)} training and "
               f"{len(data.val)} validation pairs, 16 -> {settings['hr_size']}px, DSR "
               f"C{settings['width']} N{settings['depth']}, batch {settings['batch_size']}, 1 CPU "
               f"thread), {rounds} time(s) each way, interleaved; per epoch: epochs 2 on. The "
               f"Tune trial is handed a {fmt(_mib(data.big))} MiB set through the object store "
               f"and trains on its first {len(data.train)} pairs, the bare runs' data.")

    bare: list[float] = []
    written: list[float] = []
    tuned: list[float] = []
    startups: list[dict[str, float]] = []
    memory: list[dict[str, Any]] = []
    for round_ in range(rounds):
        order = ["bare", "written", "tune"] if round_ % 2 == 0 else ["tune", "written", "bare"]
        for way in order:
            if way == "bare":
                bare += _bare_epochs(settings, data.train, data.val, None)[1:]
            elif way == "written":
                folder = ctx.workdir / f"overhead_run_{round_}"
                written += _bare_epochs(settings, data.train, data.val, folder)[1:]
            else:
                run_ = tune_run(ctx, f"overhead_{round_}", trials=1)
                memory.append(run_)
                iters = [r["time_this_iter_s"] for _, _, r in run_["arrivals"]]
                tuned += iters[1:]
                first_arrival = run_["arrivals"][0][1]
                probe = run_["probes"][0]
                startups.append({
                    "to_function": probe["entry"] - run_["fit_called"],
                    "process_age_at_entry": probe["entry"] - probe["process_started"],
                    "in_function": (first_arrival - probe["entry"] - probe["read_s"]
                                    - median(iters[1:])),
                    "total": (first_arrival - run_["fit_called"] - probe["read_s"]
                              - median(iters[1:])),
                })
    _ONE_TRIAL[ctx.workdir] = memory
    epoch_bare, epoch_written, epoch_tune = median(bare), median(written), median(tuned)
    rows = [["bare Trainer.fit()", fmt(epoch_bare), spread(bare), "×1.00"],
            ["Trainer.fit() writing a run folder (best.pt, grid, metrics)", fmt(epoch_written),
             spread(written), f"×{fmt(epoch_written / epoch_bare)}"],
            ["Tune trial (make_trainable + train_dsr, checkpoint every epoch)",
             fmt(epoch_tune), spread(tuned), f"×{fmt(epoch_tune / epoch_bare)}"]]
    result.say()
    result.table(["way", "s/epoch (median)", "min-max s", "vs bare"], rows)
    start = {key: median([s[key] for s in startups]) for key in startups[0]}
    result.say()
    result.say(f"Trial start-up (median of {len(startups)}), from Tuner.fit() to the first "
               f"epoch's report less one epoch: {fmt(start['total'])} s = "
               f"{fmt(start['total'] / epoch_bare)} bare epochs.")
    result.say(f"  Tuner.fit() -> trial function entered (Tune's set-up, the trial's process, "
               f"its imports of torch, Ray Tune and tune_dsr, the data from the object store): "
               f"{fmt(start['to_function'])} s; the process was "
               f"{fmt(start['process_age_at_entry'])} s old then.")
    result.say(f"  in the function, beyond one epoch (the loss networks with timm's import, the "
               f"Trainer, the recognition galleries, the first epoch's one-off costs): "
               f"{fmt(start['in_function'])} s.")
    result.ratios.append(Ratio("overhead epoch in a Tune trial", epoch_tune, epoch_bare,
                               "s/epoch"))
    result.ratios.append(Ratio("overhead trial start-up vs one epoch", start["total"],
                               epoch_bare, "s"))
    result.data = {"epochs_bare": bare, "epochs_written": written, "epochs_tune": tuned,
                   "startups": startups, "settings": settings}
    return result


# ----------------------------------------------------------------------------- memory

def run_memory(ctx: Context) -> PartResult:
    result = PartResult("memory")
    raylocal.ensure(warm=not ctx.demo)
    data = inputs(ctx)
    many = 2 if ctx.demo else 4
    dataset_mib = _mib(data.big)
    result.say(f"Trials handed a {len(data.big):,}-pair set ({fmt(dataset_mib)} MiB of uint8 "
               f"tensors, 16 -> {data.settings['hr_size']}px) through the object store; each "
               f"reads all of it and trains on {len(data.train)} of its pairs for "
               f"{data.settings['epochs']} epochs (the overhead part's run). One trial alone, "
               f"then {many} at once sharing 2 CPUs.")
    ones = _ONE_TRIAL.get(ctx.workdir) or [tune_run(ctx, "memory_1", trials=1)]
    runs = {1: max(ones, key=lambda r: r["peak_sum"]["pss"]),
            many: tune_run(ctx, f"memory_{many}", trials=many)}
    rows = []
    for trials, run_ in runs.items():
        peak = run_["peak_sum"]
        entry = [p["memory_at_entry"]["uss"] for p in run_["probes"]]
        rows.append([f"{trials} trial(s) at once", run_["processes"], fmt(peak["rss"]),
                     fmt(peak["pss"]), fmt(peak["uss"]), fmt(median(entry)),
                     ", ".join(sorted({p["data_mapping"] for p in run_["probes"]}))])
    result.say()
    result.table(["run", "processes", "peak RSS sum MiB", "peak PSS sum MiB", "peak USS sum MiB",
                  "private MiB per trial at entry", "where the set's bytes live in a trial"],
                 rows)
    copied = any(p["data_mapping"] == PRIVATE for p in runs[many]["probes"])
    result.say(f"The {fmt(dataset_mib)} MiB set is "
               + (f"COPIED into each trial's private memory: {many} trials hold {many} copies."
                  if copied else "shared: every trial maps the object store's copy."))
    result.say("RSS counts shared pages in every process that maps them; PSS splits them "
               "between those processes, so the PSS sum is what the trials cost the host (the "
               "object store's own copy is not in it).")
    result.ratios.append(Ratio(f"memory {many} trials vs 1 (host PSS)",
                               runs[many]["peak_sum"]["pss"], runs[1]["peak_sum"]["pss"], "MiB"))
    result.data = {"dataset_mib": dataset_mib, "dataset_copied": copied,
                   "runs": {k: {"peak_sum": v["peak_sum"], "probes": v["probes"]}
                            for k, v in runs.items()}}
    return result
