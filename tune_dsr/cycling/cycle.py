"""One cycle of the guide, in stages that each own a folder under the cycle's folder.

    1_dsr/       DSR trained against the original EdgeFace (skipped when a DSR is given)
    2_finetune/  EdgeFace fine-tuned on the stage-1 DSR's faces
    2_control/   EdgeFace fine-tuned on bicubic upscales: the control that adapts only the
                 recogniser (a cycle that cannot beat it has not shown that DSR adds anything)
    3_dsr/       DSR retrained with the same settings against the fine-tuned EdgeFace
    4_evaluate/  bicubic and both DSRs on the test persons, read by the original EdgeFace, the
                 fine-tuned ones and every held-out recogniser (report.json, summary.md)

``cycle.json`` names the cycle's inputs; each stage writes ``stage.json`` when it starts and
``done.json`` when it ends. A resumed cycle skips finished stages, continues a started one from
its ``last.pt`` and refuses a folder that another cycle wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune_dsr.config import Config
from tune_dsr.data import PairedFaces, split_dirs
from tune_dsr.errors import ConfigError, DataError
from tune_dsr.evaluation.pairs import Reading, paired_difference
from tune_dsr.files import atomic_write_text
from tune_dsr.finetuning.config import BICUBIC, FinetuneConfig

__all__ = [
    "CONTROL",
    "CYCLE1",
    "CYCLE_FORMAT",
    "FINETUNED",
    "ORIGINAL",
    "STAGE1",
    "STAGES",
    "CyclePlan",
    "format_summary",
    "plan_cycle",
    "run_cycle",
]

logger = logging.getLogger(__name__)

CYCLE_FORMAT = "tune_dsr.cycle/1"
STAGES = ("1_dsr", "2_finetune", "2_control", "3_dsr", "4_evaluate")
# Names in the evaluation: the recognisers and the two DSRs.
ORIGINAL, FINETUNED, CONTROL = "original", "fine-tuned", "control"
STAGE1, CYCLE1 = "stage-1 DSR", "cycle-1 DSR"


@dataclass(frozen=True)
class CyclePlan:
    """Everything a cycle runs with, resolved and checked (`plan_cycle` makes it)."""

    out: Path
    data_root: Path
    vlr_size: int
    edgeface: str
    held_out: tuple[str, ...]
    # The DSR's training settings for stages 1 and 3 (stage 3 swaps in the fine-tuned EdgeFace).
    dsr_config: dict[str, Any]
    # An existing stage-1 DSR (stage 1 is then not trained), or None.
    given_dsr: str | None
    # Fine-tuning settings for stage 2 (and the control), without the DSR and EdgeFace.
    finetune: dict[str, Any]
    control: bool = True
    resamples: int = 4000
    device: str = "auto"
    identity: str = field(init=False)

    def __post_init__(self) -> None:
        inputs = self.inputs()
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        object.__setattr__(self, "identity", digest[:12])

    def inputs(self) -> dict[str, Any]:
        """What makes one cycle another (not where it runs, not how many resamples)."""
        return {"data_root": str(self.data_root), "vlr_size": self.vlr_size,
                "edgeface": self.edgeface, "held_out": list(self.held_out),
                "dsr_config": self.dsr_config, "given_dsr": self.given_dsr,
                "finetune": self.finetune, "control": self.control}

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage


# --------------------------------------------------------------------------------- planning

def _check_recogniser(spec: str) -> str:
    from tune_dsr.models.checkpoints import load_edgeface

    if not spec.startswith("random:"):
        spec = str(Path(spec).expanduser().resolve())
    load_edgeface(spec)  # EdgeFaceError names a file that is not one
    return spec


def _check_training_persons(train_dir: str, vlr_size: int, max_images: int) -> None:
    from tune_dsr.finetuning.finetuner import check_persons

    check_persons(PairedFaces.load(train_dir, vlr_size=vlr_size, max_images=max_images))


def plan_cycle(*, out: str | Path, data_root: str | Path, edgeface: str,
               config: Config | None = None, dsr: str | None = None,
               held_out: Sequence[str] = (), finetune: dict[str, Any] | None = None,
               vlr_size: int | None = None, control: bool = True, device: str = "auto",
               resamples: int = 4000, resume: bool = False) -> CyclePlan:
    """Check every input and the cycle folder, before any network trains.

    `config` is the DSR's training settings (a search's ``best.json``); with `dsr` (an existing
    stage-1 DSR) it defaults to the settings that DSR was trained with. Raises ConfigError,
    DataError, CheckpointError or EdgeFaceError naming what is wrong; nothing is written.
    """
    from tune_dsr.finetuning.finetuner import check_dsr_size
    from tune_dsr.models.checkpoints import read_dsr_checkpoint

    out = Path(out).expanduser().resolve()
    root = Path(data_root).expanduser().resolve()
    splits = split_dirs(root, "train", "val", "test")
    absent = [path for path in splits.values() if not Path(path).is_dir()]
    if absent:
        raise DataError(f"the data root {root} lacks {', '.join(Path(p).name for p in absent)}/"
                        ": a cycle needs train_processed/, val_processed/ and test_processed/ "
                        "(training, validation and the test persons that neither network sees)")
    given = None
    if dsr is not None:
        checkpoint = read_dsr_checkpoint(dsr)
        given = str(checkpoint.path)
        config = config if config is not None else checkpoint.config
    if config is None:
        raise ConfigError("the cycle needs the DSR's settings: pass --config (e.g. a search's "
                          "best.json) or --dsr (an existing stage-1 DSR, whose settings are "
                          "reused)")
    size = vlr_size if vlr_size is not None else config.model.vlr_size
    if given is not None:
        _, size = check_dsr_size(given, size, [splits["train_dir"], splits["val_dir"],
                                               splits["test_dir"]])
    if size is None:  # the data's only size (DataError when it holds several: pass one)
        size = PairedFaces.load(splits["train_dir"], max_images=1).vlr_size
    if config.model.vlr_size not in (None, size):
        raise ConfigError(f"the DSR settings say vlr_size={config.model.vlr_size} but the cycle "
                          f"runs at {size} px; leave --vlr-size out or make them agree")
    edgeface = _check_recogniser(edgeface)
    held = tuple(_check_recogniser(spec) for spec in held_out)
    dsr_config = config.replace(train_dir=splits["train_dir"], val_dir=splits["val_dir"],
                                vlr_size=size, edgeface=edgeface)
    tuned = FinetuneConfig.from_dict(dict(finetune or {}))  # ConfigError names a bad setting
    for key in ("dsr", "edgeface", "train_dir", "val_dir", "vlr_size", "device"):
        if key in (finetune or {}):
            raise ConfigError(f"the cycle sets the fine-tuning's {key} itself; leave "
                              f"{key} out of the fine-tuning settings")
    plan = CyclePlan(out, root, int(size), edgeface, held, dsr_config.to_dict(), given,
                     {k: v for k, v in tuned.to_dict().items() if k not in (
                         "dsr", "edgeface", "train_dir", "val_dir", "vlr_size", "device")},
                     control, resamples, device)
    _check_folder(plan, resume)
    _check_training_persons(splits["train_dir"], plan.vlr_size, tuned.max_images)
    return plan


def _check_folder(plan: CyclePlan, resume: bool) -> None:
    manifest = plan.out / "cycle.json"
    if plan.out.exists() and not plan.out.is_dir():
        raise ConfigError(f"--out {plan.out} is a file; give a folder for the cycle")
    if not resume:
        if manifest.exists() or any(plan.stage_dir(s).exists() for s in STAGES):
            raise ConfigError(f"--out {plan.out} already holds a cycle; pass --resume to carry "
                              "it on, or another --out (nothing was changed)")
        return
    if not manifest.is_file():
        raise ConfigError(f"resume: {manifest} does not exist; run without --resume")
    try:
        saved = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"resume: {manifest} cannot be read ({exc}); it is damaged: start the "
                          "cycle in another --out") from exc
    if saved.get("identity") != plan.identity:
        old = saved.get("inputs", {})
        differ = [k for k, v in plan.inputs().items() if old.get(k) != v]
        raise ConfigError(f"resume: {plan.out} holds another cycle (it differs in "
                          f"{', '.join(differ) or 'its identity'}); resume with the same "
                          "inputs, or start in another --out")
    for stage in STAGES:
        record = plan.stage_dir(stage) / "stage.json"
        if record.is_file() and _read(record).get("cycle") != plan.identity:
            raise ConfigError(f"resume: the stage folder {record.parent} belongs to another "
                              f"cycle ({_read(record).get('cycle')}, this one is "
                              f"{plan.identity}); move it away, or start in another --out")


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); the stage was interrupted while "
                          "writing it: delete the file and resume") from exc
    return document if isinstance(document, dict) else {}


def _write(path: Path, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2) + "\n"
    atomic_write_text(path, lambda out: out.write(text))


# --------------------------------------------------------------------------------- running

@dataclass
class Callbacks:
    """What the command line listens with: trainer and fine-tuner callbacks."""

    dsr: Sequence[Any] = ()
    finetune: Sequence[Any] = ()


def _stage(plan: CyclePlan, stage: str, work: Callable[[Path], dict[str, Any]]
           ) -> dict[str, Any]:
    folder = plan.stage_dir(stage)
    done = folder / "done.json"
    if done.is_file():
        logger.info("stage %s: finished before, not run again", stage)
        return _read(done)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "stage.json", {"cycle": plan.identity, "stage": stage})
    logger.info("stage %s: starting in %s", stage, folder)
    started = time.perf_counter()
    record = work(folder)
    record = {**record, "cycle": plan.identity, "stage": stage,
              "seconds": time.perf_counter() - started}
    _write(done, record)
    return record


def _train_dsr(config: Config, folder: Path, callbacks: Sequence[Any]) -> dict[str, Any]:
    from tune_dsr.training.trainer import prepare_run

    trainer = prepare_run(config, folder, callbacks=callbacks,
                          resume=(folder / "last.pt").is_file())
    result = trainer.fit()
    return {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "monitor": trainer.monitor, "best_value": trainer.best_value}


def _finetune(plan: CyclePlan, dsr: str, folder: Path, callbacks: Sequence[Any]
              ) -> dict[str, Any]:
    from tune_dsr.finetuning.finetuner import prepare_finetune

    splits = split_dirs(plan.data_root, "train", "val")
    config = FinetuneConfig.from_dict({**plan.finetune, **splits, "dsr": dsr,
                                       "edgeface": plan.edgeface, "vlr_size": plan.vlr_size,
                                       "device": plan.device})
    run = prepare_finetune(config, folder, callbacks=callbacks,
                           resume=(folder / "last.pt").is_file())
    result = run.fit()
    start, best = result.history[0], result.best_metrics
    return {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            **{f"{key}_{when}": metrics[key] for when, metrics in (("start", start),
                                                                   ("best", best))
               for key in ("val_rank1_full", "train_rank1_full", "val_bicubic_rank1_full")}}


def run_cycle(plan: CyclePlan, callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Run (or carry on) every stage; returns the summary (also in 4_evaluate/summary.json)."""
    callbacks = callbacks or Callbacks()
    plan.out.mkdir(parents=True, exist_ok=True)
    if not (plan.out / "cycle.json").is_file():
        _write(plan.out / "cycle.json", {"format": CYCLE_FORMAT, "identity": plan.identity,
                                         "inputs": plan.inputs()})
    from tune_dsr.finetuning.finetuner import FINETUNED_FILE

    base = Config.from_dict(plan.dsr_config)
    # Each stage's output is where the layout puts it (not recorded as a path, so that a cycle
    # folder can move).
    stage1 = plan.given_dsr or str(plan.stage_dir("1_dsr") / "best.pt")
    tuned_file = str(plan.stage_dir("2_finetune") / FINETUNED_FILE)
    control_file = str(plan.stage_dir("2_control") / FINETUNED_FILE)
    if plan.given_dsr is not None:
        logger.info("stage 1_dsr: given (%s), not trained", stage1)
    else:
        _stage(plan, "1_dsr", lambda folder: _train_dsr(base, folder, callbacks.dsr))
    tuned = _stage(plan, "2_finetune", lambda folder: _finetune(
        plan, stage1, folder, callbacks.finetune))
    control = (_stage(plan, "2_control", lambda folder: _finetune(
        plan, BICUBIC, folder, callbacks.finetune)) if plan.control else None)
    _stage(plan, "3_dsr", lambda folder: _train_dsr(base.replace(edgeface=tuned_file), folder,
                                                    callbacks.dsr))
    recognisers = {ORIGINAL: plan.edgeface, FINETUNED: tuned_file}
    if control is not None:
        recognisers[CONTROL] = control_file
    for spec in plan.held_out:
        recognisers[_held_out_name(spec, recognisers)] = spec
    dsrs = {STAGE1: stage1, CYCLE1: str(plan.stage_dir("3_dsr") / "best.pt")}
    _stage(plan, "4_evaluate", lambda folder: _evaluate(plan, dsrs, recognisers, folder))
    summary_file = plan.stage_dir("4_evaluate") / "summary.json"
    summary = _read(summary_file)
    summary["finetune"] = {"fine-tuned": _finetune_record(tuned),
                           **({"control": _finetune_record(control)} if control else {})}
    _write(summary_file, summary)
    (plan.stage_dir("4_evaluate") / "summary.md").write_text(format_summary(summary))
    return summary


