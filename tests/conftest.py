"""Shared fixtures: tiny synthetic faces, tiny configs, fixed random loss networks, one Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tune_dsr.config import Config

# Tests are CPU-only and small; more threads than cores only slows two-core CI down.
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = {"vlr_size": 16, "width": 8, "depth": 1, "batch_size": 4, "epochs": 2, "warmup_epochs": 1,
        "lr": 1e-3, "edgeface": "random:edgeface_xxs", "perceptual_weights": "random",
        "device": "cpu"}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tune_dsr.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("faces")
    make_synthetic_dataset(root, subjects=6, per_subject=2, vlr_sizes=(16,), seed=0)
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
    from tune_dsr.losses import load_loss_networks

    return load_loss_networks("random:edgeface_xxs", "random")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: every start costs seconds."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
