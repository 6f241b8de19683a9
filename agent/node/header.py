"""What the node reads from a received instance's header (never its pixels).

Only identifiers of the study hierarchy and the geometry needed later to
judge series completeness are read; patient attributes are left alone.

The pixels are never decoded, but their encoding is checked where it is
cheap: an instance whose Pixel Data cannot hold the image its header
describes, or whose elements run past the end of the data, can never be
screened and is refused while the sender can still be told (PS3.4 B.2.3).
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

# PS3.5 9.1: components of digits separated by '.', no leading zeros, <= 64 chars.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class UnreadableHeader(ValueError):
    """The dataset cannot be decoded or lacks what every stored instance needs."""


class BeyondLimits(UnreadableHeader):
    """The dataset decodes, but its image or inflated size is beyond the configured limits."""


@dataclass(frozen=True)
class ReceiveLimits:
    """What one received instance may hold, checked from its header before anything else.

    ``max_dataset_bytes`` bounds a Deflated Explicit VR Little Endian dataset
    once inflated (PS3.5 A.5), as the transport bounds every dataset on the wire.
    """

    max_dataset_bytes: int = 1 << 30
    max_frame_pixels: int = 4096 * 4096
    max_frames: int = 4096


DEFAULT_LIMITS = ReceiveLimits()


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
    """An IS or US value; None when absent or outside IS's range (PS3.5 6.2: 32-bit signed)."""
    value = ds.get(keyword)
    try:
        number = None if value in (None, "") else int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and -(2**31) <= number < 2**31 else None


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
        floats = tuple(float(v) for v in value)
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


_HEADER_TAGS: list[BaseTag | int] = [
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
        # Image Pixel Module (PS3.3 C.7.6.3): what the Pixel Data must hold.
        "SamplesPerPixel",
        "Rows",
        "Columns",
        "BitsAllocated",
    )
]


def _before_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >= 0x7FE00010


def read_header(
    dataset: bytes, transfer_syntax: UID, limits: ReceiveLimits = DEFAULT_LIMITS
) -> InstanceHeader:
    """Decode the header of a dataset as received in a C-STORE (no file meta).

    Raises :class:`InvalidIdentifier` for a UID that is not one,
    :class:`BeyondLimits` for an image or inflated size beyond ``limits``, and
    :class:`UnreadableHeader` for anything that cannot be decoded, including
    Pixel Data that does not match the Image Pixel Module and elements whose
    length runs past the end of the data.
    """
    try:
        fp: BinaryIO
        reaches: Callable[[int], bool]
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            # Inflated as it is read, never whole: a deflate bomb (1000:1) would
            # otherwise turn a capped dataset into gigabytes.
            inflating = _InflatingReader(dataset, limits.max_dataset_bytes)
            fp, reaches = inflating, inflating.reaches  # type: ignore[assignment]
        else:
            fp, size = BytesIO(dataset), len(dataset)
            reaches = size.__ge__
        little, implicit = transfer_syntax.is_little_endian, transfer_syntax.is_implicit_VR
        ds = read_dataset(
            fp, implicit, little, stop_when=_before_pixels, specific_tags=_HEADER_TAGS
        )
        header = _from_dataset(ds)
        _check_pixel_data(fp, reaches, ds, transfer_syntax, limits)
    except (UnreadableHeader, InvalidIdentifier):
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise UnreadableHeader(f"dataset cannot be decoded ({type(exc).__name__})") from None
    return header


