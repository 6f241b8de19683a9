"""What a report carries from its source CT: patient, study and equipment attributes, vetted.

A report copies the Patient, Clinical Trial Subject, General Study, Patient
Study and Clinical Trial Study modules (PS3.3 C.7.1.1, C.7.1.3, C.7.2.1,
C.7.2.2, C.7.2.3) from the first source image, and the acquisition equipment
into its Contributing Equipment Sequence (PS3.3 C.12.1). PACS send these in
any character set of PS3.3 C.12.1.1.2 and, now and then, with values their
VR does not allow. Neither may stop a report: :func:`carried_source` decodes
every value with the character set the source declares, checks it against
its VR (PS3.5 6.2) and VM, keeps what is valid and names what it left out.

The report itself is written in ISO_IR 192 (UTF-8, PS3.5 6.1.2.3): one
character set that holds every repertoire a source can declare, without
code extensions, so no value is re-encoded into escape sequences.

Values are read from the raw bytes here, not through pydicom's element
conversion: pydicom's validation warnings quote the value, and a warning is
a log line. Nothing in this module logs or raises with a value in it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.values import convert_PN, convert_single_string, convert_text

from agent.report.vr_checks import VALUE_CHECKS, check_vm
from agent.report.vr_checks import InvalidValue as _Invalid

#: Specific Character Set of every report (PS3.3 C.12.1.1.2): UTF-8.
OUTPUT_CHARSET = "ISO_IR 192"

# highdicom warns about a single-component Person Name, quoting it. A family
# name alone is valid (PS3.5 6.2.1.1), and the quote would put a patient's
# name in the log stream (warnings go to stderr), so that one warning is silenced.
_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


def _silence_name_warning() -> None:
    """Install the filter unless present (a ``catch_warnings`` block may have dropped it)."""
    for action, message, *_ in warnings.filters:
        if action == "ignore" and message is not None and message.pattern == _NAME_WARNING:
            return
    warnings.filterwarnings("ignore", message=_NAME_WARNING)


#: Root attributes of the patient and study modules of the CT and SR IODs (PS3.3 A.35).
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    # Patient (C.7.1.1)
    "ReferencedPatientSequence",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar",
    "PatientAlternativeCalendar",
    "PatientSex",
    "QualityControlSubject",
    "StrainDescription",
    "StrainNomenclature",
    "StrainStockSequence",
    "StrainAdditionalInformation",
    "StrainCodeSequence",
    "GeneticModificationsSequence",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "ReferencedPatientPhotoSequence",
    "EthnicGroupCodeSequence",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    # Clinical Trial Subject (C.7.1.3)
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID",
    "OtherClinicalTrialProtocolIDsSequence",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "IssuerOfClinicalTrialSiteID",
    "ClinicalTrialSubjectID",
    "IssuerOfClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "IssuerOfClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    # General Study (C.7.2.1)
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "ReferencedStudySequence",
    "StudyID",
    "RequestingService",
    "RequestingServiceCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    # Patient Study (C.7.2.2)
    "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientSizeCodeSequence",
    "PatientBodyMassIndex",
    "MeasuredAPDimension",
    "MeasuredLateralDimension",
    "PatientWeight",
    "MedicalAlerts",
    "Allergies",
    "Occupation",
    "SmokingStatus",
    "AdditionalPatientHistory",
    "PregnancyStatus",
    "LastMenstrualDate",
    "PatientSexNeutered",
    "ReasonForVisit",
    "ReasonForVisitCodeSequence",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID",
    "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence",
    "PatientState",
    # Clinical Trial Study (C.7.2.3)
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent",
    "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence",
    "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)

#: General Equipment attributes of the source that highdicom turns into an
#: acquisition-equipment item (PS3.3 C.7.5.1, C.12.1).
EQUIPMENT_KEYWORDS: tuple[str, ...] = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
    "AcquisitionDateTime",
    "AcquisitionDate",
    "AcquisitionTime",
)

#: Type 2 attributes the SR must hold, empty when the source has no valid value.
TYPE2_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)

# Enumerated values highdicom enforces (PS3.3 C.7.1.1): anything else would stop the report.
_ENUMERATED = {"PatientSex": ("M", "F", "O")}

# Identify the source image; highdicom cites them and looks the IOD up by class.
_IDENTIFIERS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_CHARSET_TAG = BaseTag(0x00080005)

# Terms whose G0 is ISO 646 alone: any byte above 0x7F or an escape is undeclared.
_DEFAULT_REPERTOIRE = ("", "ISO_IR 6", "ISO 2022 IR 6")
_ESC = 0x1B


@dataclass(frozen=True)
class Omission:
    """An attribute of the source that the reports do not carry, and why (never its value)."""

    attribute: str
    reason: str

    def as_detail(self) -> dict[str, str]:
        return {"attribute": self.attribute, "reason": self.reason}


@dataclass(frozen=True)
class CarriedSource:
    """The first source image as the reports see it.

    Attributes:
        dataset: Identifiers plus the vetted patient, study and equipment
            attributes as decoded text, in :data:`OUTPUT_CHARSET`; the Type 2
            attributes are present, empty where the source had no valid value.
        omitted: What was left out, in the order met.
        character_set: The source's Specific Character Set as written (backslash-joined).
    """

    dataset: Dataset
    omitted: tuple[Omission, ...]
    character_set: str

    def audit_detail(self) -> dict[str, Any]:
        """Audit ``detail``: attribute names and reasons, never values."""
        return {
            "omitted": [o.as_detail() for o in self.omitted],
            "character_set": self.character_set,
        }


@dataclass(frozen=True)
class _Charset:
    """How to decode one dataset's text (PS3.5 6.1, PS3.3 C.12.1.1.2).

    ``encodings`` is None when only ISO 646 text can be read: no character set
    declared beyond the default repertoire, or a term DICOM does not define.
    """

    terms: tuple[str, ...]
    encodings: tuple[str, ...] | None
    unknown: bool = False

    @classmethod
    def of(cls, ds: Dataset, parent: _Charset | None) -> _Charset:
        """The item's own Specific Character Set, else its parent's (PS3.5 7.5.3)."""
        if _CHARSET_TAG not in ds:
            return parent or cls((), None)
        elem = ds.get_item(_CHARSET_TAG)
        raw = elem.value if elem is not None else None
        try:
            if isinstance(raw, bytes):
                terms = [t.strip(" \0") for t in raw.decode("ascii").split("\\")]
            elif isinstance(raw, str):
                terms = [raw.strip()]
            else:
                terms = [str(t).strip() for t in raw or ()]
        except UnicodeDecodeError:
            return cls(("?",), None, unknown=True)
        while terms and not terms[-1]:
            terms.pop()
        if any(t not in python_encoding for t in terms):
            return cls(tuple(terms), None, unknown=True)
        if not terms or (len(terms) == 1 and terms[0] in _DEFAULT_REPERTOIRE):
            return cls(tuple(terms), None)
        encodings = [python_encoding[t] for t in terms]
        if terms[0] in ("ISO_IR 192", "GB18030", "GBK"):
            encodings = encodings[:1]  # stand-alone sets take no code extensions
        return cls(tuple(terms), tuple(encodings))

    @property
    def default_g0(self) -> bool:
        """Text before the first escape sequence is ISO 646 (PS3.5 6.1.2.5.3)."""
        return not self.terms or self.terms[0] in _DEFAULT_REPERTOIRE

    @property
    def undeclared(self) -> str:
        """Why non-ASCII text cannot be carried under this character set."""
        if self.unknown:
            return "character set term not defined by DICOM; only ASCII text readable"
        return "characters outside the declared character set"

    @property
    def text(self) -> str:
        return "\\".join(self.terms)


def carried_source(first: Dataset) -> CarriedSource:
    """Vet the patient, study and equipment attributes of ``first`` for the reports.

    Each value is decoded in ``first``'s character set and checked against
    its VR and VM (PS3.5 6.2, PS3.6); one that fails is omitted and listed,
    never raised. Under a Specific Character Set term that PS3.3 C.12.1.1.2
    does not define, or none at all, only ISO 646 (ASCII) text is carried:
    what other bytes meant cannot be known.
    """
    _silence_name_warning()
    charset = _Charset.of(first, None)
    out = Dataset()
    out.SpecificCharacterSet = OUTPUT_CHARSET
    for keyword in _IDENTIFIERS:
        if keyword in first:
            out[keyword] = first[keyword]  # UIDs: checked by the caller and by ingest
    omitted: list[Omission] = []
    for keyword in (*PATIENT_STUDY_KEYWORDS, *EQUIPMENT_KEYWORDS):
        tag = Tag(keyword)
        if tag not in first:
            continue
        try:
            elem = _vet(first, tag, charset, omitted, keyword)
            allowed = _ENUMERATED.get(keyword)
            if allowed and elem.value not in (None, *allowed):
                raise _Invalid(f"not one of {', '.join(allowed)}")
            out.add(elem)
        except _Invalid as exc:
            omitted.append(Omission(keyword, str(exc)))
        except Exception:  # a malformed element must not stop the report either
            omitted.append(Omission(keyword, "cannot be read"))
    for keyword in TYPE2_KEYWORDS:
        if keyword not in out:
            setattr(out, keyword, "")
    return CarriedSource(out, tuple(omitted), charset.text)


def _vet(
    ds: Dataset, tag: BaseTag, charset: _Charset, omitted: list[Omission], path: str
) -> DataElement:
    """The element at ``tag`` of ``ds`` as a clean, decoded element, or :class:`_Invalid`."""
    elem = ds.get_item(tag)
    assert elem is not None
    vr = _vr_of(tag, elem.VR)
    if vr == "SQ":
        value = ds[tag].value  # pydicom parses sequences on read; items stay raw
        return DataElement(tag, "SQ", _vet_sequence(value, charset, omitted, path))
    if vr in _BINARY_VRS:
        converted = ds[tag]  # numbers only: pydicom's conversion says nothing about them
        return DataElement(tag, converted.VR, converted.value)
    values = _text_values(elem, vr, charset)
    check_vm(tag, len(values))
    check = VALUE_CHECKS.get(vr)
    for text in values:
        if check is not None:
            check(text)
    if not values:
        return DataElement(tag, vr, None)
    return DataElement(tag, vr, values[0] if len(values) == 1 else values)


def _vet_sequence(
    items: Iterable[Dataset], parent: _Charset, omitted: list[Omission], path: str
) -> DicomSequence:
    """Each item rebuilt from its vetted elements, without a character set of its own."""
    clean = []
    for index, item in enumerate(items):
        charset = _Charset.of(item, parent)
        new = Dataset()
        for tag in list(item.keys()):
            if tag == _CHARSET_TAG or tag.element == 0:  # group lengths are retired
                continue
            name = f"{path}[{index}].{keyword_for_tag(tag) or _tag_text(tag)}"
            if tag.is_private:
                omitted.append(Omission(name, "private attribute"))
                continue
            try:
                new.add(_vet(item, tag, charset, omitted, name))
            except _Invalid as exc:
                omitted.append(Omission(name, str(exc)))
            except Exception:
                omitted.append(Omission(name, "cannot be read"))
        clean.append(new)
    return DicomSequence(clean)


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def _vr_of(tag: BaseTag, declared: str | None) -> str:
    """The VR to read and write: the dictionary's, unless the dictionary leaves it open."""
    try:
        known = dictionary_VR(tag)
    except KeyError:
        if declared in (None, "UN"):
            raise _Invalid("unknown attribute") from None
        return str(declared)
    if " or " in known:
        return str(declared) if declared not in (None, "UN") else "UN"
    return known


