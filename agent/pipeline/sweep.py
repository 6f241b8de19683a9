"""The sweep: decide what each arrived series is (waiting, partial, skipped, queued).

For each job still ``receiving``: completeness first (idle timer plus
geometry), then eligibility, then, among the eligible complete series of the
same study, the one to screen. Every decision keeps its reasons in the job
row, so ``hyperct-agent explain`` can show them. Each job is decided in its
own short transaction with its row locked (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so two agent processes never decide the same series. Choosing
among a study's series locks the study row first, so two processes deciding
two series of one study take turns and both see the other's choice.

Instances that arrive after a decision: a series that was not screened
(incomplete or skipped) is decided again, since the new slices may complete
it; a screened one follows ``[completeness] late_instances``: ``record``
keeps them and notes it on the job, ``rescreen`` sends the series back
through the sweep, and a new screening gets a new report revision.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session, sessionmaker

from agent.config import Settings
from agent.intake.stored import facts_from_db, study_facts_from_db
from agent.logs import get_logger
from agent.series.decision import (
    CHOSEN_STATES,
    YIELDING_STATES,
    Verdict,
    judge_series,
    place_in_study,
)
from agent.series.facts import SeriesFacts
from storage.models import BackfillSeries, BackfillState, Job, JobState, Series, Study
from storage.types import utcnow

log = get_logger("agent.sweep")

# States whose series have been chosen for screening in their study; of those,
# the ones not screened yet give way to a better series.
CHOSEN = tuple(JobState(s) for s in CHOSEN_STATES)
YIELDING = tuple(JobState(s) for s in YIELDING_STATES)
_DECIDED = (JobState.DONE, JobState.INCOMPLETE, JobState.SKIPPED)


def _retrieve_unfinished() -> ColumnElement[bool]:
    """The job's series is being retrieved from an archive, or waits to be again.

    Decided before its retrieve ends, a partial series would be screened
    incomplete; it waits until every instance is in (or the retrieve is dead).
    """
    return exists().where(
        BackfillSeries.series_instance_uid == Series.series_instance_uid,
        Series.id == Job.series_id,
        BackfillSeries.state.in_((BackfillState.RETRIEVING, BackfillState.FAILED)),
    )


class Sweeper:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def run_once(self, now: datetime | None = None) -> int:
        """Decide every receiving series that can be decided now; returns how many were queued."""
        now = now or utcnow()
        self._late_instances(now)
        with self.sessions() as session:
            job_ids = session.scalars(
                select(Job.id)
                .where(Job.state == JobState.RECEIVING, ~_retrieve_unfinished())
                .order_by(Job.id)
            ).all()
        queued = 0
        for job_id in job_ids:
            with self.sessions.begin() as session:
                queued += self._decide(session, job_id, now)
        return queued

    def _decide(self, session: Session, job_id: int, now: datetime) -> int:
        job = session.scalars(
            select(Job).where(Job.id == job_id).with_for_update(skip_locked=True)
        ).one_or_none()
        if job is None or job.state != JobState.RECEIVING:
            return 0  # another process has it, or decided it meanwhile
        facts = facts_from_db(session, job.series_id, self.settings.storage.root)
        verdict = judge_series(facts, self.settings.completeness, self.settings.eligibility, now)
        if verdict.state == "receiving":
            job.reason = "; ".join(verdict.reasons) or None
            return 0
        if verdict.state == "incomplete":
            self._set(job, JobState.INCOMPLETE, verdict.reasons, facts, now)
            return 0
        if verdict.state == "skipped":
            self._set(job, JobState.SKIPPED, verdict.reasons, facts, now)
            return 0
        return self._select(session, job, facts, verdict, now)

    def _select(
        self, session: Session, job: Job, facts: SeriesFacts, verdict: Verdict, now: datetime
    ) -> int:
        """Screen one series per study: this one, or one already chosen."""
        # Held to the commit: another process choosing in this study waits here.
        # NO KEY UPDATE: the node's inserts of new series (a key share) never wait on it.
        session.execute(
            select(Study.id)
            .where(Study.study_instance_uid == facts.study_instance_uid)
            .with_for_update(key_share=True)
        )
        siblings = {
            f.series_instance_uid: f
            for f in study_facts_from_db(
                session, facts.study_instance_uid, self.settings.storage.root
            )
            if f.series_instance_uid != facts.series_instance_uid
        }
        rows = session.execute(
            select(Series.series_instance_uid, Job)
            .join(Job, Job.series_id == Series.id)
            .where(Series.series_instance_uid.in_(siblings), Job.state.in_(CHOSEN))
            .with_for_update(of=Job)  # a screen worker's claim of a sibling is seen, not undone
        ).all()
        chosen_jobs = {uid: sibling for uid, sibling in rows}
        placement = place_in_study(
            verdict,
            facts,
            {uid: siblings[uid] for uid in chosen_jobs},
            yielding=[uid for uid, j in chosen_jobs.items() if j.state in YIELDING],
        )
        for uid, reasons in placement.displaced.items():
            self._set(chosen_jobs[uid], JobState.SKIPPED, reasons, siblings[uid], now)
        state = JobState.QUEUED if placement.queued else JobState.SKIPPED
        self._set(job, state, placement.reasons, facts, now)
        return int(placement.queued)

    def _set(
        self, job: Job, state: JobState, reasons: list[str], facts: SeriesFacts, now: datetime
    ) -> None:
        job.updated_at = now  # the decision time that late instances are compared with
        job.state = state
        job.reason = "; ".join(reasons)
        job.next_attempt_at = None
        log.info(
            "series decided", job=job.id, state=str(state), reason=job.reason, series=facts.label()
        )

    def _late_instances(self, now: datetime) -> None:
        """Series that received instances after their decision.

        A series not screened (incomplete, or skipped) is decided again: the new
        slices may complete it. A screened one follows ``late_instances``.
        """
        policy = self.settings.completeness.late_instances
        with self.sessions.begin() as session:
            late = (
                session.execute(
                    select(Job)
                    .join(Series, Job.series_id == Series.id)
                    .where(Job.state.in_(_DECIDED), Series.last_received_at > Job.updated_at)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for job in late:
                if job.state in (JobState.INCOMPLETE, JobState.SKIPPED) or policy == "rescreen":
                    job.state = JobState.RECEIVING
                    job.reason = "new instances after the decision: deciding again"
                else:
                    note = "late instances received after screening (kept, not screened)"
                    if note not in (job.reason or ""):
                        job.reason = f"{job.reason}; {note}" if job.reason else note
                job.updated_at = now
                log.info("late instances", job=job.id, state=str(job.state), policy=policy)
