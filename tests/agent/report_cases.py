"""What the report tests share: a model identity, findings and a writer of report files."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from agent.report import (
    Findings,
    ModelIdentity,
    build_reports,
    write_reports,
)
from hyperct_core.tasks import TASK_NAMES

# Distinct per-task thresholds, so a test cannot pass by assuming one threshold for all.
CARD_THRESHOLDS = {name: round(0.30 + 0.02 * i, 2) for i, name in enumerate(TASK_NAMES)}
WEIGHTS = "3f" * 32
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
STANDARD_SCHEMES = {"DCM", "SCT", "LN", "UCUM", "RFC5646"}


def make_model(
    *,
    is_demo: bool = True,
    version: str = "1.2.0",
    weights: str = WEIGHTS,
    thresholds: dict[str, float] | None = None,
):
    return ModelIdentity(
        name="hyperct-test",
        version=version,
        weights_sha256=weights,
        is_demo=is_demo,
        thresholds=CARD_THRESHOLDS if thresholds is None else thresholds,
    )


# A card with operating points for all but these tasks (two of them referral tasks).
UNASSESSED = ("pulmonary_hypertension", "ventricular_enlargement", "lung_nodule")
PARTIAL_THRESHOLDS = {k: v for k, v in CARD_THRESHOLDS.items() if k not in UNASSESSED}


def probabilities(low: float = 0.05, **high: float) -> list[float]:
    values = {name: low for name in TASK_NAMES}
    values.update(high)
    return [values[name] for name in TASK_NAMES]


def build_and_write(
    source: Sequence[Dataset],
    findings: Findings,
    model: ModelIdentity,
    folder: Path,
    **kwargs,
) -> list[Path]:
    reports = build_reports(source, findings, model, series_number=9901, **kwargs)
    return write_reports(reports, folder)


def text_sections(ds: Dataset) -> list[tuple[str, list[tuple[str, str]]]]:
    """(heading, [(item concept, text), ...]) of each section of the readable SR, in order."""
    return [
        (
            item.ConceptNameCodeSequence[0].CodeMeaning,
            [(t.ConceptNameCodeSequence[0].CodeMeaning, t.TextValue) for t in item.ContentSequence],
        )
        for item in ds.ContentSequence
        if item.ValueType == "CONTAINER"
    ]