_PIXEL_DATA = 0x7FE00010
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_LENGTH_VRS = frozenset({b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN", b"SQ", b"UT"})


def _raw_int(ds: Dataset, tag: int, endian: str) -> int | None:
    """A US or IS value straight from its raw bytes: pydicom's conversion costs more than
    the rest of the pixel check, once per instance."""
    element = ds.get_item(tag)
    if element is None:
        return None
    value = element.value
    if not isinstance(value, bytes):  # already converted
        return _int(ds, element.keyword) if value not in (None, "") else None
    if len(value) == 2 and element.VR in (None, "US"):  # implicit VR: US by dictionary
        return int(struct.unpack(endian + "H", value)[0])
    try:
        number = int(value.strip(b" \x00"))
    except ValueError:
        return None
    return number if -(2**31) <= number < 2**31 else None


def _image_pixel(ds: Dataset, limits: ReceiveLimits, endian: str) -> tuple[int, int, int, int, int]:
    """Rows, Columns, Samples per Pixel, Bits Allocated and frames, checked against ``limits``."""
    rows, columns = _raw_int(ds, 0x00280010, endian), _raw_int(ds, 0x00280011, endian)
    bits = _raw_int(ds, 0x00280100, endian)
    if not rows or not columns or not bits or rows < 0 or columns < 0:
        raise UnreadableHeader("Pixel Data without valid Rows, Columns and Bits Allocated")
    samples = _raw_int(ds, 0x00280002, endian) or 1
    frames = _raw_int(ds, 0x00280008, endian) if 0x00280008 in ds else 1
    if frames is None or frames < 1 or samples < 1 or not (bits == 1 or bits % 8 == 0):
        raise UnreadableHeader("invalid Number of Frames, Samples per Pixel or Bits Allocated")
    if rows * columns > limits.max_frame_pixels:
        raise BeyondLimits(f"{rows} x {columns} pixels per frame exceed the limit")
    if frames > limits.max_frames:
        raise BeyondLimits(f"{frames} frames exceed the limit")
    return rows, columns, samples, bits, frames


def _check_pixel_data(
    fp: BinaryIO,
    reaches: Callable[[int], bool],
    ds: Dataset,
    transfer_syntax: UID,
    limits: ReceiveLimits,
) -> None:
    """Check Pixel Data, and everything after it, against the data's end; no pixel is decoded.

    ``fp`` stands where the header reading stopped, at the first element from
    (7FE0,0010) on. Native Pixel Data must be exactly Rows x Columns x Samples
    per Pixel x Bits Allocated / 8 x frames bytes, plus one padding byte when
    that is odd (PS3.5 8.1.1, 7.1.1). Encapsulated Pixel Data must be a Basic
    Offset Table item, one or more fragment items and a Sequence Delimiter,
    each within the data (PS3.5 A.4).
    """
    start = fp.tell()
    if not reaches(start):
        raise UnreadableHeader("an element's length runs beyond the end of the data")
    head = fp.read(8)
    if len(head) < 8:
        if head:
            raise UnreadableHeader("the data ends inside an element header")
        return  # no Pixel Data: nothing more to check
    endian = "<" if transfer_syntax.is_little_endian else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | element) != _PIXEL_DATA:
        fp.seek(start)
        _check_rest(fp, reaches, transfer_syntax)
        return
    if transfer_syntax.is_implicit_VR:
        (length,) = struct.unpack(endian + "I", head[4:])
    elif head[4:6] in _LONG_LENGTH_VRS:
        extra = fp.read(4)
        if len(extra) < 4:
            raise UnreadableHeader("the data ends inside the Pixel Data element header")
        (length,) = struct.unpack(endian + "I", extra)
    else:
        (length,) = struct.unpack(endian + "H", head[6:])
    rows, columns, samples, bits, frames = _image_pixel(ds, limits, endian)
    if transfer_syntax.is_encapsulated:
        if length != _UNDEFINED:
            raise UnreadableHeader("encapsulated Pixel Data without undefined length")
        _check_fragments(fp, reaches, frames)
    else:
        expected = -(-rows * columns * samples * frames * bits // 8)
        if length not in (expected, expected + (expected & 1)):
            # Short enough for the Error Comment the sender sees (64 characters).
            raise UnreadableHeader(f"Pixel Data holds {length} bytes, the image needs {expected}")
        end = fp.tell() + length
        if not reaches(end):
            raise UnreadableHeader("Pixel Data's length runs beyond the end of the data")
        fp.seek(end)
    _check_rest(fp, reaches, transfer_syntax)


def _check_fragments(fp: BinaryIO, reaches: Callable[[int], bool], frames: int) -> None:
    """Walk the items of encapsulated Pixel Data (PS3.5 A.4) without reading fragments."""
    item = struct.Struct("<HHI")  # encapsulated transfer syntaxes are all little endian
    items = 0  # the first is the Basic Offset Table, empty or one offset per frame
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise UnreadableHeader("encapsulated Pixel Data lacks its Sequence Delimiter")
        group, element, length = item.unpack(head)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED or length & 1:
            raise UnreadableHeader("encapsulated Pixel Data holds an invalid item")
        if items == 0 and length not in (0, 4 * frames):
            raise UnreadableHeader("the Basic Offset Table does not hold one offset per frame")
        end = fp.tell() + length
        if not reaches(end):
            raise UnreadableHeader("a Pixel Data fragment runs beyond the end of the data")
        fp.seek(end)
        items += 1
    if items < 2:
        raise UnreadableHeader("encapsulated Pixel Data holds no fragment")


def _check_rest(fp: BinaryIO, reaches: Callable[[int], bool], transfer_syntax: UID) -> None:
    """Elements after Pixel Data (padding, signatures) must end within the data too."""
    start = fp.tell()
    if not reaches(start + 1):
        return  # the usual case: Pixel Data is the last element
    read_dataset(
        fp,
        transfer_syntax.is_implicit_VR,
        transfer_syntax.is_little_endian,
        specific_tags=[Tag("SpecificCharacterSet")],  # every value skipped, none read
    )
    if not reaches(fp.tell()):
        raise UnreadableHeader("an element's length runs beyond the end of the data")


class _InflatingReader:
    """A read-only file over a raw deflate stream (PS3.5 A.5), inflated as it is read.

    Bytes are produced in chunks as reads and forward seeks need them, and
    dropped once read, but for a short history that pydicom's rewinds need.
    More than ``cap`` bytes in all raises :class:`BeyondLimits`.
    """

    _IN_CHUNK = 256 << 10
    _OUT_CHUNK = 1 << 20
    _HISTORY = 64 << 10

    def __init__(self, data: bytes, cap: int) -> None:
        self._data = memoryview(data)
        self._fed = 0
        self._inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        self._cap = cap
        self._buffer = bytearray()  # inflated bytes from stream offset self._base on
        self._base = 0
        self._pos = 0
        self._ended = False

    def _produced(self) -> int:
        return self._base + len(self._buffer)

    def _fill(self, upto: int) -> None:
        """Inflate until stream offset ``upto`` is produced or the stream ends."""
        while self._produced() < upto and not self._ended:
            keep_from = max(self._pos - self._HISTORY, self._base)
            if keep_from > self._base:  # drop what no read can come back to
                del self._buffer[: keep_from - self._base]
                self._base = keep_from
            source: bytes | memoryview = self._inflater.unconsumed_tail
            if not source:
                if self._fed >= len(self._data):
                    self._ended = True  # the stream is truncated: the data ends here
                    break
                source = self._data[self._fed : self._fed + self._IN_CHUNK]
                self._fed += len(source)
            out = self._inflater.decompress(source, self._OUT_CHUNK)
            self._buffer += out
            if self._produced() > self._cap:
                raise BeyondLimits("the dataset inflates beyond the maximum dataset size")
            if self._inflater.eof:
                self._ended = True

    def reaches(self, offset: int) -> bool:
        """Whether the inflated data is at least ``offset`` bytes long."""
        self._fill(offset)
        return self._produced() >= offset

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            self._fill(self._cap + 1)
            size = self._produced() - self._pos
        self._fill(self._pos + size)
        if self._pos < self._base:
            raise UnreadableHeader("the dataset cannot be decoded (read too far back)")
        start = self._pos - self._base
        chunk = bytes(self._buffer[start : start + size])
        self._pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            self._fill(self._cap + 1)
            offset += self._produced()
        if offset < self._base:
            raise UnreadableHeader("the dataset cannot be decoded (seek too far back)")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos


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
