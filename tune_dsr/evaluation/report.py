"""The evaluation report as text (`format_report`) and its per-probe rows as CSV (`write_csv`)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tune_dsr.evaluation.protocols import PROBE_FIELDS, TRAINED_AGAINST, UNDER

__all__ = ["format_report", "write_csv"]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _ci(entry: Mapping[str, Any], key: str) -> str:
    low, high = entry[f"{key}_ci"]
    return f"{_pct(entry[key])} [{_pct(low)}, {_pct(high)}]"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def format_report(report: Mapping[str, Any], worst: int = 5, wrong: int = 5) -> str:
    """The report as text: per recogniser and protocol a table (a row per method), then the
    paired differences against bicubic, per-subject accuracy, frequent wrong answers and, when
    swept, the thresholds."""
    settings, dataset = report["settings"], report["dataset"]
    threshold = settings["threshold"]
    lines = [f"Evaluated {dataset['probes']} probes of {dataset['subjects']} subjects from "
             f"{dataset['path']} ({dataset['vlr_size']} px -> {dataset['hr_size']} px), "
             f"threshold {threshold:g}"
             + (", leave-one-out gallery" if settings["leave_one_out"] else "") + "."]
    over = ("persons (all of a person's probes together)"
            if settings.get("resampled") == "persons" else "probes")
    lines.append(f"Percentages with 95 % bootstrap intervals over {over} "
                 f"({settings['resamples']} resamples). PSNR/SSIM against HR (n/a for HR).")
    wide = report["protocols"]["wide"]
    if wide["skipped"]:
        lines.append(f"Wide protocol skipped: {wide['skipped']}.")
    header = (f"{'method':<18} {'rank-1 [95% CI]':<21} {'rank-5':>6} "
              f"{f'acc@{threshold:g} [95% CI]':<21} {'unknown':>7} {'margin':>7} {'AUC':>6} "
              f"{'EER':>6} {'TAR@1e-2':>8} {'TAR@1e-3':>8} {'PSNR':>6} {'SSIM':>6}")
    for block in report["results"]:
        role = ("the recogniser DSR was trained against" if block["role"] == TRAINED_AGAINST
                else "HELD-OUT recogniser: DSR never trained against it")
        protocol = block["protocol"]
        detail = (f"gallery = mean HR embedding of the {block['gallery_subjects']} subjects"
                  if protocol == "guide" else
                  f"gallery = {dataset['subjects']} subjects + {wide['distractor_subjects']} "
                  "distractor subjects")
        lines += ["", f"== {block['recogniser']} ({role}) | protocol {protocol}: {detail} ==",
                  header, "-" * len(header)]
        methods = block["methods"]
        for name, m in methods.items():
            psnr = "n/a" if m["psnr"] is None else f"{m['psnr']:.2f}"
            ssim = "n/a" if m["ssim"] is None else f"{m['ssim']:.3f}"
            lines.append(
                f"{name[:18]:<18} {_ci(m, 'rank1'):<21} {_pct(m['rank5']):>6} "
                f"{_ci(m, 'accuracy'):<21} {_pct(m['unknown_rate']):>7} {m['margin']:>7.3f} "
                f"{m['roc_auc']:>6.3f} {_pct(m['eer']):>6} {_pct(m['tar_at_far_1e-2']):>8} "
                f"{_pct(m['tar_at_far_1e-3']):>8} {psnr:>6} {ssim:>6}")
        dsr_names = [n for n in methods if "vs_bicubic" in methods[n]]
        if dsr_names:
            lines.append(f"vs bicubic (paired bootstrap over the same {over.split(' (')[0]}, "
                         "points, 95 % CI):")
            for name in dsr_names:
                parts = [f"{metric} {_signed(d['difference'])} [{_signed(d['low'])}, "
                         f"{_signed(d['high'])}] {d['verdict']}"
                         for metric, d in methods[name]["vs_bicubic"].items()]
                lines.append(f"  {name}: " + "; ".join(parts))
        lines.append(f"per subject (acc@{threshold:g}), worst first; subjects under "
                     f"{100 * UNDER:.0f} %:")
        for name, m in methods.items():
            shown = ", ".join(f"{s['subject']} {_pct(s['accuracy'])} % ({s['correct']}/"
                              f"{s['probes']})" for s in m["per_subject"][:worst])
            lines.append(f"  {name}: {m['subjects_under_15']} of {len(m['per_subject'])} "
                         f"under {100 * UNDER:.0f} %; worst: {shown}")
        lines.append("most frequent wrong answers (rank-1; 'accepted' = above the threshold):")
        for name, m in methods.items():
            answers = m["wrong_answers"][:wrong]
            shown = "; ".join(
                f"{a['predicted']} x{a['count']} ({a['accepted']} accepted) from "
                + ", ".join(f"{s} x{c}" for s, c in list(a["sources"].items())[:3])
                for a in answers) or "none"
            lines.append(f"  {name}: {shown}")
        if any("sweep" in m for m in methods.values()):
            lines += _format_sweep(methods)
    speed = report["speed"]
    lines += ["", f"Speed: {speed['probes_per_second']:.1f} probes/s on {speed['device']} "
                  f"({speed['probes']} probes x {speed['methods']} methods x "
                  f"{speed['recognisers']} recognisers in {speed['seconds']:.2f} s)."]
    return "\n".join(lines)


def _format_sweep(methods: Mapping[str, Any], step: float = 0.05) -> list[str]:
    names = [n for n in methods if "sweep" in methods[n]]
    lines = ["threshold sweep (correct/wrong/unknown probes):",
             f"  {'threshold':>9} " + " ".join(f"{n[:16]:>16}" for n in names)]
    sweep0 = methods[names[0]]["sweep"]
    for index, t in enumerate(sweep0["thresholds"]):
        if -0.2 - 1e-9 <= t <= 0.9 + 1e-9 and abs(t / step - round(t / step)) < 1e-6:
            cells = []
            for n in names:
                s = methods[n]["sweep"]
                cells.append(f"{s['correct'][index]}/{s['wrong'][index]}/{s['unknown'][index]}")
            lines.append(f"  {t:>9.2f} " + " ".join(f"{c:>16}" for c in cells))
    for n in names:
        s = methods[n]["sweep"]
        lines.append(f"  best threshold for {n}: {s['best_threshold']:.2f} "
                     f"({s['best_correct']} correct)")
    return lines


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per probe × method × recogniser × protocol; written then renamed, so a failed
    write leaves neither half a file nor a temporary one."""
    from tune_dsr.files import atomic_write_text

    def write(out: Any) -> None:
        writer = csv.DictWriter(out, fieldnames=PROBE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write_text(path, write, newline="")
