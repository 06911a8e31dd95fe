"""Paired face loading (layouts, formats, every problem in one error) and shared augmentation."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tune_dsr.data import PairedFaces, check_split, find_vlr_dir, subject_of, to_float
from tune_dsr.errors import DataError
from tune_dsr.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(out, subjects=6, per_subject=3, vlr_sizes=(16, 32), seed=1)


def _save(path: Path, size: int, mode: str = "RGB", seed: int = 0, fmt: str | None = None) -> None:
    """A random image of `size`×`size` in `mode`, as a real file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        image = rgb.quantize(colors=16)
    elif mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(128)
    else:
        image = rgb.convert(mode)
    image.save(path, format=fmt)


def _pair(split: Path, name: str, vlr: int = 16, hr: int = 112, seed: int = 0,
          vlr_dir: str = "vlr_images") -> None:
    _save(split / "hr_images" / name, hr, seed=seed)
    _save(split / vlr_dir / name, vlr, seed=seed)


# ----------------------------------------------------------------------------- loading

def test_load_synthetic_split(synth: dict[str, Path]) -> None:
    data = PairedFaces.load(synth["train"], vlr_size=16)
    n = len(data)
    assert n == len(list((synth["train"] / "hr_images").glob("*.png"))) > 0
    assert data.vlr.shape == (n, 3, 16, 16) and data.vlr.dtype == torch.uint8
    assert data.hr.shape == (n, 3, 112, 112) and data.hr.dtype == torch.uint8
    assert (data.vlr_size, data.hr_size) == (16, 112)
    assert data.names == sorted(data.names)
    assert data.subjects == [name[:4] for name in data.names]
    assert data.subject_index.dtype == torch.long and data.subject_index.shape == (n,)
    unique = sorted(set(data.subjects))
    assert [unique[i] for i in data.subject_index.tolist()] == data.subjects
    # The tensors hold what the files hold.
    first = np.array(Image.open(synth["train"] / "hr_images" / data.names[0]))
    assert torch.equal(data.hr[0], torch.from_numpy(first).permute(2, 0, 1))
    assert PairedFaces.load(synth["train"], vlr_size=32).vlr.shape[-1] == 32


def test_plain_vlr_folder_loads_the_same(synth: dict[str, Path], tmp_path: Path) -> None:
    split = tmp_path / "plain"
    shutil.copytree(synth["val"] / "hr_images", split / "hr_images")
    shutil.copytree(synth["val"] / "vlr_images_16x16", split / "vlr_images")
    sized = PairedFaces.load(synth["val"], vlr_size=16)
    for vlr_size in (None, 16):
        plain = PairedFaces.load(split, vlr_size=vlr_size)
        assert plain.names == sized.names
        assert torch.equal(plain.vlr, sized.vlr) and torch.equal(plain.hr, sized.hr)
    # vlr_images/ must then hold vlr_size images.
    with pytest.raises(DataError, match=r"is 16x16, expected 32x32 \(vlr_size\)"):
        PairedFaces.load(split, vlr_size=32)


def test_find_vlr_dir(synth: dict[str, Path], tmp_path: Path) -> None:
    split = synth["test"]
    assert find_vlr_dir(split, 16) == split / "vlr_images_16x16"
    assert find_vlr_dir(split, 32) == split / "vlr_images_32x32"
    with pytest.raises(DataError) as info:
        find_vlr_dir(split, None)
    message = str(info.value)
    assert "vlr_images_16x16/" in message and "vlr_images_32x32/" in message
    assert "vlr_size" in message
    with pytest.raises(DataError, match="vlr_size=24"):
        find_vlr_dir(split, 24)

    both = tmp_path / "both"
    (both / "vlr_images").mkdir(parents=True)
    (both / "vlr_images_16x16").mkdir()
    assert find_vlr_dir(both, 16) == both / "vlr_images_16x16"  # the sized folder wins
    assert find_vlr_dir(both, 24) == both / "vlr_images"
    only = tmp_path / "only"
    (only / "vlr_images_24x24").mkdir(parents=True)
    assert find_vlr_dir(only, None) == only / "vlr_images_24x24"


