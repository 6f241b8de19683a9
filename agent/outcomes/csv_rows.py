"""Rows of an echo reporting system's CSV export, read into outcome records.

Columns (header names, any case, any order; others are ignored):

- ``patient_id`` and optional ``issuer`` (Issuer of Patient ID), and/or ``accession``:
  at least one identifier per row. Each is pseudonymised as soon as it is read
  (:mod:`agent.pseudonym`) and goes no further: never stored, logged or shown.
- ``exam_date``: YYYYMMDD or YYYY-MM-DD.
- ``sex`` (optional): F or M (female/male); used for the LVIDd limit only, never stored.
- measurements, each optional: ``lvef_percent``, ``lvidd_cm``, ``lavi_ml_m2``,
  ``tr_velocity_m_s``, ``pasp_mmhg``, ``e_a_ratio`` (numbers; a decimal comma is read
  too) and ``rv_function`` (normal, mildly/moderately/severely reduced).

A row that cannot be read is rejected with its row number (the header is row 1) and
the column at fault; the message never quotes a cell, since a shifted column could put
an identifier where a number was expected.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from agent.errors import AgentError
from agent.outcomes.labels import echo_labels
from agent.outcomes.measurements import NUMERIC_RANGES, RV_FUNCTION, rv_grade, sex_of
from agent.pseudonym import Pseudonymizer
from storage.outcomes import OutcomeRecord

PATIENT_ID = "patient_id"
ISSUER = "issuer"
ACCESSION = "accession"
EXAM_DATE = "exam_date"
SEX = "sex"
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)")
COLUMNS = (PATIENT_ID, ISSUER, ACCESSION, EXAM_DATE, SEX, *NUMERIC_RANGES, RV_FUNCTION)


class RowError(ValueError):
    """One row that cannot become an outcome; the message holds no cell value."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"row {row}: {reason}")
        self.row = row


@dataclass(frozen=True)
class CsvLayout:
    """Where the known columns are; ``ignored`` lists the header names not used."""

    index: dict[str, int]
    ignored: list[str]
    delimiter: str


def read_layout(header: list[str], delimiter: str) -> CsvLayout:
    index: dict[str, int] = {}
    ignored = []
    for i, raw in enumerate(header):
        name = raw.strip().lower()
        if name in COLUMNS and name not in index:
            index[name] = i
        else:
            ignored.append(raw.strip())
    if EXAM_DATE not in index:
        raise AgentError(f"the header has no {EXAM_DATE!r} column")
    if PATIENT_ID not in index and ACCESSION not in index:
        raise AgentError(f"the header has neither a {PATIENT_ID!r} nor an {ACCESSION!r} column")
    return CsvLayout(index, ignored, delimiter)


def open_rows(stream: IO[str]) -> tuple[CsvLayout, Iterator[tuple[int, list[str]]]]:
    """The layout from the header and (row number, cells) for each data row."""
    sample = stream.read(64 * 1024)
    stream.seek(0)
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(stream, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise AgentError("the file is empty (a header row is needed)") from None
    layout = read_layout(header, delimiter)

    def rows() -> Iterator[tuple[int, list[str]]]:
        for number, cells in enumerate(reader, start=2):
            if any(c.strip() for c in cells):
                yield number, cells

    return layout, rows()


def _exam_date(text: str) -> str | None:
    for form in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, form).strftime("%Y%m%d")
        except ValueError:
            continue
    return None


def _number(text: str, decimal_comma: bool) -> float:
    if decimal_comma:
        text = text.replace(",", ".")
    # ASCII only: float() would also take other scripts' digits, "nan" and "1_000".
    if not _DECIMAL.fullmatch(text):
        raise ValueError("not a number")
    return float(text)


def outcome_from_row(
    number: int, cells: list[str], layout: CsvLayout, pseudonyms: Pseudonymizer
) -> OutcomeRecord:
    """The outcome of one data row; :class:`RowError` if it cannot be read."""

    def cell(name: str) -> str:
        i = layout.index.get(name)
        return cells[i].strip() if i is not None and i < len(cells) else ""

    patient = pseudonyms.patient(cell(PATIENT_ID), cell(ISSUER) or None)
    accession = pseudonyms.accession(cell(ACCESSION))
    if patient is None and accession is None:
        raise RowError(number, f"no {PATIENT_ID} or {ACCESSION}")
    raw_date = cell(EXAM_DATE)
    if not raw_date:
        raise RowError(number, f"no {EXAM_DATE}")
    exam_date = _exam_date(raw_date)
    if exam_date is None:
        raise RowError(number, f"{EXAM_DATE} is not a date (YYYYMMDD or YYYY-MM-DD)")
    sex = None
    if cell(SEX):
        sex = sex_of(cell(SEX))
        if sex is None and cell(SEX).upper() not in ("O", "U", "OTHER", "UNKNOWN"):
            raise RowError(number, f"{SEX} is not F, M, O or U")
    measurements: dict[str, float | str] = {}
    decimal_comma = layout.delimiter != ","
    for name, (low, high) in NUMERIC_RANGES.items():
        text = cell(name)
        if not text:
            continue
        try:
            value = _number(text, decimal_comma)
        except ValueError:
            raise RowError(number, f"{name} is not a number") from None
        if not low <= value <= high:
            raise RowError(number, f"{name} is outside {low:g}-{high:g} (unit as in the header?)")
        measurements[name] = value
    if cell(RV_FUNCTION):
        grade = rv_grade(cell(RV_FUNCTION))
        if grade is None:
            raise RowError(
                number,
                f"{RV_FUNCTION} is not normal, mildly, moderately or severely reduced",
            )
        measurements[RV_FUNCTION] = grade
    # One echo per patient (or accession) and day: a re-export of it is the same record.
    key = f"csv:{patient or accession}:{exam_date}"
    return OutcomeRecord(
        source="csv",
        source_key=key,
        patient_pseudonym=patient,
        accession_pseudonym=accession,
        exam_date=exam_date,
        measurements=measurements,
        labels=echo_labels(measurements, sex),
    )
