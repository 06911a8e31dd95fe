"""The search service, usable from Python: options → plan → data → Ray → tuner → best config.

    from tune_dsr.tuning.service import SearchOptions, plan_search, run_search
    plan = plan_search(SearchOptions(space="recognition_first", data_root="DATA", gpus=1))
    document = run_search(plan)          # the best trial as a training config (+ provenance)
    document = run_search(resume_plan("tune_results", plan.name), resume=True)

The preset's anchors run first (the guide's values, and the pixel-only ablation); then Optuna
(seeded TPE, constant liar) proposes each configuration from the preset's space. ASHA stops the
trials that fall behind the others, the patience stops a trial that no longer beats its own best.
Then the top configurations are trained again with new seeds at the full budget (``confirm``),
and the best by their mean is written as ``best_config.json`` for one final run. Everything that
can be wrong with the input is checked by `plan_search` and at the start of `run_search`, before
the first trial. Nothing here mutates what it is given.
``python -m tune_dsr.search`` is the command line over this module.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_dsr import demo
from tune_dsr.config import (
    ANCHOR,
    CONFIRM_RUN,
    CONFIRMS,
    HELD_OUT_PREFIX,
    PIXEL_ONLY,
    Config,
    direction,
)
from tune_dsr.errors import ConfigError, check_writable_dir
from tune_dsr.tuning.experiment import (
    BEST_FILE,
    CONFIRM_DIR,
    PLAN_FILE,
    SearchPlan,
    exists,
    is_uri,
    join,
    resolve_storage,
    write_json,
)
from tune_dsr.tuning.options import (
    DEFAULT_BUDGET,
    DEFAULT_CONFIRM,
    SearchOptions,
)

if TYPE_CHECKING:
    from tune_dsr.data import PairedFaces

__all__ = [
    "SearchData",
    "SearchOptions",
    "build_confirmation",
    "build_tuner",
    "check_cluster",
    "check_study_matches",
    "confirmation_configs",
    "connect_ray",
    "load_data",
    "plan_search",
    "resume_plan",
    "run_search",
]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class SearchData:
    """Both splits, decoded once on the driver (the object store shares them with the trials)."""

    train: PairedFaces
    val: PairedFaces

    @property
    def vlr_size(self) -> int:
        return self.train.vlr_size


def _positive(options: SearchOptions, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name}={value} must be positive")


def _resources(options: SearchOptions) -> float:
    """GPUs per trial, checked against the search's resources."""
    gpus = options.gpus
    if gpus < 0 or options.cpus_per_trial <= 0:
        raise ConfigError(f"gpus={gpus} and cpus_per_trial={options.cpus_per_trial}: "
                          "give gpus >= 0 and cpus_per_trial > 0")
    per_trial = options.gpus_per_trial if options.gpus_per_trial is not None else min(1.0, gpus)
    if per_trial < 0 or per_trial > gpus:
        raise ConfigError(f"gpus_per_trial={per_trial} is larger than gpus={gpus}: a trial "
                          "cannot use more GPUs than the search has; raise gpus or lower "
                          "gpus_per_trial (fractions like 0.5 share a GPU)")
    if gpus > 0 and per_trial == 0:
        raise ConfigError("gpus_per_trial=0 with gpus > 0 would leave the GPUs idle; give a "
                          "GPU share per trial (e.g. 0.5) or set gpus=0")
    if per_trial > 1 and per_trial != int(per_trial):
        raise ConfigError(f"gpus_per_trial={per_trial}: above 1 it must be a whole number")
    if options.address is None and gpus > 0:
        import torch

        found = torch.cuda.device_count()
        if found < gpus:
            raise ConfigError(f"gpus={gpus} but this machine has {found} CUDA device(s); "
                              "lower gpus, or give an address to run on a cluster with GPUs")
    return per_trial


def _local_file(value: str) -> str:
    """A loss-network setting made absolute when it names a file (trials run elsewhere)."""
    if value.startswith("random") or value == "imagenet":
        return value
    return str(Path(value).expanduser().resolve())


