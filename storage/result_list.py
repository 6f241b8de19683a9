"""The results list: one row per series with its job and probabilities, and its CSV form.

Read-only; patient data is not in the database (see :mod:`storage.models`).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, select
from sqlalchemy.orm import Session

from storage.models import (
    Job,
    JobState,
    Result,
    Series,
    Study,
)

# -- results list --------------------------------------------------------------


@dataclass(frozen=True)
class ResultFilter:
    """What ``results`` narrows to; every field left empty means "any".

    ``since``/``until`` bound when the series was first received
    (``until`` exclusive). ``task`` alone keeps jobs where that task is
    flagged; with ``above`` it keeps jobs where that task's probability is
    greater than ``above``; ``above`` alone keeps jobs where any task is.
    """

    since: datetime | None = None
    until: datetime | None = None
    echo: bool | None = None
    task: str | None = None
    above: float | None = None
    states: tuple[JobState, ...] = ()
    job_ids: tuple[int, ...] = ()
    limit: int | None = None


@dataclass
class ResultRow:
    """One series' way through the pipeline and, once screened, its 25 probabilities."""

    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    study_date: str | None
    series_number: int | None
    series_description: str | None
    instances: int
    received_at: datetime | None
    state: str
    reason: str | None
    attempts: int
    last_error: str | None
    screened_at: datetime | None
    model_version: str | None
    echo_referral: bool | None
    referral_tasks: list[str] = field(default_factory=list)
    flagged_tasks: list[str] = field(default_factory=list)
    # The patient's referral episode (storage.referrals): its ID, and for a repeat
    # the day the echo was first recommended and what the outputs did ("annotate",
    # or "suppress": not recommended again), as stored at screening.
    referral_id: int | None = None
    referral_repeat_of: str | None = None
    referral_repeat_mode: str | None = None
    # task name -> probability, in the model's task order
    probabilities: dict[str, float] = field(default_factory=dict)


def list_results(session: Session, flt: ResultFilter = ResultFilter()) -> list[ResultRow]:
    """Jobs matching ``flt``, newest received first, with their results."""
    stmt: Select[Job, Series, Study] = (
        select(Job, Series, Study)
        .join(Series, Job.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
    )
    if flt.since is not None:
        stmt = stmt.where(Series.first_received_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(Series.first_received_at < flt.until)
    if flt.echo is not None:
        stmt = stmt.where(Job.echo_referral.is_(flt.echo))
    if flt.states:
        stmt = stmt.where(Job.state.in_(flt.states))
    if flt.job_ids:
        stmt = stmt.where(Job.id.in_(flt.job_ids))
    if flt.task is not None or flt.above is not None:
        cond = [Result.job_id == Job.id]
        if flt.task is not None:
            cond.append(Result.task_name == flt.task)
        cond.append(
            Result.flagged.is_(True) if flt.above is None else Result.probability > flt.above
        )
        stmt = stmt.where(exists().where(and_(*cond)))
    stmt = stmt.order_by(Series.first_received_at.desc(), Job.id.desc())
    if flt.limit is not None:
        stmt = stmt.limit(flt.limit)
    rows = session.execute(stmt).all()
    results = _results_by_job(session, [job.id for job, _s, _st in rows])
    out = []
    for job, series, study in rows:
        mine = results.get(job.id, [])
        repeat = (job.referral_rule or {}).get("repeat") or {}
        out.append(
            ResultRow(
                job_id=job.id,
                study_instance_uid=study.study_instance_uid,
                series_instance_uid=series.series_instance_uid,
                study_date=study.study_date,
                series_number=series.series_number,
                series_description=series.series_description,
                instances=series.instance_count,
                received_at=series.first_received_at,
                state=JobState(job.state).value,
                reason=job.reason,
                attempts=job.attempts,
                last_error=job.last_error,
                screened_at=job.screened_at,
                model_version=job.model_version,
                echo_referral=job.echo_referral,
                referral_tasks=list(job.referral_tasks or []),
                flagged_tasks=[r.task_name for r in mine if r.flagged],
                referral_id=job.referral_id,
                referral_repeat_of=repeat.get("of"),
                referral_repeat_mode=repeat.get("mode"),
                probabilities={r.task_name: r.probability for r in mine},
            )
        )
    return out


def _results_by_job(session: Session, job_ids: Sequence[int]) -> dict[int, list[Result]]:
    by_job: dict[int, list[Result]] = defaultdict(list)
    # Chunked: SQLite allows a limited number of bound parameters per statement.
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        for r in session.scalars(
            select(Result)
            .where(Result.job_id.in_(chunk))
            .order_by(Result.job_id, Result.task_index)
        ):
            by_job[r.job_id].append(r)
    return by_job


# -- export and re-import ----------------------------------------------------------

#: Fixed CSV columns, before one ``p_<task>`` column per task.
CSV_COLUMNS = (
    "job_id",
    "study_instance_uid",
    "series_instance_uid",
    "study_date",
    "series_number",
    "series_description",
    "instances",
    "received_at",
    "state",
    "reason",
    "attempts",
    "last_error",
    "screened_at",
    "model_version",
    "echo_referral",
    "referral_tasks",
    "flagged_tasks",
    "referral_id",
    "referral_repeat_of",
    "referral_repeat_mode",
)
_INTS = {"job_id", "series_number", "instances", "attempts", "referral_id"}
_TIMES = {"received_at", "screened_at"}
_LISTS = {"referral_tasks", "flagged_tasks"}


def task_columns(rows: Iterable[ResultRow]) -> list[str]:
    """Task names across ``rows`` in the models' order (first seen first)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.probabilities))
    return list(names)


def to_record(row: ResultRow, tasks: Sequence[str]) -> dict[str, Any]:
    """A flat, JSON-ready dict: times in ISO 8601, lists as lists, ``p_<task>`` floats."""
    rec: dict[str, Any] = {}
    for col in CSV_COLUMNS:
        value = getattr(row, col)
        rec[col] = value.isoformat() if isinstance(value, datetime) else value
    for task in tasks:
        rec[f"p_{task}"] = row.probabilities.get(task)
    return rec


def write_csv(rows: Sequence[ResultRow], out: io.TextIOBase | Any) -> None:
    """CSV with a header; empty cell = no value; lists joined by ``;``; floats exact (repr)."""
    tasks = task_columns(rows)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(f"p_{t}" for t in tasks)])
    for row in rows:
        rec = to_record(row, tasks)
        writer.writerow([_cell(v) for v in rec.values()])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return ";".join(value)
    return str(value)


def read_csv(text: str) -> list[ResultRow]:
    """Rows back from :func:`write_csv` output (the inverse, for re-import and checks)."""
    out = []
    for rec in csv.DictReader(io.StringIO(text)):
        values: dict[str, Any] = {}
        for col in CSV_COLUMNS:
            cell = rec[col]
            if col in _LISTS:
                values[col] = cell.split(";") if cell else []
            elif cell == "":
                values[col] = None
            elif col in _INTS:
                values[col] = int(cell)
            elif col in _TIMES:
                values[col] = datetime.fromisoformat(cell)
            elif col == "echo_referral":
                values[col] = cell == "true"
            else:
                values[col] = cell
        probabilities = {
            key[2:]: float(cell) for key, cell in rec.items() if key.startswith("p_") and cell
        }
        out.append(ResultRow(**values, probabilities=probabilities))
    return out
