"""`tune_dsr.tuning.analysis.load_experiment`: the Experiment API.

Pure logic (ranking, the Pareto front, rungs, checkpoints, running and interrupted experiments,
URIs, errors) runs on small experiment folders written by hand, without Ray. The `finished_search`
tests check the same API against a real six-trial search (ASHA stops, one FAIL).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.helpers import SEARCH_PINS
from tune_dsr.errors import ConfigError
from tune_dsr.statistics import t_interval
from tune_dsr.tuning.analysis import asha_milestones, load_experiment
from tune_dsr.tuning.experiment import BEST_FILE, STUDY_FILE, SearchPlan
from tune_dsr.tuning.export import best_config_document
from tune_dsr.tuning.records import epochs_saved, load_trials, trials_frame, unfinished_trials

PNG = b"\x89PNG\r\n\x1a\n"  # the signature is all the tests look at


# ----------------------------------------------------------------------------- a hand-made folder

def searched_params(seed: int) -> dict[str, Any]:
    """Values of every knob recognition_first searches, drawn by Optuna from the preset's space."""
    import optuna

    from tune_dsr.tuning.presets import load_preset

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    settings = load_preset("recognition_first").space(trial)  # a weight switched off: 0
    return {**trial.params, **settings}


def write_experiment(root: Path, trials: dict[str, list[dict[str, float]]], *,
                     max_epochs: int = 8, statuses: dict[str, str] | None = None,
                     files: dict[str, list[str]] | None = None,
                     anchors: dict[str, str] | None = None, warmup: int | None = None,
                     patience: int = 0) -> Path:
    """An experiment folder as a search writes it: search_plan.json (objective: max val_margin;
    ASHA grace 1, factor 2), one trial folder per entry of `trials` with params.json and
    result.json (one line per epoch of metrics), and optionally Tune's statuses
    (experiment_state-*.json) and extra files per trial (best.pt, best.png, checkpoint_...)."""
    plan = SearchPlan(space="recognition_first", metric="val_margin", mode="max",
                      base={"epochs": max_epochs, "edgeface": "edgeface_finetuned.pth"}, pins={},
                      storage_path=str(root), name="hand", num_samples=len(trials),
                      max_epochs=max_epochs, grace_period=1, reduction_factor=2, gpus=0,
                      gpus_per_trial=0, cpus_per_trial=1, max_concurrent=0, time_budget=None,
                      seed=0, max_failures=0, checkpoint_every=1, patience=patience)
    plan.save()
    experiment = root / "hand"
    for number, (trial_id, epochs) in enumerate(trials.items()):
        folder = experiment / f"trial_{trial_id}"
        folder.mkdir()
        config = {"epochs": max_epochs, **searched_params(number),
                  "anchor": (anchors or {}).get(trial_id, "")}
        if warmup is not None:
            config["warmup_epochs"] = warmup
        (folder / "params.json").write_text(json.dumps(config))
        lines = [json.dumps({"epoch": e, "trial_id": trial_id, **metrics,
                             "checkpoint_dir_name": f"checkpoint_{e - 1:06d}"})
                 for e, metrics in enumerate(epochs, start=1)]
        (folder / "result.json").write_text("".join(line + "\n" for line in lines))
        for name in (files or {}).get(trial_id, []):
            if name.startswith("checkpoint_"):
                (folder / name).mkdir()
            else:
                (folder / name).write_bytes(PNG if name.endswith(".png") else b"weights")
    if statuses:
        write_statuses(experiment, statuses)
    return experiment


def write_statuses(experiment: Path, statuses: dict[str, str]) -> None:
    """Tune's experiment state, as much of it as analysis reads."""
    trial_data = [[json.dumps({"trial_id": t, "status": s}), "{}"] for t, s in statuses.items()]
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": trial_data}))


def epoch(margin: float, psnr: float, identity: float = 0.2) -> dict[str, float]:
    return {"val_margin": margin, "val_psnr": psnr, "val_identity_loss": identity}


# Six trials, each at its best val_margin epoch (the last one listed wins ties, none here):
# A (.10, 20) and B (.08, 22) and F (.04, 23) are the Pareto front on (val_margin, val_psnr);
# C (.07, 21) is beaten by B; D (.10, 19) by A (same margin, less PSNR); E (.05, 22) by B.
# A's first epoch has more PSNR (25) than any trial's best epoch: the front must not use it.
FRONT_TRIALS = {
    "a": [epoch(0.09, 25.0), epoch(0.10, 20.0)],
    "b": [epoch(0.08, 22.0, identity=0.1)],
    "c": [epoch(0.07, 21.0), epoch(0.06, 21.5)],
    "d": [epoch(0.10, 19.0)],
    "e": [epoch(0.05, 22.0)],
    "f": [epoch(0.04, 23.0, identity=0.3)],
}


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    return write_experiment(tmp_path, FRONT_TRIALS,
                            files={"a": ["best.pt", "best.png", "checkpoint_000001"],
                                   "b": ["checkpoint_000000"]})