def _finetune_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("cycle", "stage")}


def _held_out_name(spec: str, taken: dict[str, str]) -> str:
    name = f"held out {spec if spec.startswith('random:') else Path(spec).stem}"
    return name if name not in taken else f"{name} #{len(taken)}"


def _evaluate(plan: CyclePlan, dsr_paths: dict[str, str], recognisers: dict[str, str],
              folder: Path) -> dict[str, Any]:
    from tune_dsr.evaluation import probes as ev
    from tune_dsr.evaluation.protocols import evaluate_dsrs
    from tune_dsr.evaluation.report import write_csv
    from tune_dsr.hardware import resolve_device
    from tune_dsr.models.checkpoints import load_edgeface

    device = resolve_device(plan.device)
    split = ev.resolve_split(data_root=plan.data_root)
    dsrs = ev.load_dsrs(list(dsr_paths.values()), device)
    data = ev.load_probe_set(split, dsrs)
    distractors = [ev.DistractorFaces.scan(root, data.hr_size)
                   for root in ev.default_distractor_roots(split)]
    nets = {name: load_edgeface(spec, map_location=device) for name, spec in recognisers.items()}
    report = evaluate_dsrs(data, {name: d.model for name, d in zip(dsr_paths, dsrs,
                                                                    strict=True)},
                           nets, distractors=distractors, per_probe=True, device=device,
                           resamples=plan.resamples,
                           method_info={name: d.describe() for name, d in zip(dsr_paths, dsrs,
                                                                               strict=True)})
    rows = report.pop("probes")
    report["recognisers"] = [{**r, "spec": recognisers[r["name"]]} for r in report["recognisers"]]
    _write(folder / "report.json", report)
    write_csv(folder / "probes.csv", rows)
    summary = summarise(report, rows, resamples=plan.resamples)
    summary["cycle"] = plan.identity
    _write(folder / "summary.json", summary)
    return {"probes": summary["probes"], "recognisers": summary["recognisers"]}


