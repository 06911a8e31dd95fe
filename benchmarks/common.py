"""What every part of the suite shares: the machine's description, torch set-up, interleaved
timing, process memory from /proc, Markdown tables and the ratio lines."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# ----------------------------------------------------------------------------- the machine

def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def has_avx512_bf16() -> bool:
    """What `grep avx512_bf16 /proc/cpuinfo` says: native bf16 dot products on this CPU."""
    return " avx512_bf16" in _cpuinfo()


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine_lines(device: torch.device, command: str) -> list[str]:
    """The header of every run: what, where, when, and how busy the machine was."""
    ram = ram_gib()
    lines = [
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"command: {command}",
        f"CPU: {cpu_model()}, {usable_cores()} usable cores (os.cpu_count {os.cpu_count()}), "
        f"RAM {f'{ram:.1f} GiB' if ram else 'unknown'}, AVX-512 BF16: "
        f"{'yes' if has_avx512_bf16() else 'no'}",
        f"python {platform.python_version()}, torch {torch.__version__}, intra-op threads "
        f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}",
        f"device: {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"load average at start (1/5/15 min): {load_average()}",
    ]
    return lines


def setup_torch(device_name: str, threads: int) -> torch.device:
    """Fix the thread count and check the device before anything is measured."""
    if threads < 1:
        raise SystemExit(f"--threads must be >= 1, but got {threads}")
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {device_name}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device_name}: no CUDA device is visible here; use cpu")
    # The loss networks are random on purpose (nothing is downloaded); their warnings are noise.
    logging.getLogger("tune_dsr").setLevel(logging.ERROR)
    return device


# ----------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter once the device has finished its queued work."""
    sync(device)
    return time.perf_counter()


def interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call every fn `repeats` times, alternating the order (ABBA...), so that slow drift and a
    neighbour's load hit every variant alike; each fn returns the seconds it measured."""
    names = list(fns)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            results[name].append(fns[name]())
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """min-max, for the tables: how far the repeats were apart."""
    return f"{fmt(min(values))}-{fmt(max(values))}"


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` significant digits, no exponent for everyday magnitudes."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10 ** digits:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - int(f"{magnitude:e}".split("e")[1]))
    return f"{value:.{decimals}f}"


# ----------------------------------------------------------------------------- process memory

def proc_memory_mib(pid: int | str = "self") -> dict[str, float]:
    """rss, pss (shared pages split between their users), uss (private) and shared, in MiB, from
    /proc/PID/smaps_rollup; {} if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    kib: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            kib[parts[0][:-1]] = int(parts[1])
    private = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    shared = kib.get("Shared_Clean", 0) + kib.get("Shared_Dirty", 0)
    return {"rss": kib.get("Rss", 0) / 1024, "pss": kib.get("Pss", 0) / 1024,
            "uss": private / 1024, "shared": shared / 1024}


# ----------------------------------------------------------------------------- output

def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (it pastes straight into docs/performance.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells[1:]]
    return "\n".join(out)


@dataclass(frozen=True)
class Ratio:
    """One headline figure: R = X / Y, tune_dsr's X against the baseline's Y, in `unit`."""

    name: str
    x: float
    y: float
    unit: str

    @property
    def value(self) -> float:
        return self.x / self.y if self.y else float("nan")

    def line(self) -> str:
        return (f"{self.name}: ×{fmt(self.value)} (tune_dsr {fmt(self.x)} vs baseline "
                f"{fmt(self.y)} {self.unit})")


@dataclass
class PartResult:
    """What a part measured: printed text (tables, notes), ratios, and raw numbers for --json."""

    name: str
    text: list[str] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.text.append(line)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.say(table(headers, rows))


@dataclass
class Context:
    """What the command line asked for, handed to every part."""

    device: torch.device
    demo: bool
    threads: int
    workdir: Path  # a temporary folder for synthetic data and experiments
    repeats: int | None = None  # --repeats; None: each part's default
    data: Path | None = None  # --data: a real face set (the faces part)
    edgeface: str | None = None  # --edgeface: its recogniser
    seed: int = 0  # --seed: of the searches and trainings that the faces part runs
    vlr_size: int | None = None  # --vlr-size: which VLR folder of the face set (faces part)
    held_out: list[str] | None = None  # --held-out: recognisers DSR never trains against
    faces_budget: str = "full"  # --faces-budget: the faces part's CPU budget (full, quick)
