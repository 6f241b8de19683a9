"""The measurements of a TID 5200 Echocardiography Procedure Report (PS3.16 TID 5200).

A TID 5200 report (root concept (125200, DCM, "Adult Echocardiography Procedure
Report")) holds Findings containers (TID 5202 Echo Section) whose Finding Site names
the structure; their Measurement Groups hold NUM items (TID 5203 Echo Measurement)
with concept modifiers such as Direction of Flow. Codes are compared as pydicom's
:class:`~pydicom.sr.coding.Code` does, so the retired SRT forms older devices send
(G-C0E3 Finding Site, T-32600 Left Ventricle, ...) equal their SCT successors.

Read (every code from pydicom's PS3.16 dictionaries; units by UCUM code):

- LVEF: (18043-0, LN, "Left Ventricular Ejection Fraction by US"), CID 12200/12202,
  and the method-specific LOINC codes of CID 12300 (biplane/single plane MOD, 3D,
  Teichholz); in %, or as a fraction in {ratio}/1.
- LVIDd: (29436-3, LN), CID 12201, and 80007-8 (2D) / 80008-6 (M-mode), CID 12300;
  cm, mm or m, converted to cm.
- LAVI: 79984-1 / 79982-5 (LA end systolic volume, biplane MOD / area-length, / BSA),
  CID 12300, in ml/m2; else an LA volume (SCT 399235004 "Left Atrium Systolic Volume",
  CID 12205, or 79983-3 / 79981-7) divided by the Body Surface Area (8277-6, LN) of
  TID 5201 Patient Characteristics.
- Peak TR velocity: 79921-3 (Tricuspid regurgitation Vmax, CID 12300), or a Peak
  Blood Velocity (20355-4) or Peak Systolic Velocity (11726-7) in the Tricuspid Valve
  section (CID 12208) with Direction of Flow = Regurgitant Flow (SCT 397417004,
  CID 12221); m/s, cm/s or mm/s, converted to m/s.
- PASP: (399023006, SCT, "Right Ventricular Peak Systolic Pressure"), CID 12204: the
  echo estimate of PA systolic pressure (equal to it without pulmonic stenosis); mm[Hg].
- E/A: (18038-0, LN, "Mitral Valve E to A Ratio"), CID 12207, or (59104-0, LN, "Peak
  E wave/Peak A wave by US") in the Mitral Valve section.
- RV systolic function: PS3.16 has no coded qualitative grade for it in TID 5200, so
  an SR gives no RV label (the CSV export carries it).

A measurement found more than once (devices repeat values with a Selection Status)
takes the one with a Selection Status, else the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from agent.outcomes.measurements import (
    E_A,
    LAVI,
    LVEF,
    LVIDD,
    NUMERIC_RANGES,
    PASP,
    TR_VELOCITY,
    Sex,
    sex_of,
)

REPORT_TITLE = codes.DCM.AdultEchocardiographyProcedureReport  # (125200, DCM)
#: Storage SOP classes an echo system sends TID 5200 reports in (PS3.4 B.5).
ECHO_SR_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
)

_FINDING_SITE = codes.SCT.FindingSite  # also G-C0E3 (SRT)
_FLOW_DIRECTION = codes.SCT.DirectionOfFlow  # 260674002; G-C048 (SRT)
_SELECTION_STATUS = codes.DCM.SelectionStatus
_REGURGITANT = codes.SCT.RegurgitantFlow
_TRICUSPID = codes.SCT.TricuspidValve
_MITRAL = codes.SCT.MitralValve
_BSA = codes.LN.BSA  # (8277-6, LN, "Body Surface Area"), TID 5201

_LVEF_CODES = (
    codes.LN.LeftVentricularEjectionFractionByUS,  # 18043-0
    codes.LN.LeftVentricularEjectionFractionBiplaneMOD,  # 79991-6
    codes.LN.LeftVentricularEjectionFraction3D,  # 79990-8
    codes.LN.LeftVentricularEjectionFractionSinglePlane4CMOD,  # 79993-2
    codes.LN.LeftVentricularEjectionFractionSinglePlane2CMOD,  # 79992-4
    codes.LN.LeftVentricularEjectionFractionTeichholz2D,  # 77891-0
    codes.LN.LeftVentricularEjectionFractionTeichholzMM,  # 18049-7
)
_LVIDD_CODES = (
    codes.LN.LeftVentricleInternalEndDiastolicDimension,  # 29436-3
    codes.LN.LeftVentricularInternalDiastolicDimension2D,  # 80007-8
    codes.LN.LeftVentricularInternalDiastolicDimensionMM,  # 80008-6
)
_LAVI_CODES = (
    codes.LN.LeftAtrialEndSystolicVolumeBiplaneMODBSA,  # 79984-1
    codes.LN.LeftAtrialEndSystolicVolumeBiplaneAreaLengthBSA,  # 79982-5
)
_LA_VOLUME_CODES = (
    codes.LN.LeftAtrialEndSystolicVolumeBiplaneMOD,  # 79983-3
    codes.LN.LeftAtrialEndSystolicVolumeBiplaneAreaLength,  # 79981-7
    codes.SCT.LeftAtriumSystolicVolume,  # 399235004
)
_TR_VMAX = codes.LN.TricuspidRegurgitationVmax  # 79921-3
_PEAK_VELOCITY_CODES = (codes.LN.PeakBloodVelocity, codes.LN.PeakSystolicVelocity)
_PASP_CODES = (codes.SCT.RightVentricularPeakSystolicPressure,)  # 399023006
_E_A_CODES = (codes.LN.MitralValveEToARatio,)  # 18038-0
_E_A_MITRAL_CODES = (codes.LN.PeakEWavePeakAWaveByUS,)  # 59104-0, in a Mitral Valve section

#: UCUM unit -> factor to the measurement's unit.
_LENGTH_CM = {"cm": 1.0, "mm": 0.1, "m": 100.0}
_VELOCITY_M_S = {"m/s": 1.0, "cm/s": 0.01, "mm/s": 0.001}
_PERCENT = {"%": 1.0, "{ratio}": 100.0, "1": 100.0}
_RATIO = {"{ratio}": 1.0, "1": 1.0, "{ratio}/{ratio}": 1.0}
_PRESSURE = {"mm[Hg]": 1.0}
_INDEXED_VOLUME = {"ml/m2": 1.0, "mL/m2": 1.0, "cm3/m2": 1.0}
_VOLUME_ML = {"ml": 1.0, "mL": 1.0, "cm3": 1.0, "l": 1000.0, "L": 1000.0}
_AREA_M2 = {"m2": 1.0, "cm2": 1e-4}


class NotEchoReport(ValueError):
    """An SR whose root is not a TID 5200 Echocardiography Procedure Report."""


class MalformedEchoReport(ValueError):
    """A TID 5200 report that cannot be read; the message names no patient data."""


@dataclass(frozen=True)
class NumItem:
    """A NUM content item with the context it inherits (section site, modifiers)."""

    concept: Code
    value: float
    unit: str
    site: Code | None
    modifiers: tuple[tuple[Code, Code], ...] = ()
    selected: bool = False

    def has_modifier(self, name: Code, value: Code) -> bool:
        return any(n == name and v == value for n, v in self.modifiers)

    def at(self, site: Code) -> bool:
        return self.site is not None and self.site == site


@dataclass(frozen=True)
class EchoReport:
    """What an echo SR contributes. ``patient_id``/``issuer``/``accession`` are for the
    pseudonymizer alone; ``sex`` for the labels alone: neither is stored."""

    # Out of the repr: a log line or traceback that shows the report shows no identifier.
    patient_id: str = field(repr=False)
    issuer: str | None = field(repr=False)
    accession: str | None = field(repr=False)
    sex: Sex | None = field(repr=False)
    exam_date: str
    measurements: dict[str, float] = field(default_factory=dict)


def _code(item: Dataset, keyword: str) -> Code | None:
    seq = item.get(keyword)
    if not seq:
        return None
    c = seq[0]
    value = c.get("CodeValue") or c.get("LongCodeValue") or c.get("URNCodeValue")
    scheme = c.get("CodingSchemeDesignator")
    if not value or not scheme:
        raise MalformedEchoReport(f"a {keyword} item without a code value or scheme")
    return Code(str(value), str(scheme), str(c.get("CodeMeaning") or ""))


def is_echo_report(ds: Dataset) -> bool:
    """Whether the document's root concept is TID 5200's title."""
    try:
        title = _code(ds, "ConceptNameCodeSequence")
    except MalformedEchoReport:
        return False
    return title is not None and title == REPORT_TITLE


def _number(item: Dataset) -> tuple[float, str] | None:
    seq = item.get("MeasuredValueSequence")
    if not seq:
        return None  # a NUM without a value (TID 300: the value may be absent)
    mv = seq[0]
    try:
        value = float(mv.NumericValue)
    except (AttributeError, TypeError, ValueError):
        raise MalformedEchoReport("a NUM item whose Numeric Value is not a number") from None
    unit = _code(mv, "MeasurementUnitsCodeSequence")
    if unit is None:
        raise MalformedEchoReport("a NUM item without Measurement Units")
    return value, unit.value


def _modifiers(items: Any) -> Iterator[tuple[Code, Code]]:
    """(concept, value) of the HAS CONCEPT MOD CODE items among ``items``."""
    for item in items or []:
        if item.get("RelationshipType") == "HAS CONCEPT MOD" and item.get("ValueType") == "CODE":
            name, value = _code(item, "ConceptNameCodeSequence"), _code(item, "ConceptCodeSequence")
            if name is not None and value is not None:
                yield name, value


def _walk(
    items: Any, site: Code | None, inherited: tuple[tuple[Code, Code], ...]
) -> Iterator[NumItem]:
    """Every NUM item below ``items``, with the Finding Site and modifiers it inherits."""
    items = list(items or [])
    # A container's modifiers apply to everything it contains (TID 5202 row 2); a
    # NUM item's own modifiers (TID 5203) add to them, its own Finding Site wins.
    mods = list(inherited)
    for name, value in _modifiers(items):
        if name == _FINDING_SITE:
            site = value
        else:
            mods.append((name, value))
    for item in items:
        value_type = item.get("ValueType")
        if value_type == "CONTAINER":
            yield from _walk(item.get("ContentSequence"), site, tuple(mods))
        elif value_type == "NUM" and item.get("RelationshipType") == "CONTAINS":
            concept = _code(item, "ConceptNameCodeSequence")
            number = _number(item)
            if concept is None or number is None:
                continue
            own = list(_modifiers(item.get("ContentSequence")))
            yield NumItem(
                concept,
                number[0],
                number[1],
                next((v for n, v in own if n == _FINDING_SITE), site),
                (*mods, *((n, v) for n, v in own if n != _FINDING_SITE)),
                any(n == _SELECTION_STATUS for n, _ in _properties(item)),
            )


def _properties(item: Dataset) -> Iterator[tuple[Code, Code | None]]:
    for child in item.get("ContentSequence") or []:
        if child.get("RelationshipType") == "HAS PROPERTIES":
            name = _code(child, "ConceptNameCodeSequence")
            if name is not None:
                yield name, _code(child, "ConceptCodeSequence")


def _pick(found: list[NumItem], concepts: tuple[Code, ...]) -> NumItem | None:
    for concept in concepts:  # in order of preference
        matching = [n for n in found if n.concept == concept]
        if matching:
            return next((n for n in matching if n.selected), matching[0])
    return None


def _convert(item: NumItem, units: dict[str, float], what: str) -> float:
    factor = units.get(item.unit)
    if factor is None:
        raise MalformedEchoReport(f"{what} in unit {item.unit[:16]!r}")
    return round(item.value * factor, 6)  # 61 mm is 6.1 cm, not 6.1000000000000005


def read_measurements(items: list[NumItem]) -> dict[str, float]:
    """The measurements TID 5200 NUM items give (in the units of agent.outcomes.measurements)."""
    out: dict[str, float] = {}
    if (lvef := _pick(items, _LVEF_CODES)) is not None:
        out[LVEF] = _convert(lvef, _PERCENT, "LVEF")
    if (lvidd := _pick(items, _LVIDD_CODES)) is not None:
        out[LVIDD] = _convert(lvidd, _LENGTH_CM, "LVIDd")
    if (lavi := _pick(items, _LAVI_CODES)) is not None:
        out[LAVI] = _convert(lavi, _INDEXED_VOLUME, "LA volume index")
    else:
        volume, bsa = _pick(items, _LA_VOLUME_CODES), _pick(items, (_BSA,))
        if volume is not None and bsa is not None and bsa.value > 0:
            out[LAVI] = _convert(volume, _VOLUME_ML, "LA volume") / _convert(bsa, _AREA_M2, "BSA")
    tr = _pick(items, (_TR_VMAX,))
    if tr is None:
        jets = [
            n for n in items if n.at(_TRICUSPID) and n.has_modifier(_FLOW_DIRECTION, _REGURGITANT)
        ]
        tr = _pick(jets, _PEAK_VELOCITY_CODES)
    if tr is not None:
        out[TR_VELOCITY] = _convert(tr, _VELOCITY_M_S, "TR peak velocity")
    if (pasp := _pick(items, _PASP_CODES)) is not None:
        out[PASP] = _convert(pasp, _PRESSURE, "RV systolic pressure")
    e_a = _pick(items, _E_A_CODES) or _pick([n for n in items if n.at(_MITRAL)], _E_A_MITRAL_CODES)
    if e_a is not None:
        out[E_A] = _convert(e_a, _RATIO, "E/A ratio")
    for name, value in out.items():
        low, high = NUMERIC_RANGES[name]
        if not low <= value <= high:
            raise MalformedEchoReport(f"{name} outside {low:g}-{high:g}")
    return out


def read_echo_report(ds: Dataset) -> EchoReport:
    """The report's identifiers, date and measurements.

    :class:`NotEchoReport` if the root is not TID 5200; :class:`MalformedEchoReport`
    if it is but cannot be read (no Patient ID, no date, a unit that is not the
    measurement's, a value out of any plausible range).
    """
    if not is_echo_report(ds):
        raise NotEchoReport("not an Echocardiography Procedure Report (TID 5200)")
    patient_id = str(ds.get("PatientID") or "").strip()
    if not patient_id:
        raise MalformedEchoReport("no Patient ID")
    exam_date = str(ds.get("StudyDate") or ds.get("ContentDate") or "").strip()
    if len(exam_date) != 8 or not exam_date.isdigit():
        raise MalformedEchoReport("no Study Date")
    try:
        items = list(_walk(ds.get("ContentSequence"), None, ()))
    except (AttributeError, TypeError, KeyError) as exc:
        raise MalformedEchoReport(f"content tree not readable ({type(exc).__name__})") from None
    return EchoReport(
        patient_id=patient_id,
        issuer=str(ds.get("IssuerOfPatientID") or "").strip() or None,
        accession=str(ds.get("AccessionNumber") or "").strip() or None,
        sex=sex_of(str(ds.get("PatientSex") or "")),
        exam_date=exam_date,
        measurements=read_measurements(items),
    )