def test_trials_ranked_by_the_plans_objective(hand: Path) -> None:
    exp = load_experiment(hand)
    assert (exp.metric, exp.mode) == ("val_margin", "max")
    assert exp.trials["trial_id"].tolist()[:2] in (["a", "d"], ["d", "a"])
    assert exp.trials["trial_id"].tolist()[2:] == ["b", "c", "e", "f"]
    a = exp.trials.set_index("trial_id").loc["a"]
    assert (a["value"], a["best_epoch"], a["metric/val_psnr"]) == (0.10, 2, 20.0)
    assert a["path"] == str(hand / "trial_a") and a["config/epochs"] == 8
    assert len(exp.history) == 8 and set(exp.history["trial_id"]) == set(FRONT_TRIALS)
    # The readers export and the search use give the same answers.
    assert exp.trials.equals(trials_frame(str(hand), "val_margin", "max", max_epochs=8))
    assert epochs_saved(exp.records) == {"trials": 6, "epochs_run": 8, "epochs_full": 48,
                                         "epochs_saved": 40, "saved_by_patience": 0,
                                         "saved_by_asha": 40}
    assert set(exp.trials["stopped_by"]) == {"asha"} and set(exp.trials["anchor"]) == {""}


def test_top_ranks_by_any_metric_at_its_own_best_epoch(hand: Path) -> None:
    exp = load_experiment(hand)
    top = exp.top(3)
    assert top.index.tolist() == [1, 2, 3] and top.index.name == "rank"
    assert top["trial_id"].iloc[2] == "b"
    psnr = exp.top(2, "val_psnr")
    assert psnr["trial_id"].tolist() == ["a", "f"]  # a's best PSNR is its first epoch (25 dB)
    assert psnr["value"].tolist() == [25.0, 23.0] and psnr["best_epoch"].tolist() == [1, 1]
    identity = exp.top(1, "val_identity_loss")  # lower is better
    assert identity["trial_id"].tolist() == ["b"]
    assert len(exp.top(100)) == 6


def _front0(exp, x: str, y: str) -> list[str]:
    """The trials no other trial beats on both metrics, best first by `x`."""
    points = exp.front([x, y])
    return points.loc[points["front"] == 0, "trial_id"].tolist()


def test_pareto_front_by_each_metrics_direction(hand: Path) -> None:
    exp = load_experiment(hand)
    ids = _front0(exp, "val_margin", "val_psnr")
    assert ids == ["a", "b", "f"]  # best first by margin
    psnr = exp.trials.set_index("trial_id").loc[ids, "metric/val_psnr"]
    assert psnr.tolist() == [20.0, 22.0, 23.0]
    # Lower identity loss is better: b (0.1) beats every 0.2 trial with less PSNR; f (0.3) has the
    # most PSNR.
    assert _front0(exp, "val_identity_loss", "val_psnr") == ["b", "f"]


def test_pareto_front_matches_brute_force(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    trials = {f"t{i}": [epoch(round(rng.random(), 2), round(rng.uniform(18, 24), 1))]
              for i in range(12)}
    exp = load_experiment(write_experiment(tmp_path, trials))
    points = {t: (e[0]["val_margin"], e[0]["val_psnr"]) for t, e in trials.items()}

    def beaten(p: tuple[float, float]) -> bool:
        return any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points.values())

    expected = {t for t, p in points.items() if not beaten(p)}
    assert set(_front0(exp, "val_margin", "val_psnr")) == expected


def test_rungs_from_the_plan(tmp_path: Path) -> None:
    lengths = {"a": 8, "b": 4, "c": 2, "d": 2, "e": 1, "f": 0}
    trials = {t: [epoch(0.01 * n + 0.001 * e, 20.0) for e in range(n)]
              for t, n in lengths.items()}
    exp = load_experiment(write_experiment(tmp_path, trials, statuses={"f": "ERROR"}))
    rungs = exp.rungs()
    assert rungs.index.tolist() == [1, 2, 4, 8]
    assert rungs["reached"].tolist() == [5, 4, 2, 1]
    assert rungs.loc[2, "trial_ids"] == ["a", "b", "c", "d"]  # best first
    assert exp.trials.set_index("trial_id")["stopped_early"].to_dict() == {
        "a": False, "b": True, "c": True, "d": True, "e": True, "f": False}


