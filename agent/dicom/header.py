"""What the agent reads from an instance's header (never its pixels).

Only identifiers of the study hierarchy and the geometry needed later to
judge series completeness are read, and of the patient only what a keyed
pseudonym is made of (Patient ID, its issuer, Accession Number), held apart
in a :class:`~agent.pseudonym.PatientIdentity` that never prints. The
same reading serves a received C-STORE dataset and a file (via
:mod:`agent.dicom.part10`).

The pixels are never decoded, but their encoding is checked where it is
cheap (:mod:`agent.dicom.pixel_checks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from agent.dicom.errors import InvalidIdentifier, UnreadableHeader
from agent.dicom.inflate import InflatingReader
from agent.dicom.limits import DEFAULT_LIMITS, ReceiveLimits
from agent.dicom.pixel_checks import check_pixel_data
from agent.dicom.uid import checked_uid
from agent.dicom.values import first_item, floats, integer, multi_text, text
from agent.pseudonym import PatientIdentity

# The identifying UIDs, in the order they are checked, with their attribute keywords.
_UID_FIELDS = (
    ("study_instance_uid", "StudyInstanceUID"),
    ("series_instance_uid", "SeriesInstanceUID"),
    ("sop_instance_uid", "SOPInstanceUID"),
    ("sop_class_uid", "SOPClassUID"),
)


@dataclass(frozen=True)
class InstanceHeader:
    """One instance's identifiers, descriptors and geometry, as read from its header.

    Its four identifying UIDs passed the one UID rule (PS3.5 9.1): building
    a header with any other raises :class:`InvalidIdentifier`, so whatever is
    built from a header (the record the node stores, a folder's facts) holds
    valid UIDs only.
    """

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
    # Acquisition characteristics (PS3.3 C.7.5.1 General Equipment, C.8.2.1 CT Image).
    manufacturer: str | None = None
    kvp: float | None = None
    convolution_kernel: str | None = None
    # What the patient's pseudonyms are made of: hashed before anything is stored,
    # never printed (no repr, not compared).
    identity: PatientIdentity | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, keyword in _UID_FIELDS:
            checked_uid(getattr(self, name), keyword)

    @property
    def slice_position(self) -> float | None:
        """Position along the slice normal (row x column direction cosines)."""
        if self.image_position is None or self.image_orientation is None:
            return None
        # Plain arithmetic: numpy's cross product costs ~50 us a call, once per instance.
        r1, r2, r3, c1, c2, c3 = self.image_orientation
        x, y, z = self.image_position
        return (r2 * c3 - r3 * c2) * x + (r3 * c1 - r1 * c3) * y + (r1 * c2 - r2 * c1) * z


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
        "Manufacturer",
        "KVP",
        "ConvolutionKernel",
        # Hashed into pseudonyms at once (agent.pseudonym); never kept as read.
        "PatientID",
        "IssuerOfPatientID",
        "AccessionNumber",
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
            # Inflated as it is read, never whole (PS3.5 A.5).
            inflating = InflatingReader(dataset, limits.max_dataset_bytes)
            fp, reaches = inflating, inflating.reaches  # type: ignore[assignment]
        else:
            fp, size = BytesIO(dataset), len(dataset)
            reaches = size.__ge__
        little, implicit = transfer_syntax.is_little_endian, transfer_syntax.is_implicit_VR
        ds = read_dataset(
            fp, implicit, little, stop_when=_before_pixels, specific_tags=_HEADER_TAGS
        )
        header = _from_dataset(ds)
        check_pixel_data(fp, reaches, ds, transfer_syntax, limits)
    except (UnreadableHeader, InvalidIdentifier):
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise UnreadableHeader(f"dataset cannot be decoded ({type(exc).__name__})") from None
    return header


def _from_dataset(ds: Dataset) -> InstanceHeader:
    """The header's fields; its UIDs are checked as the header is built (PS3.5 9.1)."""
    uids = {}
    for _, keyword in _UID_FIELDS:
        value = text(ds, keyword)
        if value is None:
            raise UnreadableHeader(f"{keyword} is missing")
        uids[keyword] = value

    position = floats(ds, "ImagePositionPatient", 3)
    orientation = floats(ds, "ImageOrientationPatient", 6)
    spacing = floats(ds, "PixelSpacing", 2)
    thickness = floats(ds, "SliceThickness", 1) if "SliceThickness" in ds else None
    if "SharedFunctionalGroupsSequence" in ds:  # Enhanced CT: geometry in functional groups
        shared = first_item(ds, "SharedFunctionalGroupsSequence")
        frame = first_item(ds, "PerFrameFunctionalGroupsSequence")
        for group in (frame, shared):
            orientation = orientation or floats(
                first_item(group, "PlaneOrientationSequence") if group else None,
                "ImageOrientationPatient",
                6,
            )
            position = position or floats(
                first_item(group, "PlanePositionSequence") if group else None,
                "ImagePositionPatient",
                3,
            )
            measures = first_item(group, "PixelMeasuresSequence") if group else None
            spacing = spacing or floats(measures, "PixelSpacing", 2)
            if thickness is None and measures is not None and "SliceThickness" in measures:
                thickness = floats(measures, "SliceThickness", 1)

    return InstanceHeader(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=text(ds, "Modality"),
        series_number=integer(ds, "SeriesNumber"),
        series_description=text(ds, "SeriesDescription"),
        body_part_examined=text(ds, "BodyPartExamined"),
        study_date=text(ds, "StudyDate"),
        instance_number=integer(ds, "InstanceNumber"),
        image_position=position,  # type: ignore[arg-type]
        image_orientation=orientation,
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=thickness[0] if thickness else None,
        study_description=text(ds, "StudyDescription"),
        image_type=multi_text(ds, "ImageType"),
        protocol_name=text(ds, "ProtocolName"),
        contrast_agent=text(ds, "ContrastBolusAgent"),
        number_of_frames=integer(ds, "NumberOfFrames"),
        requested_procedure=_requested_procedure(ds),
        manufacturer=text(ds, "Manufacturer"),
        kvp=_kvp(ds),
        convolution_kernel=multi_text(ds, "ConvolutionKernel"),
        identity=PatientIdentity(
            text(ds, "PatientID"), text(ds, "IssuerOfPatientID"), text(ds, "AccessionNumber")
        ),
    )


def _kvp(ds: Dataset) -> float | None:
    """KVP (0018,0060), DS; None when absent, malformed or multi-valued."""
    try:
        value = floats(ds, "KVP", 1)
    except Exception:  # an optional descriptor must not refuse the instance
        return None
    return value[0] if value else None


def _requested_procedure(ds: Dataset) -> str | None:
    """Requested Procedure Description (0032,1060): top level (PS3.3 C.4.11) or
    the first Request Attributes Sequence item (C.7.3.1.1)."""
    try:
        return text(ds, "RequestedProcedureDescription") or text(
            first_item(ds, "RequestAttributesSequence") or Dataset(),
            "RequestedProcedureDescription",
        )
    except Exception:  # a malformed optional sequence must not refuse the instance
        return None
