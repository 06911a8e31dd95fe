"""The benchmark suite runs end to end (`python -m benchmarks.run --demo`) and ends with its
ratio lines. No timing is asserted: --demo's numbers mean nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"^(?P<name>\S.*): ×(?P<r>[\d.,]+|nan) \(tune_dsr (?P<x>-?[\d.,]+) vs "
                   r"baseline (?P<y>-?[\d.,]+) (?P<unit>\S.*)\)$")
PARTS_WITH_RATIOS = ("step", "search", "pareto", "overhead", "memory")


@pytest.mark.heavy
@pytest.mark.slow
def test_quick_suite_runs_and_ends_with_ratio_lines() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--demo"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.rstrip("\n").splitlines()
    ratios = []
    for line in reversed(lines):
        match = RATIO.match(line)
        if match is None:
            break
        ratios.append(match)
    assert ratios, f"no ratio lines at the end:\n{done.stdout[-2000:]}"
    names = [m["name"] for m in ratios]
    for part in PARTS_WITH_RATIOS:
        assert any(name.startswith(part) for name in names), (part, names)
    # The GPU part gives ratios where CUDA is present and says why not elsewhere.
    assert (any(name.startswith("gpu") for name in names)
            or "gpu: not measured (no CUDA)" in done.stdout)
    assert len(set(names)) == len(names), names


@pytest.mark.parametrize("extra, words", [
    ([], ["the faces part needs --data DIR", "--edgeface FILE"]),
    (["--data", "{tmp}", "--edgeface", "{tmp}/edgeface.pt"],
     ["train_processed, val_processed, test_processed", "missing"]),
    (["--data", "{faces}", "--edgeface", "{tmp}/edgeface.pt"], ["edgeface.pt: no such file"]),
])
def test_the_faces_part_refuses_missing_data_before_anything_runs(extra, words, tmp_path,
                                                                  synthetic_root) -> None:
    """A real face set is the faces part's input: without one it says what to give, exit 2."""
    argv = [a.format(tmp=tmp_path, faces=synthetic_root) for a in extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "faces", *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    for word in words:
        assert word in done.stderr
    assert "## faces" not in done.stdout  # nothing ran
