"""Read-only summaries for the CLI and dashboards."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Instance, Job, JobState, Report, ReportState, Series, Study


def status_counts(session: Session) -> dict[str, Any]:
    """Counts for ``hyperct-agent status``: every job and report state present, 0 if none.

    ``{"studies": int, "series": int, "instances": int,
    "jobs": {state: int, ...}, "reports": {state: int, ...}}``
    """
    counts: dict[str, Any] = {
        "studies": session.scalar(select(func.count()).select_from(Study)) or 0,
        "series": session.scalar(select(func.count()).select_from(Series)) or 0,
        "instances": session.scalar(select(func.count()).select_from(Instance)) or 0,
    }
    counts["jobs"], counts["reports"] = counts_by_state(session)
    return counts


def counts_by_state(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Jobs and reports per state, every state present (0 if none)."""
    jobs = {s.value: 0 for s in JobState}
    for job_state, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        jobs[JobState(job_state).value] = n
    reports = {s.value: 0 for s in ReportState}
    for report_state, n in session.execute(
        select(Report.state, func.count()).group_by(Report.state)
    ):
        reports[ReportState(report_state).value] = n
    return jobs, reports
