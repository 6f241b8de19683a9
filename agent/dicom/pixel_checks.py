"""Pixel Data checked against the Image Pixel Module and the data's end; no pixel is decoded.

An instance whose Pixel Data cannot hold the image its header describes, or
whose elements run past the end of the data, can never be screened: it is
refused while the sender can still be told (PS3.4 B.2.3).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from agent.dicom.errors import BeyondLimits, UnreadableHeader
from agent.dicom.limits import ReceiveLimits
from agent.dicom.values import integer

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
        return integer(ds, element.keyword) if value not in (None, "") else None
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


def check_pixel_data(
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
