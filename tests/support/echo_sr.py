"""TID 5200 Echocardiography Procedure Reports built as an echo system sends them.

highdicom builds a Comprehensive SR whose evidence is one echo image of the same
study (as a device references the loops it measured on); the content follows PS3.16
TID 5200: Patient Characteristics (TID 5201, Body Surface Area), then one Findings
section (TID 5202) per structure with its Finding Site, each holding a Measurement
Group of TID 5203 measurements with their UCUM units and modifiers. Codes come from
pydicom's PS3.16 dictionaries, never typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UltrasoundImageStorage, generate_uid

CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
HAS_CONCEPT_MOD = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD
HAS_OBS_CONTEXT = hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT


@dataclass
class EchoStudy:
    """Who and when: the values every object of the echo study carries."""

    patient_id: str
    patient_name: str = "ECHO^PATIENT"
    birth_date: str = "19500101"
    sex: str = "M"
    accession: str = ""
    issuer: str = ""
    study_date: str = "20260110"
    study_uid: str = field(default_factory=generate_uid)


def echo_image(study: EchoStudy) -> Dataset:
    """The header of one echo image of the study: the report's evidence."""
    ds = Dataset()
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    if study.issuer:
        ds.IssuerOfPatientID = study.issuer
    ds.AccessionNumber = study.accession
    ds.StudyID = "1"
    ds.StudyDate = study.study_date
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.Modality = "US"
    return ds


def num(concept: Code, value: float, unit: str, *modifiers: tuple[Code, Code]) -> Dataset:
    item = hd.sr.NumContentItem(
        name=concept,
        value=value,
        unit=Code(unit, "UCUM", unit),
        relationship_type=CONTAINS,
    )
    if modifiers:
        item.ContentSequence = [
            hd.sr.CodeContentItem(name=n, value=v, relationship_type=HAS_CONCEPT_MOD)
            for n, v in modifiers
        ]
    return item


def section(site: Code, *measurements: Dataset) -> Dataset:
    """TID 5202 Echo Section: Findings, its Finding Site, one Measurement Group."""
    findings = hd.sr.ContainerContentItem(name=codes.DCM.Findings, relationship_type=CONTAINS)
    group = hd.sr.ContainerContentItem(name=codes.DCM.MeasurementGroup, relationship_type=CONTAINS)
    group.ContentSequence = list(measurements)
    findings.ContentSequence = [
        hd.sr.CodeContentItem(
            name=codes.SCT.FindingSite, value=site, relationship_type=HAS_CONCEPT_MOD
        ),
        group,
    ]
    return findings


def standard_sections(
    *,
    lvef: float = 45.0,
    lvidd_mm: float = 61.0,
    la_volume_ml: float = 80.0,
    bsa_m2: float = 2.0,
    tr_cm_s: float = 310.0,
    rvsp_mmhg: float = 42.0,
    e_a: float = 1.1,
) -> list[Dataset]:
    """Patient Characteristics and the LV, LA, RV, MV and TV sections with these values."""
    patient = hd.sr.ContainerContentItem(
        name=codes.DCM.PatientCharacteristics, relationship_type=CONTAINS
    )
    patient.ContentSequence = [num(codes.LN.BSA, bsa_m2, "m2")]
    regurgitant = (codes.SCT.DirectionOfFlow, codes.SCT.RegurgitantFlow)
    return [
        patient,
        section(
            codes.SCT.LeftVentricle,
            num(codes.LN.LeftVentricleInternalEndDiastolicDimension, lvidd_mm, "mm"),
            num(codes.LN.LeftVentricularEjectionFractionByUS, lvef, "%"),
        ),
        section(codes.SCT.LeftAtrium, num(codes.SCT.LeftAtriumSystolicVolume, la_volume_ml, "ml")),
        section(
            codes.SCT.RightVentricle,
            num(codes.SCT.RightVentricularPeakSystolicPressure, rvsp_mmhg, "mm[Hg]"),
        ),
        section(codes.SCT.MitralValve, num(codes.LN.MitralValveEToARatio, e_a, "{ratio}")),
        section(
            codes.SCT.TricuspidValve,
            num(codes.LN.PeakBloodVelocity, tr_cm_s, "cm/s", regurgitant),
        ),
    ]


def echo_report(
    study: EchoStudy,
    sections: list[Dataset] | None = None,
    title: Code = codes.DCM.AdultEchocardiographyProcedureReport,
    sop_class: type[hd.sr.sop._SR] = hd.sr.ComprehensiveSR,
) -> Dataset:
    """A complete report (title 125200 unless ``title`` says otherwise)."""
    root = hd.sr.ContainerContentItem(name=title, template_id="5200")
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), manufacturer_name="Echo Vendor", model_name="EV-1"
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=device)
    root.ContentSequence = [*context, *(standard_sections() if sections is None else sections)]
    report = sop_class(
        evidence=[echo_image(study)],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=90,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Echo Vendor",
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name="CARDIO^READER",
        verifying_organization="Echo Lab",
    )
    report.ContentDate = study.study_date
    return report
