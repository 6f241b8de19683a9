"""The machine-readable report: a TID 1500 Comprehensive 3D SR (PS3.16 A.35.1).

Content tree (every container SEPARATE, so a renderer names each item)::

    Imaging Measurement Report (TID 1500)
      language, observation context: the agent as device observer (TID 1004)
      Procedure reported: CT unspecified body region (LOINC 25045-6, CID 100)
      Imaging Measurements
        an echo referral group, first, only when the rule fires:
          Recommended Follow-up = Transthoracic echocardiography (left out for a
            suppressed repeat: the echo is not recommended again)
          <finding type of each triggering task> = Present
          algorithm parameters: the rule and the triggering task names; for a
            repeat in the patient's episode, previously_recommended_on=DATE and
            repeat_mode, with the tracking identifier saying so in words
        one Measurement Group (TID 1501) per task, study-level (no image regions):
          tracking identifier (finding name) and tracking unique identifier
          finding type, finding site where the task has one
          algorithm identification (TID 4019): name, version, task and threshold
          Probability (DCM 122157), UCUM "1": 3 decimals in Numeric Value, the
            model's full-precision output in Floating Point Value (PS3.3 C.18.1)
          <finding type> = Present | Absent at the threshold, or Undetermined
            when the card has no operating point for the task (CID 240)

The source series is cited once, in the Current Requested Procedure Evidence
Sequence (PS3.3 C.17.2); the groups carry no source-image lists, which keeps a
report on a 300-slice series at tens of kilobytes.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DS

from agent import __version__
from agent.report import codes as rc
from agent.report.inputs import Findings, ModelIdentity, ReportInputError
from agent.report.referral import ReferralDecision, decision_for, readable_date
from agent.report.source import carried_source
from agent.report.uids import ReportUIDs
from hyperct_core.tasks import task_by_name

MANUFACTURER = "HyperCT Agent project"
DEVICE_NAME = "HyperCT Agent"
DEMO_MARK = "DEMO - not for clinical use"
NOT_VERIFIED = "Generated automatically by software; not verified by a physician. Not a diagnosis."
REFERRAL_TRACKING_NAME = "Echocardiography referral"
REFERRAL_ALGORITHM = "HyperCT echo referral rule"
#: Decimals of a probability as a reader sees it (Numeric Value).
PROBABILITY_DECIMALS = 3


def readable_probability(value: float) -> str:
    """A probability as the reports print it: 3 decimals."""
    return f"{value:.{PROBABILITY_DECIMALS}f}"


def separate_containers(content: Dataset) -> None:
    """Make every CONTAINER in ``content`` SEPARATE (PS3.3 C.18.8).

    A renderer joins the items of a CONTINUOUS container into one run of text
    and drops their concept names ("Transthoracic echocardiography Present");
    SEPARATE shows each item as "name = value" and section headings as headings.
    """
    if content.get("ValueType") == "CONTAINER":
        content.ContinuityOfContent = "SEPARATE"
    for item in content.get("ContentSequence", []):
        separate_containers(item)


def series_description(model: ModelIdentity) -> str:
    """Series Description (LO, <= 64) of the report series."""
    text = "HyperCT AI findings, unverified"
    return f"{text} - {DEMO_MARK}" if model.is_demo else text


def algorithm_name(model: ModelIdentity) -> str:
    """Algorithm Name of TID 4019; a demo model says so here, where tree viewers show it."""
    return f"{model.name} ({DEMO_MARK})" if model.is_demo else model.name


def software_versions(model: ModelIdentity) -> list[str]:
    return [f"hyperct-agent {__version__}", f"{model.name} {model.version}"]


def device_observer(model: ModelIdentity) -> hd.sr.ObservationContext:
    """Observation context with the agent as device observer (TID 1002/1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=model.device_uid,
        name=DEVICE_NAME,
        manufacturer_name=MANUFACTURER,
        model_name=algorithm_name(model),
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def processing_equipment(model: ModelIdentity) -> hd.ContributingEquipment:
    """Contributing Equipment Sequence item, purpose Processing Equipment (PS3.3 C.12.1).

    highdicom has no argument for Device UID (0018,1002), which this macro allows;
    it is set on the item so that the equipment names the model's weights.
    """
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=rc.PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name,
        software_versions=software_versions(model),
        contribution_description=f"AI screening by {algorithm_name(model)} {model.version}",
    )
    item.DeviceUID = model.device_uid
    return item


class TaskMeasurementGroup(hd.sr.MeasurementsAndQualitativeEvaluations):
    """TID 1501 Measurement and Qualitative Evaluation Group for one HyperCT task.

    Study-level: the finding is about the whole CT, so no image region and no
    source-image list (PS3.16 TID 1501 row "Source images" is optional).
    """

    def __init__(self, task: str, findings: Findings, model: ModelIdentity, uids: ReportUIDs):
        coding = rc.FINDING_CODING[task]
        assessed = findings.is_assessed(task)
        threshold = (
            f"threshold={findings.thresholds[task]:g}" if assessed else "not assessed: no threshold"
        )
        algorithm = hd.sr.AlgorithmIdentification(
            name=algorithm_name(model),
            version=model.version,
            parameters=[f"task={task}", threshold],
        )
        sites = (
            [hd.sr.FindingSite(anatomic_location=coding.finding_site)]
            if coding.finding_site is not None
            else None
        )
        value = findings.probability(task)
        probability = hd.sr.Measurement(name=rc.PROBABILITY, value=value, unit=rc.NO_UNITS)
        # What a renderer prints is Numeric Value: 3 decimals. highdicom keeps the
        # float in Floating Point Value, which readers of the number use.
        measured = probability[0].MeasuredValueSequence[0]
        measured.NumericValue = DS(readable_probability(value))
        measured.FloatingPointValue = value
        if not assessed:
            result = rc.UNDETERMINED
        else:
            result = rc.PRESENT if findings.is_present(task) else rc.ABSENT
        evaluation = hd.sr.QualitativeEvaluation(name=coding.finding_type, value=result)
        super().__init__(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.tracking_uid(task),
                identifier=task_by_name(task).display_name,
            ),
            finding_type=coding.finding_type,
            finding_sites=sites,
            algorithm_id=algorithm,
            measurements=[probability],
            qualitative_evaluations=[evaluation],
        )