# -- decoding -----------------------------------------------------------------------------

_TEXT_VRS = frozenset({"SH", "LO", "UC", "PN", "LT", "ST", "UT"})
_ISO646_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
_BINARY_VRS = frozenset(
    {"AT", "FL", "FD", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV", "UL", "US", "UV"}
)


def _text_values(elem: DataElement | RawDataElement, vr: str, charset: _Charset) -> list[str]:
    """The element's values as text, decoded; empty list for an empty element."""
    if vr not in _TEXT_VRS and vr not in _ISO646_VRS:
        raise _Invalid(f"VR {vr} not carried")
    if isinstance(elem, RawDataElement):
        raw = elem.value or b""
        if isinstance(raw, bytes):
            return _decode(raw, vr, charset)
        values = [raw]
    else:
        value = elem.value
        if value is None or value == "":
            return []
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    texts = [str(v) for v in values]
    for text in texts:
        if not text.isascii():
            if vr in _ISO646_VRS:
                raise _Invalid(f"not a valid {vr}")
            if charset.encodings is None:
                raise _Invalid(charset.undeclared)
    return [] if texts == [""] else texts


def _decode(raw: bytes, vr: str, charset: _Charset) -> list[str]:
    """Strictly decode raw bytes: undecodable text is :class:`_Invalid`, never replaced."""
    raw = raw.rstrip(b"\x00 ") if vr != "UI" else raw.rstrip(b"\x00")
    if not raw:
        return []
    if vr in _ISO646_VRS or charset.encodings is None:
        if not raw.isascii() or _ESC in raw:
            raise _Invalid(f"not a valid {vr}" if vr in _ISO646_VRS else charset.undeclared)
        encodings = ["iso8859"]
    else:
        encodings = list(charset.encodings)
        if charset.default_g0 and _undesignated(raw, vr):
            raise _Invalid(charset.undeclared)
        if _IR58_G1 in raw and "iso_ir_58" in encodings:
            # pydicom leaves this escape sequence in the text: GB2312 in G1 over
            # ASCII in G0 is EUC-CN, which Python decodes once the escapes are gone.
            plain = raw.replace(_IR58_G1, b"").replace(_ASCII_G0, b"")
            if _ESC not in plain:
                raw, encodings = plain, ["gb2312"]
        if _ESC not in raw:
            # One character set for the whole value: decode it strictly here, as
            # pydicom would replace what it cannot decode.
            try:
                raw.decode(encodings[0])
            except UnicodeDecodeError:
                raise _Invalid("cannot be decoded in the declared character set") from None
    if vr == "PN":
        names = convert_PN(raw, encodings)
        texts = [str(n) for n in (names if isinstance(names, MultiValue | list) else [names])]
    elif vr in ("LT", "ST", "UT"):
        texts = [convert_single_string(raw, encodings)]
    else:
        decoded = convert_text(raw, encodings)
        texts = [decoded] if isinstance(decoded, str) else list(decoded)
    for text in texts:
        if "\ufffd" in text:
            raise _Invalid("cannot be decoded in the declared character set")
    return [t.strip() if vr in _ISO646_VRS else t for t in texts]


_IR58_G1 = b"\x1b$)A"  # ISO 2022 IR 58 (GB2312) into G1, PS3.3 Table C.12-4
_ASCII_G0 = b"\x1b(B"
# Where the initial character sets are active again (PS3.5 6.1.2.5.3).
_PN_DELIMITERS = re.compile(rb"[\^=\\\r\n\t\f]")
_TEXT_DELIMITERS = re.compile(rb"[\\\r\n\t\f]")


def _undesignated(raw: bytes, vr: str) -> bool:
    """A byte above 0x7F where only ISO 646 is in force: before any escape sequence
    since the start of the value or the last delimiter."""
    delimiters = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
    return any(not part.split(b"\x1b", 1)[0].isascii() for part in delimiters.split(raw))