# --------------------------------------------------------------------------------- the summary

def _comparisons(recognisers: Sequence[str]) -> list[tuple[str, Reading, Reading]]:
    from tune_dsr.evaluation.protocols import BICUBIC as BIC

    out = [("stage-1 DSR vs bicubic, original EdgeFace", (STAGE1, ORIGINAL), (BIC, ORIGINAL)),
           ("the cycle: cycle-1 DSR + fine-tuned vs stage-1 DSR + original",
            (CYCLE1, FINETUNED), (STAGE1, ORIGINAL)),
           ("fine-tuning alone: stage-1 DSR + fine-tuned vs + original",
            (STAGE1, FINETUNED), (STAGE1, ORIGINAL)),
           ("retraining alone: cycle-1 vs stage-1 DSR, both + fine-tuned",
            (CYCLE1, FINETUNED), (STAGE1, FINETUNED))]
    if CONTROL in recognisers:
        out += [("the fair control: cycle-1 DSR + fine-tuned vs bicubic + control",
                 (CYCLE1, FINETUNED), (BIC, CONTROL)),
                ("the control alone: bicubic + control vs bicubic + original",
                 (BIC, CONTROL), (BIC, ORIGINAL))]
    for name in recognisers:
        if name.startswith("held out"):
            out += [(f"cycle-1 vs stage-1 DSR, {name}", (CYCLE1, name), (STAGE1, name)),
                    (f"cycle-1 DSR vs bicubic, {name}", (CYCLE1, name), (BIC, name))]
    return out


