"""The result of a multi-objective search: its Pareto front, and one point chosen from it.

A trial's point is its objectives at the epoch it keeps (its best by the first objective, the
model its ``best.pt`` holds): the ``metric/<objective>`` columns of the trials frame, which is
ranked by that first objective. `front_frame` sorts every trial into non-dominated fronts;
`choose` picks one point of front 0 by position (``--point N``) or by a rule (``--maximize M
--where "val_psnr>=24"``), and says by name what is wrong with a rule that cannot be met.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tune_dsr.config import direction
from tune_dsr.errors import ConfigError

__all__ = ["Choice", "Condition", "choose", "describe", "front_frame", "parse_where"]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CONDITION = re.compile(
    r"^\s*([A-Za-z_]\w*)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def front_frame(trials: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """One row per trial with a value for every objective: ``trial_id``, ``anchor``, one column
    per objective, ``front`` (0: non-dominated; 1: dominated only by front 0; ...),
    ``dominated``, ``crowding`` (within its front), ``epochs_run``, ``best_epoch`` and
    ``stopped_at`` (the epoch a scheduler or the patience stopped it at; NaN for a trial that
    ran to the end) with ``stopped_by``. Sorted by front, then by the first objective, best
    first."""
    from tune_dsr.tuning.pareto_asha import crowding_distance, non_dominated_fronts

    columns = [f"metric/{m}" for m in objectives]
    missing = [m for m, c in zip(objectives, columns, strict=True) if c not in trials.columns]
    if missing:
        raise ConfigError(f"metric {missing[0]!r} was not reported by any trial; the front "
                          f"needs every objective ({', '.join(objectives)})")
    usable = trials.dropna(subset=columns)
    if "confirms" in usable.columns:
        usable = usable[usable["confirms"].isna()]
    frame = pd.DataFrame({
        "trial_id": usable["trial_id"].to_numpy(),
        "anchor": usable["anchor"].to_numpy() if "anchor" in usable else "",
        **{m: usable[c].astype(float).to_numpy() for m, c in zip(objectives, columns,
                                                                 strict=True)},
        "epochs_run": usable["epochs_run"].to_numpy(),
        "best_epoch": usable["best_epoch"].to_numpy(),
        "stopped_at": np.where(usable["stopped_early"].astype(bool),
                               usable["epochs_run"].astype(float), np.nan),
        "stopped_by": usable["stopped_by"].to_numpy() if "stopped_by" in usable else "",
    })
    modes = [direction(m) for m in objectives]
    points = frame[list(objectives)].to_numpy(dtype=float)
    front = np.zeros(len(frame), dtype=int)
    crowding = np.zeros(len(frame))
    signs = np.array([1.0 if mode == "max" else -1.0 for mode in modes])
    for rank, members in enumerate(non_dominated_fronts(points, modes)):
        front[members] = rank
        crowding[members] = crowding_distance(points[members] * signs)
    frame["front"], frame["crowding"] = front, crowding
    frame["dominated"] = front > 0
    first = objectives[0]
    return frame.sort_values(["front", first], ascending=[True, modes[0] == "min"],
                             ignore_index=True)


@dataclass(frozen=True)
class Condition:
    """``metric op value``, e.g. ``val_psnr >= 24``."""

    metric: str
    op: str
    value: float

    def holds(self, x: float) -> bool:
        return _OPERATORS[self.op](x, self.value)

    def shortfall(self, x: float) -> float:
        """How far `x` is from meeting the condition (0 when it does)."""
        return 0.0 if self.holds(x) else abs(x - self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_where(items: Sequence[str]) -> list[Condition]:
    """``"val_psnr>=24"`` items (several may share one item, comma-separated) as conditions."""
    conditions = []
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            match = _CONDITION.match(part)
            if match is None:
                raise ConfigError(f"where={part!r}: write METRIC OP NUMBER with OP one of "
                                  ">=, <=, >, <, e.g. --where 'val_psnr>=24'")
            conditions.append(Condition(match[1], match[2], float(match[3])))
    return conditions


@dataclass(frozen=True)
class Choice:
    """The chosen point: the trial, its objectives, and the metric its final run monitors."""

    trial_id: str
    values: dict[str, float]
    monitor: str
    how: str


def choose(front: pd.DataFrame, objectives: Sequence[str], *, point: int | None = None,
           best: str | None = None, where: Sequence[Condition] = ()) -> Choice:
    """One point of front 0: the `point`-th (1 = best on the first objective), or the best on
    `best` among the points that meet every condition of `where` (`best` defaults to the
    first objective). The final run monitors `best` (the first objective for a `point`)."""
    points = front[front["front"] == 0]
    if points.empty:
        raise ConfigError("the search has no finished trial with every objective yet: nothing "
                          "to choose from; wait for it, or --resume it")
    named = [best] if best else []
    unknown = [m for m in [*named, *(c.metric for c in where)] if m not in objectives]
    if unknown:
        raise ConfigError(f"{', '.join(dict.fromkeys(unknown))} is not an objective of this "
                          f"search ({', '.join(objectives)}); a rule can only name those")
    if point is not None:
        if best or where:
            raise ConfigError("give either point=N or a rule (maximize/minimize, where), not both")
        if not 1 <= point <= len(points):
            raise ConfigError(f"point={point}: the front has {len(points)} point(s); give a point "
                              f"from 1 to {len(points)}")
        row = points.iloc[point - 1]
        return Choice(str(row["trial_id"]), {m: float(row[m]) for m in objectives},
                      objectives[0], f"point {point} of {len(points)}")
    target = best or objectives[0]
    mask = np.ones(len(points), dtype=bool)
    for condition in where:
        mask &= points[condition.metric].map(condition.holds).to_numpy(dtype=bool)
    feasible = points[mask]
    if feasible.empty:
        ranges = {c.metric: (float(points[c.metric].max() - points[c.metric].min()) or 1.0)
                  for c in where}
        misses = points.apply(lambda r: sum(c.shortfall(r[c.metric]) / ranges[c.metric]
                                            for c in where), axis=1)
        closest = points.loc[misses.idxmin()]
        detail = "; ".join(f"{c.metric} {closest[c.metric]:.4g} misses {c} by "
                           f"{c.shortfall(closest[c.metric]):.4g}" for c in where
                           if not c.holds(closest[c.metric]))
        raise ConfigError(f"no point of the front meets {' and '.join(map(str, where))}; the "
                          f"closest is trial {closest['trial_id']}: {detail}. Loosen the "
                          "condition, or search longer")
    ordered = feasible.sort_values(target, ascending=direction(target) == "min")
    row = ordered.iloc[0]
    rule = f"{'max' if direction(target) == 'max' else 'min'} {target}" + (
        f" where {' and '.join(map(str, where))}" if where else "")
    return Choice(str(row["trial_id"]), {m: float(row[m]) for m in objectives}, target,
                  f"{rule} ({len(feasible)} of {len(points)} points qualify)")


def describe(front: pd.DataFrame, objectives: Sequence[str], limit: int = 12,
             configs: dict[str, str] | None = None) -> str:
    """The front as text: one line per non-dominated point (with its config in brief, from
    `configs`: trial id -> text), then how many were dominated."""
    points = front[front["front"] == 0]
    lines = [f"Pareto front of {' and '.join(objectives)}: {len(points)} of {len(front)} "
             "trials (best first by the first objective)"]
    for index, row in enumerate(points.head(limit).itertuples(index=False), 1):
        values = ", ".join(f"{m} {getattr(row, m):.4f}" for m in objectives)
        label = f" ({row.anchor} anchor)" if row.anchor else ""
        lines.append(f"  {index:2d}. trial {row.trial_id}{label}: {values}; best epoch "
                     f"{int(row.best_epoch)} of {int(row.epochs_run)} run")
        if configs and configs.get(str(row.trial_id)):
            lines.append(f"      {configs[str(row.trial_id)]}")
    if len(points) > limit:
        lines.append(f"  ... and {len(points) - limit} more")
    dominated = front[front["front"] > 0]
    if len(dominated):
        stopped = dominated["stopped_at"].dropna()
        lines.append(f"  {len(dominated)} dominated trial(s)"
                     + (f", {len(stopped)} stopped early (at epochs "
                        f"{', '.join(str(int(s)) for s in sorted(set(stopped)))})"
                        if len(stopped) else ""))
    return "\n".join(lines)


