"""Screening: claim queued jobs, read their volumes, run the model on a batch, store results.

A batch is claimed in one short transaction, read and inferred with no
transaction open (SQLite writers would otherwise block ingest), and each job's
results, outcome and report rows are committed together. Completion is
conditional on the claim, so a job taken back meanwhile (shutdown, stale
claim) is never half-written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from agent.config import Settings
from agent.logs import get_logger
from agent.pipeline.model import ModelHolder
from agent.report import Findings, ModelIdentity, ReportInputError, referral
from agent.report.summary import KeyImage, key_image_from_volume
from storage.files import InstanceStore
from storage.models import Instance, Report, Result, Series
from storage.queue import claim_jobs, fail_job, finish_job, requeue_stale_jobs
from storage.types import utcnow

log = get_logger("agent.screen")


@dataclass
class ClaimedJob:
    job_id: int
    series_id: int
    series_uid: str
    revision: int
    paths: list[Path] = field(default_factory=list)
    #: The axial slice through the heart, taken while the volume is in memory (summary image).
    key_image: KeyImage | None = None


#: Builds the report objects of a screened series and writes them durably;
#: returns (kind, sop_instance_uid, series_instance_uid, rel_path) per object.
ReportWriter = Callable[[ClaimedJob, Findings, ModelIdentity], list[tuple[str, str, str, str]]]


def findings_for(
    probabilities: Sequence[float], card: Any, model: ModelIdentity, settings: Settings
) -> Findings:
    """The rule in force: card thresholds and referral tasks, overridden by ``[referral]``."""
    thresholds = {t: float(model.thresholds.get(t, 0.5)) for t in card.tasks}
    thresholds.update(settings.referral.thresholds)
    return Findings(
        task_names=tuple(card.tasks),
        probabilities=tuple(float(p) for p in probabilities),
        thresholds=thresholds,
        referral_tasks=tuple(settings.referral.tasks or model.referral_tasks),
    )


class Screener:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: InstanceStore,
        model: ModelHolder,
        worker: str,
        write_reports: ReportWriter,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.model = model
        self.worker = worker
        self.write_reports = write_reports

    def run_once(self) -> int:
        """Screen one batch; returns how many jobs were finished."""
        predictor = self.model.get(timeout=0)
        if predictor is None:
            return 0
        claimed = self._claim()
        if not claimed:
            return 0
        from hyperct_core.errors import PreprocessError
        from hyperct_core.preprocess import images_from_volume
        from hyperct_core.volume import volume_from_datasets

        config = predictor.card.preprocess_config()
        images, ready = [], []
        started = time.monotonic()
        for job in claimed:
            try:
                volume = volume_from_datasets(job.paths, config.orientation)
                images.append(images_from_volume(volume, config))
                if self.settings.reports.summary_image:
                    canonical = volume.reoriented("LPS")
                    job.key_image = key_image_from_volume(canonical.array, canonical.spacing)
                ready.append(job)
            except PreprocessError as exc:  # the series itself is unusable: no retry helps
                self._fail(job, f"cannot make a volume: {exc}", retry=False)
            except OSError as exc:
                self._fail(job, f"cannot read instances: {exc.strerror or exc}", retry=True)
        read_s = time.monotonic() - started  # reading the files and preprocessing
        if not ready:
            return 0
        started = time.monotonic()
        try:
            probabilities = np.asarray(predictor.predict(images))
        except Exception as exc:
            for job in ready:
                self._fail(job, f"inference failed: {type(exc).__name__}: {exc}", retry=True)
            return 0
        infer_s = time.monotonic() - started
        identity = self.model.identity
        done = 0
        for job, row in zip(ready, probabilities, strict=True):
            try:
                findings = findings_for(row, predictor.card, identity, self.settings)
            except ReportInputError as exc:  # e.g. a card whose tasks are not HyperCT's 25
                self._fail(job, f"model output unusable: {exc}", retry=False)
                continue
            done += self._complete(job, findings, identity)
        log.info(
            "batch screened",
            jobs=len(ready),
            read_seconds=round(read_s, 2),
            inference_seconds=round(infer_s, 2),
        )
        return done

    def _claim(self) -> list[ClaimedJob]:
        with self.sessions.begin() as session:
            requeue_stale_jobs(session, self.settings.pipeline.claim_timeout_seconds)
            jobs = claim_jobs(session, self.worker, self.settings.model.batch_size)
            claimed = []
            for job in jobs:
                series = session.get(Series, job.series_id)
                assert series is not None
                rel_paths = session.scalars(
                    select(Instance.rel_path)
                    .where(Instance.series_id == job.series_id)
                    .order_by(Instance.slice_position, Instance.id)
                ).all()
                claimed.append(
                    ClaimedJob(
                        job.id,
                        job.series_id,
                        series.series_instance_uid,
                        job.revision,
                        [self.store.path_of(p) for p in rel_paths],
                    )
                )
        return claimed

    def _complete(self, job: ClaimedJob, findings: Findings, model: ModelIdentity) -> int:
        revision = job.revision + 1
        job.revision = revision
        started = time.monotonic()
        try:
            written = self.write_reports(job, findings, model)
        except Exception as exc:
            self._fail(job, f"report building failed: {type(exc).__name__}: {exc}", retry=True)
            return 0
        fired = referral(findings)
        with self.sessions.begin() as session:
            session.execute(delete(Result).where(Result.job_id == job.job_id))
            pairs = zip(findings.task_names, findings.probabilities, strict=True)
            for index, (task, p) in enumerate(pairs):
                session.add(
                    Result(
                        job_id=job.job_id,
                        task_index=index,
                        task_name=task,
                        probability=p,
                        flagged=findings.is_present(task),
                        model_version=model.version,
                    )
                )
            for kind, sop_uid, series_uid, rel_path in written:
                for dest in self.settings.destinations:
                    session.add(
                        Report(
                            job_id=job.job_id,
                            kind=kind,
                            sop_instance_uid=sop_uid,
                            series_instance_uid=series_uid,
                            destination=dest.name,
                            rel_path=rel_path,
                            revision=revision,
                        )
                    )
            finished = finish_job(
                session,
                job.job_id,
                self.worker,
                model_version=model.version,
                revision=revision,
                echo_referral=bool(fired),
                referral_tasks=fired,
                screened_at=utcnow(),
            )
            if not finished:  # the claim was taken back: keep nothing
                session.rollback()
                log.warning("screening result dropped: claim taken back", job=job.job_id)
                return 0
        log.info(
            "series screened",
            job=job.job_id,
            echo_referral=bool(fired),
            referral_tasks=",".join(fired) or None,
            reports=len(written),
            report_seconds=round(time.monotonic() - started, 3),
        )
        return 1

    def _fail(self, job: ClaimedJob, error: str, *, retry: bool) -> None:
        pipeline = self.settings.pipeline
        with self.sessions.begin() as session:
            state = fail_job(
                session,
                job.job_id,
                self.worker,
                error,
                max_attempts=pipeline.max_attempts if retry else 0,
                retry_seconds=pipeline.retry_seconds,
            )
        log.error("screening failed", job=job.job_id, error=error, state=str(state))
