"""What a user asks of a search: `SearchOptions`, each option declared once, with its help.

``python -m tune_dsr.search`` builds its flags from these fields (``--num-samples`` sets
``num_samples``), and `tune_dsr.tuning.service.plan_search` resolves them into a `SearchPlan`.
This module imports only the standard library, so the command line answers ``--help`` at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tune_dsr.demo import SEARCH_BUDGET

__all__ = ["DEFAULT_BUDGET", "DEFAULT_CONFIRM", "DEFAULT_CONFIRM_RUNS", "SearchOptions"]

DEFAULT_BUDGET: dict[str, Any] = {"num_samples": 20, "reduction_factor": 3}
# Configurations confirmed after a search (0 with --demo), and new runs of each.
DEFAULT_CONFIRM = 3
DEFAULT_CONFIRM_RUNS = 2


def _option(default: Any, help: str, kind: type | str = str, **extra: Any) -> Any:
    """A field with what its flag needs: the value type (``kind``) and the help text."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, "kind": kind, **extra})
    return field(default=default, metadata={"help": help, "kind": kind, **extra})


@dataclass(frozen=True)
class SearchOptions:
    """What a user asks of a search; unset (None) values take the preset's or the defaults."""

    space: str = _option("recognition_first", "preset name (recognition_first, quality_first, "
                         "fast, balanced) or a path to your own preset .py (default "
                         "recognition_first)")
    objectives: str | None = _option(None, "one metric: search it instead of the preset's; "
                                     "two or three: search them together for their Pareto "
                                     "front, e.g. val_margin_gain,val_psnr (default: the "
                                     "preset's: one, or balanced's two)", metavar="M1,M2")
    data_root: str | None = _option(None, "a data root that holds train_processed/ and "
                                    "val_processed/", metavar="DATA")
    train_dir: str | None = _option(None, "the train split folder (instead of --data-root)",
                                    metavar="DIR")
    val_dir: str | None = _option(None, "the val split folder (instead of --data-root)",
                                  metavar="DIR")
    vlr_size: int | None = _option(None, "VLR size in px (default: the only vlr_images* folder "
                                   "there)", int)
    max_images: int = _option(0, "use at most N pairs per split, evenly spaced over the names "
                              "(default 0: all)", int)
    edgeface: str | None = _option(None, "fine-tuned EdgeFace checkpoint, or random:<variant> "
                                   "(default edgeface_finetuned.pth)")
    val_edgeface: str | None = _option(None, "a held-out recogniser for validation only, never "
                                       "trained against: every trial reports val_heldout_* "
                                       "and val_margin_gain_min, usable as --objectives or in a "
                                       "preset (default: none)", metavar="PATH")
    samples_per_epoch: int | None = _option(None, "training pairs drawn afresh each epoch, all "
                                            "persons in play (default 0: every pair)", int,
                                            metavar="N")
    perceptual_weights: str | None = _option(None, "VGG19 weights: imagenet, a file, or random")
    pins: Mapping[str, Any] = _option({}, "hold a setting fixed (JSON value), e.g. --set "
                                      "width=64; a searched knob set here is no longer "
                                      "searched. Repeatable", "settings", flag="--set")
    num_samples: int | None = _option(None, "trials to run (default "
                                      f"{DEFAULT_BUDGET['num_samples']}; with --demo "
                                      f"{SEARCH_BUDGET['num_samples']})", int)
    max_epochs: int | None = _option(None, "epochs of a full-length trial, ASHA's max_t "
                                     "(default: the preset's)", int)
    grace_period: int | None = _option(None, "epochs every trial gets before ASHA may stop it "
                                       "(default: the preset's)", int)
    reduction_factor: float | None = _option(None, "ASHA keeps 1/reduction_factor of the trials "
                                             "at each rung (default "
                                             f"{DEFAULT_BUDGET['reduction_factor']}; with "
                                             f"--demo {SEARCH_BUDGET['reduction_factor']})",
                                             float)
    patience: int | None = _option(None, "end a trial whose objective has not beaten its own "
                                   "best for this many epochs (default: the preset's, else the "
                                   "grace period)", int)
    confirm: int | None = _option(None, "after the search, train the top K configurations (and "
                                  "the pixel-only anchor) again with new seeds at the full "
                                  "budget; export takes the best mean (default "
                                  f"{DEFAULT_CONFIRM}, at most --num-samples; 0 with --demo)",
                                  int)
    confirm_runs: int = _option(DEFAULT_CONFIRM_RUNS, "new runs of each confirmed "
                                f"configuration (default {DEFAULT_CONFIRM_RUNS})", int)
    max_concurrent: int = _option(0, "trials running at once (default 0: as many as resources "
                                  "allow)", int)
    time_budget: float | None = _option(None, "stop the whole search after this many seconds",
                                        float)
    gpus: float = _option(0, "GPUs to use in total (default 0: CPU)", float)
    gpus_per_trial: float | None = _option(None, "GPUs per trial; fractions share a GPU (e.g. "
                                           "0.5: two trials per GPU). Default 1 when --gpus > 0",
                                           float)
    cpus_per_trial: float = _option(1, "CPUs per trial (default 1)", float)
    storage_path: str = _option("tune_results", "where experiments go: a folder (shared by all "
                                "nodes on a cluster, e.g. NFS) or an s3://-style URI (default "
                                "./tune_results)")
    name: str | None = _option(None, "experiment name (default dsr-<space>-<time>)")
    seed: int = _option(42, "seed of the sampler and of every trial (default 42)", int)
    max_failures: int = _option(1, "retries of a failed trial, from its last checkpoint "
                                "(default 1)", int)
    checkpoint_every: int = _option(1, "checkpoint each trial every N epochs (default 1)", int)
    address: str | None = _option(None, "an existing Ray cluster to run on (e.g. auto, or "
                                  "ray://head:10001); default: a local Ray")
    demo: bool = _option(False, "synthetic faces, random networks, a tiny DSR: a few minutes on "
                         "2 CPUs", bool)
