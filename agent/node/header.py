"""What the node reads from a received instance's header (never its pixels).

Only identifiers of the study hierarchy and the geometry needed later to
judge series completeness are read; patient attributes are left alone.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

# PS3.5 9.1: components of digits separated by '.', no leading zeros, <= 64 chars.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


# Attributes before Pixel Data of any real instance fit well within this.
_MAX_INFLATED_HEADER = 16 << 20


class UnreadableHeader(ValueError):
    """The dataset cannot be decoded or lacks what every stored instance needs."""


class InvalidIdentifier(ValueError):
    """A UID that is not a valid DICOM UID, or that disagrees with the command set."""


def is_valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and _UID_RE.match(uid) is not None


@dataclass(frozen=True)
class InstanceHeader:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    study_date: str | None
    instance_number: int | None
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    study_description: str | None = None
    image_type: str | None = None
    protocol_name: str | None = None
    contrast_agent: str | None = None
    number_of_frames: int | None = None
    requested_procedure: str | None = None

    @property
    def slice_position(self) -> float | None:
        """Position along the slice normal (row x column direction cosines)."""
        if self.image_position is None or self.image_orientation is None:
            return None
        # Plain arithmetic: numpy's cross product costs ~50 us a call, once per instance.
        r1, r2, r3, c1, c2, c3 = self.image_orientation
        x, y, z = self.image_position
        return (r2 * c3 - r3 * c2) * x + (r3 * c1 - r1 * c3) * y + (r1 * c2 - r2 * c1) * z


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _multi_text(ds: Dataset, keyword: str) -> str | None:
    """A multi-valued string as its values joined by backslash, the DICOM separator."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = [value] if isinstance(value, str) else list(value)
    return "\\".join(str(v).strip() for v in values) or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _floats(ds: Dataset | None, keyword: str, n: int) -> tuple[float, ...] | None:
    if ds is None:
        return None
    value = ds.get(keyword)
    if (
        value is not None
        and not isinstance(value, (list, tuple))
        and not hasattr(value, "__iter__")
    ):
        value = [value]
    try:
        floats = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return floats if len(floats) == n and all(map(math.isfinite, floats)) else None


def _first_item(ds: Dataset, *path: str) -> Dataset | None:
    """Follow single-item sequences, e.g. a functional group's macro."""
    node: Dataset | None = ds
    for keyword in path:
        seq = node.get(keyword) if node is not None else None
        if not seq:
            return None
        node = seq[0]
    return node


_HEADER_TAGS = [
    Tag(keyword)
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyDate",
        "Modality",
        "SeriesDescription",
        "BodyPartExamined",
        "SliceThickness",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "InstanceNumber",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "StudyDescription",
        "ImageType",
        "ProtocolName",
        "ContrastBolusAgent",
        "NumberOfFrames",
        "RequestAttributesSequence",
        "RequestedProcedureDescription",
    )
]


def _before_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >= 0x7FE00010


def read_header(dataset: bytes, transfer_syntax: UID) -> InstanceHeader:
    """Decode the header of a dataset as received in a C-STORE (no file meta)."""
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            # Only the header is read: inflating all of a deflate bomb (1000:1)
            # would turn a capped dataset into gigabytes.
            inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
            dataset = inflater.decompress(dataset, _MAX_INFLATED_HEADER)
        ds = read_dataset(
            BytesIO(dataset),
            transfer_syntax.is_implicit_VR,
            transfer_syntax.is_little_endian,
            stop_when=_before_pixels,
            specific_tags=_HEADER_TAGS,
        )
        header = _from_dataset(ds)
    except (UnreadableHeader, InvalidIdentifier):
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise UnreadableHeader(f"dataset cannot be decoded ({type(exc).__name__})") from None
    return header


def _from_dataset(ds: Dataset) -> InstanceHeader:
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = _text(ds, keyword)
        if value is None:
            raise UnreadableHeader(f"{keyword} is missing")
        if not is_valid_uid(value):
            raise InvalidIdentifier(f"{keyword} is not a valid UID")
        uids[keyword] = value

    position = _floats(ds, "ImagePositionPatient", 3)
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    spacing = _floats(ds, "PixelSpacing", 2)
    thickness = _floats(ds, "SliceThickness", 1) if "SliceThickness" in ds else None
    if "SharedFunctionalGroupsSequence" in ds:  # Enhanced CT: geometry in functional groups
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        frame = _first_item(ds, "PerFrameFunctionalGroupsSequence")
        for group in (frame, shared):
            orientation = orientation or _floats(
                _first_item(group, "PlaneOrientationSequence") if group else None,
                "ImageOrientationPatient",
                6,
            )
            position = position or _floats(
                _first_item(group, "PlanePositionSequence") if group else None,
                "ImagePositionPatient",
                3,
            )
            measures = _first_item(group, "PixelMeasuresSequence") if group else None
            spacing = spacing or _floats(measures, "PixelSpacing", 2)
            if thickness is None and measures is not None and "SliceThickness" in measures:
                thickness = _floats(measures, "SliceThickness", 1)

    return InstanceHeader(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        study_date=_text(ds, "StudyDate"),
        instance_number=_int(ds, "InstanceNumber"),
        image_position=position,  # type: ignore[arg-type]
        image_orientation=orientation,
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=thickness[0] if thickness else None,
        study_description=_text(ds, "StudyDescription"),
        image_type=_multi_text(ds, "ImageType"),
        protocol_name=_text(ds, "ProtocolName"),
        contrast_agent=_text(ds, "ContrastBolusAgent"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        requested_procedure=_requested_procedure(ds),
    )


def _requested_procedure(ds: Dataset) -> str | None:
    """Requested Procedure Description (0032,1060): top level (PS3.3 C.4.11) or
    the first Request Attributes Sequence item (C.7.3.1.1)."""
    try:
        return _text(ds, "RequestedProcedureDescription") or _text(
            _first_item(ds, "RequestAttributesSequence") or Dataset(),
            "RequestedProcedureDescription",
        )
    except Exception:  # a malformed optional sequence must not refuse the instance
        return None


#: Identifies files this agent wrote (PS3.10 7.1, Implementation Class UID; a UUID-derived UID).
IMPLEMENTATION_CLASS_UID = "2.25.142209658613364530262331245328458710021"
IMPLEMENTATION_VERSION_NAME = "HYPERCT_AGENT"


def _element(elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def part10_prefix(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1).

    Encoded directly (always Explicit VR Little Endian): on the receive path
    this is called once per instance and pydicom's writer costs more than the
    rest of the header handling.
    """
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
            _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body