@pytest.mark.parametrize(("grace", "factor", "max_epochs", "expected"), [
    (1, 2, 4, [1, 2, 4]),
    (10, 3, 100, [10, 30, 90, 100]),
    (12, 3, 60, [12, 36, 60]),
    (10, 2.5, 100, [10, 25, 63, 100]),
    (5, 3, 5, [5]),
])
def test_asha_milestones(grace: int, factor: float, max_epochs: int,
                         expected: list[int]) -> None:
    assert asha_milestones(grace, factor, max_epochs) == expected


def test_asha_milestones_are_rays() -> None:
    """The same rungs Ray's ASHAScheduler compares trials at (its last may be max_epochs)."""
    schedulers = pytest.importorskip("ray.tune.schedulers")
    for grace, factor, max_t in [(1, 2, 4), (10, 3, 100), (12, 3, 60), (1, 3, 27), (2, 4, 50)]:
        asha = schedulers.ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=grace,
                                        reduction_factor=factor)
        ray_rungs = {int(m) for m, _ in asha._brackets[0]._rungs}
        assert ray_rungs | {max_t} == set(asha_milestones(grace, factor, max_t))


def test_best_checkpoint_and_picture(hand: Path) -> None:
    exp = load_experiment(hand)
    assert exp.best_checkpoint() == str(hand / "trial_a" / "best.pt")  # best by margin and
    assert exp.best_checkpoint("val_psnr") == str(hand / "trial_a" / "best.pt")  # by PSNR
    assert exp.picture() == PNG
    # b, the best by identity loss, wrote no best.pt: its latest Tune checkpoint.
    assert exp.best_checkpoint("val_identity_loss") == str(hand / "trial_b" / "checkpoint_000000")
    assert exp.picture("b") is None
    shutil.rmtree(hand / "trial_b" / "checkpoint_000000")
    with pytest.raises(ConfigError, match=r"neither best\.pt nor a Tune checkpoint"):
        load_experiment(hand).best_checkpoint("val_identity_loss")
    with pytest.raises(ConfigError, match=r"no trial 'zz'.*a, b, c"):
        exp.picture("zz")


def test_importance_of_the_searched_params_without_a_study(hand: Path) -> None:
    """No optuna_study.db: the importances come from the trials' values, for any metric."""
    exp = load_experiment(hand)
    assert exp.study is None
    searched = set(exp.searched)
    assert searched == set(searched_params(0)) and "lr" in searched  # nothing pinned here
    for metric in (None, "val_psnr", "val_identity_loss"):
        importance = exp.importance(metric)
        assert set(importance.index) == searched
        assert importance.sum() == pytest.approx(1.0) and (importance >= 0).all()
        assert importance.is_monotonic_decreasing
        assert "6 trials" in str(importance.name)
    # Every trial stopped before its 8 epochs: none ran to the end.
    with pytest.raises(ConfigError, match=r"at least 2 trials that ran to the end.*has 0"):
        exp.importance(partial=False)


def test_the_folder_is_read_once(hand: Path, tmp_path: Path) -> None:
    exp = load_experiment(hand)
    hand.rename(tmp_path / "moved")
    assert exp.top(1)["trial_id"].iloc[0] in ("a", "d")
    assert len(_front0(exp, "val_margin", "val_psnr")) == 3
    assert exp.rungs()["reached"].tolist() == [6, 2, 0, 0]  # a and c ran 2 epochs
    assert exp.best_checkpoint() == str(hand / "trial_a" / "best.pt")
    assert set(exp.importance("val_psnr").index) == set(exp.searched)


# ----------------------------------------------------------------------------- confirmation

def recognition(margin: float, gain: float, half: float, rank1_gain: float = 0.1,
                since: int = 0) -> dict[str, float]:
    """An epoch's objective and recognition gains over bicubic, with their 95 % half-widths."""
    return {"val_margin": margin, "val_psnr": 20.0, "val_margin_gain": gain,
            "val_margin_gain_ci": half, "val_rank1_full_gain": rank1_gain,
            "val_rank1_full_gain_ci": 0.05, "epochs_since_best": since}


def write_confirmations(experiment: Path, runs: dict[str, list[list[dict[str, float]]]]) -> None:
    """confirm/ as the search writes it: per confirmed trial, one folder per run."""
    for trial_id, trial_runs in runs.items():
        config = json.loads((experiment / f"trial_{trial_id}" / "params.json").read_text())
        for number, epochs in enumerate(trial_runs, start=1):
            run_id = f"{trial_id}{number}"
            folder = experiment / "confirm" / f"trial_{run_id}"
            folder.mkdir(parents=True)
            (folder / "params.json").write_text(json.dumps(
                {**config, "seed": number, "confirms": trial_id, "confirm_run": number}))
            (folder / "result.json").write_text("".join(
                json.dumps({"epoch": e, "trial_id": run_id, **metrics}) + "\n"
                for e, metrics in enumerate(epochs, start=1)))


