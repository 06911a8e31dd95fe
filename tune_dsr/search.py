"""The search service: ``python -m tune_dsr.search --space recognition_first --gpus 1``.

Runs many DSR trainings under Ray Tune: Optuna (seeded TPE, constant liar) proposes the next
configuration from a preset's space, ASHA stops the poor trials early, and the best configuration
is written as ``best_config.json`` for one final run with ``python -m tune_dsr.train --config``.
Everything that can be wrong with the input is checked before the first trial starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tune_dsr.cli import add_debug_flag, run_cli
from tune_dsr.config import Config
from tune_dsr.data import PairedFaces, load_pair_sets
from tune_dsr.errors import ConfigError
from tune_dsr.losses import load_loss_networks

logger = logging.getLogger("tune_dsr.search")

PLAN_FILE = "search_plan.json"
STUDY_FILE = "optuna_study.db"
BEST_FILE = "best_config.json"

# The demo: synthetic faces, random networks, a tiny DSR (width/depth pinned, not searched), and
# a short search: a few minutes on two CPU cores.
DEMO_PINS: dict[str, Any] = {"width": 24, "depth": 2, "batch_size": 8}
DEMO_SETTINGS: dict[str, Any] = {"edgeface": "random:edgeface_xxs", "perceptual_weights": "random"}
DEMO_SEARCH: dict[str, Any] = {"num_samples": 6, "max_epochs": 4, "grace_period": 1,
                               "reduction_factor": 2}
SEARCH_DEFAULTS: dict[str, Any] = {"num_samples": 20, "reduction_factor": 3}


@dataclass
class SearchPlan:
    """Everything a search needs, resolved and checked; saved in the experiment folder."""

    space: str
    metric: str
    mode: str
    base: dict[str, Any]  # flat config: settings every trial shares
    pins: dict[str, Any]  # knobs held fixed instead of searched
    storage_path: str
    name: str
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    gpus: float
    gpus_per_trial: float
    cpus_per_trial: float
    max_concurrent: int
    time_budget: float | None
    seed: int
    max_failures: int
    checkpoint_every: int
    address: str | None = None

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tune_dsr.search",
        description="Hyperparameter search for DSR training: Ray Tune + Optuna TPE + ASHA.")
    p.add_argument("--space", default="recognition_first",
                   help="preset name (recognition_first, quality_first, fast) or a path to your "
                        "own preset .py (default recognition_first)")
    p.add_argument("--list-spaces", action="store_true",
                   help="print every preset with its objective and ranges, then exit")
    p.add_argument("--gpus", type=float, default=0, help="GPUs to use in total (default 0: CPU)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial; fractions share a GPU (e.g. 0.5: two trials per GPU). "
                        "Default 1 when --gpus > 0")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs per trial (default 1)")
    p.add_argument("--num-samples", type=int,
                   help="trials to run (default 20; with --demo 6)")
    p.add_argument("--max-epochs", type=int,
                   help="epochs of a full-length trial, ASHA's max_t (default: the preset's)")
    p.add_argument("--grace-period", type=int,
                   help="epochs every trial gets before ASHA may stop it (default: the preset's)")
    p.add_argument("--reduction-factor", type=float,
                   help="ASHA keeps 1/reduction_factor of the trials at each rung (default 3; "
                        "with --demo 2)")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials running at once (default 0: as many as resources allow)")
    p.add_argument("--time-budget", type=float,
                   help="stop the whole search after this many seconds")
    p.add_argument("--data-root", help="root with train_processed/ and val_processed/")
    p.add_argument("--train-dir", help="training split (instead of --data-root)")
    p.add_argument("--val-dir", help="validation split (instead of --data-root)")
    p.add_argument("--vlr-size", type=int,
                   help="VLR size in px (default: the only vlr_images* folder there)")
    p.add_argument("--max-images", type=int, default=0,
                   help="use at most this many pairs per split (default 0: all)")
    p.add_argument("--edgeface", help="fine-tuned EdgeFace checkpoint, or random:<variant> "
                                      "(default edgeface_finetuned.pth)")
    p.add_argument("--perceptual-weights", help="VGG19 weights: imagenet, a file, or random")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="hold a setting fixed (JSON value), e.g. --set width=64; a searched knob "
                        "set here is no longer searched. Repeatable")
    p.add_argument("--storage-path", default="tune_results",
                   help="where experiments go: a folder (shared by all nodes on a cluster, e.g. "
                        "NFS) or an s3://-style URI (default ./tune_results)")
    p.add_argument("--name", help="experiment name (default dsr-<space>-<time>)")
    p.add_argument("--seed", type=int, default=42, help="seed of the sampler and of every trial")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment --storage-path/--name after a crash or Ctrl-C; "
                        "finished trials are not run again")
    p.add_argument("--max-failures", type=int, default=1,
                   help="retries of a failed trial, from its last checkpoint (default 1)")
    p.add_argument("--checkpoint-every", type=int, default=1,
                   help="checkpoint each trial every N epochs (default 1)")
    p.add_argument("--address", help="an existing Ray cluster to run on (e.g. auto, or "
                                     "ray://head:10001); default: a local Ray")
    p.add_argument("--demo", action="store_true",
                   help="synthetic faces, random networks, a tiny DSR: a few minutes on 2 CPUs")
    add_debug_flag(p)
    return p


def _parse_pins(items: list[str]) -> dict[str, Any]:
    pins = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set width=64")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string, e.g. --set device=cuda
        pins[key.strip()] = value
    return pins


def _check_resources(args: argparse.Namespace) -> tuple[float, float]:
    if args.gpus < 0 or args.cpus_per_trial <= 0:
        raise ConfigError(f"--gpus={args.gpus} and --cpus-per-trial={args.cpus_per_trial}: "
                          "give --gpus >= 0 and --cpus-per-trial > 0")
    gpus_per_trial = args.gpus_per_trial
    if gpus_per_trial is None:
        gpus_per_trial = min(1.0, args.gpus)
    if gpus_per_trial < 0 or gpus_per_trial > args.gpus:
        raise ConfigError(f"--gpus-per-trial={gpus_per_trial} is larger than --gpus={args.gpus}: "
                          "a trial cannot use more GPUs than the search has; raise --gpus or "
                          "lower --gpus-per-trial (fractions like 0.5 share a GPU)")
    if args.gpus > 0 and gpus_per_trial == 0:
        raise ConfigError("--gpus-per-trial=0 with --gpus > 0 would leave the GPUs idle; give a "
                          "GPU share per trial (e.g. 0.5) or drop --gpus")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ConfigError(f"--gpus-per-trial={gpus_per_trial}: above 1 it must be a whole number")
    if args.address is None and args.gpus > 0:
        import torch

        found = torch.cuda.device_count()
        if found < args.gpus:
            raise ConfigError(f"--gpus={args.gpus} but this machine has {found} CUDA device(s); "
                              "lower --gpus, or use --address to run on a cluster with GPUs")
    return args.gpus, gpus_per_trial


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}={value} must be positive")


def plan_from_args(args: argparse.Namespace) -> SearchPlan:
    """Resolve and check every argument; nothing expensive has started yet."""
    from search_spaces import load_preset

    # Flags left unset take the demo's values with --demo, else the defaults.
    for key, value in (DEMO_SEARCH if args.demo else SEARCH_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    preset = load_preset(args.space)
    space_ref = str(Path(args.space).resolve()) if args.space.endswith(".py") else args.space
    _positive(args, "num_samples", "max_epochs", "grace_period", "time_budget",
              "checkpoint_every")
    if args.reduction_factor <= 1:
        raise ConfigError(f"--reduction-factor={args.reduction_factor} must be above 1 (ASHA "
                          "keeps 1/reduction_factor of the trials per rung)")
    if args.max_failures < 0 or args.max_concurrent < 0:
        raise ConfigError("--max-failures and --max-concurrent must be >= 0")
    gpus, gpus_per_trial = _check_resources(args)
    max_epochs = args.max_epochs or preset.max_epochs
    grace = args.grace_period or min(preset.grace_period, max_epochs)
    if grace > max_epochs:
        raise ConfigError(f"--grace-period={grace} exceeds --max-epochs={max_epochs}")

    storage = args.storage_path
    if not storage.startswith(("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "file://")):
        if "://" in storage:
            raise ConfigError(f"--storage-path {storage}: unsupported URI scheme; use a folder "
                              "or an s3://, gs://, hdfs:// or abfs:// URI")
        storage = str(Path(storage).expanduser().resolve())
    name = args.name or f"dsr-{preset.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    pins = _parse_pins(args.set)
    base: dict[str, Any] = {}
    if args.demo:
        demo_root = Path(storage if "://" not in storage else ".").resolve() / f"{name}-demo-data"
        from tune_dsr.train import make_demo_data

        splits = make_demo_data(demo_root, subjects=12, per_subject=4)
        base.update(DEMO_SETTINGS, train_dir=str(splits["train"]), val_dir=str(splits["val"]))
        pins = {**DEMO_PINS, **pins}
    if args.data_root:
        root = Path(args.data_root).expanduser()
        base.update(train_dir=str(root / "train_processed"), val_dir=str(root / "val_processed"))
    for key in ("train_dir", "val_dir"):
        if getattr(args, key):
            base[key] = getattr(args, key)
        if key in base:
            base[key] = str(Path(base[key]).expanduser().resolve())
    if "train_dir" not in base or "val_dir" not in base:
        raise ConfigError("no data: pass --data-root (with train_processed/ and val_processed/), "
                          "or --train-dir and --val-dir, or --demo")
    for key in ("edgeface", "perceptual_weights"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
        value = base.get(key, getattr(Config().train, key))
        if not value.startswith("random") and value != "imagenet":
            value = str(Path(value).expanduser().resolve())  # trials run in other folders
        base[key] = value
    base.update(preset.constants(), epochs=max_epochs, seed=args.seed, max_images=args.max_images)
    if args.vlr_size:
        base["vlr_size"] = args.vlr_size
    base.update(pins)
    Config().replace(**base)  # every setting checked now, not in a trial
    return SearchPlan(
        space=space_ref, metric=preset.metric, mode=preset.mode, base=base, pins=pins,
        storage_path=storage, name=name, num_samples=args.num_samples, max_epochs=max_epochs,
        grace_period=grace, reduction_factor=args.reduction_factor, gpus=gpus,
        gpus_per_trial=gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent, time_budget=args.time_budget, seed=args.seed,
        max_failures=args.max_failures, checkpoint_every=args.checkpoint_every,
        address=args.address)


def load_data(plan: SearchPlan) -> tuple[PairedFaces, PairedFaces]:
    """Decode both splits once on the driver (the object store shares them with the trials)."""
    config, train_set, val_set = load_pair_sets(Config().replace(**plan.base),
                                                infer_vlr_size="vlr_size" not in plan.base)
    plan.base["vlr_size"] = config.model.vlr_size
    return train_set, val_set


def _connect_ray(plan: SearchPlan) -> None:
    import ray

    if ray.is_initialized():
        return
    if plan.address:
        ray.init(address=plan.address, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address="local", num_gpus=int(plan.gpus) or None, include_dashboard=False)


def _check_cluster(plan: SearchPlan) -> None:
    import ray

    from tune_dsr.tuning import check_storage_reachable

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes
            if n["Resources"].get("CPU", 0) >= plan.cpus_per_trial
            and n["Resources"].get("GPU", 0) >= plan.gpus_per_trial]
    if not fits:
        raise ConfigError(f"no Ray node has {plan.cpus_per_trial} CPUs and {plan.gpus_per_trial} "
                          "GPUs for one trial; lower --cpus-per-trial/--gpus-per-trial")
    blind = check_storage_reachable(plan.storage_path)
    if blind:
        raise ConfigError(
            f"--storage-path {plan.storage_path} is not shared: {len(blind)} of {len(nodes)} "
            f"Ray nodes cannot see it (node ids {', '.join(b[:8] for b in blind)}). Trials on "
            "those nodes would write their results where the driver never sees them. Use a "
            "folder every node mounts (NFS) or an s3:// URI")
    if len(nodes) > 1:
        print(f"Ray cluster: {len(nodes)} nodes; results go to {plan.storage_path}, which every "
              "node reaches", flush=True)


def build_tuner(plan: SearchPlan, train_set: PairedFaces, val_set: PairedFaces,
                resume: bool = False, function: Any = None) -> Any:
    """The Tuner: OptunaSearch (prune-aware) + ASHA + the trainable with data and resources."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from search_spaces import load_preset
    from tune_dsr.trainable import make_trainable, train_dsr
    from tune_dsr.tuning import (
        AshaStateCallback,
        PruneAwareOptunaSearch,
        make_sampler,
        pin_space,
        trial_dirname,
    )

    trainable = make_trainable(train_set, val_set, cpus=plan.cpus_per_trial,
                               gpus=plan.gpus_per_trial, function=function or train_dsr)
    if resume:
        # The searcher (with its Optuna study), ASHA's rungs (AshaStateCallback) and the trials
        # come back from the experiment; the trainable must be given again.
        return tune.Tuner.restore(plan.experiment_path, trainable=trainable,
                                  resume_unfinished=True, resume_errored=True)

    preset = load_preset(plan.space)
    space = pin_space(preset.space, plan.pins)
    first = {k: v for k, v in preset.first_config().items() if k not in plan.pins}
    searcher = PruneAwareOptunaSearch(
        space=space, metric=plan.metric, mode=plan.mode, points_to_evaluate=[first],
        sampler=make_sampler(plan.seed, plan.num_samples), study_name=plan.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{study_path(plan)}"),
        max_epochs=plan.max_epochs)
    search_alg = (ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)
                  if plan.max_concurrent else searcher)
    scheduler = ASHAScheduler(time_attr="epoch", max_t=plan.max_epochs,
                              grace_period=plan.grace_period,
                              reduction_factor=plan.reduction_factor)
    param_space = {**plan.base, "_objective": plan.metric,
                   "_checkpoint_every": plan.checkpoint_every}
    searched = list(preset.distributions())
    reporter = tune.CLIReporter(
        metric_columns=list(dict.fromkeys(["epoch", plan.metric, "val_psnr",
                                           "val_identity_loss"])),
        parameter_columns=[k for k in searched if k not in plan.pins][:8],
        max_report_frequency=15)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=plan.metric, mode=plan.mode, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=plan.num_samples,
                                    time_budget_s=plan.time_budget,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=plan.storage_path,
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[AshaStateCallback(scheduler)], progress_reporter=reporter, verbose=1))