def plan_search(options: SearchOptions) -> SearchPlan:
    """Resolve and check every option; nothing expensive has started yet.

    With ``demo``, synthetic faces are written next to the experiment (seconds).
    """
    from tune_dsr.tuning.presets import load_preset

    budget = {**DEFAULT_BUDGET, **(demo.SEARCH_BUDGET if options.demo else {})}
    given = {k: getattr(options, k) for k in budget if getattr(options, k) is not None}
    options = dataclasses.replace(options, **{**budget, **given})
    from tune_dsr.tuning.presets import check_objectives

    preset = load_preset(options.space)
    objectives = (list(check_objectives(options.objectives, single=True))
                  if options.objectives else list(preset.objectives))
    metric = objectives[0] if objectives else preset.metric
    if len(objectives) == 1:  # one objective: a single-objective search for it
        objectives = []
    space_ref = (str(Path(options.space).resolve()) if options.space.endswith(".py")
                 else options.space)
    _positive(options, "num_samples", "max_epochs", "grace_period", "time_budget",
              "checkpoint_every")
    if options.reduction_factor is None or options.reduction_factor <= 1:
        raise ConfigError(f"reduction_factor={options.reduction_factor} must be above 1 (ASHA "
                          "keeps 1/reduction_factor of the trials per rung)")
    if options.max_failures < 0 or options.max_concurrent < 0:
        raise ConfigError(f"max_failures={options.max_failures} and max_concurrent="
                          f"{options.max_concurrent}: both must be >= 0")
    gpus_per_trial = _resources(options)
    max_epochs = options.max_epochs or preset.max_epochs
    grace = options.grace_period or min(preset.grace_period, max_epochs)
    if grace > max_epochs:
        raise ConfigError(f"grace_period={grace} exceeds max_epochs={max_epochs}")
    patience = options.patience if options.patience is not None else (preset.patience or grace)
    if patience < 1:
        raise ConfigError(f"patience={patience} must be at least 1: the epochs a trial may go "
                          "without beating its own best objective before it ends (give "
                          f"patience={max_epochs} to leave stopping to ASHA alone)")
    num_samples = int(options.num_samples or 0)
    if objectives and options.confirm:
        raise ConfigError(f"confirm={options.confirm} with objectives={','.join(objectives)}: "
                          "confirmation ranks configurations by one objective, and a search of "
                          "several returns a front; export a point of it (export --point or "
                          "--maximize) and train that, or leave confirm out")
    confirm = (options.confirm if options.confirm is not None
               else 0 if options.demo or objectives else min(DEFAULT_CONFIRM, num_samples))
    if confirm < 0 or confirm > num_samples:
        raise ConfigError(f"confirm={confirm}: confirm between 0 and the {num_samples} trials "
                          "the search runs (num_samples); lower confirm or raise num_samples")
    if options.confirm_runs < 1:
        raise ConfigError(f"confirm_runs={options.confirm_runs} must be at least 1")

    storage = resolve_storage(options.storage_path)
    if not is_uri(storage):  # before anything (the demo's faces) is written there
        check_writable_dir(storage, "storage_path")
    name = options.name or f"dsr-{preset.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    pins = dict(options.pins)
    # Every setting the plan fixes, checked before anything (the demo's faces) is written.
    constants = preset.constants()
    Config().replace(**{**constants, **(demo.SEARCH_PINS if options.demo else {}), **pins})
    base: dict[str, Any] = {}
    if options.demo:
        demo_root = Path(storage if not is_uri(storage) else ".").resolve() / f"{name}-demo-data"
        splits = demo.make_data(demo_root, **demo.SEARCH_DATA)
        base.update(demo.RANDOM_NETWORKS, train_dir=str(splits["train"]),
                    val_dir=str(splits["val"]))
        pins = {**demo.SEARCH_PINS, **pins}
    if options.data_root:
        from tune_dsr.data import split_dirs

        base.update(split_dirs(options.data_root, "train", "val"))
    for key in ("train_dir", "val_dir"):
        value = getattr(options, key) or base.get(key)
        if value:
            base[key] = str(Path(value).expanduser().resolve())
    if "train_dir" not in base or "val_dir" not in base:
        raise ConfigError("no data: pass --data-root (with train_processed/ and val_processed/), "
                          "or --train-dir and --val-dir, or --demo")
    for key in ("edgeface", "perceptual_weights"):
        value = getattr(options, key) or base.get(key) or getattr(Config().train, key)
        base[key] = _local_file(value)
    if options.val_edgeface or base.get("val_edgeface"):
        base["val_edgeface"] = _local_file(options.val_edgeface or base["val_edgeface"])
    if options.samples_per_epoch is not None:
        base["samples_per_epoch"] = options.samples_per_epoch
    base.update(constants, epochs=max_epochs, seed=options.seed,
                max_images=options.max_images)
    if options.vlr_size:
        base["vlr_size"] = options.vlr_size
    base.update(pins)
    Config().replace(**base)  # every setting checked now, not in a trial
    held_out = [m for m in [metric, *objectives] if m.startswith(HELD_OUT_PREFIX)]
    if held_out and not base.get("val_edgeface"):
        raise ConfigError(f"the objective {held_out[0]} needs a held-out recogniser: pass "
                          "val_edgeface=PATH (an EdgeFace file the DSR does not train against)")
    anchors = preset.anchor_points(pins)
    if num_samples < len(anchors):
        logger.warning("%d trials run only the first %d of the anchors %s", num_samples,
                       num_samples, ", ".join(anchors))
    return SearchPlan(
        space=space_ref, metric=metric, mode=direction(metric), base=base, pins=pins,
        storage_path=storage, name=name, num_samples=num_samples,
        max_epochs=max_epochs, grace_period=grace,
        reduction_factor=float(options.reduction_factor), gpus=options.gpus,
        gpus_per_trial=gpus_per_trial, cpus_per_trial=options.cpus_per_trial,
        max_concurrent=options.max_concurrent, time_budget=options.time_budget,
        seed=options.seed, max_failures=options.max_failures,
        checkpoint_every=options.checkpoint_every, address=options.address, patience=patience,
        confirm=confirm, confirm_runs=options.confirm_runs, anchors=anchors,
        objectives=objectives)


