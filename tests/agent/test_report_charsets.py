"""Reports for sources in every character set a PACS sends, and with invalid values.

The patient and study attributes of pydicom's character-set test files
(pydicom-data) are put, byte for byte, on a synthetic CT series; the series is
written and read back as the pipeline reads it (headers only), and its
reports are built by :func:`agent.report.build_reports`. Each report must be
built, carry the source's decoded names in UTF-8, read back through pydicom
and pass dciodvfy. Invalid values are left out of the report and named (never
quoted) in the omission list the pipeline audits.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.data import get_charset_files
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.pipeline.screen import ClaimedJob, Screener
from agent.report import Findings, build_reports, write_reports
from agent.report.source import OUTPUT_CHARSET, PATIENT_STUDY_KEYWORDS, carried_source
from storage.models import AuditEvent
from tests.agent.report_cases import make_model, probabilities
from tests.agent.report_tools import dciodvfy
from tests.support.ct_series import CANARY_ID, CANARY_NAME, ct_series, write_series

MODEL = make_model()
FINDINGS = Findings.from_model(probabilities(0.7), MODEL)

# pydicom-data's files whose top level carries a Patient's Name.
CHARSET_FILES = [
    "chrArab.dcm",  # ISO_IR 127
    "chrFren.dcm",  # ISO_IR 100
    "chrFrenMulti.dcm",  # ISO_IR 100, multi-valued PN and LO
    "chrGerm.dcm",  # ISO_IR 100
    "chrGreek.dcm",  # ISO_IR 126, one-component name
    "chrH31.dcm",  # \ISO 2022 IR 87
    "chrH32.dcm",  # ISO 2022 IR 13\ISO 2022 IR 87
    "chrHbrw.dcm",  # ISO_IR 138
    "chrI2.dcm",  # \ISO 2022 IR 149
    "chrJapMulti.dcm",  # \ISO 2022 IR 87, many patient and study attributes
    "chrJapMultiExplicitIR6.dcm",  # ISO 2022 IR 6\ISO 2022 IR 87
    "chrKoreanMulti.dcm",  # \ISO 2022 IR 149
    "chrRuss.dcm",  # ISO_IR 144
    "chrX1.dcm",  # ISO_IR 192
    "chrX2.dcm",  # GB18030
]


def charset_file(name: str) -> Path:
    [path] = get_charset_files(name)
    return Path(path)


def raw(keyword: str, vr: str, value: bytes) -> RawDataElement:
    """An element as it arrives: its bytes, undecoded (Explicit VR Little Endian)."""
    if len(value) % 2:
        value += b" "
    return RawDataElement(Tag(keyword), vr, len(value), value, 0, False, True)


def headers_of(slices: list[Dataset], folder: Path) -> list[Dataset]:
    """Write the series and read it back as the pipeline does (headers, undecoded).

    Each dataset and sequence item is marked as already in its character set, so
    that pydicom writes raw elements as they are instead of re-encoding them.
    """
    for ds in slices:
        keep_bytes(ds, None)
        ds["PixelData"].VR = "OW"  # no ambiguous-VR pass runs now
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in write_series(slices, folder)]


def keep_bytes(ds: Dataset, inherited: list[str] | None) -> None:
    with warnings.catch_warnings():  # an unknown term: pydicom warns, the bytes stay
        warnings.simplefilter("ignore")
        own = ds.get("SpecificCharacterSet")
        charset = convert_encodings(own) if own is not None or inherited is None else inherited
    ds.set_original_encoding(False, True, charset)
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)  # not ds[tag]: that would decode the raw element
        if elem is not None and elem.VR == "SQ":
            for item in elem.value:
                keep_bytes(item, charset)


def transplant(src: Path, folder: Path, n: int = 3) -> list[Dataset]:
    """A CT series carrying ``src``'s character set and patient/study attributes, as bytes."""
    source = pydicom.dcmread(src)
    slices = ct_series(n, rows=8, columns=8)
    for ds in slices:
        for keyword in ("SpecificCharacterSet", *PATIENT_STUDY_KEYWORDS):
            tag = Tag(keyword)
            if tag in source:
                ds[tag] = source.get_item(tag)  # not decoded: the PACS's own bytes
    return headers_of(slices, folder / "ct")


