"""Helpers shared by the benchmark scripts: device and thread set-up, timing, machine description
and a plain-text table. Not part of the package; the scripts import it from their own folder."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="torch device to measure on: cpu (default) or cuda[:N]")
    # One thread by default: on a small machine shared with other jobs, more intra-op threads
    # than free cores make every parallel op wait for a descheduled thread (seen here: EdgeFace's
    # forward took 40x longer with 2 threads than with 1 while another job used both cores).
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steady numbers on a shared "
                             f"machine; this one has {usable_cores()} usable cores)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny sizes and few repeats (seconds; numbers meaningless)")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def setup(device_name: str, threads: int) -> torch.device:
    """Fix the thread count and check the device before anything is measured."""
    if threads < 1:
        raise SystemExit(f"--threads must be >= 1, but got {threads}")
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device_name}: no CUDA device is visible here; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {device_name}: only cpu and cuda are supported")
    # The loss networks are random on purpose (nothing can be downloaded); their warnings are noise.
    logging.getLogger("tune_dsr").setLevel(logging.ERROR)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work."""
    sync(device)
    return time.perf_counter()


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                ) -> dict[str, list[object]]:
    """Run every fn `warmup + repeats` times, alternating the order (ABBA...) so slow drift or a
    neighbour's load hits every variant alike; returns each fn's results after warm-up."""
    names = list(fns)
    results: dict[str, list[object]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            out = fns[name]()
            if round_ >= warmup:
                results[name].append(out)
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_lines(device: torch.device) -> list[str]:
    """What the numbers were measured on, for docs/performance.md."""
    ram = _ram_gib()
    lines = [
        f"cores usable: {usable_cores()} (os.cpu_count {os.cpu_count()}), CPU: {_cpu_model()}, "
        f"RAM: {f'{ram:.1f} GiB' if ram else 'unknown'}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"intra-op threads {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}",
        f"device: {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
    ]
    if hasattr(os, "getloadavg"):
        lines.append("load average at start (1/5/15 min): "
                     + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return lines


def load_line() -> str:
    if not hasattr(os, "getloadavg"):
        return ""
    return "load average at end (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (it pastes straight into docs/performance.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells[1:]]
    return "\n".join(out)