def test_several_vlr_folders_need_vlr_size(synth: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="several VLR folders") as info:
        PairedFaces.load(synth["train"])
    assert "pass vlr_size" in str(info.value)


def test_max_images_spreads_over_subjects(synth: dict[str, Path]) -> None:
    full = PairedFaces.load(synth["train"], vlr_size=16)
    capped = PairedFaces.load(synth["train"], vlr_size=16, max_images=4)
    assert len(capped) == 4
    assert set(capped.names) <= set(full.names)
    assert len(set(capped.subjects)) > 1
    index = [full.names.index(n) for n in capped.names]
    assert torch.equal(capped.hr, full.hr[index])
    with pytest.raises(ValueError, match="max_images"):
        PairedFaces.load(synth["train"], vlr_size=16, max_images=-1)


def test_image_modes_and_formats_become_rgb(tmp_path: Path) -> None:
    split = tmp_path / "split"
    cases = {"0001_00.png": ("L", None), "0002_00.png": ("RGBA", None), "0003_00.png": ("P", None),
             "0004_00.jpg": ("RGB", "JPEG"), "0005_00.JPEG": ("L", "JPEG"),
             "0006_00.PNG": ("LA", None)}
    for seed, (name, (mode, fmt)) in enumerate(cases.items()):
        for folder, size in (("hr_images", 32), ("vlr_images", 8)):
            _save(split / folder / name, size, mode=mode, seed=seed, fmt=fmt)
    data = PairedFaces.load(split, hr_size=32)
    assert data.names == sorted(cases)
    assert data.vlr.shape == (6, 3, 8, 8) and data.hr.shape == (6, 3, 32, 32)
    grey = data.names.index("0001_00.png")
    assert torch.equal(data.hr[grey, 0], data.hr[grey, 1])
    assert torch.equal(data.hr[grey, 1], data.hr[grey, 2])
    assert data.subjects == ["0001", "0002", "0003", "0004", "0005", "0006"]
    rgba = data.names.index("0002_00.png")
    expected = np.array(Image.open(split / "hr_images" / "0002_00.png").convert("RGB"))
    assert torch.equal(data.hr[rgba], torch.from_numpy(expected).permute(2, 0, 1))


def test_subject_from_name() -> None:
    assert subject_of("0042_03.png") == "0042"
    assert subject_of("anna_smith_7.jpg") == "anna"
    assert subject_of("solo.png") == "solo"


# ----------------------------------------------------------------------------- problems

