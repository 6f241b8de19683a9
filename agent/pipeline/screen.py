"""Screening: claim queued jobs, read their volumes, run the model on a batch, store results.

Each volume is read once: the image check (:mod:`hyperct_core.bloodpool`)
measures the blood pool on the HU volume, then the same volume is
preprocessed for the model. A series whose blood pool measures at or above
``[eligibility] blood_pool_contrast_hu`` is enhanced: it is not screened, its
job is ``skipped`` with the measurement as the reason (the image wins over
tags that said non-contrast; the disagreement is logged), and the study's
other series that were not chosen are decided again, so another eligible
series can be screened instead. A series where no blood pool is found is
screened: the tags decide.

A batch is claimed in one short transaction, read and inferred with no
transaction open (SQLite writers would otherwise block ingest), and each job's
results, outcome and report rows are committed together. Completion is
conditional on the claim, so a job taken back meanwhile (shutdown, stale
claim) is never half-written. While a batch is held, :meth:`Screener.held`
names its jobs, and the pipeline's heartbeat renews their leases, so a slow
batch keeps its jobs and a dead worker's jobs are taken over once their
lease runs out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from agent.config import Destination, Settings
from agent.intake.stored import facts_from_db
from agent.logs import get_logger
from agent.pipeline.model import ModelHolder
from agent.report import Findings, ModelIdentity, ReferralDecision, ReportInputError, decide
from agent.report.source import CarriedSource
from agent.report.summary import KeyImage, key_image_from_volume
from agent.series.eligibility import CONTRAST_BY_IMAGE, ContrastByTags, contrast_by_tags
from storage.audit import audit
from storage.files import InstanceStore
from storage.models import Instance, Job, JobOrigin, JobState, Report, Result, Series
from storage.queue import claim_jobs, fail_job, finish_job, requeue_stale_jobs, skip_job
from storage.referrals import ReferralLink, link_referral
from storage.types import utcnow

log = get_logger("agent.screen")

#: How the reason of a series that was not chosen begins (see the sweep).
_NOT_CHOSEN = "not chosen"


@dataclass
class ClaimedJob:
    job_id: int
    series_id: int
    series_uid: str
    revision: int
    paths: list[Path] = field(default_factory=list)
    study_id: int | None = None
    tags: ContrastByTags | None = None
    # The image check's outcome: median blood-pool HU (None: not measured) and its line.
    blood_pool_hu: float | None = None
    image_check: str | None = None
    #: Set by the report writer when the reports leave source attributes out;
    #: audited with the results, in the same transaction.
    carried: CarriedSource | None = None
    #: The axial slice through the heart, taken while the volume is in memory (summary image).
    key_image: KeyImage | None = None
    #: The headers read for the volume (no pixel data), in ``paths`` order: the
    #: reports cite them, so no file is read again for its report.
    headers: list[Any] = field(default_factory=list)
    #: The echo referral, decided once when the findings are known; stored with
    #: the results and quoted by every report.
    referral: ReferralDecision | None = None
    #: live (pushed by PACS) or backfill (retrieved by a campaign): where its reports go.
    origin: str = JobOrigin.LIVE


def report_destinations(settings: Settings, origin: str) -> list[Destination]:
    """Where a series' reports go: a backfill one with ``reports = "results"`` keeps them here."""
    if origin == JobOrigin.BACKFILL and settings.backfill.reports == "results":
        return []
    return list(settings.destinations)


#: Builds the report objects of a screened series and writes them durably;
#: returns (kind, sop_instance_uid, series_instance_uid, rel_path) per object.
ReportWriter = Callable[[ClaimedJob, Findings, ModelIdentity], list[tuple[str, str, str, str]]]