def as_text(value: Any) -> Any:
    """A decoded element value in comparable form (PN and multi-values as str)."""
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value]
    return "" if value is None else str(value)


def build(headers: Sequence[Dataset], folder: Path) -> list[Path]:
    reports = build_reports(headers, FINDINGS, MODEL, series_number=9901)
    return write_reports(reports, folder / "sr")


def reread(path: Path) -> Dataset:
    """The SR file read, written again and read again: it must survive a round trip."""
    first = pydicom.dcmread(path)
    buffer = io.BytesIO()
    first.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def assert_valid(paths: Sequence[Path]) -> None:
    for path in paths:
        verdict = dciodvfy(path)
        assert verdict.errors == [], (path.name, verdict.errors)


class Quiet:
    """Collects every warning and log record while reports are built."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.caught: list[warnings.WarningMessage] = []

    def __enter__(self) -> Quiet:
        self.caplog.set_level(logging.DEBUG)
        self.caplog.clear()
        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)

    def text(self) -> str:
        return "\n".join(
            [str(w.message) for w in self.caught] + [r.getMessage() for r in self.caplog.records]
        )

    def quotes(self, value: str) -> bool:
        """Whether a warning or log line quotes ``value`` (as pydicom and highdicom do)."""
        text = self.text()
        return any(f"{q}{value}{q}" in text for q in ("'", '"'))


# -- pydicom-data character-set files ------------------------------------------------------


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_reports_carry_names_from_every_charset_file(name, tmp_path, caplog):
    src = charset_file(name)
    expected = pydicom.dcmread(src)  # pydicom's decoding of the source, in its own charset
    headers = transplant(src, tmp_path)
    name_tag = Tag("PatientName")  # the fixture holds: the PACS's bytes, not pydicom's
    assert headers[0].get_item(name_tag).value == expected.get_item(name_tag).value
    assert carried_source(headers[0]).omitted == ()
    with Quiet(caplog) as quiet:
        paths = build(headers, tmp_path)
    assert len(paths) == 2
    name_text = str(expected.PatientName)
    if name_text:  # a name (or part of one) in a warning or a log line is a leak
        for group in name_text.split("="):
            assert not group or group not in quiet.text()
    assert_valid(paths)
    for path in paths:
        sr = reread(path)
        assert sr.SpecificCharacterSet == OUTPUT_CHARSET
        assert str(sr.PatientName) == name_text
        # Written as UTF-8, not re-encoded into the source's escape sequences.
        stored = pydicom.dcmread(path).get_item(Tag("PatientName")).value
        assert stored.rstrip(b" ") == name_text.encode("utf-8")
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword in expected and expected[keyword].VR != "SQ":
                assert as_text(sr[keyword].value) == as_text(expected[keyword].value), keyword


def test_escape_sequences_do_not_survive_into_the_report(tmp_path):
    """chrH31's name arrives in JIS escape sequences; the SR holds none."""
    paths = build(transplant(charset_file("chrH31.dcm"), tmp_path), tmp_path)
    data = paths[0].read_bytes()
    assert b"\x1b" not in data
    assert "山田^太郎".encode() in data


