"""The one UID rule (PS3.5 9.1): the node, the header, the record and ``explain --dir`` share it."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from agent.dicom.errors import InvalidIdentifier
from agent.dicom.header import InstanceHeader, read_header
from agent.dicom.uid import MAX_UID_LENGTH, checked_uid, is_valid_uid
from agent.intake.record import instance_record
from storage.ingest import InstanceRecord
from tests.agent.test_node import encoded_body
from tests.support.ct_series import ct_series

# The rule storage applied before it had none of its own: any visible ASCII, 1 to 64.
LOOSE = re.compile(r"^[\x21-\x7e]{1,64}$")

VALID = [
    "0",
    "1.2",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.0.3",  # a component that is zero is not a leading zero
    "2.25.142209658613364530262331245328458710021",
    "1." + "2" * (MAX_UID_LENGTH - 2),  # exactly 64 characters
]
INVALID = [
    "1.2.03",  # a leading zero in a component
    "01.2",
    "1.2.3.",  # an empty last component
    ".1.2",  # an empty first component
    "1..2",
    "1.2.a",  # not a digit
    "1.2.3-4",
    "1.2 3",  # a space inside
    " 1.2.3",
    "1.2.3\n",  # a trailing newline
    "1." + "2" * (MAX_UID_LENGTH - 1),  # 65 characters
    "",
    "\u0661.2",  # a digit, but not an ASCII one
]


@pytest.mark.parametrize("uid", VALID)
def test_valid_uids_pass(uid: str) -> None:
    assert is_valid_uid(uid)
    assert checked_uid(uid, "SOPInstanceUID") == uid


@pytest.mark.parametrize("uid", INVALID)
def test_invalid_uids_are_refused(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidIdentifier, match="^SeriesInstanceUID is not a valid UID$"):
        checked_uid(uid, "SeriesInstanceUID")


def test_the_table_holds_uids_the_loose_rule_let_through() -> None:
    # The cases that matter most: storage alone would have recorded them.
    let_through = [uid for uid in INVALID if LOOSE.match(uid)]
    assert {"1.2.03", "1.2.3.", ".1.2", "1.2.a", "1.2.3-4", "1..2"} <= set(let_through)


def test_a_non_string_is_not_a_uid() -> None:
    assert not is_valid_uid(12)  # type: ignore[arg-type]
    assert not is_valid_uid(None)  # type: ignore[arg-type]


def _header(**overrides: object) -> InstanceHeader:
    fields: dict[str, object] = {
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "sop_instance_uid": "1.2.3.4.5",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "modality": "CT",
        "series_number": 1,
        "series_description": None,
        "body_part_examined": None,
        "study_date": None,
        "instance_number": 1,
        "image_position": (0.0, 0.0, -5.0),
        "image_orientation": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        "pixel_spacing": (0.7, 0.7),
        "slice_thickness": 1.0,
    }
    fields.update(overrides)
    return InstanceHeader(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "keyword"),
    [
        ("study_instance_uid", "StudyInstanceUID"),
        ("series_instance_uid", "SeriesInstanceUID"),
        ("sop_instance_uid", "SOPInstanceUID"),
        ("sop_class_uid", "SOPClassUID"),
    ],
)
@pytest.mark.parametrize("uid", ["1.2.03", "1.2.3.", ".1.2", "1.2.a"])
def test_no_header_holds_an_invalid_uid(field: str, keyword: str, uid: str) -> None:
    with pytest.raises(InvalidIdentifier, match=f"^{keyword} is not a valid UID$"):
        _header(**{field: uid})
    with pytest.raises(InvalidIdentifier):
        dataclasses.replace(_header(), **{field: uid})  # type: ignore[arg-type]


def _record(
    header: InstanceHeader, transfer_syntax_uid: str = ExplicitVRLittleEndian
) -> InstanceRecord:
    return instance_record(
        header,
        transfer_syntax_uid=transfer_syntax_uid,
        rel_path="instances/aa/bb/x.dcm",
        size_bytes=10,
        sha256="0" * 64,
        calling_ae="PACS",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_a_record_is_the_header_as_read() -> None:
    header = _header(study_description="CHEST", number_of_frames=1)
    rec = _record(header)
    for field in dataclasses.fields(header):
        if field.name != "identity":  # the record keeps pseudonyms, never identifiers
            assert getattr(rec, field.name) == getattr(header, field.name)
    assert not hasattr(rec, "identity")
    assert rec.slice_position == header.slice_position == -5.0
    assert rec.transfer_syntax_uid == ExplicitVRLittleEndian


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.01", "1.2.840.10008.1.2.", "x"])
def test_a_record_refuses_an_invalid_transfer_syntax(uid: str) -> None:
    with pytest.raises(InvalidIdentifier, match="Transfer Syntax UID"):
        _record(_header(), uid)


def _encoded(**attrs: str) -> bytes:
    ds = ct_series(1, rows=8, columns=8)[0]
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return encoded_body(ds)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("uid", ["1.2.03", "1.2.3.", ".1.2", "1.2.a", "1.2 3"])
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"])
def test_read_header_refuses_what_the_loose_rule_let_through(keyword: str, uid: str) -> None:
    with pytest.raises(InvalidIdentifier, match=f"^{keyword} is not a valid UID$"):
        read_header(_encoded(**{keyword: uid}), ExplicitVRLittleEndian)
    assert read_header(_encoded(), ExplicitVRLittleEndian).modality == "CT"
