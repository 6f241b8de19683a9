"""Read-only questions admins ask of the results database, by subject.

Shared by the ``results`` and ``studies`` commands and the web dashboard;
every function takes the caller's session (a read-only one where possible,
see :func:`storage.db.make_session_factory`) and returns plain dataclasses,
so nothing here holds a transaction open after it returns. Each subject has
its module: the results list and its CSV (:mod:`storage.result_list`), one
study's trail (:mod:`storage.trail`), and the node's worklist, failures,
throughput and metric counts (:mod:`storage.activity`); this module names
them all in one place.

Patient data is not in the database (see :mod:`storage.models`): nothing here
can return it. Whoever needs a name reads it from the stored DICOM file.
"""

from __future__ import annotations

from storage.activity import (
    Failures,
    MetricCounts,
    ThroughputBucket,
    WorklistRow,
    failures,
    metric_counts,
    recent_studies,
    skip_reason,
    throughput,
)
from storage.result_list import (
    CSV_COLUMNS,
    ResultFilter,
    ResultRow,
    list_results,
    read_csv,
    task_columns,
    to_record,
    write_csv,
)
from storage.trail import (
    AuditRow,
    AuditRun,
    ReportRow,
    SeriesTrail,
    StudyTrail,
    TaskResult,
    collapse_audit,
    study_trail,
)

__all__ = [
    "CSV_COLUMNS",
    "AuditRow",
    "AuditRun",
    "Failures",
    "MetricCounts",
    "ReportRow",
    "ResultFilter",
    "ResultRow",
    "SeriesTrail",
    "StudyTrail",
    "TaskResult",
    "ThroughputBucket",
    "WorklistRow",
    "collapse_audit",
    "failures",
    "list_results",
    "metric_counts",
    "read_csv",
    "recent_studies",
    "skip_reason",
    "study_trail",
    "task_columns",
    "throughput",
    "to_record",
    "write_csv",
]
