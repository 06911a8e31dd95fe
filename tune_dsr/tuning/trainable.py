"""The Tune adapter: one trial = one `Trainer` run that reports every epoch to Tune.

The dataset arrives through ``tune.with_parameters`` (decoded once by the driver, shared through
the object store), the resources through ``tune.with_resources``. ASHA compares trials with each
other; the search's patience (the trainer's early stopping on the search's objective) ends a trial
that has stopped beating its own best.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tune_dsr.config import Config
from tune_dsr.data import PairedFaces
from tune_dsr.training.losses import load_held_out, load_loss_networks
from tune_dsr.training.trainer import Callback, Trainer
from tune_dsr.tuning.experiment import is_uri, trial_folder

__all__ = [
    "STATE_FILE",
    "TuneReporter",
    "kept_key",
    "make_trainable",
    "train_dsr",
    "trial_output_dir",
]


STATE_FILE = "state.pt"

# Frozen networks, the same for every trial: a trial in a reused actor process takes the ones
# the previous trial loaded (each trainer sets the memory layout it wants on them).
_loss_networks = functools.lru_cache(maxsize=2)(load_loss_networks)
_held_out = functools.lru_cache(maxsize=2)(load_held_out)


def kept_key(metric: str) -> str:
    """The result key of `metric` at the epoch a trial keeps (its best by the first objective):
    a multi-objective search's point of the trial."""
    return f"kept_{metric}"


class TuneReporter(Callback):
    """Reports each epoch's metrics, with a resumable checkpoint every `checkpoint_every` epochs.

    With several `objectives`, also each objective's value at the epoch the trial keeps
    (``kept_<objective>``, the trainer's best epoch by the first objective so far): the point of
    the trial on the front, the model its best.pt holds.
    """

    def __init__(self, objective: str, checkpoint_every: int = 1,
                 objectives: tuple[str, ...] = ()) -> None:
        self.objective = objective
        self.checkpoint_every = checkpoint_every
        self.objectives = objectives

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        report: dict[str, float | str] = dict(metrics)
        report["objective"] = metrics[self.objective]
        kept = trainer.best_metrics or metrics
        report.update({kept_key(m): kept[m] for m in self.objectives})
        report["node_id"] = ray.get_runtime_context().get_node_id()
        # Every metric is finite here (the trainer raises on NaN): Optuna never sees a NaN.
        last = trainer.epoch >= trainer.config.train.epochs
        if trainer.epoch % self.checkpoint_every and not last:
            tune.report(report)
            return
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_state(Path(folder) / STATE_FILE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def trial_output_dir(experiment_path: str | None) -> Path:
    """Where the trainer writes best.pt, best.png and its logs: the trial's own folder in a local
    experiment. Not ``get_trial_dir()``: in a reused actor that can still name an earlier trial's
    staging folder. For an experiment on a URI, the trial's working directory, which Ray uploads
    with the trial (``sync_artifacts``)."""
    if experiment_path and not is_uri(experiment_path):
        return Path(experiment_path) / trial_folder(tune.get_context().get_trial_id())
    return Path.cwd()


def train_dsr(config: dict[str, Any], train_set: PairedFaces, val_set: PairedFaces,
              objective: str = "val_margin", checkpoint_every: int = 1,
              experiment_path: str | None = None, patience: int = 0,
              objectives: tuple[str, ...] = ()) -> None:
    """Function trainable: `config` is a flat Tune config (settings plus the trial's values).

    `objective` is the search's metric, reported as ``objective`` too; a checkpoint is saved
    every `checkpoint_every` epochs and at the last; `experiment_path` is the experiment folder;
    a trial whose objective has not beaten its own best for `patience` epochs ends (0: only
    ASHA stops trials); `objectives` (a multi-objective search) are reported at the kept epoch.
    """
    # Ray sets OMP_NUM_THREADS to the trial's CPUs; torch's own pool must agree with it.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    # ASHA compares trials with each other; the search's patience ends a trial that has stopped
    # beating its own best (the trainer's early stopping on the objective). The trial's best.pt
    # and picture grid are those of the epoch the search's objective likes best.
    run_config = Config.from_dict(config).replace(patience=patience,
                                                  monitor=objective)
    identity_net, vgg = _loss_networks(run_config.train.edgeface,
                                       run_config.train.perceptual_weights)
    held_out = _held_out(run_config.train.val_edgeface) if run_config.train.val_edgeface else None
    trainer = Trainer(run_config, train_set, val_set, identity_net, vgg,
                      callbacks=[TuneReporter(objective, checkpoint_every, objectives)],
                      out_dir=trial_output_dir(experiment_path), save_last=False,
                      held_out=held_out)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state(Path(folder) / STATE_FILE)
    trainer.fit()


def make_trainable(train_set: PairedFaces, val_set: PairedFaces, *, cpus: float, gpus: float,
                   objective: str, checkpoint_every: int = 1, experiment_path: str | None = None,
                   patience: int = 0, objectives: tuple[str, ...] = (),
                   function: Callable[..., None] = train_dsr) -> Any:
    """`function` (`train_dsr`) with the dataset in the object store and per-trial resources."""
    with_data = tune.with_parameters(function, train_set=train_set, val_set=val_set,
                                     objective=objective, checkpoint_every=checkpoint_every,
                                     experiment_path=experiment_path, patience=patience,
                                     objectives=objectives)
    resources = {"cpu": cpus, "gpu": gpus} if gpus > 0 else {"cpu": cpus}
    return tune.with_resources(with_data, resources)