def confirmed_experiment(root: Path, warmup: int = 1) -> Path:
    """Three trials of 4 epochs: p is the pixel-only anchor, g the guide's, t TPE's. t is best
    in the search (0.30), but its confirmation runs (0.20, 0.22) fall below p's (0.26, 0.28)."""
    experiment = write_experiment(root, {
        "p": [recognition(0.10, 0.02, 0.01), recognition(0.25, 0.06, 0.02)] * 2,
        "g": [recognition(0.12, 0.02, 0.01), recognition(0.20, 0.04, 0.02)] * 2,
        "t": [recognition(0.30, 0.08, 0.02), recognition(0.29, 0.07, 0.02)] * 2,
    }, max_epochs=4, anchors={"p": "pixel-only", "g": "guide"}, warmup=warmup)
    write_confirmations(experiment, {
        "t": [[recognition(0.18, 0.03, 0.02), recognition(0.20, 0.04, 0.02)],
              [recognition(0.22, 0.05, 0.02)]],
        "p": [[recognition(0.20, 0.05, 0.02), recognition(0.26, 0.07, 0.02)],
              [recognition(0.28, 0.09, 0.02), recognition(0.10, 0.00, 0.02, since=1)]],
    })
    return experiment


def test_confirmations_rank_by_their_mean_and_export_takes_the_best(tmp_path: Path) -> None:
    experiment = confirmed_experiment(tmp_path)
    exp = load_experiment(experiment)
    assert exp.trials["trial_id"].tolist() == ["t", "p", "g"]  # the search's own ranking
    assert dict(zip(exp.trials["trial_id"], exp.trials["anchor"], strict=True)) == {
        "t": "", "p": "pixel-only", "g": "guide"}
    confirmed = exp.confirmations()
    assert confirmed.index.tolist() == ["p", "t"]
    p = confirmed.loc["p"]
    assert (p["anchor"], p["runs"], p["values"], p["search_value"]) == (
        "pixel-only", 2, [0.26, 0.28], 0.25)
    assert p["mean"] == pytest.approx(0.27)
    # 95 % t interval of two runs: 12.706 * sd / sqrt(2) = 12.706 * 0.01.
    assert (p["low"], p["high"]) == pytest.approx((0.27 - 0.12706, 0.27 + 0.12706))
    assert p["gain"] == pytest.approx(0.08)  # each run's margin gain at its best epoch
    assert t_interval([0.5]) == (0.5, pytest.approx(float("nan"), nan_ok=True),
                                 pytest.approx(float("nan"), nan_ok=True))

    winner = exp.winner()
    assert (winner.trial_id, winner.anchor, winner.runs) == ("p", "pixel-only", 2)
    document = best_config_document(str(experiment))
    prov = document["provenance"]
    assert (prov["trial_id"], prov["anchor"]) == ("p", "pixel-only")
    assert prov["confirmed"]["values"] == [0.26, 0.28]
    assert prov["confirmed"]["mean"] == pytest.approx(0.27)
    assert prov["confirm_epochs"] == 7  # t: 2 + 1, p: 2 + 2
    # Then the other confirmed configuration, then the rest of the search by its own value.
    assert [best_config_document(str(experiment), rank=k)["provenance"]["trial_id"]
            for k in (2, 3)] == ["t", "g"]
    # By another metric, the search's trials alone.
    assert best_config_document(str(experiment), "val_psnr")["provenance"].get(
        "confirmed") is None


