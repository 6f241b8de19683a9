"""Recording received instances: study, series, instance, series bookkeeping, job.

The DICOM node calls :func:`record_instance` once per received instance, after
the file is durably written and before it answers C-STORE (PS3.4 B.2.3): the
caller commits, and only then reports success. The function only flushes.

Concurrency: several associations (and, on PostgreSQL, several agent
processes) record instances at once. Studies, series, instances and jobs are
created with ``INSERT ... ON CONFLICT DO NOTHING``, so two sessions creating the
same row never fail; the one that loses waits for the winner's commit and then
sees the row. The series row is locked (``SELECT ... FOR NO KEY UPDATE``) before its
bookkeeping is updated, and the instance count is incremented in SQL, so
concurrent instances of one series never lose an update. On SQLite the
engine's ``BEGIN IMMEDIATE`` serialises writers instead.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import JSON, Float, Table, bindparam, case, cast, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.errors import InvalidRecord, StorageError
from storage.models import (
    BACKFILL_PRIORITY,
    LIVE_PRIORITY,
    BackfillState,
    Base,
    JobOrigin,
    JobState,
)
from storage.types import UTCDateTime, utcnow

# Image Orientation (Patient) direction cosines that differ by less than this
# are the same orientation (PS3.3 C.7.6.2.1.1: values are unit vectors).
ORIENTATION_TOLERANCE = 1e-4

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

_studies: Table = Base.metadata.tables["studies"]
_series: Table = Base.metadata.tables["series"]
_instances: Table = Base.metadata.tables["instances"]
_jobs: Table = Base.metadata.tables["jobs"]
_backfill: Table = Base.metadata.tables["backfill_series"]


class IngestOutcome(StrEnum):
    STORED = "stored"  # a new instance row
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing changed
    CONFLICT_KEPT = "conflict_kept"  # same UID, other bytes: the first payload stays
    CONFLICT_REPLACED = "conflict_replaced"  # same UID, other bytes: the row now names the new file


@dataclass(frozen=True)
class InstanceRecord:
    """What the node knows about one received instance, ready to record.

    Plain data: the caller builds it from a header whose UIDs it has already
    checked (PS3.5 9.1), and storage keeps them as given. ``slice_position``
    is Image Position (Patient) projected on the slice normal (row x column
    direction cosines), computed by the caller. ``rel_path`` is relative to
    the storage root and derived by the agent. Descriptive strings longer
    than their column are cut to fit. What the columns and the file store
    cannot hold (non-finite numbers, a path outside the root, a naive time)
    raises InvalidRecord.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    study_date: str | None
    instance_number: int | None
    image_position: tuple[float, ...] | None
    image_orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slice_thickness: float | None
    slice_position: float | None
    rel_path: str
    size_bytes: int
    sha256: str
    calling_ae: str | None
    received_at: datetime
    study_description: str | None = None
    image_type: str | None = None
    protocol_name: str | None = None
    contrast_agent: str | None = None
    number_of_frames: int | None = None
    requested_procedure: str | None = None
    # Study level: keyed pseudonyms (64 hex digits) made by the caller; never
    # the identifiers themselves.
    patient_pseudonym: str | None = None
    accession_pseudonym: str | None = None
    # Series level (PS3.3 C.7.5.1, C.8.2.1): from the series' first instance.
    manufacturer: str | None = None
    kvp: float | None = None
    convolution_kernel: str | None = None

    def __post_init__(self) -> None:
        for name, n in (("image_position", 3), ("image_orientation", 6), ("pixel_spacing", 2)):
            value = getattr(self, name)
            if value is not None and (len(value) != n or not all(map(_finite, value))):
                raise InvalidRecord(f"{name} must be {n} finite numbers, got {value!r}")
        for name in ("patient_pseudonym", "accession_pseudonym"):
            value = getattr(self, name)
            if value is not None and not _SHA256_RE.match(value):
                raise InvalidRecord(f"{name} must be 64 lowercase hex digits")
        for name in ("slice_thickness", "slice_position", "kvp"):
            value = getattr(self, name)
            if value is not None and not _finite(value):
                raise InvalidRecord(f"{name} must be a finite number, got {value!r}")
        if not _SHA256_RE.match(self.sha256):
            raise InvalidRecord("sha256 must be 64 lowercase hex digits")
        if not self.rel_path or self.rel_path.startswith("/") or ".." in self.rel_path.split("/"):
            raise InvalidRecord(f"rel_path must be relative inside the root: {self.rel_path!r}")
        if self.size_bytes < 0:
            raise InvalidRecord("size_bytes must not be negative")
        if self.received_at.tzinfo is None:
            raise InvalidRecord("received_at must be timezone-aware")


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    instance_id: int
    series_id: int
    # The path the instance row names after this call. When it differs from
    # the record's rel_path (DUPLICATE under another name, CONFLICT_KEPT), the
    # newly written file is not referenced and the caller may delete it.
    stored_rel_path: str
    # CONFLICT_REPLACED only: the file the row named before; the caller
    # deletes it after the commit succeeds.
    replaced_rel_path: str | None = None


