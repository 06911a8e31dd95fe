"""Shared fixtures: in-memory faces and a boring identity network for the unit tests; synthetic
face files, the real (random) EdgeFace and VGG19, one Ray and one finished search for the
integration tests. The constants and helpers they use are in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import (
    SEARCH_CONFIRM,
    SEARCH_EPOCHS,
    SEARCH_PATIENCE,
    UNIT,
    BoringIdentityNet,
    memory_faces,
    search_options,
)
from tune_dsr import demo
from tune_dsr.config import Config

# Tests are CPU-only and small. One intra-op thread: with two, every small parallel op waits for
# a thread the other busy core has descheduled (a tiny epoch took 10x longer under load), and Ray
# trials and subprocesses use the other core anyway.
torch.set_num_threads(1)

@pytest.fixture(scope="session")
def memory_sets():
    """Training (6 subjects) and validation (2 other subjects) faces, 3 each, in memory."""
    train = memory_faces([f"{i:04d}" for i in range(6)], 3, seed=0)
    val = memory_faces(["0100", "0101"], 3, seed=1)
    return train, val


@pytest.fixture(scope="session")
def boring_nets():
    """(identity network, VGG19 trunk): the boring net and a random VGG (cheap at 32 px)."""
    from tune_dsr.training.losses import build_vgg

    torch.manual_seed(0)
    return BoringIdentityNet(), build_vgg("random")


@pytest.fixture
def unit_config() -> Config:
    return Config().replace(**UNIT)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tune_dsr.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("faces")
    make_synthetic_dataset(root, subjects=6, per_subject=2, vlr_sizes=(16,), seed=0)
    return root


@pytest.fixture(scope="session")
def search_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic faces for the end-to-end searches: 8 px -> 32 px, 6 subjects x 2 images."""
    from tune_dsr.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("search_faces")
    make_synthetic_dataset(root, subjects=6, per_subject=2, vlr_sizes=(8,), hr_size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def loss_nets():
    """The real networks (random weights): EdgeFace xxs and VGG19 up to relu4_4."""
    from tune_dsr.training.losses import load_loss_networks

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


@pytest.fixture(scope="session")
def balanced_search(ray_session, search_root, tmp_path_factory) -> dict[str, Any]:
    """A `balanced` search (val_margin_gain and val_psnr): 4 trials of up to 3 epochs under the
    Pareto-aware ASHA (grace 1, reduction factor 2) and a patience of 1 epoch, so that trials end
    all three ways. Shared by the search and notebook tests."""
    import dataclasses

    from tune_dsr.tuning.service import plan_search, run_search

    options = search_options(search_root, space="balanced", name="trade", num_samples=4,
                             max_epochs=3, grace_period=1, reduction_factor=2, max_concurrent=2,
                             patience=1)
    plan = plan_search(dataclasses.replace(
        options, storage_path=str(tmp_path_factory.mktemp("trade"))))
    run_search(plan)
    return {"plan": plan, "experiment": Path(plan.experiment_path)}