def test_verdict_says_whether_the_winner_beats_bicubic_and_the_pixel_only_anchor(
        tmp_path: Path) -> None:
    verdict = load_experiment(confirmed_experiment(tmp_path / "one")).verdict()
    assert verdict.winner.trial_id == "p" and verdict.beats_bicubic
    assert verdict.beats_pixel_only is None  # the winner is the anchor itself
    assert verdict.gain == pytest.approx(0.08) and verdict.gain_half_width == pytest.approx(0.02)
    assert verdict.best_epochs == [2, 1]
    assert "The winner is the pixel-only anchor" in verdict.text
    assert "clearly beats bicubic" in verdict.text
    assert "val_margin_gain +0.0800 [+0.0600, +0.1000]" in verdict.text

    # Best epochs within a warm-up of 2: the network has barely left bicubic.
    in_warmup = load_experiment(confirmed_experiment(tmp_path / "two", warmup=2)).verdict()
    assert not in_warmup.beats_bicubic
    assert "No configuration clearly beat doing nothing" in in_warmup.text
    assert "best epoch (2, 1) lies within its learning-rate warm-up (2 epochs)" in in_warmup.text

    # Unconfirmed: the search's best; a gain whose interval covers 0; the pixel-only anchor's
    # value to beat.
    experiment = write_experiment(tmp_path / "three", {
        "p": [recognition(0.10, 0.01, 0.02)] * 3,
        "t": [recognition(0.10, 0.00, 0.01), recognition(0.12, 0.01, 0.02)] * 2,
    }, max_epochs=4, anchors={"p": "pixel-only"})
    verdict = load_experiment(experiment).verdict()
    assert verdict.winner.trial_id == "t" and not verdict.winner.confirmed
    assert verdict.beats_pixel_only and verdict.pixel_only == pytest.approx(0.10)
    assert not verdict.beats_bicubic
    assert "Against the pixel-only anchor (val_margin 0.1000): better by +0.0200" in verdict.text
    assert "its gain over bicubic has an interval that includes 0" in verdict.text


def test_a_pixel_only_anchor_within_the_winners_interval_is_a_tie() -> None:
    """The real-faces run of seed 1: the winner's confirmed mean 0.1439 [0.1117, 0.1762] against
    the anchor's confirmed 0.1430 is no win; outside the interval it is."""
    from tune_dsr.tuning.verdict import Verdict, Winner

    winner = Winner("w", "", 0.1439, 2, 0.1117, 0.1762)
    tie = Verdict.of("val_margin", "max", winner, "val_margin_gain", 0.06, 0.02, 0.25, 0.1,
                     [24, 20], 6, 0.1430)
    assert tie.beats_pixel_only is False
    assert ("Against the pixel-only anchor (val_margin 0.1430): no clear difference (+0.0009; "
            "it lies within the winner's 95 % interval).") in tie.text
    ahead = Verdict.of("val_margin", "max", winner, "val_margin_gain", 0.06, 0.02, 0.25, 0.1,
                       [24, 20], 6, 0.1000)
    assert ahead.beats_pixel_only is True and "better by +0.0439" in ahead.text


def test_verdict_with_unknown_figures_says_so(tmp_path: Path) -> None:
    """An experiment from before the gains had intervals, and a pixel-only anchor that failed
    before its first epoch: the verdict says what it does not know instead of guessing."""
    old = {k: v for k, v in recognition(0.12, 0.03, 0.0).items() if not k.endswith("_ci")}
    experiment = write_experiment(tmp_path, {"t": [old] * 2, "p": []}, max_epochs=4,
                                  anchors={"p": "pixel-only"}, warmup=1)
    verdict = load_experiment(experiment).verdict()
    assert verdict.pixel_only is None and verdict.beats_pixel_only is None
    assert not verdict.beats_bicubic
    assert "val_margin_gain +0.0300 (interval unknown), rank-1 +10.0% (interval unknown)" in \
        verdict.text
    assert "the interval of its gain over bicubic is unknown" in verdict.text
    assert "nan" not in verdict.text


def test_t_interval_takes_the_wider_row_between_the_tables_rows() -> None:
    values = [0.0, 1.0] * 6  # 12 runs: 11 degrees of freedom, between the rows 10 and 15
    mean, low, high = t_interval(values)
    sd = float(pd.Series(values).std())
    half = 2.228 * sd / 12 ** 0.5  # df 10's quantile
    assert (low, high) == pytest.approx((mean - half, mean + half))


def test_patience_stops_are_told_from_asha_stops(tmp_path: Path) -> None:
    """A trial whose last epoch had gone `patience` epochs without a new best ended by
    patience; the epochs each rule saved are counted apart."""
    experiment = write_experiment(tmp_path, {
        "x": [recognition(0.3, 0, 0), recognition(0.2, 0, 0, since=1),
              recognition(0.1, 0, 0, since=2)],
        "y": [recognition(0.1, 0, 0), recognition(0.2, 0, 0)],
        "z": [recognition(0.1, 0, 0)] * 8,
    }, patience=2)
    exp = load_experiment(experiment)
    stopped_by = dict(zip(exp.trials["trial_id"], exp.trials["stopped_by"], strict=True))
    assert stopped_by == {"x": "patience", "y": "asha", "z": ""}
    saved = epochs_saved(exp.records, patience=2)
    assert (saved["saved_by_patience"], saved["saved_by_asha"]) == (5, 6)