def record_instance(
    session: Session,
    rec: InstanceRecord,
    on_conflict: Literal["keep_first", "replace"] = "keep_first",
) -> IngestResult:
    """Record one received instance; flush, do not commit.

    A new SOP Instance UID is STORED and updates its series' bookkeeping
    (count, receive times, slice extent, geometry) and creates the series' job
    in state ``receiving`` if it has none. A job already past ``receiving`` is
    left as it is: what a late instance means is the pipeline's decision.
    A known SOP Instance UID with the same sha256 is a DUPLICATE (no change);
    with another sha256 it is a conflict, resolved by ``on_conflict`` and
    recorded as an ``instance_conflict`` audit event.
    """
    if on_conflict not in ("keep_first", "replace"):
        raise ValueError(f"on_conflict must be 'keep_first' or 'replace', not {on_conflict!r}")
    insert = _insert_for(session)
    lock = on_conflict == "replace"

    # Hot path, one statement: a new instance of a series already known. The
    # cached statements run on the session's connection: the ORM execution
    # layer adds nothing to Core statements but time.
    conn = session.connection()
    dialect = conn.dialect.name
    params = _instance_params(rec)
    row = conn.execute(_insert_instance_stmt(dialect), params).one_or_none()
    if row is None:
        existing = _existing_instance(session, rec, lock=lock)
        if existing is not None:
            return _known_instance(session, rec, on_conflict, existing)
        # The series is new to the database: create study, series and job first.
        _create_series(session, rec, insert)
        row = conn.execute(_insert_instance_stmt(dialect), params).one_or_none()
        if row is None:
            # Another session recorded this SOP instance between our look-up and
            # our insert (and has committed: ON CONFLICT waited for it).
            existing = _existing_instance(session, rec, lock=lock)
            if existing is None:
                raise StorageError(f"instance {rec.sop_instance_uid} vanished while recording it")
            return _known_instance(session, rec, on_conflict, existing)

    _update_series(conn, {**params, "series_id": row.series_id}, rec)
    return IngestResult(IngestOutcome.STORED, row.id, row.series_id, rec.rel_path)


# -- steps -------------------------------------------------------------------


def _existing_instance(session: Session, rec: InstanceRecord, *, lock: bool) -> Any:
    stmt = select(
        _instances.c.id, _instances.c.series_id, _instances.c.sha256, _instances.c.rel_path
    ).where(_instances.c.sop_instance_uid == rec.sop_instance_uid)
    if lock:
        stmt = stmt.with_for_update()
    return session.execute(stmt).one_or_none()


def _known_instance(
    session: Session, rec: InstanceRecord, on_conflict: str, existing: Any
) -> IngestResult:
    if existing.sha256 == rec.sha256:
        return IngestResult(
            IngestOutcome.DUPLICATE, existing.id, existing.series_id, existing.rel_path
        )

    detail = {
        "policy": on_conflict,
        "recorded_sha256": existing.sha256,
        "received_sha256": rec.sha256,
        "received_size_bytes": rec.size_bytes,
        "received_transfer_syntax_uid": rec.transfer_syntax_uid,
    }
    if on_conflict == "keep_first":
        outcome, stored, replaced = IngestOutcome.CONFLICT_KEPT, existing.rel_path, None
    else:
        session.execute(
            update(_instances)
            .where(_instances.c.id == existing.id)
            .values(
                rel_path=rec.rel_path,
                sha256=rec.sha256,
                size_bytes=rec.size_bytes,
                transfer_syntax_uid=rec.transfer_syntax_uid,
                received_at=rec.received_at,
                calling_ae=_fit(rec.calling_ae, 16),
            )
        )
        outcome, stored, replaced = (
            IngestOutcome.CONFLICT_REPLACED,
            rec.rel_path,
            existing.rel_path,
        )
    audit(
        session,
        "instance_conflict",
        outcome.value,
        source_ae=_fit(rec.calling_ae, 16),
        study_instance_uid=rec.study_instance_uid,
        series_instance_uid=rec.series_instance_uid,
        sop_instance_uid=rec.sop_instance_uid,
        detail=detail,
    )
    session.flush()
    return IngestResult(outcome, existing.id, existing.series_id, stored, replaced)