PROTOCOLS = ("wide", "guide")


def summarise(report: dict[str, Any], rows: Sequence[dict[str, Any]], resamples: int = 4000
              ) -> dict[str, Any]:
    """Rank-1 of every method under every recogniser and the cycle's paired differences,
    persons resampled, on both galleries: the wide one (the test persons and every training and
    validation person as a distractor) and the guide's (the test persons alone). Both matter
    here: a recogniser fine-tuned on the training persons knows its distractors, which the
    guide's gallery does not hold."""
    from tune_dsr.evaluation.protocols import BICUBIC as BIC

    blocks = {(b["protocol"], b["recogniser"]): b for b in report["results"]}
    if not any(protocol == "wide" for protocol, _ in blocks):
        raise DataError("the cycle's evaluation needs the wide gallery (train_processed/ and "
                        "val_processed/ beside test_processed/)")
    recognisers = [b["recogniser"] for b in report["results"] if b["protocol"] == "wide"]
    table = {protocol: {method: {r: {"rank1": blocks[protocol, r]["methods"][method]["rank1"],
                                     "rank1_ci": blocks[protocol, r]["methods"][method][
                                         "rank1_ci"]}
                                 for r in recognisers}
                        for method in (BIC, STAGE1, CYCLE1)}
             for protocol in PROTOCOLS}
    comparisons = [{"name": name, "a": list(a), "b": list(b),
                    **{protocol: {k: v for k, v in paired_difference(
                        rows, a, b, protocol=protocol, resamples=resamples).items()
                        if k not in ("a", "b")} for protocol in PROTOCOLS}}
                   for name, a, b in _comparisons(recognisers)]
    return {"probes": report["dataset"]["probes"], "persons": report["dataset"]["subjects"],
            "gallery_persons": {protocol: blocks[protocol, recognisers[0]]["gallery_subjects"]
                                for protocol in PROTOCOLS},
            "recognisers": recognisers, "rank1": table, "comparisons": comparisons}


