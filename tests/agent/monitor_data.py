"""Synthetic screening streams for the monitoring tests, written as the pipeline writes them.

Scores of a task are the logistic of two normals with a known separation ``d`` (unit
variance): the true ROC AUC is ``Phi(d / sqrt(2))`` whatever the prevalence (the logistic
is monotone and changes no ranking).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from storage.models import EchoOutcome, Job, JobState, Referral, Result, Series, Study

TASK = "reduced_lv_systolic_function"
OTHER = "pulmonary_hypertension"
VERSION = "2.0.0"
PSEUDONYM = "canary-pseudonym-5f2d"  # must never reach a log line or a report


def true_auc(d: float) -> float:
    return 0.5 * (1.0 + math.erf(d / 2.0))  # Phi(d / sqrt 2)


def stream(n: int, seed: int, d: float = 1.2, prevalence: float = 0.3) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    z = rng.normal(size=n) + d * y
    return y, 1.0 / (1.0 + np.exp(-(z - 1.0)))


def add_screened(
    session: Session,
    scores: Sequence[dict[str, float]],
    *,
    start: datetime,
    step: timedelta = timedelta(hours=1),
    inputs: Sequence[dict[str, Any]] | None = None,
    version: str = VERSION,
    first: int = 0,
) -> list[int]:
    """One study, series, done job and results per entry; returns the job ids.

    One flush for all jobs and one for all results (batched inserts): thousands of rows
    in a second on either backend.
    """
    jobs = []
    for i in range(len(scores)):
        k = first + i
        when = start + step * i
        study = Study(study_instance_uid=f"1.2.826.0.1.3680043.10.9.{k}",
                      study_date=f"{when:%Y%m%d}", patient_pseudonym=PSEUDONYM)  # fmt: skip
        series = Series(study=study, series_instance_uid=f"1.2.826.0.1.3680043.10.9.{k}.1",
                        modality="CT", **(inputs[i] if inputs else {}))  # fmt: skip
        jobs.append(Job(series=series, state=JobState.DONE, model_version=version,
                        screened_at=when, echo_referral=False))  # fmt: skip
    session.add_all(jobs)
    session.flush()
    session.add_all(
        Result(job_id=job.id, task_index=t, task_name=task, probability=float(p),
               flagged=False, model_version=version)
        for job, task_scores in zip(jobs, scores, strict=True)
        for t, (task, p) in enumerate(task_scores.items())
    )  # fmt: skip
    session.flush()
    return [job.id for job in jobs]


def add_outcome(session: Session, job_id: int, labels: dict[str, int], exam_date: str) -> None:
    key = f"test:{job_id}:{exam_date}"
    session.add(EchoOutcome(source="csv", source_key=key, patient_pseudonym=PSEUDONYM,
                            exam_date=exam_date, measurements={}, labels=labels, job_id=job_id,
                            match_days=3))  # fmt: skip


def add_referral(
    session: Session, job_id: int | None, tasks: list[str], when: datetime
) -> Referral:
    referral = Referral(patient_pseudonym=PSEUDONYM, job_id=job_id, tasks=tasks,
                        referred_at=when)  # fmt: skip
    session.add(referral)
    session.flush()
    return referral


def write_card(
    folder: Path, reference: dict[str, Any] | None, thresholds: dict[str, float]
) -> Path:
    """A checkpoint folder's card.json with what monitoring reads (no weights needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"operating_points": {"tasks": {
        TASK: {"held_out": {"auc": 0.79, "n": 400}}}}}  # fmt: skip
    if reference is not None:
        extra["reference_distributions"] = reference
    card = {"name": "hyperct-test", "version": VERSION, "tasks": [TASK, OTHER],
            "thresholds": thresholds, "extra": extra}  # fmt: skip
    (folder / "card.json").write_text(json.dumps(card))
    return folder


T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
