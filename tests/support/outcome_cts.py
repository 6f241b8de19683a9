"""Screened CTs in the database for outcome matching: study, series, a done job, results."""

from __future__ import annotations

import itertools

from sqlalchemy.orm import Session

from storage.models import Job, JobState, Result, Series, Study

_n = itertools.count(1)


def screened_ct(
    session: Session,
    study_date: str,
    patient: str | None,
    accession: str | None = None,
    *,
    state: JobState = JobState.DONE,
    with_results: bool = True,
) -> int:
    """A CT study with one series and its job; returns the job id (the caller commits).

    The pseudonym columns are set directly, as CT ingest sets them (``patient`` and
    ``accession`` are pseudonyms, not identifiers).
    """
    n = next(_n)
    study = Study(
        study_instance_uid=f"1.2.826.0.1.3680043.10.9.{n}",
        study_date=study_date,
        patient_pseudonym=patient,
        accession_pseudonym=accession,
    )
    series = Series(study=study, series_instance_uid=f"1.2.826.0.1.3680043.10.9.{n}.1")
    job = Job(series=series, state=state)
    session.add_all([study, series, job])
    session.flush()
    if with_results:
        session.add(
            Result(
                job_id=job.id,
                task_index=1,
                task_name="reduced_lv_systolic_function",
                probability=0.7,
                flagged=True,
                model_version="test",
            )
        )
        session.flush()
    return job.id
