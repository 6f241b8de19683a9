"""The record storage keeps of one received instance, built from its checked header."""

from __future__ import annotations

from datetime import datetime

from agent.dicom.header import InstanceHeader
from agent.dicom.uid import checked_uid
from agent.pseudonym import Pseudonymizer
from storage.ingest import InstanceRecord


def instance_record(
    header: InstanceHeader,
    *,
    transfer_syntax_uid: str,
    rel_path: str,
    size_bytes: int,
    sha256: str,
    calling_ae: str | None,
    received_at: datetime,
    pseudonymizer: Pseudonymizer | None = None,
) -> InstanceRecord:
    """``header`` as storage records it, with where and how its bytes were kept.

    The header's UIDs passed the one UID rule when it was built; the
    transfer syntax is held to the same rule (PS3.5 9.1) here, so storage
    never sees a UID the agent would refuse. The patient's identifiers
    become keyed pseudonyms here (none without ``pseudonymizer``): storage
    never sees them.
    """
    patient, accession = (
        pseudonymizer.of(header.identity) if pseudonymizer is not None else (None, None)
    )
    return InstanceRecord(
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=checked_uid(str(transfer_syntax_uid), "Transfer Syntax UID"),
        modality=header.modality,
        series_number=header.series_number,
        series_description=header.series_description,
        body_part_examined=header.body_part_examined,
        study_date=header.study_date,
        instance_number=header.instance_number,
        image_position=header.image_position,
        image_orientation=header.image_orientation,
        pixel_spacing=header.pixel_spacing,
        slice_thickness=header.slice_thickness,
        slice_position=header.slice_position,
        rel_path=rel_path,
        size_bytes=size_bytes,
        sha256=sha256,
        calling_ae=calling_ae,
        received_at=received_at,
        study_description=header.study_description,
        image_type=header.image_type,
        protocol_name=header.protocol_name,
        contrast_agent=header.contrast_agent,
        requested_procedure=header.requested_procedure,
        number_of_frames=header.number_of_frames,
        patient_pseudonym=patient,
        accession_pseudonym=accession,
        manufacturer=header.manufacturer,
        kvp=header.kvp,
        convolution_kernel=header.convolution_kernel,
    )
