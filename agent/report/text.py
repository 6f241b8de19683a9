"""The human-readable report: TID 2000 Basic Diagnostic Imaging Report in a Comprehensive SR.

Content tree (PS3.16 TID 2000, every container SEPARATE so that section
headings and item names show in a viewer)::

    Diagnostic Imaging Report (LOINC 18748-4, CID 7000)
      language (TID 1204), the agent as device observer (TID 1001/1004)
      Impressions          Impression: echocardiography recommended or not, for which
                           findings, each with probability and threshold
      Findings             Finding: one item per task, present first, then absent,
                           then not assessed
      Recommendations      Recommendation: transthoracic echocardiography or none
      Current Procedure    Procedure Description: one statement of method, model
        Descriptions       version and limits

Section headings are CID 7001 concepts, items TID 2002 TEXT items named from
CID 7002 (:mod:`agent.report.codes` says why these codes). The text comes from
the Jinja2 template ``templates/report.txt.j2``: one block per section, one
paragraph per content item.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from functools import cache
from typing import Any

import highdicom as hd
import jinja2
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from agent.report import codes as rc
from agent.report.inputs import Findings, ModelIdentity
from agent.report.referral import ReferralDecision, decision_for, readable_date
from agent.report.sr import (
    DEMO_MARK,
    NOT_VERIFIED,
    device_observer,
    document_attributes,
    prepare_source,
    readable_probability,
    separate_containers,
    set_device_uid,
)
from agent.report.uids import ReportUIDs
from agent.resources import templates_dir
from hyperct_core.tasks import task_by_name

TEMPLATE_NAME = "report.txt.j2"

#: Template block -> (section heading, item concept), in the order a reader meets them.
SECTIONS: dict[str, tuple[Code, Code]] = {
    "impression": (rc.IMPRESSIONS, rc.IMPRESSION),
    "findings": (rc.FINDINGS, rc.FINDING),
    "recommendations": (rc.RECOMMENDATIONS, rc.RECOMMENDATION),
    "method": (rc.CURRENT_PROCEDURE_DESCRIPTIONS, rc.PROCEDURE_DESCRIPTION),
}


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain text, not HTML
        keep_trailing_newline=False,
    )


def _row(findings: Findings, task: str) -> dict[str, Any]:
    return {
        "task": task,
        "display": task_by_name(task).display_name,
        "probability": readable_probability(findings.probability(task)),
        "threshold": (
            readable_probability(findings.thresholds[task]) if findings.is_assessed(task) else None
        ),
        "status": findings.status(task),
    }


def _context(
    findings: Findings, model: ModelIdentity, decision: ReferralDecision | None
) -> dict[str, Any]:
    rows = [_row(findings, t) for t in findings.task_names]
    decided = decision_for(findings, decision)
    return {
        "present": [r for r in rows if r["status"] == "present"],
        "absent": [r for r in rows if r["status"] == "absent"],
        "not_assessed": [r for r in rows if r["status"] == "not assessed"],
        "triggering": [_row(findings, t) for t in decided.fired],
        "referral": [_row(findings, t) for t in decided.assessed],
        "referral_unassessed": [task_by_name(t).display_name for t in decided.unassessed],
        "repeat_line": decided.repeat_line(),
        "suppressed": decided.suppressed,
        "repeat_date": readable_date(decided.repeat_of) if decided.repeat else None,
        "model_name": model.name,
        "model_version": model.version,
        "is_demo": model.is_demo,
        "demo_mark": DEMO_MARK,
        "not_verified": NOT_VERIFIED,
    }


def report_items(
    findings: Findings, model: ModelIdentity, decision: ReferralDecision | None = None
) -> dict[str, list[str]]:
    """The TEXT items of each section, keyed by template block (:data:`SECTIONS`).

    ``decision`` is the referral decided at screening (decided here if None).
    """
    template = _environment().get_template(TEMPLATE_NAME)
    context = template.new_context(_context(findings, model, decision))
    items = {}
    for name in SECTIONS:
        text = "".join(template.blocks[name](context))
        paragraphs = (" ".join(p.split()) for p in text.split("\n\n"))
        items[name] = [p for p in paragraphs if p]
    return items


def render_sections(
    findings: Findings, model: ModelIdentity, decision: ReferralDecision | None = None
) -> dict[str, str]:
    """Each section as plain text, one item per line (for logs, e-mail, summaries)."""
    items = report_items(findings, model, decision)
    return {name: "\n".join(lines) + "\n" for name, lines in items.items()}


def text_report(
    source: Sequence[Dataset],
    findings: Findings,
    model: ModelIdentity,
    *,
    uids: ReportUIDs,
    series_number: int,
    instance_number: int = 2,
    created: datetime.datetime | None = None,
    decision: ReferralDecision | None = None,
) -> hd.sr.ComprehensiveSR:
    """The readable SR of one screened series, in the same series as its TID 1500 report."""
    root = hd.sr.ContainerContentItem(
        name=rc.REPORT_TITLE, is_content_continuous=False, template_id="2000"
    )
    # Language and ObservationContext are highdicom Templates: lists of content items.
    items: list[hd.sr.ContentItem] = [
        *hd.sr.LanguageOfContentItemAndDescendants(hd.sr.templates.DEFAULT_LANGUAGE),
        *device_observer(model),
    ]
    for name, lines in report_items(findings, model, decision).items():
        heading, concept = SECTIONS[name]
        section = hd.sr.ContainerContentItem(
            name=heading, is_content_continuous=False, relationship_type="CONTAINS"
        )
        section.ContentSequence = hd.sr.ContentSequence(
            [hd.sr.TextContentItem(concept, line, relationship_type="CONTAINS") for line in lines]
        )
        items.append(section)
    root.ContentSequence = hd.sr.ContentSequence(items)
    separate_containers(root)
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
