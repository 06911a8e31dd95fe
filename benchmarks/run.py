"""The benchmark suite: ``python -m benchmarks.run [--demo] [--device cpu|cuda] [--only NAMES]
[--json FILE] [--threads N] [--repeats N] [--data DIR --edgeface FILE [--seed N]]``.

Measures tune_dsr against baselines run in the same process on the same machine, and ends with
one line per headline ratio, ``NAME: ×R (tune_dsr X vs baseline Y UNIT)`` with R = X / Y:

- step: images/s of whole training epochs, tune_dsr's Trainer vs the original system
  (`benchmarks.reference`), for the guide's and a small DSR at 16 and 32 px.
- search: ASHA + TPE vs the guide's way (every configuration to the full budget, patience
  stopping): epochs spent and the best objective reached, three seeds.
- pareto: the Pareto-aware ASHA vs the same two-objective search at the full budget: epochs
  spent and the hypervolume of the front found, three seeds.
- overhead: an epoch inside a Tune trial vs the bare Trainer; a trial's start-up vs an epoch.
- memory: host memory of four concurrent trials vs one.
- gpu: throughput of one and of packed trials on one GPU, FLOPs and the bf16 matmul rate
  (CUDA only; without it the part says "not measured (no CUDA)").
- faces (only with ``--data DIR --edgeface FILE``, a real face set): the whole workflow, search
  -> export -> final run -> evaluate on the test subjects, against bicubic and the pixel-only
  DSR trained alone (about half an hour on two cores; `benchmarks.faces`, docs/results.md).
- signals (with ``--data``/``--edgeface``; else a synthetic smoke run): which validation signal
  predicts test recognition across DSR runs (`benchmarks.signals`, docs/results.md).

--demo is a smoke run (tiny sizes, one repeat; its numbers mean nothing). The results and how
to read them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Context, PartResult, load_average, machine_lines, setup_torch

PARTS = ("step", "search", "pareto", "overhead", "memory", "gpu", "faces", "signals")
# Run when --only is not given; faces and signals run only when asked for (about half an hour
# each on a real face set).
DEFAULT_PARTS = ("step", "search", "pareto", "overhead", "memory", "gpu")


def _part(name: str) -> Callable[[Context], PartResult]:
    """Import a part only when it runs (Ray and Optuna cost seconds to import)."""
    if name == "step":
        from benchmarks import step
        return step.run
    if name == "search":
        from benchmarks import search
        return search.run
    if name == "pareto":
        from benchmarks import pareto
        return pareto.run
    if name in ("overhead", "memory"):
        from benchmarks import trials
        return trials.run_overhead if name == "overhead" else trials.run_memory
    if name == "faces":
        from benchmarks import faces
        return faces.run
    if name == "signals":
        from benchmarks import signals
        return signals.run
    from benchmarks import gpu
    return gpu.run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description=__doc__.split("\n\n")[0].split(": ")[0])
    p.add_argument("--demo", action="store_true",
                   help="smoke run: tiny sizes, one repeat, a 2-trial search (about half a "
                        "minute; the numbers mean nothing)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the step part trains (default cpu); the gpu part needs CUDA")
    p.add_argument("--only", action="append", metavar="NAMES",
                   help=f"parts to run, comma-separated, from {', '.join(PARTS)} (default all)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to this JSON file")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads in this process (default 1: steady numbers on a "
                        "shared machine; see docs/performance.md, 'Why one thread')")
    p.add_argument("--repeats", type=int,
                   help="timed repeats per variant in the step part (default 3; 1 with --demo)")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="a real face set in tune_dsr's layout (train_processed/, val_processed/, "
                        "test_processed/), for the faces part")
    p.add_argument("--edgeface", metavar="FILE",
                   help="the EdgeFace checkpoint the faces part trains against")
    p.add_argument("--vlr-size", type=int, metavar="PX",
                   help="the faces part's VLR size, for a face set with several (default: its "
                        "only one)")
    p.add_argument("--held-out", action="append", metavar="FILE",
                   help="a recogniser DSR never trains against: the faces part validates with "
                        "the first (the search's objective becomes the smaller of the two "
                        "margin gains) and evaluates the test persons under each; repeatable")
    p.add_argument("--faces-budget", choices=("full", "quick"), default="full",
                   help="the faces part's CPU budget: full (about 90 minutes on LFW on two "
                        "cores) or quick (four trials, about 30); a GPU runs its own, the "
                        "full set")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the faces part's search and trainings (default 0)")
    return p


def _selected(parser: argparse.ArgumentParser, only: list[str] | None) -> list[str]:
    if not only:
        return list(DEFAULT_PARTS)
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        parser.error(f"--only {','.join(unknown)}: no such part; choose from {', '.join(PARTS)}")
    return [n for n in PARTS if n in names]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    parts = _selected(parser, args.only)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, but got {args.repeats}")
    if args.json:  # an unwritable --json is refused now, not after the whole suite ran
        from tune_dsr.cli import check_writable_file
        from tune_dsr.errors import ConfigError

        try:
            check_writable_file(args.json, "--json")
        except ConfigError as exc:
            parser.error(str(exc))
    if "faces" in parts:  # refused before anything runs, not after the other parts
        from benchmarks.faces import check_inputs
        from tune_dsr.errors import ConfigError

        try:
            check_inputs(args.data, args.edgeface, args.held_out)
        except ConfigError as exc:
            parser.error(str(exc))
    device = setup_torch(args.device, args.threads)
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    print("tune_dsr benchmark suite" + (" (--demo: a smoke run, numbers meaningless)"
                                        if args.demo else ""))
    for line in machine_lines(device, command.strip()):
        print("  " + line)
    print(flush=True)

    results: list[PartResult] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tune_dsr_bench_") as tmp:
        ctx = Context(device=device, demo=args.demo, threads=args.threads, workdir=Path(tmp),
                      repeats=args.repeats, data=args.data, edgeface=args.edgeface,
                      seed=args.seed, vlr_size=args.vlr_size, held_out=args.held_out,
                      faces_budget=args.faces_budget)
        try:
            for name in parts:
                print(f"## {name}", flush=True)
                part_started = time.perf_counter()
                try:
                    results.append(_part(name)(ctx))
                except Exception:  # noqa: BLE001 - one broken part must not hide the others
                    failed.append(name)
                    traceback.print_exc()
                    print(f"{name}: FAILED (traceback above)")
                print(f"({name}: {time.perf_counter() - part_started:.0f} s)\n", flush=True)
        finally:
            from benchmarks.raylocal import shutdown

            shutdown()

    wall = time.perf_counter() - started
    print(f"load average at end (1/5/15 min): {load_average()}; wall time {wall:.0f} s"
          + (f"; FAILED parts: {', '.join(failed)}" if failed else ""))
    if args.json:
        document = {
            "command": command, "machine": machine_lines(device, command), "wall_s": wall,
            "load_average_end": load_average(), "failed": failed,
            "parts": {r.name: {"ratios": [{"name": q.name, "ratio": q.value, "tune_dsr": q.x,
                                           "baseline": q.y, "unit": q.unit} for q in r.ratios],
                               "text": r.text, "data": r.data} for r in results},
        }
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    print("\nRatios, R = X / Y (goals: step ≥ ×2.5 on CPU, ≥ ×5 on GPU; search epochs ≤ ×0.33 "
          "at the same best; overhead epoch < ×1.05):")
    for result in results:
        for ratio in result.ratios:
            print(ratio.line())
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    sys.exit(main())