def findings_for(
    probabilities: Sequence[float], card: Any, model: ModelIdentity, settings: Settings
) -> Findings:
    """The rule in force: card thresholds and referral tasks, overridden by ``[referral]``.

    Only tasks with an operating point in the card are assessed; an override
    moves such a task's threshold and cannot make another task assessed.
    """
    thresholds = {t: float(model.thresholds[t]) for t in card.tasks if t in model.thresholds}
    for task, value in settings.referral.thresholds.items():
        if task in thresholds:
            thresholds[task] = float(value)
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
        self._held: set[int] = set()
        self._held_lock = threading.Lock()

    def held(self) -> list[int]:
        """The jobs of the batch in progress (their leases need renewing)."""
        with self._held_lock:
            return sorted(self._held)

    def run_once(self) -> int:
        """Screen one batch; returns how many jobs were finished."""
        predictor = self.model.get(timeout=0)
        if predictor is None:
            return 0
        claimed = self._claim()
        if not claimed:
            return 0
        ids = {job.job_id for job in claimed}
        with self._held_lock:
            self._held |= ids
        try:
            return self._screen(predictor, claimed)
        finally:
            with self._held_lock:
                self._held -= ids

    def _screen(self, predictor: Any, claimed: list[ClaimedJob]) -> int:
        from hyperct_core.errors import PreprocessError
        from hyperct_core.preprocess import images_from_volume, preprocess_bytes
        from hyperct_core.volume import read_series

        config = predictor.card.preprocess_config()
        budget = self.settings.pipeline.max_series_bytes  # estimated from headers, pre-decoding
        images, ready = [], []
        started = time.monotonic()
        for job in claimed:
            try:
                volume, job.headers = read_series(
                    job.paths,
                    config.orientation,
                    spacing_tolerance=self.settings.completeness.spacing_tolerance,
                    max_bytes=budget,
                    extra_bytes=preprocess_bytes(config),
                )
                if self._enhanced(job, volume):
                    continue
                job.key_image = self._key_image(job, volume)
                images.append(images_from_volume(volume, config))
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
            job.referral = decide(findings)
            done += self._complete(job, findings, identity)
        log.info(
            "batch screened",
            jobs=len(ready),
            read_seconds=round(read_s, 2),
            inference_seconds=round(infer_s, 2),
        )
        return done

    def _key_image(self, job: ClaimedJob, volume: Any) -> KeyImage | None:
        """The slice through the heart the summary page shows (none: the page says so)."""
        if not self.settings.reports.summary_image:
            return None
        try:
            return key_image_from_volume(volume.array, volume.spacing)
        except Exception as exc:  # a missing picture must not stop the findings
            log.warning("no key image for the summary", job=job.job_id, error=type(exc).__name__)
            return None

    def _enhanced(self, job: ClaimedJob, volume: Any) -> bool:
        """The image check: measure the blood pool; skip the job when it is enhanced."""
        eligibility = self.settings.eligibility
        if not eligibility.blood_pool_check:
            return False
        from hyperct_core.bloodpool import measure_blood_pool

        try:
            pool = measure_blood_pool(volume)
        except Exception as exc:  # a measurement fault must not stop screening: tags decide
            log.warning("blood pool not measured", job=job.job_id, error=type(exc).__name__)
            job.image_check = f"not measured ({type(exc).__name__}); the tags decide"
            return False
        threshold = eligibility.blood_pool_contrast_hu
        if pool.hu is None:
            job.image_check = f"not measured: {pool.reason}; the tags decide"
            return False
        job.blood_pool_hu = pool.hu
        if pool.hu < threshold:
            job.image_check = f"blood pool {pool.hu:.0f} HU, below {threshold:g} HU: not enhanced"
            return False
        job.image_check = f"blood pool {pool.hu:.0f} HU, at or above {threshold:g} HU: enhanced"
        reason = f"{CONTRAST_BY_IMAGE}: blood pool {pool.hu:.0f} HU (threshold {threshold:g} HU)"
        if job.tags is not None and job.tags.verdict == "non_contrast":
            reason += f"; the tags said non-contrast ({job.tags.detail}): the image wins"
            log.warning(
                "tags say non-contrast, the image says contrast",
                job=job.job_id,
                blood_pool_hu=pool.hu,
                threshold_hu=threshold,
            )
        self._skip(job, reason)
        return True

    def _skip(self, job: ClaimedJob, reason: str) -> None:
        """Record the job as skipped and let the study's other series be chosen instead."""
        with self.sessions.begin() as session:
            skipped = skip_job(
                session,
                job.job_id,
                self.worker,
                reason,
                blood_pool_hu=job.blood_pool_hu,
                image_check=job.image_check,
            )
            if not skipped:
                session.rollback()
                log.warning("image check dropped: claim taken back", job=job.job_id)
                return
            reopened = 0
            if job.study_id is not None:
                siblings = select(Series.id).where(
                    Series.study_id == job.study_id, Series.id != job.series_id
                )
                reopened = session.execute(
                    update(Job)
                    .where(
                        Job.series_id.in_(siblings),
                        Job.state == JobState.SKIPPED,
                        Job.reason.like(f"{_NOT_CHOSEN}%"),
                    )
                    .values(
                        state=JobState.RECEIVING,
                        reason="another series of the study was enhanced: deciding again",
                        updated_at=utcnow(),
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]
        log.info("series skipped", job=job.job_id, reason=reason, siblings_reopened=reopened)

    def _claim(self) -> list[ClaimedJob]:
        with self.sessions.begin() as session:
            # A job whose every worker died on it goes dead instead of round for ever.
            taken = requeue_stale_jobs(
                session,
                self.settings.pipeline.lease_seconds,
                max_attempts=self.settings.pipeline.max_attempts,
            )
            if taken:
                log.warning("jobs taken over: their worker stopped renewing its lease", jobs=taken)
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
                        study_id=series.study_id,
                        origin=job.origin,
                        tags=contrast_by_tags(
                            facts_from_db(session, job.series_id), self.settings.eligibility
                        ),
                    )
                )
        return claimed

    def _complete(self, job: ClaimedJob, findings: Findings, model: ModelIdentity) -> int:
        revision = job.revision + 1
        job.revision = revision
        started = time.monotonic()
        decision = job.referral or decide(findings)
        link = self._episode(job, decision) if decision.fired else None
        if link is not None and link.repeat:
            decision = decision.as_repeat(link.referred_on, self.settings.referral.repeat_mode)
        # The reports quote the decision with its place in the patient's episode.
        job.referral = decision
        try:
            written = self.write_reports(job, findings, model)
        except Exception as exc:
            self._fail(job, f"report building failed: {type(exc).__name__}: {exc}", retry=True)
            return 0
        fired = list(decision.fired)
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
                for dest in report_destinations(self.settings, job.origin):
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
            omitted = self._audit_omissions(session, job)
            finished = finish_job(
                session,
                job.job_id,
                self.worker,
                model_version=model.version,
                revision=revision,
                echo_referral=bool(fired),
                referral_tasks=fired,
                referral_rule=decision.rule_record(),
                screened_at=utcnow(),
                blood_pool_hu=job.blood_pool_hu,
                image_check=job.image_check,
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
            referral=link.referral_id if link else None,
            referral_repeat=link.repeat if link else None,
            reports=len(written),
            report_seconds=round(time.monotonic() - started, 3),
        )
        if omitted:
            # Attribute names only: the values are patient data.
            log.warning(
                "reports leave out invalid source attributes", job=job.job_id, omitted=omitted
            )
        return 1

    def _episode(self, job: ClaimedJob, decision: ReferralDecision) -> ReferralLink:
        """The patient's referral this fired screening belongs to (raised now if none).

        Committed before the reports are built, so they can say "previously
        recommended"; a re-screening of the job finds it linked and keeps it.
        """
        with self.sessions.begin() as session:
            return link_referral(
                session,
                job.job_id,
                list(decision.fired),
                repeat_days=self.settings.referral.repeat_days,
            )

    @staticmethod
    def _audit_omissions(session: Session, job: ClaimedJob) -> str | None:
        """An audit row naming what the reports could not carry from the source (no values)."""
        carried = job.carried
        if carried is None or not carried.omitted:
            return None
        study = carried.dataset.get("StudyInstanceUID")
        audit(
            session,
            "report_content",
            "attributes_omitted",
            study_instance_uid=str(study) if study else None,
            series_instance_uid=job.series_uid,
            detail=carried.audit_detail(),
        )
        return ",".join(o.attribute for o in carried.omitted)

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
