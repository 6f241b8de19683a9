"""CT instances as frames: headers read without pixels, pixels decoded one instance at a time.

An instance is read in two steps: its attributes before Pixel Data
(PS3.10 7.1) when a series is planned, its pixels only when they go into the
volume. Single-frame CT Image (PS3.3 A.3) gives one frame; Enhanced CT
(PS3.3 A.38) one frame per functional-group item (C.7.6.16).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import (  # the meta group from an open file, as read_file_meta_info
    _read_file_meta_info,
    read_dataset,
    read_preamble,
)
from pydicom.uid import DeflatedExplicitVRLittleEndian

from hyperct_core.decoders import register as _register_decoders
from hyperct_core.errors import PreprocessError

# 12-bit JPEG Extended (lossy CT) decodes through hyperct_core.decoders' plugin.
_register_decoders()

# PS3.4 B.5: CT Image, Enhanced CT Image, Legacy Converted Enhanced CT Image Storage.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
_CT_SOP_CLASSES = frozenset(
    {CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE}
)

DatasetOrPath = Dataset | str | os.PathLike[str]

# Attributes before Pixel Data of any real instance fit well within this, inflated.
_MAX_INFLATED_HEADER = 16 << 20


@dataclass(frozen=True)
class Frame:
    """One 2-D image of the series with the header facts the volume needs."""

    label: str
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # ImageOrientationPatient, 6 cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    rows: int
    columns: int
    slope: float
    intercept: float
    pixels: Callable[[], np.ndarray]  # stored values, shape (rows, columns)


@dataclass(frozen=True)
class FullDataset:
    """An instance with its Pixel Data: the dataset given, or its file's pixels read.

    Where the header was read up to Pixel Data (``pixel_offset``), only the
    rest of the file is read and joined to that header, so no attribute is
    parsed twice; a deflated file (PS3.5 A.5) cannot be entered midway and is
    read whole again.
    """

    path: Path | None
    dataset: Dataset | None
    file_size: int = 0
    header: Dataset | None = None
    pixel_offset: int | None = None

    def __call__(self) -> Dataset:
        if self.dataset is not None:
            return self.dataset
        assert self.path is not None
        try:
            if self.header is not None and self.pixel_offset is not None:
                return _joined(self.header, self.path, self.pixel_offset)
            return pydicom.dcmread(self.path)
        except (OSError, InvalidDicomError, ValueError, struct.error) as exc:
            raise PreprocessError(
                f"cannot read DICOM file {self.path.name}: {first_line(exc)}"
            ) from None


def _joined(header: Dataset, path: Path, offset: int) -> Dataset:
    """``header`` with the elements from ``offset`` on (Pixel Data and any after it).

    A new dataset: the header stays without pixels (a decoded image is cached
    on the dataset that decodes it).
    """
    implicit, little = header.original_encoding
    with path.open("rb") as fp:
        fp.seek(offset)
        rest = read_dataset(fp, bool(implicit), bool(little))
    full = FileDataset(
        str(path),
        Dataset(),
        file_meta=header.file_meta,
        is_implicit_VR=bool(implicit),
        is_little_endian=bool(little),
    )
    full.update(header)
    full.update(rest)
    full.set_original_encoding(implicit, little, header.original_character_set)
    return full


def read_source(item: DatasetOrPath, index: int) -> tuple[Dataset, FullDataset]:
    """The header to plan with, and how to get the pixels later."""
    if isinstance(item, Dataset):
        return item, FullDataset(None, item)
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        try:
            header, offset = _read_header(path)
            return header, FullDataset(path, None, path.stat().st_size, header, offset)
        except (OSError, InvalidDicomError, ValueError, zlib.error, struct.error) as exc:
            raise PreprocessError(
                f"cannot read DICOM file {path.name}: {first_line(exc)}"
            ) from None
    raise PreprocessError(
        f"item {index} of the series is a {type(item).__name__}, not a pydicom Dataset or a path"
    )


def _read_header(path: Path) -> tuple[Dataset, int | None]:
    """A Part 10 file's attributes before Pixel Data (PS3.10 7.1), without reading pixels.

    Returns the header and where Pixel Data starts in the file (None when
    deflated). A deflated dataset (PS3.5 A.5) is inflated only as far as its
    header reaches: pydicom would inflate all of it, pixels included.
    """
    # One open: the meta group says how to read the rest.
    with path.open("rb") as fp:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            fp.seek(0)
            header = pydicom.dcmread(fp, stop_before_pixels=True)
            return header, fp.tell()  # pydicom stops at the Pixel Data tag
        fp.seek(132)
        head = fp.read(12)
        if len(head) < 12 or head[:6] != b"\x02\x00\x00\x00UL":
            raise InvalidDicomError("no File Meta Information Group Length")
        (group_length,) = struct.unpack("<I", head[8:12])
        fp.seek(144 + group_length)
        inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        inflated = bytearray()
        while len(inflated) < _MAX_INFLATED_HEADER and not inflater.eof:
            chunk = inflater.unconsumed_tail or fp.read(1 << 16)
            if not chunk:
                break
            inflated += inflater.decompress(chunk, _MAX_INFLATED_HEADER - len(inflated))
    ds = read_dataset(
        io.BytesIO(bytes(inflated)),
        False,
        True,
        stop_when=lambda tag, vr, length: tag >= 0x7FE00010,
    )
    header = FileDataset(str(path), ds, file_meta=meta, is_implicit_VR=False)
    return header, None


def label_of(ds: Dataset, index: int) -> str:
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str | os.PathLike) and filename:
        return f"file {Path(filename).name}"
    instance = ds.get("InstanceNumber")
    return f"dataset {index}" + (f" (InstanceNumber {instance})" if instance is not None else "")


def instance_label(ds: Dataset, index: int) -> str:
    instance = ds.get("InstanceNumber")
    return f"instance {instance}" if instance is not None else f"object {index + 1}"


def frames_of(ds: Dataset, label: str, full: FullDataset) -> list[Frame]:
    modality = ds.get("Modality")
    if modality != "CT":
        raise PreprocessError(f"{label} has Modality {modality!r}; only CT series can be screened")
    sop_class = ds.get("SOPClassUID")
    if sop_class is not None and str(sop_class) not in _CT_SOP_CLASSES:
        raise PreprocessError(
            f"{label} is SOP class {sop_class} ({getattr(sop_class, 'name', '?')}), "
            "not a CT image storage class"
        )
    if full.dataset is not None and "PixelData" not in ds:  # a file's is checked when read
        raise PreprocessError(f"{label} has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PreprocessError(f"{label} is not a greyscale image (SamplesPerPixel != 1)")
    rows, columns = _required(ds, "Rows", label), _required(ds, "Columns", label)
    if "PerFrameFunctionalGroupsSequence" in ds or str(sop_class) in (
        ENHANCED_CT_IMAGE_STORAGE,
        LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    ):
        return _enhanced_frames(ds, label, int(rows), int(columns), full)
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PreprocessError(f"{label} is multi-frame but has no per-frame functional groups")
    return [
        Frame(
            label=label,
            position=_vector(_required(ds, "ImagePositionPatient", label), 3, label),
            orientation=_vector(_required(ds, "ImageOrientationPatient", label), 6, label),
            pixel_spacing=_spacing(_required(ds, "PixelSpacing", label), label),
            rows=int(rows),
            columns=int(columns),
            slope=float(_required(ds, "RescaleSlope", label)),
            intercept=float(_required(ds, "RescaleIntercept", label)),
            pixels=lambda: _decode(full(), label),
        )
    ]


def _enhanced_frames(
    ds: Dataset, label: str, rows: int, columns: int, full: FullDataset
) -> list[Frame]:
    """Frames of an Enhanced CT image (PS3.3 A.38, functional groups C.7.6.16)."""
    count = int(ds.get("NumberOfFrames", 0) or 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if count < 1 or per_frame is None or len(per_frame) != count:
        raise PreprocessError(
            f"{label}: multi-frame image with NumberOfFrames {count} and "
            f"{0 if per_frame is None else len(per_frame)} per-frame functional groups"
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    cache: list[np.ndarray] = []
    taken = [0]

    def frame_pixels(k: int) -> np.ndarray:
        if not cache:
            decoded = _decode(full(), label)
            cache.append(decoded.reshape(count, rows, columns) if decoded.ndim == 2 else decoded)
        frame = cache[0][k]
        taken[0] += 1
        if taken[0] == count:  # every frame is in the volume: let the decoded image go
            cache.clear()
        return frame

    def attr(groups: Dataset, sequence: str, keyword: str, where: str) -> Any:
        # A functional group sits either in the frame's item or in the shared item.
        for item in (groups, shared):
            seq = item.get(sequence)
            if seq and keyword in seq[0]:
                return seq[0][keyword].value
        raise PreprocessError(f"{where} lacks {keyword} (in {sequence})")

    frames = []
    for k, groups in enumerate(per_frame):
        where = f"{label} frame {k + 1}"
        frames.append(
            Frame(
                label=where,
                position=_vector(
                    attr(groups, "PlanePositionSequence", "ImagePositionPatient", where), 3, where
                ),
                orientation=_vector(
                    attr(groups, "PlaneOrientationSequence", "ImageOrientationPatient", where),
                    6,
                    where,
                ),
                pixel_spacing=_spacing(
                    attr(groups, "PixelMeasuresSequence", "PixelSpacing", where), where
                ),
                rows=rows,
                columns=columns,
                slope=float(
                    attr(groups, "PixelValueTransformationSequence", "RescaleSlope", where)
                ),
                intercept=float(
                    attr(groups, "PixelValueTransformationSequence", "RescaleIntercept", where)
                ),
                pixels=lambda k=k: frame_pixels(k),  # type: ignore[misc]
            )
        )
    return frames


def _required(ds: Dataset, keyword: str, label: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise PreprocessError(f"{label} lacks {keyword}")
    return value


def _vector(value: object, length: int, label: str) -> np.ndarray:
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        vector = np.empty(0)
    if vector.shape != (length,) or not np.isfinite(vector).all():
        raise PreprocessError(f"{label}: expected {length} numbers, got {value!r}")
    return vector


def _spacing(value: object, label: str) -> tuple[float, float]:
    row, col = _vector(value, 2, f"{label} PixelSpacing")
    if row <= 0 or col <= 0:
        raise PreprocessError(f"{label}: PixelSpacing must be positive, got {value!r}")
    return float(row), float(col)


def _decode(ds: Dataset, label: str) -> np.ndarray:
    if "PixelData" not in ds:
        raise PreprocessError(f"{label} has no pixel data")
    _check_codestreams(ds, label)
    try:
        return ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pydicom raises many types for bad or undecodable data;
        # a Rust decoder (pylibjpeg-rle) panics on a frame that overruns its header's size,
        # and a panic is a BaseException: it must not take the screening loop down with it.
        # pydicom lists each plugin's refusal on a line of its own: keep them, on one line.
        why = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise PreprocessError(
            f"cannot decode pixel data of {label}: {why or first_line(exc)}"
        ) from None


def _check_codestreams(ds: Dataset, label: str) -> None:
    """Refuse compressed frames whose own size is not the header's, before decoding them.

    A decoder sizes its output from the codestream (JPEG SOF, PS3.5 A.4.1; JPEG-LS
    SOF55; JPEG 2000 SIZ, A.4.4), so a 512 x 512 header over a 65535 x 65535
    codestream would decode gigabytes before anything could compare the two.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_encapsulated:
        return
    rows, columns = int(ds.Rows), int(ds.Columns)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        for k, fragments in enumerate(
            generate_fragmented_frames(ds.PixelData, number_of_frames=count)
        ):
            size = _codestream_size(fragments[0][:65536]) if fragments else None
            if size is not None and size != (rows, columns):
                raise PreprocessError(
                    f"{label}: frame {k + 1} is compressed as {size[0]} x {size[1]} but the "
                    f"header says {rows} x {columns}; not decoded"
                )
    except PreprocessError:
        raise
    except Exception as exc:  # malformed items: let the decoder report them
        raise PreprocessError(f"cannot decode pixel data of {label}: {first_line(exc)}") from None


# JPEG start-of-frame markers (ITU T.81 B.1.1.3) and JPEG-LS SOF55 (ITU T.87 C.2.2).
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})


def _codestream_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares; None if not found."""
    if data[:4] == b"\xff\x4f\xff\x51" and len(data) >= 24:  # SOC then SIZ
        xsiz, ysiz, x0, y0 = struct.unpack(">IIII", data[8:24])
        return ysiz - y0, xsiz - x0
    if data[:2] != b"\xff\xd8":  # not a JPEG or JPEG-LS stream (RLE has no size of its own)
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF_MARKERS and at + 9 <= len(data):
            rows, columns = struct.unpack(">HH", data[at + 5 : at + 9])
            return rows, columns
        if marker == 0xDA:  # start of scan without a frame header
            return None
        at += 2 + length
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
