"""The comparison grid: its library function, the CLI, probe picking and refused input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tune_dsr.compare import main
from tune_dsr.config import Config
from tune_dsr.evaluation.grid import comparison_grid, grid_size, pick_probes, save_grid
from tune_dsr.models.checkpoints import save_dsr
from tune_dsr.models.dsr import DSR

EDGEFACE = "random:edgeface_xxs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tune_dsr.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("compare")
    # 20 subjects: 2 in test, 3 images each: 6 probes.
    splits = make_synthetic_dataset(root / "data", subjects=20, per_subject=3, vlr_sizes=(16,))
    torch.manual_seed(0)
    config = Config().replace(vlr_size=16, width=8, depth=1)
    for name in ("a", "b"):
        (root / name).mkdir()
        save_dsr(root / name / "best.pt", DSR(config.model), config, {}, epoch=1)
    other = Config().replace(vlr_size=32, width=8, depth=1)
    save_dsr(root / "vlr32.pt", DSR(other.model), other, {}, epoch=1)
    return {"test": splits["test"], "a": root / "a" / "best.pt", "b": root / "b" / "best.pt",
            "vlr32": root / "vlr32.pt"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_grid_has_a_tile_per_probe_and_column(setup, capsys, tmp_path):
    out_png = tmp_path / "sub" / "grid.png"
    code, out, err = run(capsys, "--test-dir", str(setup["test"]), "--dsr", str(setup["a"]),
                         str(setup["b"]), "--edgeface", EDGEFACE, "--count", "4",
                         "--out", str(out_png), "--device", "cpu")
    assert code == 0, err
    with Image.open(out_png) as image:
        assert image.format == "PNG"
        # 4 probes; VLR, bicubic, a/best.pt, b/best.pt, HR.
        assert image.size == grid_size(4, 5)
    assert "a/best.pt" in out and "b/best.pt" in out


@pytest.mark.parametrize("pick", ["worst", "best"])
def test_pick_orders_by_the_first_dsrs_similarity(setup, capsys, tmp_path, pick):
    code, out, _ = run(capsys, "--test-dir", str(setup["test"]), "--dsr", str(setup["a"]),
                       "--edgeface", EDGEFACE, "--count", "6", "--pick", pick,
                       "--out", str(tmp_path / "grid.png"), "--device", "cpu")
    assert code == 0
    scores = [float(x) for x in re.findall(r"cos\(best\.pt, HR\) (-?\d+\.\d+)", out)]
    assert len(scores) == 6
    assert scores == sorted(scores, reverse=(pick == "best"))


def test_pick_probes():
    similarity = [0.5, 0.1, 0.9, 0.1, 0.7]
    assert pick_probes(similarity, 3, "worst", 5) == [1, 3, 0]
    assert pick_probes(similarity, 2, "best", 5) == [2, 4]
    assert pick_probes(None, 9, "random", 5) == [0, 1, 2, 3, 4]
    assert pick_probes(None, 2, "random", 5, seed=1) == pick_probes(None, 2, "random", 5, seed=1)


def test_library_grid_for_the_trainer(tmp_path):
    from tune_dsr.models.checkpoints import load_edgeface

    torch.manual_seed(0)
    net = load_edgeface(EDGEFACE)
    vlr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 112, 112)
    gallery = torch.nn.functional.normalize(torch.randn(3, 512), dim=1)
    image = comparison_grid(vlr, hr, {"bicubic": hr.flip(-1), "DSR": hr * 0.9}, net, gallery,
                            ["x", "y", "z"], torch.tensor([0, 2]))
    assert image.size == grid_size(2, 4)
    path = save_grid(image, tmp_path / "deep" / "epoch_003.png")
    with Image.open(path) as saved:
        assert saved.size == image.size
    with pytest.raises(ValueError, match="same probes"):
        comparison_grid(vlr, hr[:1], {}, net, gallery, ["x", "y", "z"], torch.tensor([0, 2]))


def test_bad_input_is_refused_before_any_work(setup, capsys, tmp_path):
    common = ["--edgeface", EDGEFACE, "--out", str(tmp_path / "g.png")]
    code, _, err = run(capsys, "--test-dir", str(setup["test"]), "--dsr",
                       str(setup["vlr32"]), *common)
    assert code == 2 and "32x32" in err and "16x16" in err and "Traceback" not in err
    code, _, err = run(capsys, "--test-dir", str(setup["test"]), "--dsr", str(setup["a"]),
                       "--threshold", "-1.5", *common)
    assert code == 2 and "--threshold -1.5" in err
    code, _, err = run(capsys, "--test-dir", str(tmp_path / "none"), "--dsr",
                       str(setup["a"]), *common)
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "--test-dir", str(setup["test"]), "--dsr", str(setup["a"]),
                       "--count", "0", *common)
    assert code == 2 and "--count=0" in err
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, _, err = run(capsys, "--test-dir", str(setup["test"]), "--dsr", str(text), *common)
    assert code == 2 and "not a PyTorch checkpoint" in err
    assert not (tmp_path / "g.png").exists()


def test_a_set_with_one_subject_is_refused(setup, capsys, tmp_path):
    single = tmp_path / "single"
    for folder in ("hr_images", "vlr_images_16x16"):
        (single / folder).mkdir(parents=True)
        first = sorted((setup["test"] / folder).iterdir())[0]
        shutil.copy(first, single / folder / first.name)
    code, _, err = run(capsys, "--test-dir", str(single), "--dsr", str(setup["a"]),
                       "--edgeface", EDGEFACE, "--out", str(tmp_path / "g.png"))
    assert code == 2 and "at least two subjects" in err