class EchoReferralGroup(hd.sr.MeasurementsAndQualitativeEvaluations):
    """TID 1501 group recommending transthoracic echocardiography (DCM 111053).

    Lists each triggering task as ``<finding type> = Present``; the exact rule
    and the triggering task names are the group's algorithm parameters
    (TID 4019), since two tasks can share a finding code.
    """

    def __init__(self, decision: ReferralDecision, model: ModelIdentity, uids: ReportUIDs):
        triggering = decision.fired
        if not triggering:
            raise ReportInputError("echo referral group: the rule did not fire")
        parameters = [
            "rule=any referral task probability >= its threshold",
            *decision.parameters(),
            f"triggered_by={','.join(triggering)}",
        ]
        if decision.repeat:
            # TID 1501 has no row for a date: the episode is stated as parameters (TID 4019).
            parameters += [
                f"previously_recommended_on={readable_date(decision.repeat_of)}",
                f"repeat_mode={decision.repeat_mode}",
            ]
        algorithm = hd.sr.AlgorithmIdentification(
            name=REFERRAL_ALGORITHM, version=model.version, parameters=parameters
        )
        # A suppressed repeat recommends nothing: no Recommended Follow-up row, and a
        # tracking name that says the echo was recommended before.
        evaluations = (
            []
            if decision.suppressed
            else [hd.sr.QualitativeEvaluation(rc.RECOMMENDED_FOLLOW_UP, rc.TRANSTHORACIC_ECHO)]
        )
        # Each trigger as "<finding> = Present", the same statement as in its task group.
        # Not as "Finding = <code>": DCM 121071 "Finding" is TID 1501's finding type row.
        evaluations += [
            hd.sr.QualitativeEvaluation(rc.FINDING_CODING[t].finding_type, rc.PRESENT)
            for t in triggering
        ]
        super().__init__(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.tracking_uid("echo-referral"),
                identifier=decision.repeat_line() or REFERRAL_TRACKING_NAME,
            ),
            algorithm_id=algorithm,
            qualitative_evaluations=evaluations,
        )


def prepare_source(source: Sequence[Dataset]) -> list[Dataset]:
    """Check that ``source`` is one series of one study; return it as evidence.

    highdicom copies the patient, study and equipment attributes of the first
    dataset into the SR; it gets them vetted and decoded instead
    (:func:`agent.report.source.carried_source`): a character set or an
    invalid value in the source never stops a report, and the SR is UTF-8.
    """
    if not source:
        raise ReportInputError("report: no source images")
    if any("StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds for ds in source):
        raise ReportInputError("report: a source image has no Study or Series Instance UID")
    study = {str(ds.StudyInstanceUID) for ds in source}
    series = {str(ds.SeriesInstanceUID) for ds in source}
    if len(study) != 1 or len(series) != 1:
        raise ReportInputError("report: source images must be one series of one study")
    evidence = list(source)
    evidence[0] = carried_source(evidence[0]).dataset  # the caller's dataset stays as it was
    return evidence


def measurement_report(
    source: Sequence[Dataset],
    findings: Findings,
    model: ModelIdentity,
    *,
    uids: ReportUIDs,
    series_number: int,
    instance_number: int = 1,
    created: datetime.datetime | None = None,
    decision: ReferralDecision | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Comprehensive 3D SR of one screened series.

    ``source`` are the series' CT datasets (headers suffice); each is cited as
    evidence and the first supplies the patient and study attributes.
    ``decision`` is the referral decided at screening (decided here if None).
    """
    evidence = prepare_source(source)
    # The referral is the conclusion: first, so a reader of the tree meets it first.
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    decided = decision_for(findings, decision)
    if decided.fired:
        groups.append(EchoReferralGroup(decided, model, uids))
    groups += [TaskMeasurementGroup(task, findings, model, uids) for task in findings.task_names]
    report = hd.sr.MeasurementReport(
        observation_context=device_observer(model),
        procedure_reported=rc.PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    content = report[0]
    separate_containers(content)
    document = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content,
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.measurement_report_uid,
        instance_number=instance_number,
        coding_schemes=[rc.private_coding_scheme()],
        **document_attributes(model, created),
    )
    set_device_uid(document, model)
    return document


def set_device_uid(document: Dataset, model: ModelIdentity) -> None:
    """General Equipment Device UID (PS3.3 C.7.5.1): the model that made this document.

    highdicom's constructors take no Device UID, so it is set afterwards.
    """
    document.DeviceUID = model.device_uid


def document_attributes(model: ModelIdentity, created: datetime.datetime | None) -> dict[str, Any]:
    """Keyword arguments shared by both report documents (highdicom SR constructors)."""
    now = created or datetime.datetime.now()
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": model.name,
        "software_versions": software_versions(model),
        "series_description": series_description(model),
        "is_complete": True,
        # Final: this revision's content never changes (a change is a new revision).
        # Physician review is carried by VerificationFlag, which stays UNVERIFIED.
        "is_final": True,
        "is_verified": False,
        "contributing_equipment": [processing_equipment(model)],
        "content_date": now.date(),
        "content_time": now.time(),
        "series_date": now.date(),
        "series_time": now.time(),
    }
