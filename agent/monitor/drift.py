"""Drift: the live distributions of scores and inputs against the model card's.

The periodic check (:func:`run_check`) also stores each task's live AUC over the same
window against the echo outcomes matched so far (:func:`performance_checks`): a figure
with its CI, not an alert.

Each task's scores and each categorical input (manufacturer, reconstruction kernel) are
compared by the population stability index over the reference's bins or categories;
each continuous input (kVp, slice thickness) by the Kolmogorov-Smirnov distance, since
its values sit on a few protocol settings that would make PSI bins arbitrary (reasons in
:mod:`hyperct_core.reference`). A statistic needs ``[monitor] min_samples`` live values
in the window (the last ``window_days``); with fewer none is computed and no alert can
be raised, and the check says so. A value above ``psi_alert`` / ``ks_alert`` is an alert:
a stored ``monitor_checks`` row with ``alert`` set, a gauge in ``/metrics``, the
dashboard's monitoring page and one warning log line (task or input name and figures:
no patient data).

Live scores are those of the card's model version only: another model's scores say
nothing about this card's reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from agent.config import Settings
from agent.config_followup import MonitorSettings
from agent.errors import AgentError
from agent.logs import get_logger
from agent.monitor.card import NO_REFERENCE, CardView, read_card_view
from agent.monitor.checks import ALERT, NOT_AVAILABLE, OK, TOO_FEW, CheckResult
from agent.monitor.performance import performance_checks
from hyperct_core.reference import (
    CATEGORICAL,
    categorical_psi,
    ks_distance,
    normalise_category,
    score_psi,
)
from storage.models import MonitorCheck
from storage.monitoring import ScreenedSeries, add_checks, matched_outcomes, screened_series

log = get_logger("agent.monitor")


def _known(name: str, values: Iterable[Any]) -> list[Any]:
    if name in CATEGORICAL:
        return [v for v in values if normalise_category(v) is not None]
    return [v for v in values if v is not None]


def _ks(reference: Mapping[str, Any], values: list[Any]) -> tuple[float, None]:
    return ks_distance(reference, values), None


def compare(
    reference: Mapping[str, Any], series: Sequence[ScreenedSeries], settings: MonitorSettings
) -> list[CheckResult]:
    """Every score and input of ``reference`` against the live ``series``."""
    out: list[CheckResult] = []

    def one(
        kind: str,
        name: str,
        statistic: str,
        values: list[Any],
        ref: Mapping[str, Any],
        measure: Callable[[Mapping[str, Any], list[Any]], tuple[float, Any]],
        threshold: float,
    ) -> None:
        if len(values) < settings.min_samples:
            detail = {"min_samples": settings.min_samples, "reference_n": ref.get("n")}
            out.append(
                CheckResult(kind, name, statistic, None, threshold, len(values), TOO_FEW, detail)
            )
            return
        value, live = measure(ref, values)
        status = ALERT if value > threshold else OK
        detail = {"reference_n": ref.get("n"), "live": live}
        out.append(
            CheckResult(kind, name, statistic, value, threshold, len(values), status, detail)
        )

    for task, ref in (reference.get("scores") or {}).items():
        scores = [s.scores[task] for s in series if task in s.scores]
        one("score", task, "psi", scores, ref, score_psi, settings.psi_alert)
    for name, ref in (reference.get("inputs") or {}).items():
        values = _known(name, (s.inputs.get(name) for s in series))
        if ref.get("kind") == "categorical":
            one("input", name, "psi", values, ref, categorical_psi, settings.psi_alert)
        else:
            one("input", name, "ks", values, ref, _ks, settings.ks_alert)
    return out


def check_drift(
    session: Session, card: CardView, settings: MonitorSettings, now: datetime | None = None
) -> list[CheckResult]:
    """Compare the last ``window_days`` of screening with ``card``'s reference."""
    if card.reference is None:
        return [CheckResult("drift", "reference", "none", None, None, 0, NOT_AVAILABLE,
                           {"reason": NO_REFERENCE})]  # fmt: skip
    end = now or datetime.now(UTC)
    start = end - timedelta(days=settings.window_days)
    return compare(card.reference, screened_series(session, start, end, card.version), settings)


def store_checks(
    session: Session, checks: Sequence[CheckResult], settings: MonitorSettings, now: datetime
) -> int:
    """One ``monitor_checks`` row per check, and a warning line per alert."""
    start = now - timedelta(days=settings.window_days)
    rows = [
        MonitorCheck(
            checked_at=now, kind=c.kind, name=c.name[:64], statistic=c.statistic,
            value=c.value, threshold=c.threshold, alert=c.alert, n=c.n,
            window_start=start, window_end=now, detail={"status": c.status, **c.detail},
        )
        for c in checks
    ]  # fmt: skip
    for c in checks:
        if c.alert:
            log.warning("drift alert", kind=c.kind, name=c.name, statistic=c.statistic,
                        value=round(c.value or 0.0, 4), threshold=c.threshold, n=c.n)  # fmt: skip
    return add_checks(session, rows)


def run_check(
    sessions: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> list[CheckResult]:
    """One check: read the serving model's card, compare, store; returns the checks."""
    now = now or datetime.now(UTC)
    card = read_card_view(settings.model)
    start = now - timedelta(days=settings.monitor.window_days)
    with sessions.begin() as session:
        checks = check_drift(session, card, settings.monitor, now)
        outcomes = matched_outcomes(session, card.version, start.date())
        checks += performance_checks(outcomes, settings.monitor, start.date(), now.date(),
                                     card.held_out)  # fmt: skip
        store_checks(session, checks, settings.monitor, now)
    alerts = sum(c.alert for c in checks)
    log.info("monitor check", checks=len(checks), alerts=alerts,
             too_few=sum(c.status == TOO_FEW for c in checks),
             reference=card.reference is not None)  # fmt: skip
    return checks


class DriftMonitor:
    """The serve scheduler's periodic check (node role, every ``check_minutes``)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def run_once(self) -> int:
        try:
            run_check(self.sessions, self.settings)
        except AgentError as exc:  # an unreadable card: said, and tried again next time
            log.warning("monitor check skipped", reason=str(exc))
        return 0  # wakes no other stage