def _cell(value: dict[str, Any]) -> str:
    return f"{value['rank1']:.1%} [{value['rank1_ci'][0]:.1%}, {value['rank1_ci'][1]:.1%}]"


def _points(d: dict[str, Any]) -> str:
    return f"{100 * d['difference']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as Markdown: the rank-1 tables, then the paired differences."""
    recognisers = summary["recognisers"]
    galleries = summary["gallery_persons"]
    lines = [f"# Cycle summary: {summary['probes']} test probes of {summary['persons']} persons",
             "", "Rank-1 with 95 % intervals (persons resampled)."]
    for protocol in PROTOCOLS:
        what = ("the test persons and every training and validation person as distractors"
                if protocol == "wide" else "the test persons alone (the guide's)")
        lines += ["", f"{protocol.capitalize()} gallery ({galleries[protocol]} persons: {what}):",
                  "", "| method | " + " | ".join(recognisers) + " |",
                  "|---" * (len(recognisers) + 1) + "|"]
        for method, cells in summary["rank1"][protocol].items():
            lines.append(f"| {method} | " + " | ".join(_cell(cells[r]) for r in recognisers)
                         + " |")
    lines += ["", "| paired difference, rank-1 points [95 %] | wide gallery | guide's gallery |",
              "|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['name']} | {_points(c['wide'])} ({c['wide']['verdict']}) | "
                     f"{_points(c['guide'])} ({c['guide']['verdict']}) |")
    tuned = summary.get("finetune", {})
    if tuned:
        lines += ["", "Fine-tuning: rank-1 of the validation persons (unseen) and of training "
                      "persons (trained on), as given and at the kept epoch:", ""]
        for name, r in tuned.items():
            lines.append(f"- {name}: kept epoch {r['best_epoch']} of {r['epochs_run']}; "
                         f"validation {r['val_rank1_full_start']:.1%} → "
                         f"{r['val_rank1_full_best']:.1%}, training persons "
                         f"{r['train_rank1_full_start']:.1%} → {r['train_rank1_full_best']:.1%}")
    return "\n".join(lines) + "\n"
