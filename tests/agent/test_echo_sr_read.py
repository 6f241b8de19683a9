"""Reading TID 5200 reports: code variants devices send, units, and what is not read."""

from __future__ import annotations

import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code, snomed_mapping

from agent.outcomes.echo_sr import MalformedEchoReport, NotEchoReport, read_echo_report
from tests.support.echo_sr import EchoStudy, echo_report, num, section


def read(*sections: object, **study: str) -> dict[str, float]:
    report = echo_report(EchoStudy("PID", **study), sections=list(sections))  # type: ignore[arg-type]
    return read_echo_report(report).measurements


def srt(code: Code) -> Code:
    """The retired SRT form of an SCT code, from pydicom's copy of the PS3.16 mapping."""
    return Code(snomed_mapping["SCT"][code.value], "SRT", code.meaning)


def test_retired_srt_codes_read_as_their_sct_successors() -> None:
    # Older devices send Finding Site G-C0E3, Tricuspid Valve T-35100, Direction of
    # Flow G-C048 and Regurgitant Flow G-0367.
    flow = (srt(codes.SCT.DirectionOfFlow), srt(codes.SCT.RegurgitantFlow))
    assert flow[1].value == "G-0367"
    tv = section(srt(codes.SCT.TricuspidValve), num(codes.LN.PeakBloodVelocity, 3.6, "m/s", flow))
    site = tv.ContentSequence[0].ConceptNameCodeSequence[0]
    site.CodeValue, site.CodingSchemeDesignator = srt(codes.SCT.FindingSite).value, "SRT"
    assert site.CodeValue == "G-C0E3"
    assert read(tv) == {"tr_velocity_m_s": 3.6}


def test_tricuspid_velocity_without_regurgitant_flow_is_not_tr() -> None:
    inflow = section(codes.SCT.TricuspidValve, num(codes.LN.PeakBloodVelocity, 0.6, "m/s"))
    jet_elsewhere = section(
        codes.SCT.MitralValve,
        num(
            codes.LN.PeakBloodVelocity,
            5.0,
            "m/s",
            (codes.SCT.DirectionOfFlow, codes.SCT.RegurgitantFlow),
        ),
    )
    assert read(inflow, jet_elsewhere) == {}


def test_pre_coordinated_codes_and_units() -> None:
    got = read(
        section(
            codes.SCT.LeftVentricle,
            num(codes.LN.LeftVentricularEjectionFractionBiplaneMOD, 0.55, "{ratio}"),
            num(codes.LN.LeftVentricularInternalDiastolicDimension2D, 0.052, "m"),
        ),
        section(
            codes.SCT.LeftAtrium,
            num(codes.LN.LeftAtrialEndSystolicVolumeBiplaneMODBSA, 36, "ml/m2"),
        ),
        section(codes.SCT.TricuspidValve, num(codes.LN.TricuspidRegurgitationVmax, 2900, "mm/s")),
        section(codes.SCT.MitralValve, num(codes.LN.PeakEWavePeakAWaveByUS, 2.2, "1")),
    )
    assert got == {
        "lvef_percent": 55.0,
        "lvidd_cm": 5.2,
        "lavi_ml_m2": 36.0,
        "tr_velocity_m_s": 2.9,
        "e_a_ratio": 2.2,
    }


def test_selected_value_is_preferred() -> None:
    plain = num(codes.LN.LeftVentricularEjectionFractionByUS, 40, "%")
    chosen = num(codes.LN.LeftVentricularEjectionFractionByUS, 55, "%")
    status = num(codes.LN.HeartRate, 60, "{H.B.}/min")  # any HAS PROPERTIES child
    status.RelationshipType = "HAS PROPERTIES"
    status.ConceptNameCodeSequence[0].CodeValue = codes.DCM.SelectionStatus.value
    status.ConceptNameCodeSequence[0].CodingSchemeDesignator = "DCM"
    chosen.ContentSequence = [status]
    assert read(section(codes.SCT.LeftVentricle, plain, chosen)) == {"lvef_percent": 55.0}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (num(codes.LN.LeftVentricularEjectionFractionByUS, 45, "mm"), "LVEF in unit 'mm'"),
        (num(codes.LN.LeftVentricularEjectionFractionByUS, 450, "%"), "lvef_percent outside"),
        (num(codes.SCT.RightVentricularPeakSystolicPressure, 40, "kPa"), "in unit 'kPa'"),
    ],
)
def test_malformed(item: object, message: str) -> None:
    with pytest.raises(MalformedEchoReport, match=message):
        read(section(codes.SCT.LeftVentricle, item))  # type: ignore[arg-type]


def test_not_an_echo_report_and_no_patient() -> None:
    other = echo_report(EchoStudy("PID"), sections=[], title=codes.DCM.ImagingMeasurementReport)
    with pytest.raises(NotEchoReport):
        read_echo_report(other)
    nobody = echo_report(EchoStudy("PID"), sections=[])
    nobody.PatientID = ""
    with pytest.raises(MalformedEchoReport, match="no Patient ID"):
        read_echo_report(nobody)
