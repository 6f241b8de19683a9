"""DICOM files (PS3.10): the File Meta Information the node writes, and headers read from files.

A file's dataset is read by :func:`~agent.dicom.header.read_header` exactly
as a received C-STORE dataset is, so a folder is judged as the node would
judge its instances on receiving them.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from agent.dicom.errors import InvalidIdentifier, UnreadableHeader
from agent.dicom.header import InstanceHeader, read_header

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


def read_part10_header(path: Path) -> InstanceHeader:
    """The node's header reading applied to a file (PS3.10 7.1).

    The dataset after the File Meta Information goes through
    :func:`~agent.dicom.header.read_header` exactly as a received C-STORE
    dataset does, in the file's transfer syntax. Some writers leave out the
    preamble and ``DICM``: a file that starts with the meta group, or with a
    bare dataset (read in Implicit, then Explicit VR Little Endian), is read
    too. Raises InvalidDicomError when the file is none of these.
    """
    with path.open("rb") as fp:
        head = fp.read(132)
        if head[128:132] == b"DICM":
            fp.seek(132)
        elif head[:2] == b"\x02\x00":  # the meta group without the preamble
            fp.seek(0)
        else:
            fp.seek(0)
            return _bare_dataset_header(fp.read())
        # The meta group is Explicit VR Little Endian (PS3.10 7.1) and ends
        # where group 0002 does; its Group Length is not trusted for that.
        try:
            meta = read_dataset(
                fp, is_implicit_VR=False, is_little_endian=True, stop_when=_past_meta
            )
            ts = meta.get("TransferSyntaxUID")
        except Exception:  # pydicom raises many types on malformed input
            raise UnreadableHeader("file meta information cannot be decoded") from None
        dataset = fp.read()
    if not ts:
        raise UnreadableHeader("no Transfer Syntax UID in the file meta information")
    return read_header(dataset, UID(str(ts)))


def _past_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


def _bare_dataset_header(data: bytes) -> InstanceHeader:
    # A dataset starts with a group 0008 element (PS3.5 7.1); text never does.
    if len(data) < 8 or data[:2] != b"\x08\x00":
        raise InvalidDicomError("no DICM prefix")
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        try:
            return read_header(data, syntax)
        except (UnreadableHeader, InvalidIdentifier):
            continue
    raise InvalidDicomError("no DICM prefix and not a bare dataset")


# Why a file's Pixel Data is unusable (the node's receive rules).
NO_PIXELS = "no Pixel Data (not an image)"
TRUNCATED = "truncated: the file ends inside Pixel Data"

# Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.3 C.7.6.3).
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def pixel_data_problem(path: Path) -> str | None:
    """Why the file's Pixel Data is unusable, or None (PS3.5 7.1: value length and offset)."""
    try:
        with warnings.catch_warnings():
            # pydicom only warns when encapsulated Pixel Data lacks its delimiter.
            warnings.filterwarnings("error", message="End of file reached")
            ds = dcmread(path, defer_size=64, force=True)
        # The raw element: reading the value would load (or decode) the pixels.
        raw: Any = ds._dict  # noqa: SLF001
        elem = next((raw[t] for t in _PIXEL_TAGS if t in raw), None)
    except Exception:  # pydicom raises many types on a file cut short
        return TRUNCATED
    if elem is None:
        return NO_PIXELS
    length: int | None = getattr(elem, "length", None)
    tell: int | None = getattr(elem, "value_tell", None)
    if length is None or tell is None or length == 0xFFFFFFFF:  # encapsulated: read above
        return None
    return TRUNCATED if tell + length > path.stat().st_size else None