def test_running_or_interrupted_experiment(tmp_path: Path) -> None:
    """A trial with no epoch yet, one mid-run with a half-written line, a PENDING trial that has
    no folder yet, and an ERROR trial."""
    trials = {"done": [epoch(0.01, 20.0)] * 8, "running": [epoch(0.05, 21.0), epoch(0.06, 21.0)],
              "fresh": [], "failed": [epoch(0.02, 20.0)]}
    experiment = write_experiment(tmp_path, trials, statuses={
        "done": "TERMINATED", "running": "RUNNING", "fresh": "RUNNING", "failed": "ERROR",
        "queued": "PENDING"})
    with open(experiment / "trial_running" / "result.json", "a") as f:
        f.write('{"epoch": 3, "trial_id": "running", "val_margin": 0.')  # caught mid-write
    exp = load_experiment(experiment)
    frame = exp.trials.set_index("trial_id")
    assert exp.trials["trial_id"].tolist() == ["running", "failed", "done", "fresh"]
    assert frame.loc["running", "epochs_run"] == 2 and frame.loc["running", "value"] == 0.06
    assert not frame.loc["running", "stopped_early"]  # its later epochs may yet come
    assert frame.loc["running", "status"] == "RUNNING"
    assert frame.loc["failed", "error"] and not frame.loc["failed", "stopped_early"]
    assert pd.isna(frame.loc["fresh", "value"]) and frame.loc["fresh", "epochs_run"] == 0
    assert exp.top(10)["trial_id"].tolist() == ["running", "failed", "done"]
    assert sorted(exp.unfinished) == ["fresh", "queued", "running"]
    assert sorted(unfinished_trials(str(experiment))) == ["fresh", "queued", "running"]
    assert exp.rungs()["reached"].tolist() == [3, 2, 1, 1]
    assert "3 unfinished" in repr(exp)


def test_a_search_that_has_just_started(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, {})
    exp = load_experiment(experiment)
    assert exp.trials.empty and exp.history.empty and exp.top(5).empty
    assert exp.rungs()["reached"].tolist() == [0, 0, 0, 0]
    assert exp.picture() is None
    with pytest.raises(ConfigError, match=r"no trial of .* has reported val_margin yet"):
        exp.best_checkpoint()
    with pytest.raises(ConfigError, match=r"at least 2 trials .* has 0"):
        exp.importance()


def test_uri(hand: Path) -> None:
    """A storage URI is read through pyarrow's filesystems, paths stay URIs."""
    uri = hand.as_uri()
    exp = load_experiment(uri)
    local = load_experiment(hand)
    assert exp.trials.drop(columns=["path", "checkpoint"]).equals(
        local.trials.drop(columns=["path", "checkpoint"]))
    assert exp.trials["path"].str.startswith(f"{uri}/trial_").all()
    assert exp.best_checkpoint() == f"{uri}/trial_a/best.pt"
    assert exp.picture() == PNG
    assert exp.rungs().equals(local.rungs())
    assert [t.path for t in load_trials(uri)] == exp.trials.sort_values("path")["path"].tolist()


def test_not_an_experiment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        load_experiment(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"holds no trials .* written by tune_dsr.search"):
        load_experiment(tmp_path)


def test_plain_ray_tune_experiment_needs_a_metric(hand: Path) -> None:
    (hand / "search_plan.json").unlink()
    with pytest.raises(ConfigError, match=r"no search plan .* pass metric="):
        load_experiment(hand)
    exp = load_experiment(hand, metric="val_psnr")
    assert (exp.metric, exp.mode, exp.plan) == ("val_psnr", "max", None)
    assert exp.top(1)["trial_id"].iloc[0] == "a"
    assert set(exp.searched) <= {c.removeprefix("config/") for c in exp.trials.columns}
    with pytest.raises(ConfigError, match="ASHA's rungs are unknown"):
        exp.rungs()


def test_unknown_metric_names_the_known_ones(hand: Path) -> None:
    exp = load_experiment(hand)
    for ask in (lambda: load_experiment(hand, metric="val_lfw_accuracy"),
                lambda: exp.top(3, "val_lfw_accuracy"),
                lambda: exp.front(["val_psnr", "val_lfw_accuracy"]),
                lambda: exp.importance("val_lfw_accuracy"),
                lambda: exp.best_checkpoint("val_lfw_accuracy")):
        with pytest.raises(ConfigError, match="'val_lfw_accuracy' is not a metric") as error:
            ask()
        assert "Known metrics: val_margin, " in str(error.value)
    # Known, but not reported by these trials.
    with pytest.raises(ConfigError, match="metric 'val_ssim' was not reported"):
        exp.front(["val_ssim", "val_psnr"])
    with pytest.raises(ConfigError, match="metric 'val_ssim' was not reported by trial"):
        exp.top(1, "val_ssim")


