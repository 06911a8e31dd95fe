"""Part "transfer": does a DSR's gain over bicubic hold under a recogniser it never trained
against, and which validation signal picks the epochs where it does?

Each run trains one DSR configuration with tune_dsr's own `Trainer` (the same CPU pins as the
faces part) against the first recogniser, with the second as the held-out validation recogniser
(``val_edgeface``), and after every epoch measures the EMA network on the **test** persons under
both (wide gallery: the test persons plus the training and validation persons as distractors).
The rows hold every validation metric of the epoch beside the test figures, so that the study
can ask, for each candidate signal, how test rank-1 under each recogniser moves with it, and
which epoch and run it would pick.

    python -m benchmarks.transfer --data DIR --edgeface TRAINED.pt --held-out OTHER.pt \\
        [--vlr-size 8] [--epochs 16] [--run NAME:KEY=VALUE,...] [--jsonl OUT]
    python -m benchmarks.transfer --reanalyse OUT.jsonl

Without ``--run``: the pixel-only run and the guide's identity terms at λ_id 0.5, λ_fm 0.15.
Runs are trained one after the other; start two processes (one per core) to run two at once
and ``--reanalyse`` both files together. What it found on LFW is in docs/results.md, "A gain
that transfers".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.faces import CPU_PINS, SPLITS, check_inputs
from benchmarks.signals import spearman

DEFAULT_RUNS = ("pixel-only:lambda_identity=0,lambda_feature_match=0",
                "identity:lambda_identity=0.5,lambda_feature_match=0.15")
# The validation signals compared (each epoch reports them all with a held-out recogniser).
SIGNALS = ("val_margin_gain", "val_heldout_margin_gain", "val_margin_gain_min", "val_psnr",
           "val_rank1_full_gain", "val_heldout_rank1_full_gain")
RESAMPLES = 50  # evaluate's bootstrap: only point values are used here


def _parse_run(text: str) -> tuple[str, dict[str, Any]]:
    name, _, settings = text.partition(":")
    values: dict[str, Any] = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        values[key.strip()] = json.loads(value)
    return name, values


def _wide(report: dict[str, Any]) -> dict[str, Any]:
    """Per recogniser (its role: trained / held), the wide protocol's rank-1 and margin."""
    out: dict[str, Any] = {}
    for block in report["results"]:
        if block["protocol"] != "wide":
            continue
        role = "trained" if block["role"] == "trained against" else "held"
        for method in ("bicubic", "DSR"):
            entry = block["methods"][method]
            out[f"test_{role}_{method}_rank1"] = entry["rank1"]
            out[f"test_{role}_{method}_margin"] = entry["margin"]
    return out


def train_runs(data: Path, edgeface: str, held_out: str, vlr_size: int | None, epochs: int,
               runs: list[tuple[str, dict[str, Any]]], out: Path, samples: int = 0) -> None:
    import torch

    from tune_dsr.config import Config
    from tune_dsr.data import load_pair_sets
    from tune_dsr.evaluation.probes import DistractorFaces, load_probe_set, load_recognisers
    from tune_dsr.evaluation.protocols import evaluate_dsrs
    from tune_dsr.training.losses import load_held_out, load_loss_networks
    from tune_dsr.training.trainer import Trainer

    base = Config().replace(**CPU_PINS, perceptual_weights="random", device="cpu", patience=0,
                            lr=3e-4, epochs=epochs, edgeface=edgeface, val_edgeface=held_out,
                            vlr_size=vlr_size, samples_per_epoch=samples,
                            train_dir=str(data / SPLITS[0]), val_dir=str(data / SPLITS[1]))
    base, train, val = load_pair_sets(base)
    test = load_probe_set(data / SPLITS[2], vlr_size=base.model.vlr_size)
    # Decoded once: evaluate then embeds the distractors from memory every epoch.
    distractors = []
    for split in SPLITS[:2]:
        faces = DistractorFaces.scan(data / split, test.hr_size)
        distractors.append(DistractorFaces.from_tensor(torch.cat(list(faces.batches(64))),
                                                       faces.subjects, source=faces.source))
    recognisers = load_recognisers([edgeface, held_out])
    identity_net, _ = load_loss_networks(edgeface, "random")
    validation_net = load_held_out(held_out)

    class Probe:
        def __init__(self, name: str, settings: dict[str, Any]) -> None:
            self.name, self.settings = name, settings

        def on_batch_end(self, *args: Any) -> None:
            return None

        def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            started = time.perf_counter()
            trainer.ema.eval()
            report = evaluate_dsrs(test, {"DSR": trainer.ema}, recognisers,
                                   distractors=distractors, resamples=RESAMPLES, batch_size=64)
            row: dict[str, Any] = {"run": self.name, "settings": self.settings,
                                   "epoch": int(metrics["epoch"])}
            row.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            row.update(_wide(report), test_seconds=time.perf_counter() - started)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{self.name} epoch {row['epoch']}: test rank-1 gain over bicubic "
                  f"{_gain(row, 'trained'):+.1f} (trained against), {_gain(row, 'held'):+.1f} "
                  "(held out) points", flush=True)

    for name, settings in runs:
        trainer = Trainer(base.replace(**settings), train, val, identity_net, None,
                          callbacks=[Probe(name, settings)], held_out=validation_net)
        trainer.fit()


