"""Synthetic faces: layout, subject split, determinism, identities that can be told apart, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tune_dsr.synthetic import SPLITS, SynthError, make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(out, subjects=12, per_subject=4, vlr_sizes=(16, 24), seed=3)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _subjects(split_dir: Path) -> set[str]:
    return {name.split("_", 1)[0] for name in _names(split_dir / "hr_images")}


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_and_counts(synth: dict[str, Path]) -> None:
    assert set(synth) == set(SPLITS)
    total = 0
    for split, split_dir in synth.items():
        assert split_dir.name == SPLITS[split] and split_dir.is_absolute()
        assert _names(split_dir) == ["hr_images", "vlr_images_16x16", "vlr_images_24x24"]
        hr_names = _names(split_dir / "hr_images")
        assert hr_names, split
        for size in (16, 24):
            assert _names(split_dir / f"vlr_images_{size}x{size}") == hr_names
        assert all(len(n) == len("0000_00.png") and n[4] == "_" for n in hr_names)
        with Image.open(split_dir / "hr_images" / hr_names[0]) as image:
            assert (image.size, image.mode, image.format) == ((112, 112), "RGB", "PNG")
        for size in (16, 24):
            with Image.open(split_dir / f"vlr_images_{size}x{size}" / hr_names[0]) as image:
                assert image.size == (size, size)
        # Each subject has every one of its images.
        for subject in _subjects(split_dir):
            assert [n for n in hr_names if n.startswith(subject + "_")] == \
                [f"{subject}_{k:02d}.png" for k in range(4)]
        total += len(hr_names)
    assert total == 12 * 4


def test_split_by_subject(synth: dict[str, Path], tmp_path: Path) -> None:
    train, val, test = (_subjects(synth[s]) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == {f"{i:04d}" for i in range(12)}
    assert len(val) >= 1 and len(test) >= 1

    splits = make_synthetic_dataset(tmp_path / "big", subjects=24, per_subject=1)
    counts = [len(_subjects(splits[s])) for s in ("train", "val", "test")]
    assert counts == [20, 2, 2]  # about 80/10/10

    splits = make_synthetic_dataset(tmp_path / "min", subjects=3, per_subject=1)
    assert [len(_subjects(splits[s])) for s in ("train", "val", "test")] == [1, 1, 1]


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = {"subjects": 3, "per_subject": 2, "vlr_sizes": (16,), "hr_size": 64}
    make_synthetic_dataset(tmp_path / "a", seed=5, **kwargs)
    make_synthetic_dataset(tmp_path / "b", seed=5, **kwargs)
    make_synthetic_dataset(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (_all_files(tmp_path / d) for d in "abc")
    assert len(a) == 2 * 3 * 2
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)
    # Not only the split differs: the faces themselves do.
    hr_a = {k.rsplit("/", 1)[-1]: v for k, v in a.items() if "hr_images" in k}
    hr_c = {k.rsplit("/", 1)[-1]: v for k, v in c.items() if "hr_images" in k}
    assert all(hr_a[n] != hr_c[n] for n in hr_a)


def test_rerun_with_fewer_images_removes_stale_files(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path, subjects=3, per_subject=3, hr_size=32, vlr_sizes=(8,))
    (tmp_path / "train_processed" / "hr_images" / "notes.txt").write_text("kept")
    splits = make_synthetic_dataset(tmp_path, subjects=3, per_subject=1, hr_size=32,
                                    vlr_sizes=(8,))
    for split_dir in splits.values():
        for folder in ("hr_images", "vlr_images_8x8"):
            assert all(n.endswith("_00.png") for n in _names(split_dir / folder)
                       if n.endswith(".png"))
    assert (tmp_path / "train_processed" / "hr_images" / "notes.txt").exists()


def test_subjects_are_distinguishable(synth: dict[str, Path]) -> None:
    """Images of one subject are closer to each other than to other subjects' images, and the
    nearest neighbour (pixels of the 24 px VLR image) is usually the same subject."""
    images, labels = [], []
    for split_dir in synth.values():
        folder = split_dir / "vlr_images_24x24"
        for name in _names(folder):
            images.append(np.asarray(Image.open(folder / name), dtype=np.float32).ravel() / 255)
            labels.append(name.split("_", 1)[0])
    x = np.stack(images)
    y = np.array(labels)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).mean(-1))
    same = y[:, None] == y[None, :]
    off_diagonal = ~np.eye(len(y), dtype=bool)
    within = dist[same & off_diagonal].mean()
    between = dist[~same].mean()
    assert between > 1.3 * within, (within, between)
    np.fill_diagonal(dist, np.inf)
    nearest_same = (y[dist.argmin(1)] == y).mean()
    assert nearest_same > 0.6, nearest_same  # chance is 1/12; backgrounds vary per image


@pytest.mark.parametrize("kwargs, needle", [
    ({"subjects": 2}, "subjects"),
    ({"per_subject": 0}, "per_subject"),
    ({"vlr_sizes": (112,)}, "VLR size"),
    ({"vlr_sizes": ()}, "VLR size"),
    ({"hr_size": 8}, "hr_size"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(SynthError, match=needle):
        make_synthetic_dataset(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # validated before writing anything


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tune_dsr.synth", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_splits(tmp_path: Path) -> None:
    result = _cli("--out", str(tmp_path), "--subjects", "4", "--per-subject", "2",
                  "--vlr-size", "16", "--vlr-size", "32", "--seed", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["train", "val", "test"]
    for split_dir in ("train_processed", "val_processed", "test_processed"):
        assert _names(tmp_path / split_dir) == ["hr_images", "vlr_images_16x16",
                                                "vlr_images_32x32"]
    assert sum(len(_names(tmp_path / d / "hr_images")) for d in
               ("train_processed", "val_processed", "test_processed")) == 8


@pytest.mark.parametrize("args, needle", [
    (["--subjects", "2"], "subjects"),
    (["--vlr-size", "200"], "VLR size"),
    (["--subjects", "many"], "invalid int"),
])
def test_cli_bad_arguments(tmp_path: Path, args: list[str], needle: str) -> None:
    result = _cli("--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and needle in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_help_describes_every_flag() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for flag in ("--out", "--subjects", "--per-subject", "--vlr-size", "--hr-size", "--seed"):
        assert flag in result.stdout
