"""Live performance: the model's scores against the echo outcomes matched to them.

Per task (those the echo labels and the model scores) and per calendar window of the CT
(its Study Date, else the day it was screened; month by default): the number matched and
positive, ROC AUC with its percentile bootstrap 95 % CI, sensitivity, specificity and
PPV at the model card's operating threshold (none: "not assessed") and calibration, all
from :mod:`hyperct_core.metrics`, the code ``model evaluate`` uses. And the yield of
referrals: of the referrals whose CT has an echo matched, the share whose echo was
positive for any task the referral named.

A window with fewer than ``min_samples`` matches is still shown, marked as such: its
figures are indicative only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np

from agent.config_followup import MonitorSettings
from agent.monitor.checks import OK, TOO_FEW, CheckResult
from hyperct_core.metrics import bootstrap_auc, calibration, rates, roc_auc, roc_curve
from storage.monitoring import MatchedOutcome, ReferralOutcome

PERIODS = ("month", "quarter", "week")


def window_of(day: date, period: str = "month") -> str:
    """The calendar window a day falls in: ``2026-03``, ``2026-Q1`` or ``2026-W09``."""
    if period == "month":
        return f"{day:%Y-%m}"
    if period == "quarter":
        return f"{day.year}-Q{(day.month - 1) // 3 + 1}"
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    raise ValueError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}")


def ct_day(study_date: str | None, screened_at: datetime) -> date:
    """The CT's day: its Study Date (DA, YYYYMMDD) when readable, else the screening day."""
    if study_date:
        try:
            return datetime.strptime(study_date[:8], "%Y%m%d").date()
        except ValueError:
            pass
    return screened_at.date()


@dataclass
class TaskFigures:
    """One task over one window (or over the whole range when ``window`` is "all")."""

    task: str
    window: str
    n: int
    positives: int
    threshold: float | None
    auc: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    sensitivity: float = math.nan
    specificity: float = math.nan
    ppv: float = math.nan
    calibration: dict[str, Any] | None = None
    roc: tuple[list[float], list[float]] | None = None
    note: str = ""


def task_figures(
    task: str,
    window: str,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float | None,
    *,
    min_samples: int,
    n_boot: int = 1000,
    seed: int = 0,
) -> TaskFigures:
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=float)
    fig = TaskFigures(task, window, len(y), int(y.sum()), threshold)
    notes = []
    if len(y) < min_samples:
        notes.append(f"fewer than {min_samples} matched: indicative only")
    if y.all() or not y.any():
        notes.append("one class only: no AUC")
    else:
        fig.auc = roc_auc(y, p)
        fig.ci_low, fig.ci_high, _ = bootstrap_auc(y, p, n=n_boot, seed=seed)
        fpr, tpr, _ = roc_curve(y, p)
        fig.roc = ([float(x) for x in fpr], [float(x) for x in tpr])
    if threshold is None:
        notes.append("no operating threshold in the card: rates not assessed")
    elif len(y):
        at = rates(y, p, threshold)
        fig.sensitivity, fig.specificity, fig.ppv = at["sensitivity"], at["specificity"], at["ppv"]
    if len(y):
        fig.calibration = calibration(y, p)
    fig.note = "; ".join(notes)
    return fig


@dataclass
class Performance:
    """Every task's figures over the whole range and per window; the referral yield."""

    period: str
    overall: dict[str, TaskFigures] = field(default_factory=dict)
    windows: dict[str, list[TaskFigures]] = field(default_factory=dict)
    yield_rows: list[dict[str, Any]] = field(default_factory=list)


def live_performance(
    outcomes: Sequence[MatchedOutcome],
    thresholds: Mapping[str, float],
    *,
    period: str = "month",
    start: date | None = None,
    end: date | None = None,
    min_samples: int = 50,
    n_boot: int = 1000,
    windows: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Performance:
    """Figures of the matched outcomes whose CT day is in ``[start, end]`` (inclusive);
    per calendar window too unless ``windows`` is False."""
    perf = Performance(period)
    kept = []
    for o in outcomes:
        day = ct_day(o.study_date, o.screened_at)
        if (start is None or day >= start) and (end is None or day <= end):
            kept.append((window_of(day, period), o))
    tasks = sorted({t for _, o in kept for t, v in o.labels.items()
                    if v in (0, 1) and t in o.scores})  # fmt: skip
    for i, task in enumerate(tasks):
        if progress is not None:
            progress(f"live performance: {task} ({i + 1}/{len(tasks)})")
        pairs = [(w, float(o.labels[task]), o.scores[task]) for w, o in kept
                 if o.labels.get(task) in (0, 1) and task in o.scores]  # fmt: skip
        y = np.array([v for _, v, _ in pairs])
        p = np.array([s for _, _, s in pairs])
        thr = thresholds.get(task)
        perf.overall[task] = task_figures(task, "all", y, p, thr, min_samples=min_samples,
                                          n_boot=n_boot, seed=i)  # fmt: skip
        if not windows:
            continue
        of = np.array([w for w, _, _ in pairs])
        for w in sorted(set(of)):
            sel = of == w
            perf.windows.setdefault(task, []).append(
                task_figures(
                    task, w, y[sel], p[sel], thr, min_samples=min_samples, n_boot=n_boot, seed=i
                )  # fmt: skip
            )
    return perf


def referral_yield(
    referrals: Sequence[ReferralOutcome], period: str = "month"
) -> list[dict[str, Any]]:
    """Per window of referral: referrals, those with an echo, positive echoes, yield."""
    rows: dict[str, dict[str, Any]] = {}
    for r in referrals:
        w = window_of(r.referred_at.date(), period)
        row = rows.setdefault(w, {"window": w, "referrals": 0, "with_echo": 0, "positive": 0})
        row["referrals"] += 1
        if r.labels is None:
            continue
        row["with_echo"] += 1
        if any(r.labels.get(t) == 1 for t in r.tasks):
            row["positive"] += 1
    for row in rows.values():
        row["yield"] = row["positive"] / row["with_echo"] if row["with_echo"] else math.nan
    return [rows[w] for w in sorted(rows)]


def performance_checks(
    outcomes: Sequence[MatchedOutcome],
    settings: MonitorSettings,
    start: date,
    end: date,
    held_out: Mapping[str, Any] | None = None,
    n_boot: int = 200,
) -> list[CheckResult]:
    """The periodic check's live AUC per task over ``[start, end]``: a figure with its CI,
    never an alert (a live AUC is read against the card's held-out one, kept in ``detail``)."""
    perf = live_performance(outcomes, {}, start=start, end=end, n_boot=n_boot, windows=False,
                            min_samples=settings.min_samples)  # fmt: skip
    out = []
    for task, f in perf.overall.items():
        detail: dict[str, Any] = {"positives": f.positives}
        card_auc = ((held_out or {}).get(task) or {}).get("auc")
        if card_auc is not None:
            detail["held_out_auc"] = card_auc
        if f.n < settings.min_samples or math.isnan(f.auc):
            detail["min_samples"] = settings.min_samples
            out.append(CheckResult("performance", task, "auc", None, None, f.n, TOO_FEW, detail))
            continue
        detail.update(ci_low=f.ci_low, ci_high=f.ci_high)
        out.append(CheckResult("performance", task, "auc", f.auc, None, f.n, OK, detail))
    return out