def _gain(row: dict[str, Any], role: str, what: str = "rank1") -> float:
    return 100 * (row[f"test_{role}_DSR_{what}"] - row[f"test_{role}_bicubic_{what}"])


def analyse(rows: list[dict[str, Any]]) -> str:
    """Per run and epoch the gains; per signal the Spearman over (run, epoch) pairs with each
    test gain, and what its pick (the best (run, epoch)) scores."""
    lines = ["run, epoch: test rank-1 gain over bicubic (points), trained-against / held-out; "
             "validation margin gains"]
    for row in rows:
        lines.append(f"  {row['run']:<12} {row['epoch']:>3}: {_gain(row, 'trained'):+5.1f} / "
                     f"{_gain(row, 'held'):+5.1f}   val {row['val_margin_gain']:+.4f} / "
                     f"{row.get('val_heldout_margin_gain', float('nan')):+.4f}")
    lines.append("")
    lines.append(f"{'signal':<28} {'rho trained':>11} {'rho held':>9} {'rho min':>8}   pick: "
                 "run@epoch, trained / held-out gain")
    for signal in SIGNALS:
        usable = [r for r in rows if signal in r]
        if len(usable) < 3:
            continue
        values = [r[signal] for r in usable]
        trained = [_gain(r, "trained") for r in usable]
        held = [_gain(r, "held") for r in usable]
        worst = [min(a, b) for a, b in zip(trained, held, strict=True)]
        pick = max(usable, key=lambda r: r[signal])
        lines.append(f"{signal:<28} {spearman(values, trained):>+11.2f} "
                     f"{spearman(values, held):>+9.2f} {spearman(values, worst):>+8.2f}   "
                     f"{pick['run']}@{pick['epoch']}, {_gain(pick, 'trained'):+.1f} / "
                     f"{_gain(pick, 'held'):+.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="a face set in tune_dsr's layout")
    p.add_argument("--edgeface", help="the recogniser DSR trains against")
    p.add_argument("--held-out", help="a recogniser DSR never trains against")
    p.add_argument("--vlr-size", type=int, help="which VLR folder (default: the only one)")
    p.add_argument("--epochs", type=int, default=16, help="epochs per run (default 16)")
    p.add_argument("--samples-per-epoch", type=int, default=0,
                   help="training pairs per epoch (default 0: all)")
    p.add_argument("--run", action="append", metavar="NAME:KEY=VALUE,...",
                   help="a run's name and settings; repeatable (default: pixel-only and the "
                        "guide's identity terms)")
    p.add_argument("--jsonl", type=Path, default=Path("transfer.jsonl"),
                   help="where the rows go, one per epoch, appended (default transfer.jsonl)")
    p.add_argument("--reanalyse", type=Path, nargs="+", metavar="JSONL",
                   help="print the analysis of saved rows instead of training")
    args = p.parse_args(argv)
    if args.reanalyse:
        rows = [json.loads(line) for path in args.reanalyse
                for line in path.read_text().splitlines()]
        print(analyse(rows))
        return 0
    from tune_dsr.errors import ConfigError

    try:
        if not args.held_out:
            raise ConfigError("--held-out FILE: the study needs a second recogniser")
        data, edgeface, held = check_inputs(args.data, args.edgeface, [args.held_out])
    except ConfigError as exc:
        p.error(str(exc))
    runs = [_parse_run(text) for text in args.run or DEFAULT_RUNS]
    train_runs(data, edgeface, held[0], args.vlr_size, args.epochs, runs, args.jsonl,
               args.samples_per_epoch)
    print(analyse([json.loads(line) for line in args.jsonl.read_text().splitlines()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
