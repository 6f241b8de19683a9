"""Coded concepts of the reports (PS3.16), and the agent's private coding scheme.

Standard codes are taken from pydicom's concept dictionary (PS3.16 as shipped)
where it has them; the SNOMED CT codes the dictionary lacks are written out
here, and the seven findings without any standard concept use the private
scheme :data:`PRIVATE_SCHEME`, declared in every report's Coding Scheme
Identification Sequence (PS3.3 C.12.1.1.2.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from hyperct_core.tasks import TASK_NAMES

# A private coding scheme designator starts with "99" (PS3.16 Section 8).
PRIVATE_SCHEME = "99HYPERCT"
PRIVATE_SCHEME_NAME = "HyperCT Agent findings"
PRIVATE_SCHEME_OWNER = "HyperCT Agent project"

# PS3.3 C.8.23: Code Meaning is LO, at most 64 characters.
MAX_CODE_MEANING = 64

#: DCM 122157 "Probability" carries the model output (a value in [0, 1], UCUM "1").
#: DCM 111012 "Certainty of Finding" belongs to CID 6048, the axis labels of a
#: mammography CAD operating point, and is conventionally in percent; a
#: calibrated per-task probability is the generic concept.
PROBABILITY: Code = codes.DCM.Probability
NO_UNITS: Code = codes.UCUM.NoUnits
#: CID 240 Present-Absent (qualitative evaluation at the operating threshold).
PRESENT: Code = codes.SCT.Present
ABSENT: Code = codes.SCT.Absent
#: CID 240's third value: a task without a validated operating point is not assessed.
UNDETERMINED: Code = codes.SCT.Undetermined
RECOMMENDED_FOLLOW_UP: Code = codes.DCM.RecommendedFollowUp
TRANSTHORACIC_ECHO: Code = codes.SCT.TransthoracicEchocardiography
FINDING: Code = codes.DCM.Finding
PROCESSING_EQUIPMENT: Code = codes.DCM.ProcessingEquipment
#: Procedure reported of TID 1500 (row 4), from CID 100 "Quantitative Diagnostic
#: Imaging Procedure". CID 100 has no chest CT concept; LOINC 25045-6 "CT
#: unspecified body region" is its CT entry.
PROCEDURE_REPORTED: Code = codes.LN.CTUnspecifiedBodyRegion

# The readable report (TID 2000) uses concepts that are in both the current
# PS3.16 and the older tables strict validators ship (PixelMed's CID 7000 lists
# "CT Chest Report" as LOINC 11538-6, the current one as 24627-2; CID 7001 went
# from DCM headings to LOINC ones). Both context groups are extensible, so the
# DCM headings stay valid under the current standard.
#: Document title, CID 7000 "Diagnostic Imaging Report Document Title".
REPORT_TITLE: Code = codes.LN.DiagnosticImagingReport
#: TID 2000 section headings (CID 7001 "Diagnostic Imaging Report Heading").
IMPRESSIONS: Code = codes.DCM.Impressions
FINDINGS: Code = codes.DCM.Findings
RECOMMENDATIONS: Code = codes.DCM.Recommendations
CURRENT_PROCEDURE_DESCRIPTIONS: Code = codes.DCM.CurrentProcedureDescriptions
#: TID 2002 report elements (CID 7002 "Diagnostic Imaging Report Element").
IMPRESSION: Code = codes.DCM.Impression
RECOMMENDATION: Code = codes.DCM.Recommendation
PROCEDURE_DESCRIPTION: Code = codes.DCM.ProcedureDescription


@dataclass(frozen=True)
class FindingCoding:
    """How one task is coded in TID 1501: finding type and optional finding site."""

    finding_type: Code
    finding_site: Code | None = None

    @property
    def is_private(self) -> bool:
        return self.finding_type.scheme_designator == PRIVATE_SCHEME


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


_VASCULAR_CALCIFICATION: Code = codes.SCT.VascularCalcification

_CODING: dict[str, FindingCoding] = {
    # [D]: in PS3.16 / pydicom's concept dictionary.
    "cardiomegaly": FindingCoding(codes.SCT.Cardiomegaly),
    "pericardial_effusion": FindingCoding(codes.SCT.PericardialEffusion),
    "pleural_effusion": FindingCoding(codes.SCT.PleuralEffusion),
    "lymphadenopathy": FindingCoding(codes.SCT.Lymphadenopathy),
    "lung_nodule": FindingCoding(codes.SCT.Nodule, codes.SCT.Lung),
    "lung_opacity": FindingCoding(codes.DCM.AbnormalOpacity),
    "mosaic_attenuation_pattern": FindingCoding(codes.DCM.MosaicPattern),
    # Nearest concept: septal lines are the CT sign of interlobular septal thickening.
    "interlobular_septal_thickening": FindingCoding(codes.DCM.SeptalLines),
    "arterial_wall_calcification": FindingCoding(_VASCULAR_CALCIFICATION, codes.SCT.Aorta),
    "coronary_artery_wall_calcification": FindingCoding(
        _VASCULAR_CALCIFICATION, codes.SCT.CoronaryArtery
    ),
    "pulmonary_hypertension": FindingCoding(codes.SCT.PulmonaryHypertension),
    "reduced_lv_systolic_function": FindingCoding(
        codes.SCT.DepressionOfLeftVentricularSystolicFunction
    ),
    # [S]: SNOMED CT concepts that PS3.16 does not list.
    "emphysema": FindingCoding(_sct("87433001", "Pulmonary emphysema")),
    "atelectasis": FindingCoding(_sct("46621007", "Atelectasis")),
    "hiatal_hernia": FindingCoding(_sct("84089009", "Hiatal hernia")),
    "bronchiectasis": FindingCoding(_sct("12295008", "Bronchiectasis")),
    "consolidation": FindingCoding(_sct("95436008", "Lung consolidation")),
    "pulmonary_fibrotic_sequela": FindingCoding(_sct("51615001", "Fibrosis of lung")),
    # [P]: no standard concept; private codes, declared in the SR.
    "medical_material": FindingCoding(_private("HCT-MEDMAT", "Medical material")),
    "peribronchial_thickening": FindingCoding(
        _private("HCT-PERIBRONCH", "Peribronchial thickening")
    ),
    "reduced_rv_systolic_function": FindingCoding(
        _private("HCT-RVSYS", "Reduced right ventricular systolic function")
    ),
    "atrial_chamber_enlargement": FindingCoding(
        _private("HCT-ATRIALENL", "Atrial chamber enlargement")
    ),
    "ventricular_enlargement": FindingCoding(_private("HCT-VENTENL", "Ventricular enlargement")),
    "left_atrial_filling_pressure": FindingCoding(
        _private("HCT-LAFP", "Elevated left atrial filling pressure")
    ),
    "right_atrial_filling_pressure": FindingCoding(
        _private("HCT-RAFP", "Elevated right atrial filling pressure")
    ),
}

#: Task name -> coding, for all 25 tasks (checked at import).
FINDING_CODING: MappingProxyType[str, FindingCoding] = MappingProxyType(_CODING)

if set(_CODING) != set(TASK_NAMES):  # pragma: no cover - guards edits to the table
    raise RuntimeError("agent.report.codes: finding codes must cover exactly the 25 tasks")


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item for :data:`PRIVATE_SCHEME`.

    PS3.3 C.12.1.1.2.1: a private scheme is identified by designator, name and
    the organisation responsible for it.
    """
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        version="1",
        responsible_organization=PRIVATE_SCHEME_OWNER,
    )


def all_codes() -> list[Code]:
    """Every code this package can put into a report (for meaning-length checks)."""
    found = [
        PROBABILITY,
        NO_UNITS,
        PRESENT,
        ABSENT,
        UNDETERMINED,
        RECOMMENDED_FOLLOW_UP,
        TRANSTHORACIC_ECHO,
        FINDING,
        PROCESSING_EQUIPMENT,
        PROCEDURE_REPORTED,
        REPORT_TITLE,
        IMPRESSIONS,
        FINDINGS,
        RECOMMENDATIONS,
        CURRENT_PROCEDURE_DESCRIPTIONS,
        IMPRESSION,
        RECOMMENDATION,
        PROCEDURE_DESCRIPTION,
    ]
    for coding in FINDING_CODING.values():
        found.append(coding.finding_type)
        if coding.finding_site is not None:
            found.append(coding.finding_site)
    return found
