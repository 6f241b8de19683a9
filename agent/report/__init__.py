"""Reports sent back to PACS for one screened CT series.

Two DICOM SR documents in one new series (``../shared/spec/sr-output.md``):

1. a TID 1500 Comprehensive 3D SR with the 25 probabilities, Present/Absent at
   each threshold (Undetermined for a task the model card gives no operating
   point) and, when the echo rule fires, the referral
   (:func:`agent.report.sr.measurement_report`);
2. a readable TID 2000 report: Impressions first, then one Finding per task,
   Recommendations and the method, rendered from ``templates/report.txt.j2``
   (:func:`agent.report.text.text_report`).

They share one series because they are one result: both are keyed on the same
(source series, model, revision), are sent, resent and superseded together,
and a viewer lists them side by side. UIDs are deterministic
(:class:`agent.report.uids.ReportUIDs`).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from agent.report.inputs import DEFAULT_REFERRAL_TASKS, Findings, ModelIdentity, ReportInputError
from agent.report.referral import RULE_TEXT, ReferralDecision, decide, decision_for, referral
from agent.report.sr import measurement_report
from agent.report.text import render_sections, report_items, text_report
from agent.report.uids import ReportUIDs, derive_uid

__all__ = [
    "DEFAULT_REFERRAL_TASKS",
    "RULE_TEXT",
    "Findings",
    "ModelIdentity",
    "ReferralDecision",
    "ReportInputError",
    "ReportUIDs",
    "build_reports",
    "decide",
    "derive_uid",
    "referral",
    "render_sections",
    "report_items",
    "write_reports",
]


def build_reports(
    source_datasets: Sequence[Dataset],
    findings: Findings,
    model: ModelIdentity,
    *,
    series_number: int,
    revision: int = 1,
    text_report: bool = True,
    created: datetime.datetime | None = None,
    decision: ReferralDecision | None = None,
) -> list[Dataset]:
    """The SR documents of one screened series: TID 1500 first, then the readable report.

    ``source_datasets`` are the screened series' CT datasets; headers suffice
    (``dcmread(..., stop_before_pixels=True)``). Every one is cited as evidence.
    ``revision`` counts re-results of the same series and model (from 1); the
    same (series, model, revision) always gives the same UIDs. ``decision`` is
    the referral decided at screening; both documents quote it (decided here if None).
    """
    if not source_datasets:
        raise ReportInputError("report: no source images")
    if not 1 <= series_number <= 2**31 - 1:
        raise ReportInputError("report: series number must be in 1..2147483647")
    if revision < 1:
        raise ReportInputError("report: revision starts at 1")
    uids = ReportUIDs.derive(str(source_datasets[0].SeriesInstanceUID), model.device_uid, revision)
    created = created or datetime.datetime.now()
    decision = decision_for(findings, decision)
    reports: list[Dataset] = [
        measurement_report(
            source_datasets,
            findings,
            model,
            uids=uids,
            series_number=series_number,
            instance_number=1,
            created=created,
            decision=decision,
        )
    ]
    if text_report:
        reports.append(
            _text_report(
                source_datasets,
                findings,
                model,
                uids=uids,
                series_number=series_number,
                instance_number=2,
                created=created,
                decision=decision,
            )
        )
    return reports


_text_report = text_report


def write_reports(reports: Sequence[Dataset], folder: Path | str) -> list[Path]:
    """Write each report as a Part 10 file ``<SOP Instance UID>.dcm`` under ``folder``.

    Written to a temporary name and renamed, so a reader never sees half a file;
    writing the same report again replaces it with identical content.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in reports:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        tmp = path.with_suffix(".dcm.tmp")
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(path)
        paths.append(path)
    return paths