# The hot-path statements are built once per dialect and executed with
# parameters: constructing Core expressions per instance cost more than
# running them.

# None must bind as SQL NULL (for COALESCE), not as the JSON text 'null'.
_JSON_OR_NULL = JSON(none_as_null=True)

_INSTANCE_COLUMNS = (
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "instance_number",
    "number_of_frames",
    "image_position",
    "slice_position",
    "rel_path",
    "size_bytes",
    "sha256",
    "calling_ae",
    "received_at",
)


def _instance_params(rec: InstanceRecord) -> dict[str, Any]:
    return {
        "series_uid": rec.series_instance_uid,
        "sop_instance_uid": rec.sop_instance_uid,
        "sop_class_uid": rec.sop_class_uid,
        "transfer_syntax_uid": rec.transfer_syntax_uid,
        "instance_number": rec.instance_number,
        "number_of_frames": rec.number_of_frames,
        "image_position": _floats(rec.image_position),
        "slice_position": rec.slice_position,
        "rel_path": rec.rel_path,
        "size_bytes": rec.size_bytes,
        "sha256": rec.sha256,
        "calling_ae": _fit(rec.calling_ae, 16),
        "received_at": rec.received_at,
        "orientation": _floats(rec.image_orientation),
        "spacing": _floats(rec.pixel_spacing),
        "thickness": rec.slice_thickness,
    }


@functools.cache
def _insert_instance_stmt(dialect: str) -> Any:
    """INSERT the instance under its series, looked up by UID in the same statement.

    Inserts nothing, and returns no row, when the SOP Instance UID is already
    recorded or when the series is not in the database yet.
    """
    c = _instances.c
    source = select(
        _series.c.id,
        *(
            bindparam(name, type_=_JSON_OR_NULL if name == "image_position" else c[name].type)
            for name in _INSTANCE_COLUMNS
        ),
    ).where(_series.c.series_instance_uid == bindparam("series_uid"))
    return (
        _INSERTS[dialect](_instances)
        .from_select(["series_id", *_INSTANCE_COLUMNS], source)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(c.id, c.series_id)
    )


@functools.cache
def _update_series_stmt() -> Any:
    """Count one instance and fold its geometry into the series row (NULLs change nothing)."""
    s = _series.c
    t = bindparam("received_at", type_=UTCDateTime())
    # Explicit casts: PostgreSQL cannot infer a type for a parameter that may be NULL.
    p = cast(bindparam("slice_position", type_=Float()), Float())
    thickness = cast(bindparam("thickness", type_=Float()), Float())

    def widened(column: Any, outside: Any) -> Any:
        return case((p.is_(None), column), (column.is_(None), p), (outside, p), else_=column)

    return (
        update(_series)
        .where(s.id == bindparam("series_id"))
        .values(
            instance_count=s.instance_count + 1,
            first_received_at=case(
                (s.first_received_at.is_(None), t),
                (s.first_received_at > t, t),
                else_=s.first_received_at,
            ),
            last_received_at=case(
                (s.last_received_at.is_(None), t),
                (s.last_received_at < t, t),
                else_=s.last_received_at,
            ),
            min_slice_position=widened(s.min_slice_position, s.min_slice_position > p),
            max_slice_position=widened(s.max_slice_position, s.max_slice_position < p),
            image_orientation=func.coalesce(
                s.image_orientation, bindparam("orientation", type_=_JSON_OR_NULL)
            ),
            pixel_spacing=func.coalesce(s.pixel_spacing, bindparam("spacing", type_=_JSON_OR_NULL)),
            slice_thickness=func.coalesce(s.slice_thickness, thickness),
        )
        .returning(s.image_orientation, s.orientation_consistent)
    )