def resume_plan(storage_path: str, name: str, address: str | None = None) -> SearchPlan:
    """The plan of the experiment `storage_path`/`name`, to continue it (on `address`)."""
    if not name:
        raise ConfigError("--resume needs --name (and --storage-path) of the experiment")
    plan = SearchPlan.load(join(resolve_storage(storage_path), name))
    return dataclasses.replace(plan, address=address) if address else plan


def load_data(plan: SearchPlan) -> SearchData:
    """Check and decode both splits the plan names; the VLR size is the data's unless pinned."""
    from tune_dsr.data import load_pair_sets

    _, train, val = load_pair_sets(Config().replace(**plan.base))
    return SearchData(train, val)


def connect_ray(plan: SearchPlan) -> None:
    """Join the plan's Ray cluster, or start a local Ray (unless one is running already)."""
    import ray

    if ray.is_initialized():
        return
    if plan.address:
        ray.init(address=plan.address, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address="local", num_gpus=int(plan.gpus) or None, include_dashboard=False)


def check_cluster(plan: SearchPlan) -> int:
    """Some node fits a trial and every node reaches the storage; returns the number of nodes."""
    import ray

    from tune_dsr.tuning.optuna_asha import check_storage_reachable

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
        logger.info("Ray cluster: %d nodes; results go to %s, which every node reaches",
                    len(nodes), plan.storage_path)
    return len(nodes)


