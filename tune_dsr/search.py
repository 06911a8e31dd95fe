"""The search command line: ``python -m tune_dsr.search --space recognition_first --gpus 1``.

Parses the flags into `tune_dsr.tuning.SearchOptions`, plans and runs the search there, and
prints the best trial and the final run's command. Argument errors, ``--help`` and
``--list-spaces`` answer without importing torch or Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from tune_dsr.cli import add_debug_flag, parse_settings, run_cli
from tune_dsr.experiment import BEST_FILE, SearchPlan, join


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
    p.add_argument("--patience", type=int,
                   help="end a trial whose objective has not beaten its own best for this many "
                        "epochs (default: the preset's, else the grace period)")
    p.add_argument("--confirm", type=int,
                   help="after the search, train the top K configurations again with new "
                        "seeds at the full budget; export takes the best mean (default 3, "
                        "at most --num-samples; 0 with --demo)")
    p.add_argument("--confirm-runs", type=int, default=2,
                   help="new runs of each confirmed configuration (default 2)")
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


def options_from_args(args: argparse.Namespace) -> Any:
    """The parsed flags as `SearchOptions` (the argparse namespace is not changed)."""
    from tune_dsr.tuning import SearchOptions

    return SearchOptions(
        space=args.space, data_root=args.data_root, train_dir=args.train_dir,
        val_dir=args.val_dir, vlr_size=args.vlr_size, max_images=args.max_images,
        edgeface=args.edgeface, perceptual_weights=args.perceptual_weights,
        pins=parse_settings(args.set), num_samples=args.num_samples, max_epochs=args.max_epochs,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        max_concurrent=args.max_concurrent, time_budget=args.time_budget, gpus=args.gpus,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        storage_path=args.storage_path, name=args.name, seed=args.seed,
        max_failures=args.max_failures, checkpoint_every=args.checkpoint_every,
        address=args.address, demo=args.demo, patience=args.patience, confirm=args.confirm,
        confirm_runs=args.confirm_runs)


def print_best(document: dict[str, Any], plan: SearchPlan) -> None:
    prov = document["provenance"]
    label = f" ({prov['anchor']} anchor)" if prov.get("anchor") else ""
    print(f"\nBest trial {prov['trial_id']}{label} by {prov['mode']} {prov['metric']} = "
          f"{prov['value']:.4f} at epoch {prov['best_epoch']} ({prov['epochs_run']} epochs run)")
    confirmed = prov.get("confirmed")
    if confirmed:
        interval = (f" [{confirmed['low']:.4f}, {confirmed['high']:.4f}]"
                    if confirmed["low"] is not None else "")
        print(f"  confirmed: mean {confirmed['mean']:.4f}{interval} over {confirmed['runs']} new "
              f"run(s): {', '.join(f'{v:.4f}' for v in confirmed['values'])}")
    print(f"  searched values: {json.dumps(prov['searched'], sort_keys=True)}")
    metrics = document["metrics"]
    nan = float("nan")
    print(f"  val PSNR {metrics.get('val_psnr', nan):.2f} dB, identity loss "
          f"{metrics.get('val_identity_loss', nan):.4f}, margin "
          f"{metrics.get('val_margin', nan):.4f} (gain over bicubic "
          f"{metrics.get('val_margin_gain', nan):+.4f}), rank-1 with the training subjects in "
          f"the gallery {metrics.get('val_rank1_full', nan):.1%} (gain over bicubic "
          f"{metrics.get('val_rank1_full_gain', nan):+.1%})")
    print(f"  checkpoint: {prov.get('checkpoint')}")
    print(f"  trials: {prov['trials']} ({prov['trials_pruned']} stopped early); epochs run "
          f"{prov['epochs_total']} of {prov['epochs_full']} if all ran to the end (saved: "
          f"{prov['epochs_saved_by_asha']} by ASHA, {prov['epochs_saved_by_patience']} by the "
          f"patience of {plan.patience}); confirmation runs: {prov['confirm_epochs']} epochs")
    if "verdict" in prov:
        print("\n" + prov["verdict"])
    best = join(plan.experiment_path, BEST_FILE)
    print(f"Best config: {best}\nFinal run: python -m tune_dsr.train --config {best} "
          "--out final_run")


def _search(args: argparse.Namespace) -> int:
    if args.list_spaces:
        from search_spaces import BUILTIN, load_preset

        for name in BUILTIN:
            print(load_preset(name).describe() + "\n")
        return 0
    from tune_dsr import tuning

    if args.resume:
        plan = tuning.resume_plan(args.storage_path, args.name, args.address)
    else:
        plan = tuning.plan_search(options_from_args(args))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's classic progress table
    document = tuning.run_search(plan, resume=args.resume)
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