# ----------------------------------------------------------------------------- the real search

@pytest.mark.slow
def test_frames_of_the_finished_search(finished_search: dict[str, Any]) -> None:
    exp = load_experiment(finished_search["experiment"])
    plan = finished_search["plan"]
    assert (exp.metric, exp.mode) == (plan.metric, plan.mode) and exp.plan == plan
    records = finished_search["trials"]
    expected = trials_frame(records, plan.metric, plan.mode, plan.max_epochs, plan.patience)
    assert exp.trials.drop(columns="status").equals(expected.drop(columns="status"))
    assert len(exp.history) == sum(len(t.history) for t in records)
    assert exp.unfinished == []
    best = json.loads((finished_search["experiment"] / BEST_FILE).read_text())["provenance"]
    # The export's winner is the best confirmed configuration, valued in the search as ranked.
    assert exp.winner().trial_id == best["trial_id"]
    ranked = exp.trials.set_index("trial_id")
    assert ranked.loc[best["trial_id"], "value"] == pytest.approx(best["value"])


@pytest.mark.slow
def test_top_by_another_metric_on_the_search(finished_search: dict[str, Any]) -> None:
    exp = load_experiment(finished_search["experiment"])
    # By hand from the epochs: each trial's best PSNR over its epochs, highest first.
    by_hand = exp.history.groupby("trial_id")["val_psnr"].max().sort_values(ascending=False)
    top = exp.top(3, "val_psnr")
    assert top["trial_id"].tolist() == by_hand.index[:3].tolist()
    assert top["value"].tolist() == pytest.approx(by_hand.iloc[:3].tolist())
    failed = exp.trials.loc[exp.trials["error"], "trial_id"].tolist()
    assert len(failed) == 1 and failed[0] not in exp.top(10)["trial_id"].tolist()


@pytest.mark.slow
def test_pareto_on_the_search(finished_search: dict[str, Any]) -> None:
    exp = load_experiment(finished_search["experiment"])
    ids = _front0(exp, "val_psnr", "val_margin")
    front = exp.trials.set_index("trial_id").loc[ids].reset_index()
    points = exp.trials.dropna(subset=["value"]).set_index("trial_id")[
        ["metric/val_psnr", "metric/val_margin"]]
    expected = {t for t, (p, m) in points.iterrows()
                if not any(p2 >= p and m2 >= m and (p2, m2) != (p, m)
                           for p2, m2 in points.itertuples(index=False))}
    assert set(front["trial_id"]) == expected and expected
    assert front["metric/val_psnr"].is_monotonic_decreasing  # best PSNR first
    assert front["metric/val_margin"].is_monotonic_increasing  # so margin rises along it
    # The objective's best search trial is never beaten (`top` without the confirmations).
    assert exp.top(1, confirmed=False)["trial_id"].iloc[0] in expected


@pytest.mark.slow
def test_rungs_match_the_trials_epochs(finished_search: dict[str, Any]) -> None:
    exp = load_experiment(finished_search["experiment"])
    plan = finished_search["plan"]
    rungs = exp.rungs()
    assert rungs.index.tolist() == [1, 2, 4]  # grace 1, factor 2, 4 epochs
    for rung, row in rungs.iterrows():
        reached = exp.trials.loc[exp.trials["epochs_run"] >= rung, "trial_id"].tolist()
        assert row["trial_ids"] == reached and row["reached"] == len(reached)
    assert rungs["reached"].is_monotonic_decreasing
    assert rungs["reached"].iloc[0] == 5  # every trial but the one that failed in epoch 1
    ran_full = exp.trials.loc[exp.trials["epochs_run"] == plan.max_epochs, "trial_id"]
    assert rungs.loc[plan.max_epochs, "trial_ids"] == ran_full.tolist()
    pruned = [t for t in finished_search["study"].trials if t.state.name == "PRUNED"]
    assert len(pruned) == int(exp.trials["stopped_early"].sum())


@pytest.mark.slow
def test_best_checkpoint_and_picture_of_the_search(finished_search: dict[str, Any]) -> None:
    exp = load_experiment(finished_search["experiment"])
    best = exp.top(1).iloc[0]
    checkpoint = Path(exp.best_checkpoint())
    assert checkpoint == Path(best["path"]) / "best.pt" and checkpoint.is_file()
    assert Path(exp.best_checkpoint("val_psnr")).is_file()
    picture = exp.picture()
    assert picture is not None and picture.startswith(PNG)