def build_tuner(plan: SearchPlan, data: SearchData, resume: bool = False,
                function: Callable[..., None] | None = None) -> Any:
    """The Tuner: prune-aware Optuna TPE + ASHA + the trainable with data and resources."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from tune_dsr.tuning.optuna_asha import (
        AshaStateCallback,
        PruneAwareOptunaSearch,
        check_private_api,
        coverage_points,
        make_sampler,
        trial_dirname,
    )
    from tune_dsr.tuning.pareto_asha import ParetoASHA, ParetoStateCallback
    from tune_dsr.tuning.presets import SearchSpace, load_preset
    from tune_dsr.tuning.trainable import kept_key

    check_private_api()
    trainable = _trainable(plan, data, plan.experiment_path, function)
    if resume:
        # The searcher (with its Optuna study), ASHA's rungs (AshaStateCallback) and the trials
        # come back from the experiment; the trainable must be given again.
        return tune.Tuner.restore(plan.experiment_path, trainable=trainable,
                                  resume_unfinished=True, resume_errored=True)

    preset = load_preset(plan.space)
    # The anchors run first, each labelled (``anchor`` in its config); then TPE.
    anchors = plan.anchors or preset.anchor_points(plan.pins)
    plan.study_path.parent.mkdir(parents=True, exist_ok=True)
    # One objective: Optuna and ASHA rank trials by it. Several: by the point each trial's kept
    # epoch gives (`kept_<objective>`, see trainable.TuneReporter), in Pareto order.
    keys: str | list[str] = [kept_key(m) for m in plan.objectives] or plan.metric
    modes: str | list[str] = [direction(m) for m in plan.objectives] or plan.mode
    # After the anchors, start-up trials that try every categorical choice the anchors did not.
    coverage = coverage_points(preset.searched(plan.pins), list(anchors.values()),
                               plan.num_samples - len(anchors))
    searcher = PruneAwareOptunaSearch(
        space=SearchSpace(preset.space, plan.pins, anchors), metric=keys, mode=modes,
        points_to_evaluate=[*anchors.values(), *coverage],
        sampler=make_sampler(plan.seed, plan.num_samples),
        study_name=plan.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{plan.study_path}"),
        max_epochs=plan.max_epochs, patience=plan.patience)
    search_alg = (ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)
                  if plan.max_concurrent else searcher)
    scheduler: Any
    if plan.objectives:
        scheduler = ParetoASHA(metrics=list(keys), modes=list(modes), time_attr="epoch",
                               max_t=plan.max_epochs, grace_period=plan.grace_period,
                               reduction_factor=plan.reduction_factor)
        keeper: Any = ParetoStateCallback(scheduler)
    else:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=plan.max_epochs,
                                  grace_period=plan.grace_period,
                                  reduction_factor=plan.reduction_factor)
        keeper = AshaStateCallback(scheduler)
    # The data decides the VLR size unless the plan pins one; every trial is told it.
    param_space = {**plan.base, "vlr_size": data.vlr_size}
    reporter = tune.CLIReporter(
        metric_columns=list(dict.fromkeys(["epoch", plan.metric, *plan.objectives, "val_psnr",
                                           "val_rank1_full_gain"])),
        parameter_columns=[ANCHOR, *preset.searched(plan.pins)][:8],
        max_report_frequency=15)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=plan.metric, mode=plan.mode, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=plan.num_samples,
                                    time_budget_s=plan.time_budget,
                                    trial_dirname_creator=trial_dirname,
                                    # A new trial runs in the previous one's process: no new
                                    # interpreter importing torch, and its loss networks cached.
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=plan.storage_path,
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            # On a URI, what a trial writes (best.pt, best.png) is uploaded with it.
            sync_config=tune.SyncConfig(sync_artifacts=is_uri(plan.storage_path)),
            callbacks=[keeper], progress_reporter=reporter, verbose=1))


def _trainable(plan: SearchPlan, data: SearchData, experiment_path: str,
               function: Callable[..., None] | None) -> Any:
    from tune_dsr.tuning.trainable import make_trainable, train_dsr

    return make_trainable(data.train, data.val, cpus=plan.cpus_per_trial,
                          gpus=plan.gpus_per_trial, objective=plan.metric,
                          objectives=tuple(plan.objectives),
                          checkpoint_every=plan.checkpoint_every,
                          experiment_path=experiment_path, patience=plan.patience,
                          function=function or train_dsr)


def confirmation_configs(plan: SearchPlan) -> list[dict[str, Any]]:
    """The confirmation runs: the configs of the search's top `plan.confirm` trials and of the
    pixel-only anchor, each `plan.confirm_runs` times with new seeds (the same seeds for every
    configuration, so they are compared on equal terms), labelled with the trial they repeat.

    The anchor is confirmed too because the verdict compares the winner with it: the winner's
    confirmed mean (full budget, new seeds) against the anchor's one search run, which ASHA or
    the patience may have cut short, would not be a fair comparison."""
    from tune_dsr.tuning.analysis import load_experiment

    experiment = load_experiment(plan.experiment_path)
    ranked = experiment.top(None, confirmed=False)
    finished = ranked[~ranked["error"].astype(bool)]  # failed trials: never
    chosen = list(finished["trial_id"].head(plan.confirm))
    if len(chosen) < plan.confirm:
        logger.warning("--confirm %d: only %d trial(s) finished with a %s value; confirming "
                       "those", plan.confirm, len(chosen), plan.metric)
    pixel = finished.loc[finished[ANCHOR] == PIXEL_ONLY, "trial_id"].tolist()
    if chosen and pixel and pixel[0] not in chosen:
        chosen.append(pixel[0])
    configs = []
    for trial_id in chosen:
        config = experiment.trial(trial_id).config
        for run in range(1, plan.confirm_runs + 1):  # seeds the search never used
            configs.append({**config, "seed": int(config.get("seed", plan.seed)) + run,
                            CONFIRMS: trial_id, CONFIRM_RUN: run})
    return configs


def build_confirmation(plan: SearchPlan, data: SearchData, resume: bool = False,
                       function: Callable[..., None] | None = None) -> Any:
    """The Tuner of the confirmation runs, in ``<experiment>/confirm``: every run at the full
    budget (no ASHA; the patience still ends a run that stopped improving). Resumed where a
    killed search left it."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from tune_dsr.tuning.optuna_asha import FixedConfigs, trial_dirname

    path = join(plan.experiment_path, CONFIRM_DIR)
    trainable = _trainable(plan, data, path, function)
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    configs = confirmation_configs(plan)
    searcher = FixedConfigs(configs, plan.metric, plan.mode)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=plan.metric, mode=plan.mode, num_samples=len(configs),
            search_alg=(ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)
                        if plan.max_concurrent else searcher),
            trial_dirname_creator=trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(
            name=CONFIRM_DIR, storage_path=plan.experiment_path,
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            sync_config=tune.SyncConfig(sync_artifacts=is_uri(plan.storage_path)),
            progress_reporter=tune.CLIReporter(
                metric_columns=["epoch", plan.metric, "val_psnr"],
                parameter_columns=[CONFIRMS, CONFIRM_RUN, ANCHOR, "seed"],
                max_report_frequency=15),
            verbose=1))