def test_every_problem_in_one_error(tmp_path: Path) -> None:
    split = tmp_path / "split"
    for i in range(6):  # good pairs: they set the usual VLR size
        _pair(split, f"good_{i}.png", seed=i)
    _save(split / "vlr_images" / "lonely_vlr.png", 16)  # VLR without HR
    _save(split / "hr_images" / "lonely_hr.png", 112)  # HR without VLR
    _pair(split, "truncated.png")
    data = (split / "hr_images" / "truncated.png").read_bytes()
    (split / "hr_images" / "truncated.png").write_bytes(data[: len(data) // 2])
    _pair(split, "text.png")
    (split / "vlr_images" / "text.png").write_text("this is not a PNG")
    _pair(split, "big_hr.png", hr=100)
    _pair(split, "odd_vlr.png", vlr=12)
    (split / "hr_images" / "notes.txt").write_text("ignored: not an image")

    with pytest.raises(DataError) as info:
        PairedFaces.load(split)
    message = str(info.value)
    expected = {
        "lonely_vlr.png": "without an HR counterpart",
        "lonely_hr.png": "without a VLR counterpart",
        "hr_images/truncated.png": "truncated",
        "vlr_images/text.png": "not an image",
        "hr_images/big_hr.png is 100x100, expected 112x112": "hr_size",
        "vlr_images/odd_vlr.png is 12x12, expected 16x16": "most images",
    }
    for name, reason in expected.items():
        line = next((x for x in message.splitlines() if name in x), None)
        assert line is not None, f"{name} missing from:\n{message}"
        assert line.startswith("- ") and reason in line, line
    assert str(split) in message
    assert "notes.txt" not in message
    assert "same file name" in message and "python -m tune_dsr.synth" in message
    assert len(info.value.problems) == 6
    assert message.splitlines()[0].startswith("6 problems")

    # check_split reports the same problems without raising.
    assert check_split(split) == info.value.problems


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        PairedFaces.load(tmp_path / "nowhere")
    assert "python -m tune_dsr.synth" in str(info.value)
    (tmp_path / "empty").mkdir()
    problems = check_split(tmp_path / "empty")
    assert len(problems) == 2  # both folders reported at once
    assert any("hr_images/" in p for p in problems)
    assert any("no VLR folder" in p for p in problems)
    (tmp_path / "file").write_text("x")
    assert "is a file" in check_split(tmp_path / "file")[0]


def test_no_pairs(tmp_path: Path) -> None:
    (tmp_path / "empty" / "hr_images").mkdir(parents=True)
    (tmp_path / "empty" / "vlr_images").mkdir()
    with pytest.raises(DataError, match="no VLR/HR pairs"):
        PairedFaces.load(tmp_path / "empty")

    split = tmp_path / "disjoint"
    _save(split / "hr_images" / "a.png", 112)
    _save(split / "vlr_images" / "b.png", 16)
    problems = check_split(split)
    assert len(problems) == 3
    assert "no VLR/HR pairs" in problems[0]
    assert "b.png" in problems[1] and "a.png" in problems[2]
    # Names must match in full: the extension counts.
    other = tmp_path / "extension"
    _save(other / "hr_images" / "a.png", 112)
    _save(other / "vlr_images" / "a.jpg", 16, fmt="JPEG")
    assert "no VLR/HR pairs" in check_split(other)[0]


def test_long_lists_are_cut(tmp_path: Path) -> None:
    split = tmp_path / "split"
    _pair(split, "ok.png")
    for i in range(15):
        _save(split / "vlr_images" / f"extra_{i:02d}.png", 16)
    (problem,) = check_split(split)
    assert problem.startswith("15 VLR images") and problem.endswith("and 5 more")
    assert "extra_09.png" in problem and "extra_10.png" not in problem


def test_truncated_jpeg_found_when_decoding(tmp_path: Path) -> None:
    split = tmp_path / "split"
    _save(split / "hr_images" / "a.jpg", 112, fmt="JPEG")
    _save(split / "vlr_images" / "a.jpg", 16, fmt="JPEG")
    data = (split / "hr_images" / "a.jpg").read_bytes()
    (split / "hr_images" / "a.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"hr_images/a\.jpg cannot be decoded"):
        PairedFaces.load(split)


def test_pickle_round_trip(synth: dict[str, Path]) -> None:
    data = PairedFaces.load(synth["val"], vlr_size=16)
    copy = pickle.loads(pickle.dumps(data))
    assert copy.names == data.names and copy.subjects == data.subjects
    assert torch.equal(copy.vlr, data.vlr) and torch.equal(copy.hr, data.hr)
    assert torch.equal(copy.subject_index, data.subject_index)
    assert (copy.vlr_size, copy.hr_size) == (16, 112)
    error = pickle.loads(pickle.dumps(DataError("msg\n- a", ["a"])))
    assert str(error) == "msg\n- a" and error.problems == ["a"]


def test_object_store_shares_the_images_instead_of_copying(synth: dict[str, Path],
                                                            ray_session: Any) -> None:
    """Trials on a node read one shared copy of the set: two gets are views of one buffer."""
    data = PairedFaces.load(synth["val"], vlr_size=16)
    ref = ray_session.put(data)
    first, second = ray_session.get(ref), ray_session.get(ref)
    assert torch.equal(first.hr, data.hr) and first.names == data.names
    assert first.hr.data_ptr() == second.hr.data_ptr() != data.hr.data_ptr()


def test_to_float() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = to_float(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(TypeError):
        to_float(out)
