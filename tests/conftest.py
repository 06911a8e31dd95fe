"""Shared fixtures: in-memory faces and a boring identity network for the unit tests; synthetic
face files, the real (random) EdgeFace and VGG19, one Ray and one finished search for the
integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import BoringIdentityNet, memory_faces
from tune_dsr import demo
from tune_dsr.config import Config

# Tests are CPU-only and small. One intra-op thread: with two, every small parallel op waits for
# a thread the other busy core has descheduled (a tiny epoch took 10x longer under load), and Ray
# trials and subprocesses use the other core anyway.
torch.set_num_threads(1)

# The unit tests' run: 8 px -> 32 px faces in memory, a one-block DSR, the boring identity net.
UNIT = {"vlr_size": 8, "hr_size": 32, "width": 8, "depth": 1, "batch_size": 4, "epochs": 2,
        "warmup_epochs": 1, "lr": 1e-3, "device": "cpu"}
# The integration tests' smallest run on synthetic face files (16 px -> 112 px), real networks.
TINY = demo.TINY
# The end-to-end searches run on 8 px -> 32 px synthetic faces (`search_root`): what they test
# is Ray, Optuna and ASHA around real trainings, and at 32 px an epoch costs a tenth of one at
# 112 px. The knobs they pin: a tiny DSR, and bicubic_residual on, since without it a new net
# starts mid-grey and its first epochs look so bad that every later trial beats it, which would
# leave ASHA nothing to stop.
SEARCH_EPOCHS = 4
SEARCH_PINS = {"width": 8, "depth": 1, "batch_size": 4, "bicubic_residual": True, "hr_size": 32}


@pytest.fixture(scope="session")
def memory_sets():
    """Training (6 subjects) and validation (2 other subjects) faces, 3 each, in memory."""
    train = memory_faces([f"{i:04d}" for i in range(6)], 3, seed=0)
    val = memory_faces(["0100", "0101"], 3, seed=1)
    return train, val


@pytest.fixture(scope="session")
def boring_nets():
    """(identity network, VGG19 trunk): the boring net and a random VGG (cheap at 32 px)."""
    from tune_dsr.losses import build_vgg

    torch.manual_seed(0)
    return BoringIdentityNet(), build_vgg("random")


@pytest.fixture
def unit_config() -> Config:
    return Config().replace(**UNIT)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tune_dsr.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("faces")
    make_synthetic_dataset(root, subjects=6, per_subject=2, vlr_sizes=(16,), seed=0)
    return root


@pytest.fixture(scope="session")
def search_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic faces for the end-to-end searches: 8 px -> 32 px, 6 subjects x 2 images."""
    from tune_dsr.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("search_faces")
    make_synthetic_dataset(root, subjects=6, per_subject=2, vlr_sizes=(8,), hr_size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_sets(synthetic_root: Path):
    from tune_dsr.data import PairedFaces

    train = PairedFaces.load(synthetic_root / "train_processed", vlr_size=16)
    val = PairedFaces.load(synthetic_root / "val_processed", vlr_size=16)
    return train, val


@pytest.fixture
def tiny_config(synthetic_root: Path) -> Config:
    return Config().replace(**TINY, train_dir=str(synthetic_root / "train_processed"),
                            val_dir=str(synthetic_root / "val_processed"))


@pytest.fixture(scope="session")
def loss_nets():
    """The real networks (random weights): EdgeFace xxs and VGG19 up to relu4_4."""
    from tune_dsr.losses import load_loss_networks

    return load_loss_networks(demo.RANDOM_NETWORKS["edgeface"],
                              demo.RANDOM_NETWORKS["perceptual_weights"])


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: every start costs seconds."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def search_options(root: Path, **overrides: Any) -> Any:
    """SearchOptions of a tiny recognition_first search on the synthetic faces under `root`
    (`search_root`)."""
    from tune_dsr.tuning import SearchOptions

    values: dict[str, Any] = {
        "space": "recognition_first", "train_dir": str(root / "train_processed"),
        "val_dir": str(root / "val_processed"), **demo.RANDOM_NETWORKS, "pins": SEARCH_PINS,
        "seed": 7, "confirm": 0}
    return SearchOptions(**{**values, **overrides})


# The shared search's patience, and its confirmation: the top two configurations, one new run
# each.
SEARCH_PATIENCE = 2
SEARCH_CONFIRM = 2


@pytest.fixture(scope="session")
def finished_search(ray_session, search_root, tmp_path_factory) -> dict[str, Any]:
    """Six trials of up to 4 epochs: the two anchors (guide, pixel-only) first, then TPE's; ASHA
    and a patience of 2 stop some; the first TPE trial to start diverges (a real NaN) in epoch 1
    on every run, so it fails alone; then the top two configurations are confirmed with one new
    run each. Shared by the search, export, analysis and notebook tests."""
    from tests.helpers import run_poisoned_search

    options = search_options(search_root, name="e2e", num_samples=6,
                             max_epochs=SEARCH_EPOCHS, grace_period=1, reduction_factor=2,
                             max_concurrent=2, max_failures=1, patience=SEARCH_PATIENCE,
                             confirm=SEARCH_CONFIRM, confirm_runs=1)
    return run_poisoned_search(tmp_path_factory.mktemp("tune"), tmp_path_factory.mktemp("marks"),
                               options, {0: (1, True)}, spare_anchors=True)