def _confirmation_started(plan: SearchPlan) -> bool:
    from ray import tune

    return bool(plan.confirm) and tune.Tuner.can_restore(join(plan.experiment_path, CONFIRM_DIR))


def check_study_matches(plan: SearchPlan) -> None:
    """On --resume: the stored Optuna study must have drawn from the preset's space as it is now
    (a preset edited since, or one of an older tune_dsr, would fail at the next proposal)."""
    import optuna

    from tune_dsr.tuning.presets import load_preset

    if not plan.study_path.is_file():
        return
    now = load_preset(plan.space).distributions()
    study = optuna.load_study(study_name=plan.name, storage=f"sqlite:///{plan.study_path}")
    for trial in study.get_trials(deepcopy=False):
        for key, stored in trial.distributions.items():
            if key not in now:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(stored, now[key])
            except ValueError as exc:
                raise ConfigError(
                    f"cannot resume {plan.experiment_path}: the preset {plan.space!r} now draws "
                    f"{key} differently from when this search started ({exc}); resume it with "
                    "the tune_dsr and preset that started it, or start a new search") from None


def run_search(plan: SearchPlan, resume: bool = False,
               function: Callable[..., None] | None = None) -> dict[str, Any]:
    """Run (or resume) the search; returns the best configuration document (also saved).

    The document's ``provenance`` says how long the search took and which trials an interrupt
    (Ctrl-C) left unfinished. `function` replaces the trial function (default
    `tune_dsr.tuning.trainable.train_dsr`).
    """
    from tune_dsr.training.losses import load_held_out, load_loss_networks
    from tune_dsr.tuning.export import best_config_document
    from tune_dsr.tuning.presets import load_preset
    from tune_dsr.tuning.records import unfinished_trials

    direction(plan.metric)  # a plan edited by hand must still name a known metric
    if not resume and exists(join(plan.experiment_path, PLAN_FILE)):
        raise ConfigError(f"experiment {plan.experiment_path} exists already; continue it "
                          "with --resume or choose another --name")
    load_preset(plan.space)  # a user's preset module must be importable (and, on resume, unpickle)
    data = load_data(plan)
    # Load the loss networks once here: an unreadable EdgeFace file fails now, not in a trial.
    load_loss_networks(plan.base["edgeface"], plan.base["perceptual_weights"])
    if plan.base.get("val_edgeface"):
        load_held_out(plan.base["val_edgeface"])
    if resume:
        check_study_matches(plan)
    connect_ray(plan)
    check_cluster(plan)
    if not resume:
        plan.save()
    started = time.perf_counter()
    confirming = resume and _confirmation_started(plan)
    if not confirming:  # the search ended before its confirmation runs began: not again
        results = build_tuner(plan, data, resume=resume, function=function).fit()
        errors = [r for r in results if r.error is not None]
        if errors:
            logger.warning("%d of %d trials failed; first error: %s", len(errors), len(results),
                           str(errors[0].error).splitlines()[0])
        if len(errors) == len(results):
            raise RuntimeError("every trial failed; rerun with --debug and look at the trial "
                               f"logs under {plan.experiment_path}")
    # Tune catches Ctrl-C, saves the experiment and returns as if done: tell the two apart.
    unfinished = unfinished_trials(plan.experiment_path)
    if plan.confirm and not unfinished:
        logger.info("Confirming the top %d configurations, %d new runs each", plan.confirm,
                    plan.confirm_runs)
        build_confirmation(plan, data, resume=resume, function=function).fit()
        unfinished = unfinished_trials(join(plan.experiment_path, CONFIRM_DIR))
    document = best_config_document(plan.experiment_path)
    write_json(join(plan.experiment_path, BEST_FILE), document)
    document["provenance"]["search_seconds"] = round(time.perf_counter() - started, 1)
    document["provenance"]["unfinished"] = unfinished
    return document