@pytest.mark.parametrize(
    ("charset", "value"),
    [
        ("ISO_IR 101", "Dvořák^Antonín"),
        ("ISO_IR 109", "Ħal^Ġużeppi"),
        ("ISO_IR 110", "Šķēle^Ģirts"),
        ("ISO_IR 148", "Öztürk^Ağrı"),
        ("ISO_IR 166", "สมชาย^ใจดี"),
        ("ISO_IR 13", "ﾔﾏﾀﾞ^ﾀﾛｳ"),
        ("ISO 2022 IR 100", "Buc^Jérôme"),
        ("\\ISO 2022 IR 159", "Yamada^Tarou=丂^乚"),
        ("ISO 2022 IR 6\\ISO 2022 IR 87\\ISO 2022 IR 159", "Yamada^Tarou=山田^太郎丂"),
        ("GBK", "Wang^XiaoDong=王^小東"),
    ],
)
def test_reports_for_charsets_without_a_test_file(charset, value, tmp_path):
    """Sources encoded by pydicom in the declared character set, then read as bytes."""
    terms = charset.split("\\") if "\\" in charset else charset
    headers = headers_of(
        ct_series(
            2, rows=8, columns=8, attrs={"SpecificCharacterSet": terms, "PatientName": value}
        ),
        tmp_path / "ct",
    )
    assert headers[0].get_item(Tag("PatientName")).value != value.encode("utf-8")
    assert str(pydicom.dcmread(headers[0].filename).PatientName) == value  # the fixture holds
    assert carried_source(headers[0]).omitted == ()
    paths = build(headers, tmp_path)
    assert_valid(paths)
    for path in paths:
        assert str(reread(path).PatientName) == value


def test_iso_2022_ir_58_names_are_decoded_without_their_escape_sequences(tmp_path):
    """PS3.5 K.2's example; pydicom 3.0 alone leaves ESC $ ) A in the decoded text."""
    name = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab="
    slices = ct_series(2, rows=8, columns=8)
    for ds in slices:
        ds[Tag("SpecificCharacterSet")] = raw("SpecificCharacterSet", "CS", b"\\ISO 2022 IR 58")
        ds[Tag("PatientName")] = raw("PatientName", "PN", name)
    headers = headers_of(slices, tmp_path / "ct")
    assert carried_source(headers[0]).omitted == ()
    paths = build(headers, tmp_path)
    assert_valid(paths)
    assert str(reread(paths[0]).PatientName) == "Zhang^XiaoDong=张^小东"


