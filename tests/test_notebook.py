"""notebooks/analyze_search.ipynb: stored clean, and run top to bottom on a real search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tune_dsr.tuning.experiment import BEST_FILE

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analyze_search.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert 'os.environ.get("TUNE_DSR_EXPERIMENT"' in code[0].source
    # It reads the experiment through the analysis API only, once.
    source = "\n".join(c.source for c in code)
    assert source.count("load_experiment(") == 1
    assert "read_text" not in source and '"://" in' not in source


def _output_text(nb: Any) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.extend(v for k, v in out.data.items() if k.startswith("text/"))
    return "\n".join(parts)


def _run(experiment: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The notebook run top to bottom in a fresh kernel on `experiment`; raises
    CellExecutionError, naming the cell, if any cell fails."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("TUNE_DSR_EXPERIMENT", str(experiment))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


@pytest.mark.heavy
@pytest.mark.slow
def test_analysis_notebook_runs_on_a_multi_objective_search(
        balanced_search: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a `balanced` search the trade-off cell draws the search's own front."""
    text = _output_text(_run(balanced_search["experiment"], monkeypatch))
    assert "val_margin_gain" in text and "val_psnr" in text
    assert "dominated trial(s)" in text and "MAXIMIZE, MAXIMIZE" in text


@pytest.mark.heavy
@pytest.mark.slow
def test_analysis_notebook_runs_on_the_search(finished_search: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Top to bottom in a fresh kernel, on an experiment with COMPLETE, PRUNED and FAIL trials."""
    experiment = finished_search["experiment"]
    nb = _run(experiment, monkeypatch)
    text = _output_text(nb)
    best = json.loads((experiment / BEST_FILE).read_text())["provenance"]
    assert f"best trial {best['trial_id']}" in text
    assert "PRUNED" in text and "FAIL" in text
    assert f"python -m tune_dsr.export {experiment} --out best.json" in text
    best_model = experiment / Path(best["best_model"]).parent.name / "best.pt"
    test_split = Path(finished_search["plan"].base["train_dir"]).parent / "test_processed"
    arguments = f"--test-dir {test_split} --dsr {best_model} --edgeface random:edgeface_xxs"
    assert f"python -m tune_dsr.evaluate {arguments} --sweep" in text
    assert f"python -m tune_dsr.compare {arguments} --out grid.png" in text
    assert "trial_ids" in text  # the rung table
    # The best trial's picture grid (best.png) is shown; Agg figures are not.
    images = [out for cell in nb.cells for out in cell.get("outputs", [])
              if out.output_type == "display_data" and "image/png" in out.data]
    assert images