def study_path(plan: SearchPlan) -> Path:
    """The Optuna study (SQLite, for optuna-dashboard): in the experiment folder when local."""
    if "://" in plan.storage_path:
        folder = Path.home() / "tune_dsr_studies" / plan.name
    else:
        folder = Path(plan.experiment_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / STUDY_FILE


def save_plan(plan: SearchPlan) -> None:
    text = json.dumps(asdict(plan), indent=2) + "\n"
    if "://" in plan.storage_path:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(plan.experiment_path)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{PLAN_FILE}") as out:
            out.write(text.encode())
    else:
        Path(plan.experiment_path).mkdir(parents=True, exist_ok=True)
        (Path(plan.experiment_path) / PLAN_FILE).write_text(text)


def load_plan(experiment_path: str) -> SearchPlan:
    if "://" in experiment_path:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
        with fs.open_input_stream(f"{path}/{PLAN_FILE}") as f:
            return SearchPlan(**json.loads(f.read().decode()))
    plan_file = Path(experiment_path) / PLAN_FILE
    if not plan_file.is_file():
        raise ConfigError(f"--resume: {experiment_path} holds no tune_dsr search ({PLAN_FILE} "
                          "missing); check --storage-path and --name")
    return SearchPlan(**json.loads(plan_file.read_text()))


def run_search(plan: SearchPlan, resume: bool = False, function: Any = None) -> dict[str, Any]:
    """Run (or resume) the search; returns the best configuration document (also saved).

    `function` replaces the trial function (default `tune_dsr.trainable.train_dsr`).
    """
    from tune_dsr.analysis import unfinished_trials
    from tune_dsr.export import best_config_document, write_json

    train_set, val_set = load_data(plan)
    # Load the loss networks once here: an unreadable EdgeFace file fails now, not in a trial.
    load_loss_networks(plan.base["edgeface"], plan.base["perceptual_weights"])
    _connect_ray(plan)
    _check_cluster(plan)
    if not resume:
        if "://" not in plan.storage_path and (Path(plan.experiment_path) / PLAN_FILE).exists():
            raise ConfigError(f"experiment {plan.experiment_path} exists already; continue it "
                              "with --resume or choose another --name")
        save_plan(plan)
    if resume:
        from search_spaces import load_preset

        load_preset(plan.space)  # a user's preset module must be importable to unpickle
    tuner = build_tuner(plan, train_set, val_set, resume=resume, function=function)
    started = time.perf_counter()
    results = tuner.fit()
    errors = [r for r in results if r.error is not None]
    if errors:
        logger.warning("%d of %d trials failed; first error: %s", len(errors), len(results),
                       str(errors[0].error).splitlines()[0])
    if len(errors) == len(results):
        raise RuntimeError("every trial failed; rerun with --debug and look at the trial logs "
                           f"under {plan.experiment_path}")
    document = best_config_document(plan.experiment_path, plan.metric, plan.mode)
    write_json(document, f"{plan.experiment_path}/{BEST_FILE}")
    document["provenance"]["search_seconds"] = round(time.perf_counter() - started, 1)
    # Tune catches Ctrl-C, saves the experiment and returns as if done: tell the two apart.
    document["provenance"]["unfinished"] = unfinished_trials(plan.experiment_path)
    return document


def print_best(document: dict[str, Any], plan: SearchPlan) -> None:
    prov = document["provenance"]
    print(f"\nBest trial {prov['trial_id']} by {prov['mode']} {prov['metric']} = "
          f"{prov['value']:.4f} at epoch {prov['best_epoch']} ({prov['epochs_run']} epochs run)")
    print(f"  searched values: {json.dumps(prov['searched'], sort_keys=True)}")
    metrics = document["metrics"]
    print(f"  val PSNR {metrics.get('val_psnr', float('nan')):.2f} dB, identity loss "
          f"{metrics.get('val_identity_loss', float('nan')):.4f}, feature match "
          f"{metrics.get('val_feature_match_loss', float('nan')):.4f}")
    print(f"  checkpoint: {prov.get('checkpoint')}")
    print(f"  trials: {prov['trials']} ({prov['trials_pruned']} stopped early by ASHA); epochs "
          f"run {prov['epochs_total']} of {prov['epochs_full']} if all ran to the end")
    print(f"Best config: {plan.experiment_path}/{BEST_FILE}\nFinal run: python -m tune_dsr.train "
          f"--config {plan.experiment_path}/{BEST_FILE} --out final_run")


def _search(args: argparse.Namespace) -> int:
    if args.list_spaces:
        from search_spaces import BUILTIN, load_preset

        for name in BUILTIN:
            print(load_preset(name).describe() + "\n")
        return 0
    if args.resume:
        storage = args.storage_path
        if "://" not in storage:
            storage = str(Path(storage).expanduser().resolve())
        if not args.name:
            raise ConfigError("--resume needs --name (and --storage-path) of the experiment")
        plan = load_plan(f"{storage.rstrip('/')}/{args.name}")
        if args.address:
            plan.address = args.address
    else:
        plan = plan_from_args(args)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's classic progress table
    document = run_search(plan, resume=args.resume)
    print_best(document, plan)
    unfinished = document["provenance"]["unfinished"]
    if unfinished:
        print(f"\nThe search was interrupted with {len(unfinished)} trial(s) unfinished; the "
              "best config above is the best so far. Continue with:\n  python -m "
              f"tune_dsr.search --resume --storage-path {plan.storage_path} --name {plan.name}",
              file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _search, argv)


if __name__ == "__main__":
    sys.exit(main())
