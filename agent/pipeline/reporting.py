"""From a screened series to report files in the store, ready for delivery."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.config import ReportSettings
from agent.pipeline.screen import ClaimedJob
from agent.report import Findings, ModelIdentity, build_reports
from agent.report.referral import decision_for
from agent.report.source import carried_source
from agent.report.summary import ENCAPSULATED_PDF_STORAGE, summary_object
from storage.files import InstanceStore, report_rel_path

#: The report kind stored per object, by SOP Class UID.
_KINDS = {
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",  # Comprehensive 3D SR (TID 1500)
    "1.2.840.10008.5.1.4.1.1.88.33": "text_sr",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.11": "text_sr",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": "text_sr",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.7": "summary",  # Secondary Capture Image (summary page)
    ENCAPSULATED_PDF_STORAGE: "summary",  # the same page as a PDF
}


class ReportFiles:
    """Builds a series' reports and writes them durably into the instance store."""

    def __init__(self, store: InstanceStore, settings: ReportSettings) -> None:
        self.store = store
        self.settings = settings

    def __call__(
        self, job: ClaimedJob, findings: Findings, model: ModelIdentity
    ) -> list[tuple[str, str, str, str]]:
        # Headers are enough: the reports cite the images, they do not copy pixels.
        # Screening hands over those it read for the volume; a job without them
        # (a caller that read no volume) has its headers read here.
        sources = job.headers or [dcmread(path, stop_before_pixels=True) for path in job.paths]
        decision = decision_for(findings, job.referral)
        # What the reports take from the first source; the screener audits omissions.
        job.carried = carried_source(sources[0]) if sources else None
        written = []
        reports = build_reports(
            sources,
            findings,
            model,
            series_number=self.settings.series_number,
            revision=job.revision,
            text_report=self.settings.text_report,
            decision=decision,
        )
        if self.settings.summary_image:
            reports.append(
                summary_object(
                    sources,
                    findings,
                    model,
                    job.key_image,
                    revision=job.revision,
                    series_number=self.settings.summary_series_number,
                    fmt=self.settings.summary_format,
                    decision=decision,
                )
            )
        for report in reports:
            rel_path = report_rel_path(job.series_uid, str(report.SOPInstanceUID))
            self.store.save(rel_path, _encode(report))
            kind = _KINDS.get(str(report.SOPClassUID), "sr")
            written.append(
                (kind, str(report.SOPInstanceUID), str(report.SeriesInstanceUID), rel_path)
            )
        return written


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
