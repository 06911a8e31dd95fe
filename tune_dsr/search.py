"""The search command line: ``python -m tune_dsr.search --space recognition_first --gpus 1``.

Its flags are `tune_dsr.tuning.options.SearchOptions`'s fields; it plans and runs the search
with `tune_dsr.tuning.service` and prints the best trial and the final run's command. Argument
errors, ``--help`` and ``--list-spaces`` answer without importing torch or Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from tune_dsr.cli import add_debug_flag, parse_settings, run_cli

__all__ = [
    "build_parser",
    "main",
    "options_from_args",
    "print_best",
    "print_front",
]


def build_parser() -> argparse.ArgumentParser:
    """The flags: one per `SearchOptions` field (``--num-samples`` sets ``num_samples``), then
    this command's own (``--list-spaces``, ``--resume``, ``--debug``)."""
    from tune_dsr.tuning.options import SearchOptions

    p = argparse.ArgumentParser(
        prog="python -m tune_dsr.search",
        description="Hyperparameter search for DSR training: Ray Tune + Optuna TPE + ASHA.")
    p.add_argument("--list-spaces", action="store_true",
                   help="print every preset with its objective and ranges, then exit")
    for option in dataclasses.fields(SearchOptions):
        meta = option.metadata
        flag = meta.get("flag", "--" + option.name.replace("_", "-"))
        if meta["kind"] is bool:
            p.add_argument(flag, dest=option.name, action="store_true", help=meta["help"])
        elif meta["kind"] == "settings":
            p.add_argument(flag, dest=option.name, action="append", default=[],
                           metavar="KEY=VALUE", help=meta["help"])
        else:
            p.add_argument(flag, dest=option.name, type=meta["kind"], default=option.default,
                           metavar=meta.get("metavar"), help=meta["help"])
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment --storage-path/--name after a crash or Ctrl-C; "
                        "finished trials are not run again")
    add_debug_flag(p)
    return p


def options_from_args(args: argparse.Namespace) -> Any:
    """The parsed flags as `SearchOptions` (the argparse namespace is not changed)."""
    from tune_dsr.tuning.options import SearchOptions

    values = {option.name: getattr(args, option.name)
              for option in dataclasses.fields(SearchOptions)}
    return SearchOptions(**{**values, "pins": parse_settings(values["pins"])})


def print_best(document: dict[str, Any], plan: Any) -> None:
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
    from tune_dsr.tuning.experiment import BEST_FILE, join

    best = join(plan.experiment_path, BEST_FILE)
    print(f"Best config: {best}\nFinal run: python -m tune_dsr.train --config {best} "
          "--out final_run")


def print_front(plan: Any) -> None:
    """A multi-objective search's result: its front, and how to take a point of it."""
    from tune_dsr.tuning.analysis import load_experiment

    exp = load_experiment(plan.experiment_path)
    print("\n" + exp.describe_front())
    first = plan.objectives[0]
    print(f"\nTake a point: python -m tune_dsr.export {plan.experiment_path} --point 1 --out "
          f"best.json, or a rule such as --maximize {first} --where "
          f"'{plan.objectives[1]}>=VALUE'; then python -m tune_dsr.train --config best.json "
          "--out final_run")


def _search(args: argparse.Namespace) -> int:
    if args.list_spaces:
        from tune_dsr.tuning.presets import BUILTIN, load_preset

        for name in BUILTIN:
            print(load_preset(name).describe() + "\n")
        return 0
    from tune_dsr.tuning import service as tuning

    if args.resume:
        plan = tuning.resume_plan(args.storage_path, args.name, args.address)
    else:
        plan = tuning.plan_search(options_from_args(args))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's classic progress table
    document = tuning.run_search(plan, resume=args.resume)
    if plan.objectives:
        print_front(plan)
    else:
        print_best(document, plan)
    unfinished = document["provenance"]["unfinished"]
    if unfinished:
        so_far = "front" if plan.objectives else "best config"
        print(f"\nThe search was interrupted with {len(unfinished)} trial(s) unfinished; the "
              f"{so_far} above is the {so_far} so far. Continue with:\n  python -m "
              f"tune_dsr.search --resume --storage-path {plan.storage_path} --name {plan.name}",
              file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _search, argv)


if __name__ == "__main__":
    sys.exit(main())
