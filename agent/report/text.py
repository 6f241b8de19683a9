"""The human-readable report: a Comprehensive SR with TEXT items (PS3.3 A.35.3).

Its two TEXT items, "Findings" (DCM 121070) and "Recommendations" (DCM 121074),
hold plain text rendered from the Jinja2 template ``templates/report.txt.j2``
(one template block per item). Viewers that render TID 1500 only as a tree,
or not at all, still show these as text. The document title is LOINC
24627-2 "CT Chest Report" (CID 7000); the observer is the same device as in
the TID 1500 report.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from functools import cache
from typing import Any

import highdicom as hd
import jinja2
from pydicom.dataset import Dataset

from agent.report import codes as rc
from agent.report.inputs import Findings, ModelIdentity
from agent.report.referral import RULE_TEXT, referral
from agent.report.sr import (
    DEMO_MARK,
    NOT_VERIFIED,
    device_observer,
    document_attributes,
    prepare_source,
    set_device_uid,
)
from agent.report.uids import ReportUIDs
from agent.resources import templates_dir
from hyperct_core.tasks import task_by_name

TEMPLATE_NAME = "report.txt.j2"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain text, not HTML
        keep_trailing_newline=False,
    )


def _context(findings: Findings, model: ModelIdentity) -> dict[str, Any]:
    rows = [
        {
            "task": t,
            "display": task_by_name(t).display_name,
            "probability": findings.probability(t),
            "threshold": findings.thresholds[t],
            "present": findings.is_present(t),
        }
        for t in findings.task_names
    ]
    return {
        "rows": rows,
        "triggering": [task_by_name(t).display_name for t in referral(findings)],
        "referral": [
            {"display": task_by_name(t).display_name, "threshold": findings.thresholds[t]}
            for t in findings.task_names
            if t in set(findings.referral_tasks)
        ],
        "model_name": model.name,
        "model_version": model.version,
        "is_demo": model.is_demo,
        "demo_mark": DEMO_MARK,
        "not_verified": NOT_VERIFIED,
        "rule_text": RULE_TEXT,
    }


def render_sections(findings: Findings, model: ModelIdentity) -> dict[str, str]:
    """The text of each template block: ``{"findings": ..., "recommendations": ...}``."""
    template = _environment().get_template(TEMPLATE_NAME)
    context = template.new_context(_context(findings, model))
    return {
        name: "".join(block(context)).strip() + "\n"
        for name, block in template.blocks.items()
        if name in ("findings", "recommendations")
    }


def text_report(
    source: Sequence[Dataset],
    findings: Findings,
    model: ModelIdentity,
    *,
    uids: ReportUIDs,
    series_number: int,
    instance_number: int = 2,
    created: datetime.datetime | None = None,
) -> hd.sr.ComprehensiveSR:
    """The text SR of one screened series, in the same series as its TID 1500 report."""
    sections = render_sections(findings, model)
    root = hd.sr.ContainerContentItem(name=rc.CT_CHEST_REPORT)
    # ObservationContext is a highdicom Template: a list of content items.
    items: list[hd.sr.ContentItem] = [*device_observer(model)]
    items.append(
        hd.sr.TextContentItem(rc.FINDINGS, sections["findings"], relationship_type="CONTAINS")
    )
    items.append(
        hd.sr.TextContentItem(
            rc.RECOMMENDATIONS, sections["recommendations"], relationship_type="CONTAINS"
        )
    )
    root.ContentSequence = hd.sr.ContentSequence(items)
    document = hd.sr.ComprehensiveSR(
        evidence=prepare_source(source),
        content=root,
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.text_report_uid,
        instance_number=instance_number,
        **document_attributes(model, created),
    )
    set_device_uid(document, model)
    return document
