"""``monitor report``: live performance, referral yield and drift as one HTML file.

Self-contained like ``model evaluate``'s report (inline SVG, no script, no network):
per task the ROC and calibration curves over the period (drawn by
:mod:`hyperct_core.evaluation_report`'s chart code) and a table per calendar window;
the referral yield per window; drift over the period against the card's reference
(reference-against-live proportions) and the stored checks' values over time. No patient
data: windows, counts, figures, task and input names only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
from markupsafe import Markup
from sqlalchemy.orm import Session

from agent import __version__
from agent.config import Settings
from agent.monitor import charts
from agent.monitor.card import NO_REFERENCE, CardView
from agent.monitor.checks import CheckResult
from agent.monitor.drift import compare
from agent.monitor.performance import Performance, live_performance, referral_yield
from agent.resources import templates_dir
from hyperct_core.evaluation_report import _calibration_svg, _roc_svg
from hyperct_core.tasks import TASKS
from storage.monitoring import (
    check_history,
    matched_outcomes,
    referral_outcomes,
    screened_series,
)

TEMPLATE = "monitor_report.html.j2"


@dataclass
class ReportData:
    """Everything the report shows, computed once (the CLI prints a summary from it too)."""

    card: CardView
    start: date
    end: date
    period: str
    performance: Performance
    drift: list[CheckResult]
    history: dict[str, list[tuple[str, float | None, float | None]]] = field(default_factory=dict)


def day_range(start: date, end: date) -> tuple[datetime, datetime]:
    """``[start 00:00, end + 1 day 00:00)`` in UTC: both days included."""
    return (datetime.combine(start, time(), UTC),
            datetime.combine(end + timedelta(days=1), time(), UTC))  # fmt: skip


def gather(
    session: Session,
    settings: Settings,
    card: CardView,
    start: date,
    end: date,
    *,
    period: str = "month",
    n_boot: int = 1000,
    progress: Callable[[str], None] | None = None,
) -> ReportData:
    lo, hi = day_range(start, end)
    perf = live_performance(
        matched_outcomes(session, card.version, start), card.thresholds, period=period, start=start,
        end=end, min_samples=settings.monitor.min_samples, n_boot=n_boot, progress=progress,
    )  # fmt: skip
    perf.yield_rows = referral_yield(referral_outcomes(session, lo, hi), period)
    drift: list[CheckResult] = []
    if card.reference is not None:
        drift = compare(card.reference, screened_series(session, lo, hi, card.version),
                        settings.monitor)  # fmt: skip
    history: dict[str, list[tuple[str, float | None, float | None]]] = {}
    for row in check_history(session, lo, hi):
        if row.kind in ("score", "input"):
            history.setdefault(f"{row.kind} {row.name} ({row.statistic.upper()})", []).append(
                (f"{row.checked_at:%m-%d %H:%M}", row.value, row.threshold)
            )
    return ReportData(card, start, end, period, perf, drift, history)


def _num(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _drift_chart(check: CheckResult, reference: dict[str, Any]) -> Markup | None:
    live = check.detail.get("live")
    if check.value is None or live is None:
        return None
    if check.kind == "score":
        ref = reference["scores"][check.name]
        edges = [f"{e:.2f}" for e in ref["edges"]]
        cats = [f"<{edges[0]}" if edges else "all", *(f"≥{e}" for e in edges)]
        return charts.proportions_chart(cats, ref["proportions"], live, label=check.name)
    ref = reference["inputs"][check.name]["proportions"]
    keys = sorted(set(ref) | set(live))
    return charts.proportions_chart(keys, [ref.get(k, 0.0) for k in keys],
                                    [live.get(k, 0.0) for k in keys], label=check.name)  # fmt: skip


def render(data: ReportData, settings: Settings) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    display = {t.name: t.display_name for t in TASKS}
    tasks = []
    for name, overall in data.performance.overall.items():
        cal = overall.calibration
        roc = None
        if overall.roc is not None:
            roc = Markup(
                _roc_svg(np.asarray(overall.roc[0]), np.asarray(overall.roc[1]), overall.auc)
            )
        tasks.append({
            "name": name,
            "display": display.get(name, name),
            "overall": overall,
            "windows": data.performance.windows.get(name, []),
            "roc_svg": roc,
            "cal_svg": Markup(_calibration_svg(cal["table"])) if cal else None,
            "auc_svg": charts.series_chart(
                [w.window for w in data.performance.windows.get(name, [])],
                [w.auc for w in data.performance.windows.get(name, [])],
                label=f"AUC per {data.period}", ymax=1.0),
            "held_out": data.card.held_out.get(name),
        })  # fmt: skip
    yields = data.performance.yield_rows
    drift = [{"check": c, "chart": _drift_chart(c, data.card.reference or {})} for c in data.drift]
    history = {
        name: charts.series_chart([p[0] for p in points], [p[1] for p in points],
                                  label=name, threshold=points[-1][2])
        for name, points in data.history.items()
    }  # fmt: skip
    return env.get_template(TEMPLATE).render(
        data=data, settings=settings.monitor, tasks=tasks, yields=yields,
        yield_svg=charts.series_chart([r["window"] for r in yields],
                                      [r["yield"] for r in yields],
                                      label=f"referral yield per {data.period}", ymax=1.0),
        drift=drift, history=history, no_reference=NO_REFERENCE, num=_num,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=__version__,
    )  # fmt: skip


def summary_lines(data: ReportData) -> Sequence[str]:
    """What the CLI prints: one line per task overall, the yield, drift alerts."""
    lines = []
    for name, f in data.performance.overall.items():
        note = f"  ({f.note})" if f.note else ""
        lines.append(f"{name}: n={f.n} positives={f.positives} AUC {_num(f.auc)} "
                     f"[{_num(f.ci_low)}, {_num(f.ci_high)}]{note}")  # fmt: skip
    if not data.performance.overall:
        lines.append("no echo outcomes matched to screened series in this period")
    with_echo = sum(r["with_echo"] for r in data.performance.yield_rows)
    positive = sum(r["positive"] for r in data.performance.yield_rows)
    if with_echo:
        lines.append(f"referral yield: {positive}/{with_echo} = {positive / with_echo:.1%}")
    if data.card.reference is None:
        lines.append(NO_REFERENCE)
    lines.extend(c.sentence() for c in data.drift if c.alert)
    return lines