def _create_series(session: Session, rec: InstanceRecord, insert: Any) -> None:
    """Create the instance's study, series and the series' job unless they exist."""
    now = utcnow()
    session.execute(
        insert(_studies)
        .values(
            study_instance_uid=rec.study_instance_uid,
            study_date=_fit(rec.study_date, 16),
            study_description=_fit(rec.study_description, 64),
            patient_pseudonym=rec.patient_pseudonym,
            accession_pseudonym=rec.accession_pseudonym,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
    )
    _fill_pseudonyms(session, rec)
    study_id = (
        select(_studies.c.id)
        .where(_studies.c.study_instance_uid == rec.study_instance_uid)
        .scalar_subquery()
    )
    session.execute(
        insert(_series)
        .values(
            study_id=study_id,
            series_instance_uid=rec.series_instance_uid,
            modality=_fit(rec.modality, 16),
            series_number=rec.series_number,
            series_description=_fit(rec.series_description, 64),
            body_part_examined=_fit(rec.body_part_examined, 16),
            sop_class_uid=rec.sop_class_uid,
            image_type=_fit(rec.image_type, 128),
            protocol_name=_fit(rec.protocol_name, 64),
            contrast_agent=_fit(rec.contrast_agent, 64),
            requested_procedure=_fit(rec.requested_procedure, 64),
            manufacturer=_fit(rec.manufacturer, 64),
            kvp=rec.kvp,
            convolution_kernel=_fit(rec.convolution_kernel, 64),
        )
        .on_conflict_do_nothing(index_elements=["series_instance_uid"])
    )
    series_id = (
        select(_series.c.id)
        .where(_series.c.series_instance_uid == rec.series_instance_uid)
        .scalar_subquery()
    )
    # A series an archive retrieve is bringing in is backfill: it screens after live ones.
    retrieving = session.scalar(
        select(
            exists().where(
                _backfill.c.series_instance_uid == rec.series_instance_uid,
                _backfill.c.state == BackfillState.RETRIEVING,
            )
        )
    )
    origin, priority = (
        (JobOrigin.BACKFILL, BACKFILL_PRIORITY) if retrieving else (JobOrigin.LIVE, LIVE_PRIORITY)
    )
    session.execute(
        insert(_jobs)
        .values(series_id=series_id, state=JobState.RECEIVING, origin=origin, priority=priority)
        .on_conflict_do_nothing(index_elements=["series_id"])
    )


def _fill_pseudonyms(session: Session, rec: InstanceRecord) -> None:
    """Give a known study the pseudonyms it lacks: an earlier series came without them.

    Runs on the new-series path only (never per instance); a pseudonym already
    set is never changed.
    """
    if rec.patient_pseudonym is None and rec.accession_pseudonym is None:
        return
    s = _studies.c
    # One statement; it touches (and locks) the row only when a pseudonym is missing.
    session.execute(
        update(_studies)
        .where(
            s.study_instance_uid == rec.study_instance_uid,
            or_(s.patient_pseudonym.is_(None), s.accession_pseudonym.is_(None)),
        )
        .values(
            patient_pseudonym=func.coalesce(s.patient_pseudonym, rec.patient_pseudonym),
            accession_pseudonym=func.coalesce(s.accession_pseudonym, rec.accession_pseudonym),
        )
    )


def _update_series(conn: Connection, params: dict[str, Any], rec: InstanceRecord) -> None:
    """Count the new instance and fold its geometry into the series row.

    One UPDATE does the counting and keeps the first orientation, spacing and
    thickness; it locks the row (PostgreSQL) or runs under the write lock
    (SQLite), so concurrent instances never lose an update. The orientation
    it returns is the series' first one: a different one clears
    ``orientation_consistent`` in a second statement, which is rare.
    """
    first = conn.execute(_update_series_stmt(), params).one()
    if (
        rec.image_orientation is not None
        and first.orientation_consistent
        and first.image_orientation is not None
        and not same_orientation(first.image_orientation, rec.image_orientation)
    ):
        conn.execute(
            update(_series)
            .where(_series.c.id == params["series_id"])
            .values(orientation_consistent=False)
        )


# -- helpers -----------------------------------------------------------------


def same_orientation(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two Image Orientation (Patient) values agree within the tolerance."""
    return len(a) == len(b) and all(
        abs(float(x) - float(y)) <= ORIENTATION_TOLERANCE for x, y in zip(a, b, strict=True)
    )


_INSERTS: dict[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


def _insert_for(session: Session) -> Any:
    name = session.get_bind().dialect.name
    if name not in _INSERTS:
        raise StorageError(f"unsupported database dialect {name!r}")
    return _INSERTS[name]


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fit(value: str | None, n: int) -> str | None:
    return None if value is None else value[:n]


__all__ = [
    "IngestOutcome",
    "IngestResult",
    "InstanceRecord",
    "ORIENTATION_TOLERANCE",
    "record_instance",
    "same_orientation",
]