@pytest.mark.slow
def test_importance_on_the_search(finished_search: dict[str, Any], tmp_path: Path) -> None:
    import optuna

    from tune_dsr.tuning.presets import load_preset

    exp = load_experiment(finished_search["experiment"])
    plan = finished_search["plan"]
    assert exp.study is not None
    # The preset's space less every knob the search pinned (the guide anchor draws every one).
    assert set(exp.searched) == set(load_preset("recognition_first").searched(SEARCH_PINS))

    def judged(trials: list[Any], evaluator: str) -> set[str]:
        """The parameters an evaluator judges when some trials did not draw one (a weight drawn
        only where its switch is on): fANOVA those every trial drew, PED-ANOVA (without
        scikit-learn) those some trial drew."""
        drawn = [set(t.params) for t in trials]
        return set.intersection(*drawn) if "fANOVA" in evaluator else set.union(*drawn)

    scored = [t for t in exp.study.trials if t.state.name != "FAIL"]  # the FAIL one reported none
    assert len(scored) == int((exp.trials["value"].notna() & ~exp.trials["error"]).sum())
    for metric in (None, "val_psnr"):
        importance = exp.importance(metric)
        assert set(importance.index) == judged(scored, str(importance.name))
        assert importance.sum() == pytest.approx(1.0)
        assert f", {len(scored)} trials)" in str(importance.name)
    # Only the trials that ran every epoch are COMPLETE. ASHA never stops the first trial to
    # reach a rung and neither anchor's objective stalls for the patience, so one at least did;
    # whether both anchors did depends on which of the two, running side by side, reports first
    # at a rung (a race). partial=False judges the COMPLETE trials alone: here in a copy whose
    # study has a twin of one, so that there are always two at least.
    complete = [t for t in exp.study.trials if t.state.name == "COMPLETE"]
    ran_full = exp.trials[(exp.trials["epochs_run"] == plan.max_epochs) & ~exp.trials["error"]]
    assert len(complete) == len(ran_full) >= 1
    copy = tmp_path / "e2e"
    shutil.copytree(finished_search["experiment"], copy)
    twin = complete[0]
    optuna.load_study(study_name=plan.name, storage=f"sqlite:///{copy / STUDY_FILE}").add_trial(
        optuna.trial.create_trial(params=twin.params, distributions=twin.distributions,
                                  value=twin.value))
    importance = load_experiment(copy).importance(partial=False)
    assert f"{len(complete) + 1} trials that ran to the end)" in str(importance.name)
    assert set(importance.index) == judged(complete, str(importance.name))


@pytest.mark.slow
def test_interrupted_copy_of_the_search(finished_search: dict[str, Any], tmp_path: Path) -> None:
    """The best trial's result files cut mid-line, and Tune's state saying it is RUNNING."""
    experiment = tmp_path / "e2e"
    shutil.copytree(finished_search["experiment"], experiment)
    before = load_experiment(experiment)
    # The best trial that ran every epoch: cutting its last one takes it off the last rung.
    ranked = before.top(None, confirmed=False)
    trial_id = ranked[ranked["epochs_run"] == finished_search["plan"].max_epochs][
        "trial_id"].iloc[0]
    folder = experiment / Path(before.trial(trial_id).path).name
    for name in ("result.json", "progress.csv"):
        text = (folder / name).read_text().rstrip("\n")
        (folder / name).write_text(text[: text.rfind("\n") + 1] + text[text.rfind("\n") + 1:][:9])
    (state_file,) = experiment.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        meta = json.loads(entry[0])
        if meta["trial_id"] == trial_id:
            entry[0] = json.dumps({**meta, "status": "RUNNING"})
    state_file.write_text(json.dumps(state))

    exp = load_experiment(experiment)
    row = exp.trials.set_index("trial_id").loc[trial_id]
    epochs = before.trial(trial_id).epochs_run
    assert row["epochs_run"] == epochs - 1 and row["status"] == "RUNNING"
    assert not row["stopped_early"]
    assert exp.unfinished == [trial_id] and unfinished_trials(str(experiment)) == [trial_id]
    assert len(exp.history) == len(before.history) - 1
    others = exp.trials[exp.trials["trial_id"] != trial_id].set_index("trial_id")["value"]
    assert others.equals(before.trials[before.trials["trial_id"] != trial_id]
                         .set_index("trial_id")["value"])
    assert rung_counts(exp)[-1] == rung_counts(before)[-1] - 1
    assert Path(exp.best_checkpoint()).is_file()


def rung_counts(exp: Any) -> list[int]:
    return exp.rungs()["reached"].tolist()