@pytest.mark.parametrize(
    ("charset", "name", "reason"),
    [
        # Korean bytes after "^" without their escape sequence: G1 is not designated there.
        (b"\\ISO 2022 IR 149", b"Hong^Gildong=\x1b$)C\xfb\xf3^\xd1\xce\xd4\xd7", "outside"),
        # GB2312 bytes with no escape sequence at all (what pydicom 3.0 itself writes).
        (b"\\ISO 2022 IR 58", b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab", "outside"),
        # Latin-1 bytes where no character set is declared.
        (None, b"Buc^J\xe9r\xf4me", "outside"),
        # Bytes that are not UTF-8 under ISO_IR 192.
        (b"ISO_IR 192", b"Buc^J\xe9r\xf4me", "decoded"),
    ],
)
def test_bytes_outside_the_declared_charset_are_omitted(charset, name, reason, tmp_path):
    slices = ct_series(2, rows=8, columns=8)
    for ds in slices:
        if charset is not None:
            ds[Tag("SpecificCharacterSet")] = raw("SpecificCharacterSet", "CS", charset)
        ds[Tag("PatientName")] = raw("PatientName", "PN", name)
    headers = headers_of(slices, tmp_path / "ct")
    carried = carried_source(headers[0])
    assert [o.attribute for o in carried.omitted] == ["PatientName"]
    assert reason in carried.omitted[0].reason
    paths = build(headers, tmp_path)
    assert_valid(paths)
    sr = reread(paths[0])
    assert sr.PatientName == "" and sr.PatientID == CANARY_ID


@pytest.mark.parametrize("term", [b"ISO_IR 999", b"ISO IR 100", b"UTF-8     "])
def test_unknown_charset_term_carries_ascii_and_omits_the_rest(term, tmp_path, caplog):
    """A term PS3.3 C.12.1.1.2 does not define: what its other bytes mean is unknown."""
    slices = ct_series(2, rows=8, columns=8, attrs={"StudyDescription": "THORAX"})
    for ds in slices:
        ds[Tag("SpecificCharacterSet")] = raw("SpecificCharacterSet", "CS", term)
        ds[Tag("PatientName")] = raw("PatientName", "PN", b"Buc^J\xe9r\xf4me")
        ds[Tag("ReferringPhysicianName")] = raw("ReferringPhysicianName", "PN", b"Who^Doctor")
    headers = headers_of(slices, tmp_path / "ct")
    carried = carried_source(headers[0])
    assert [o.attribute for o in carried.omitted] == ["PatientName"]
    assert "not defined by DICOM" in carried.omitted[0].reason
    assert carried.character_set == term.decode().strip()
    with Quiet(caplog) as quiet:
        paths = build(headers, tmp_path)
    assert "J\xe9r\xf4me" not in quiet.text() and "Jérôme" not in quiet.text()
    assert_valid(paths)
    sr = reread(paths[0])
    assert sr.SpecificCharacterSet == OUTPUT_CHARSET
    assert sr.PatientName == ""
    assert sr.ReferringPhysicianName == "Who^Doctor"
    assert sr.PatientID == CANARY_ID and sr.StudyDescription == "THORAX"


@pytest.mark.parametrize(
    ("top", "item_charset"),
    [
        # chrSQEncoding: UTF-8 outside, the item declares its own Japanese set.
        ("ISO_IR 192", True),
        # chrSQEncoding1: the item inherits the Japanese set of the dataset (PS3.5 7.5.3).
        ("ISO 2022 IR 13\\ISO 2022 IR 87", False),
    ],
)
def test_sequence_items_are_decoded_in_their_own_or_inherited_charset(top, item_charset, tmp_path):
    source_item = pydicom.dcmread(charset_file("chrSQEncoding.dcm")).RequestedProcedureCodeSequence[
        0
    ]
    japanese = source_item.get_item(Tag("PatientName")).value  # raw bytes, escape sequences
    expected = str(source_item.PatientName)
    slices = ct_series(2, rows=8, columns=8)
    for ds in slices:
        ds[Tag("SpecificCharacterSet")] = raw("SpecificCharacterSet", "CS", top.encode())
        item = Dataset()
        if item_charset:
            item[Tag("SpecificCharacterSet")] = source_item.get_item(Tag("SpecificCharacterSet"))
        item.PatientID = "OTHER1"
        item[Tag("IssuerOfPatientID")] = raw("IssuerOfPatientID", "LO", japanese)
        item.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [item]
    headers = headers_of(slices, tmp_path / "ct")
    assert carried_source(headers[0]).omitted == ()
    paths = build(headers, tmp_path)
    assert_valid(paths)
    [sr_item] = reread(paths[0]).OtherPatientIDsSequence
    assert sr_item.IssuerOfPatientID == expected
    assert sr_item.PatientID == "OTHER1"
    assert "SpecificCharacterSet" not in sr_item  # one character set for the whole report


# -- invalid values --------------------------------------------------------------------------

INVALID = [
    ("PatientBirthDate", "1950010X", "DA", True),
    ("StudyDate", "20241399", "DA", True),
    ("StudyTime", "25xx", "TM", True),
    ("StudyTime", "250000", "TM", True),
    ("PatientName", "A^B^C^D^E^F", "components", True),
    ("PatientName", "A=B=C=D", "groups", True),
    ("PatientName", "DOE^JOHN\x07", "control", True),
    ("ReferringPhysicianName", "WHO^DR\x1b", "outside", True),
    ("StudyDescription", "X" * 65, "longer", False),
    ("AccessionNumber", "ACC\\0001", "VM", True),
    ("StudyID", "S" * 17, "longer", True),
    ("PatientSex", "U", "one of", True),
    ("PatientAge", "45", "AS", False),
    ("PatientWeight", "heavy", "DS", False),
    ("PatientComments", "line\x00break", "control", False),
]


@pytest.mark.parametrize(("keyword", "value", "reason", "type2"), INVALID)
def test_invalid_value_is_omitted_and_named(keyword, value, reason, type2, tmp_path, caplog):
    slices = ct_series(2, rows=8, columns=8)
    for ds in slices:
        ds[Tag(keyword)] = raw(keyword, dictionary_VR(keyword), value.encode("ascii"))
    headers = headers_of(slices, tmp_path / "ct")
    carried = carried_source(headers[0])
    assert [o.attribute for o in carried.omitted] == [keyword]
    assert reason in carried.omitted[0].reason
    assert value not in json.dumps(carried.audit_detail())
    with Quiet(caplog) as quiet:
        paths = build(headers, tmp_path)
    assert not quiet.quotes(value)
    assert_valid(paths)
    for path in paths:
        sr = reread(path)
        if type2:
            assert sr[keyword].value in ("", None)
        else:
            assert keyword not in sr
        # Everything else still comes from the source.
        if keyword != "PatientName":
            assert sr.PatientName == CANARY_NAME
        assert sr.PatientID == CANARY_ID
        assert sr.StudyInstanceUID == headers[0].StudyInstanceUID


def test_invalid_item_attribute_is_omitted_with_its_path(tmp_path):
    item = Dataset()
    item[Tag("PatientID")] = raw("PatientID", "LO", b"P" * 65)
    item.IssuerOfPatientID = "HOSPITAL"
    item.TypeOfPatientID = "TEXT"
    headers = headers_of(
        ct_series(2, rows=8, columns=8, attrs={"OtherPatientIDsSequence": [item]}), tmp_path
    )
    carried = carried_source(headers[0])
    assert [o.attribute for o in carried.omitted] == ["OtherPatientIDsSequence[0].PatientID"]
    paths = build(headers, tmp_path)
    [sr_item] = reread(paths[0]).OtherPatientIDsSequence
    assert "PatientID" not in sr_item and sr_item.IssuerOfPatientID == "HOSPITAL"


def test_valid_sources_omit_nothing(tmp_path):
    headers = headers_of(ct_series(2, rows=8, columns=8), tmp_path)
    carried = carried_source(headers[0])
    assert carried.omitted == ()
    assert carried.dataset.PatientName == CANARY_NAME


def test_omissions_are_audited_by_name_only(session: Session, tmp_path):
    """The screener's audit row: attribute names and reasons, on SQLite and PostgreSQL."""
    slices = ct_series(2, rows=8, columns=8)
    for ds in slices:
        ds[Tag("PatientBirthDate")] = raw("PatientBirthDate", "DA", b"1950010X")
        ds[Tag("StudyTime")] = raw("StudyTime", "TM", b"25xx")
    headers = headers_of(slices, tmp_path)
    job = ClaimedJob(1, 1, str(headers[0].SeriesInstanceUID), 0, carried=carried_source(headers[0]))
    with session.begin():
        assert Screener._audit_omissions(session, job) == "PatientBirthDate,StudyTime"
    [row] = session.scalars(select(AuditEvent)).all()
    assert (row.event_type, row.outcome) == ("report_content", "attributes_omitted")
    assert row.series_instance_uid == headers[0].SeriesInstanceUID
    assert row.study_instance_uid == headers[0].StudyInstanceUID
    assert row.detail is not None
    assert [o["attribute"] for o in row.detail["omitted"]] == ["PatientBirthDate", "StudyTime"]
    stored = json.dumps(row.detail)
    assert "1950010X" not in stored and "25xx" not in stored and CANARY_NAME not in stored


def test_nothing_omitted_writes_no_audit_row(session: Session, tmp_path):
    headers = headers_of(ct_series(1, rows=8, columns=8), tmp_path)
    job = ClaimedJob(1, 1, "1.2.3", 0, carried=carried_source(headers[0]))
    with session.begin():
        assert Screener._audit_omissions(session, job) is None
    assert session.scalars(select(AuditEvent)).all() == []
