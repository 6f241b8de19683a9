"""The summary image: one page a clinician reads in any image viewer.

Many PACS viewers show images only, and show a TID 1500 SR as a tree or not
at all, so the result is also sent as a Secondary Capture image (PS3.3 A.8.1,
SC Image Storage) in the CT's study, in a series of its own (an SC image's
series has modality OT, the SRs' series SR; PS3.3 C.7.3.1 allows one modality
per series). Sites that prefer documents get the same page as an Encapsulated
PDF (PS3.3 A.45.1) instead (``[reports] summary_format = "pdf"``).

The page, top to bottom: the UNVERIFIED mark (and DEMO mark for a model that
was not validated), the conclusion (echocardiography recommended and why, or
no referral), the positive findings beside a key image (an axial slice
through the heart in a mediastinal window, W400/L40), the table of every task
with its probability and threshold, and the model's name and version. It
carries no patient identification in its pixels (Burned In Annotation NO);
the viewer shows the patient from the header, as for the CT.

UIDs derive from (source series, model, revision) like the SRs'
(:mod:`agent.report.uids`), so a resend never makes a second object.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from agent.report.inputs import Findings, ModelIdentity, ReportInputError
from agent.report.referral import ReferralDecision, decision_for
from agent.report.sr import (
    DEMO_MARK,
    MANUFACTURER,
    NOT_VERIFIED,
    prepare_source,
    processing_equipment,
    set_device_uid,
    software_versions,
)
from agent.report.uids import ReportUIDs
from hyperct_core.tasks import task_by_name

SummaryFormat = Literal["secondary_capture", "pdf"]

#: Page size in pixels (columns, rows): portrait, readable on a 1080p viewer at fit-to-window.
PAGE = (1024, 1280)
#: Mediastinal window of the key image (HU): width 400, level 40.
WINDOW_WIDTH, WINDOW_LEVEL = 400.0, 40.0

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
#: LOINC 18748-4 "Diagnostic imaging report", the document title code of an imaging report.
_REPORT_TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")

# Colours (RGB): dark text on white, a red band for marks, amber/grey conclusions.
_INK = (20, 20, 20)
_MUTED = (95, 95, 95)
_RULE = (200, 200, 200)
_MARK = (176, 0, 32)
_REFER = (255, 214, 153)
_NO_REFER = (226, 232, 240)
_PRESENT_ROW = (255, 236, 204)


@dataclass(frozen=True)
class KeyImage:
    """One axial CT slice in HU, rows anterior to posterior, columns patient right to left.

    Attributes:
        hu: 2-D array of Hounsfield units.
        pixel_spacing: (row spacing, column spacing) in mm.
        slice_index: Index of the slice from inferior (0).
        slice_count: Slices in the volume it came from.
    """

    hu: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_index: int
    slice_count: int


def choose_heart_slice(hu: np.ndarray) -> int:
    """Index of the axial slice through the heart in an LPS volume ``(slices, rows, columns)``.

    The heart is the largest soft-tissue structure (0-100 HU, unenhanced blood
    and myocardium) lying between the two lungs: per slice, count soft-tissue
    voxels with lung (below -400 HU) both to their right and to their left in
    the same row, smooth along z, take the maximum. Chest wall, spine and
    liver have no lung on both sides. A volume without lungs gives its middle slice.
    """
    if hu.ndim != 3 or hu.shape[0] == 0:
        raise ReportInputError("key image: the volume must be 3-D (slices, rows, columns)")
    # Every other pixel or so in-plane is plenty to find a structure 10 cm wide.
    step = max(1, hu.shape[2] // 256)
    hu = hu[:, ::step, ::step]
    lung = hu < -400
    # Only lung inside the body counts: air outside is reached from the image edges.
    soft = (hu >= 0) & (hu <= 100)
    lung &= _inside_body(hu)
    lung_right = np.maximum.accumulate(lung, axis=2)
    lung_left = np.maximum.accumulate(lung[:, :, ::-1], axis=2)[:, :, ::-1]
    score = (soft & lung_right & lung_left).sum(axis=(1, 2)).astype(float)
    if not score.any():
        return hu.shape[0] // 2
    kernel = np.ones(3) / 3.0
    smoothed = np.convolve(score, kernel, mode="same")
    return int(np.argmax(smoothed))


def _inside_body(hu: np.ndarray) -> np.ndarray:
    """Voxels with body (above -500 HU) somewhere on both sides in their row."""
    body = hu > -500
    left = np.maximum.accumulate(body, axis=2)
    right = np.maximum.accumulate(body[:, :, ::-1], axis=2)[:, :, ::-1]
    return left & right


def key_image_from_volume(hu: np.ndarray, spacing: Sequence[float]) -> KeyImage:
    """The heart slice of an LPS HU volume, with its in-plane pixel spacing."""
    index = choose_heart_slice(hu)
    return KeyImage(
        hu=np.array(hu[index], dtype=np.float32),
        pixel_spacing=(float(spacing[1]), float(spacing[2])),
        slice_index=index,
        slice_count=int(hu.shape[0]),
    )


# --------------------------------------------------------------------------- rendering

_FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),  # Debian/Ubuntu fonts-dejavu-core
    Path("/usr/share/fonts/dejavu"),  # Fedora, Arch
    Path("/usr/share/fonts/TTF"),
)


@lru_cache(maxsize=32)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where installed, else Pillow's bundled scalable font (Pillow >= 10.1)."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in _FONT_DIRS:
        if (folder / name).is_file():
            return ImageFont.truetype(str(folder / name), size)
    return ImageFont.load_default(size)


def _windowed(key: KeyImage, box: tuple[int, int]) -> Image.Image:
    """The key slice in W400/L40 greyscale, resized to fit ``box`` at its true aspect."""
    low = WINDOW_LEVEL - WINDOW_WIDTH / 2
    grey = np.clip((key.hu - low) / WINDOW_WIDTH * 255.0, 0, 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L")
    rows, columns = grey.shape
    height_mm, width_mm = rows * key.pixel_spacing[0], columns * key.pixel_spacing[1]
    scale = min(box[0] / width_mm, box[1] / height_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    return image.resize(size, Image.Resampling.BICUBIC).convert("RGB")


def _wrap(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    if line:
        lines.append(line)
    return lines


def _assessed(findings: Findings, task: str) -> bool:
    """A task is assessed where a threshold is in force for it (an operating point)."""
    return task in findings.thresholds


def conclusion(findings: Findings, decision: ReferralDecision | None = None) -> tuple[str, str]:
    """The conclusion line and why: the echo recommendation first, as a reader needs it."""
    decided = decision_for(findings, decision)
    fired, threshold = decided.fired, dict(decided.thresholds)
    if fired:
        names = ", ".join(task_by_name(t).display_name for t in fired)
        why = "; ".join(
            f"{task_by_name(t).display_name} {findings.probability(t):.2f} "
            f"\u2265 threshold {threshold[t]:.2f}"
            for t in fired
        )
        repeat = decided.repeat_line()
        if decided.suppressed and repeat:
            return repeat, f"Why: {why}; one referral per patient episode."
        if repeat:
            return f"Echocardiography recommended: {names}", f"Why: {why}. {repeat}."
        return f"Echocardiography recommended: {names}", f"Why: {why}."
    if not decided.assessed:
        # As the readable report says it: not assessed is no "no".
        return (
            "Echocardiography referral not assessed",
            "Why: this model has no validated operating point for any "
            "echocardiography-derived cardiac condition.",
        )
    return (
        "No echocardiography referral",
        "Why: no echocardiography-derived cardiac condition at or above its threshold.",
    )


def render_summary(
    findings: Findings,
    model: ModelIdentity,
    key: KeyImage | None,
    *,
    created: datetime.datetime,
    decision: ReferralDecision | None = None,
) -> Image.Image:
    """The summary page as an RGB image of :data:`PAGE` size."""
    decided = decision_for(findings, decision)
    page = Image.new("RGB", PAGE, "white")
    draw = ImageDraw.Draw(page)
    width = PAGE[0]
    margin = 32
    inner = width - 2 * margin

    # Marks first: whatever else a reader sees, this is unverified (and maybe a demo).
    marks = "UNVERIFIED - AI result, not reviewed by a physician"
    if model.is_demo:
        marks = f"{DEMO_MARK.upper()}  |  {marks}"
    draw.rectangle((0, 0, width, 44), fill=_MARK)
    draw.text((width / 2, 22), marks, font=_font(19, bold=True), fill="white", anchor="mm")
    y = 58
    draw.text(
        (margin, y), "HyperCT chest CT screening summary", font=_font(28, bold=True), fill=_INK
    )
    y += 40
    when = created.strftime("%Y-%m-%d %H:%M")
    draw.text(
        (margin, y),
        f"Model {model.name} {model.version}  |  created {when}",
        font=_font(16),
        fill=_MUTED,
    )
    y += 32

    # The conclusion banner.
    headline, why = conclusion(findings, decided)
    fired = decided.recommended
    head_font, why_font = _font(26, bold=True), _font(17)
    head_lines = _wrap(draw, headline, head_font, inner - 32)
    why_lines = _wrap(draw, why, why_font, inner - 32)
    banner_h = 20 + 34 * len(head_lines) + 24 * len(why_lines) + 12
    draw.rectangle((margin, y, width - margin, y + banner_h), fill=_REFER if fired else _NO_REFER)
    ty = y + 14
    for line in head_lines:
        draw.text((margin + 16, ty), line, font=head_font, fill=_INK)
        ty += 34
    for line in why_lines:
        draw.text((margin + 16, ty), line, font=why_font, fill=_INK)
        ty += 24
    y += banner_h + 20

    # Key image (left) and positive findings (right).
    box = (360, 360)
    top = y
    if key is not None:
        tile = _windowed(key, box)
        ox = margin + (box[0] - tile.width) // 2
        oy = top + (box[1] - tile.height) // 2
        draw.rectangle((margin, top, margin + box[0], top + box[1]), fill="black")
        page.paste(tile, (ox, oy))
        small = _font(16, bold=True)
        draw.text((margin + 8, top + box[1] / 2), "R", font=small, fill="white", anchor="lm")
        draw.text(
            (margin + box[0] - 8, top + box[1] / 2), "L", font=small, fill="white", anchor="rm"
        )
        caption = (
            f"Key image (left): axial slice {key.slice_index + 1} of {key.slice_count} "
            f"through the heart, mediastinal window W{WINDOW_WIDTH:.0f}/L{WINDOW_LEVEL:.0f}."
        )
    else:
        draw.rectangle((margin, top, margin + box[0], top + box[1]), outline=_RULE, width=2)
        draw.text(
            (margin + box[0] / 2, top + box[1] / 2),
            "no key image",
            font=_font(18),
            fill=_MUTED,
            anchor="mm",
        )
        caption = "Key image: not available for this series."

    x = margin + box[0] + 28
    column = width - margin - x
    draw.text((x, top), "Positive findings", font=_font(20, bold=True), fill=_INK)
    fy = top + 34
    positives = [
        t for t in findings.task_names if _assessed(findings, t) and findings.is_present(t)
    ]
    item_font = _font(18)
    if not positives:
        draw.text((x, fy), "None at the operating thresholds.", font=item_font, fill=_INK)
        fy += 28
    for task in positives:
        text = (
            f"{task_by_name(task).display_name}: {findings.probability(task):.2f} "
            f"(threshold {findings.thresholds[task]:.2f})"
        )
        for i, line in enumerate(_wrap(draw, text, item_font, column - 20)):
            if i == 0:
                draw.text((x, fy), "\u2022", font=item_font, fill=_INK)
            draw.text((x + 18, fy), line, font=item_font, fill=_INK)
            fy += 26
    fy += 10
    note = (
        "Present means the model's probability is at or above the task's operating "
        "threshold. Probabilities are model outputs, not calibrated risks."
    )
    for text in (note, caption):
        for line in _wrap(draw, text, _font(15), column):
            draw.text((x, fy), line, font=_font(15), fill=_MUTED)
            fy += 21
        fy += 8
    y = max(top + box[1], fy) + 14

    # The full table.
    row_h = 22
    cols = (margin + 8, margin + 440, margin + 600, margin + 720, margin + 835)
    header_font, cell_font, bold_font = _font(15, bold=True), _font(15), _font(15, bold=True)
    for cx, name in zip(
        cols, ("Finding", "Group", "Probability", "Threshold", "Result"), strict=True
    ):
        draw.text((cx, y + 3), name, font=header_font, fill=_INK)
    y += row_h
    draw.line((margin, y, width - margin, y), fill=_INK, width=2)
    for task in findings.task_names:
        info = task_by_name(task)
        assessed = _assessed(findings, task)
        present = assessed and findings.is_present(task)
        if present:
            draw.rectangle((margin, y + 1, width - margin, y + row_h - 1), fill=_PRESENT_ROW)
        font = bold_font if present else cell_font
        group = "echo-derived" if info.group == "opportunistic" else "conventional"
        # A task without an operating point is "not assessed", never "Absent".
        cells = (
            info.display_name,
            group,
            f"{findings.probability(task):.2f}",
            f"{findings.thresholds[task]:.2f}" if assessed else "none",
            ("Present" if present else "Absent") if assessed else "not assessed",
        )
        for cx, text in zip(cols, cells, strict=True):
            draw.text((cx, y + 3), text, font=font, fill=_INK if assessed else _MUTED)
        y += row_h
        draw.line((margin, y, width - margin, y), fill=_RULE, width=1)

    # Footer: what this is, once more.
    footer = NOT_VERIFIED
    if model.is_demo:
        footer += " Demo model trained on synthetic phantoms only."
    fy = PAGE[1] - 14 - 20 * len(_wrap(draw, footer, _font(14), inner))
    for line in _wrap(draw, footer, _font(14), inner):
        draw.text((margin, fy), line, font=_font(14), fill=_MARK if model.is_demo else _MUTED)
        fy += 20
    return page


# --------------------------------------------------------------------------- DICOM


def series_description(model: ModelIdentity) -> str:
    """Series Description (LO, <= 64) of the summary series."""
    text = "HyperCT AI summary, unverified"
    return f"{text} - {DEMO_MARK}" if model.is_demo else text


def summary_object(
    source: Sequence[Dataset],
    findings: Findings,
    model: ModelIdentity,
    key: KeyImage | None,
    *,
    revision: int,
    series_number: int,
    fmt: SummaryFormat = "secondary_capture",
    created: datetime.datetime | None = None,
    decision: ReferralDecision | None = None,
) -> Dataset:
    """The summary of one screened series as SC image or Encapsulated PDF."""
    evidence = prepare_source(source)
    if not 1 <= series_number <= 2**31 - 1:
        raise ReportInputError("report: summary series number must be in 1..2147483647")
    if revision < 1:
        raise ReportInputError("report: revision starts at 1")
    uids = ReportUIDs.derive(str(evidence[0].SeriesInstanceUID), model.device_uid, revision)
    created = created or datetime.datetime.now()
    page = render_summary(findings, model, key, created=created, decision=decision)
    if fmt == "pdf":
        return _encapsulated_pdf(evidence[0], page, model, uids, series_number, created)
    if fmt != "secondary_capture":
        raise ReportInputError(f"report: unknown summary format {fmt!r}")
    return _secondary_capture(evidence[0], page, model, uids, series_number, created)


def _secondary_capture(
    ref: Dataset,
    page: Image.Image,
    model: ModelIdentity,
    uids: ReportUIDs,
    series_number: int,
    created: datetime.datetime,
) -> Dataset:
    """SC Image Storage (PS3.3 A.8.1): RGB, 8 bits, Conversion Type WSD (C.8.6.1)."""
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=np.asarray(page, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        # The page is not an image of the patient: no orientation in patient space.
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "P"),
        series_instance_uid=uids.summary_series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.summary_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[processing_equipment(model)],
        series_description=series_description(model),
        manufacturer_model_name=model.name,
        software_versions=software_versions(model),
    )
    image.PatientOrientation = []  # Type 2C: empty, the page has no patient orientation
    image.BodyPartExamined = "CHEST"  # unpaired: Laterality (Type 2C) is then absent
    image.ConversionType = "WSD"  # made on a workstation, not digitised (PS3.3 C.8.6.1)
    image.ImageType = ["DERIVED", "SECONDARY", "SUMMARY"]
    image.BurnedInAnnotation = "NO"  # text, but nothing that identifies the patient
    image.RecognizableVisualFeatures = "NO"
    image.LossyImageCompression = "00"
    date, time = _date_time(created)
    image.DateOfSecondaryCapture = image.ContentDate = image.SeriesDate = date
    image.TimeOfSecondaryCapture = image.ContentTime = image.SeriesTime = time
    image.DerivationDescription = "AI screening summary rendered from the CT and its results"
    image.ImageComments = "Unverified AI result" + (f"; {DEMO_MARK}" if model.is_demo else "")
    set_device_uid(image, model)
    return image


def _date_time(created: datetime.datetime) -> tuple[DA, TM]:
    """DA and TM of ``created`` to the second (the same instant gives the same bytes)."""
    return DA(created.date()), TM(created.time().replace(microsecond=0))


def _encapsulated_pdf(
    ref: Dataset,
    page: Image.Image,
    model: ModelIdentity,
    uids: ReportUIDs,
    series_number: int,
    created: datetime.datetime,
) -> Dataset:
    """Encapsulated PDF Storage (PS3.3 A.45.1) holding the same page."""
    from pydicom.dataset import FileMetaDataset

    buffer = io.BytesIO()
    # 120 dpi: the 1024-pixel page prints at A4-like width.
    page.save(buffer, format="PDF", resolution=120.0, title="HyperCT AI summary")
    pdf = buffer.getvalue()
    if len(pdf) % 2:
        pdf += b"\x00"  # OB value of even length (PS3.5 7.1); the length element says the true size

    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(uids.summary_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = ref.get("SpecificCharacterSet", "ISO_IR 192") or "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = uids.summary_uid
    # Patient (C.7.1.1) and General Study (C.7.2.1), copied from the CT.
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    ):
        setattr(ds, keyword, ref.get(keyword, ""))
    # Encapsulated Document Series (C.24.1)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = uids.summary_series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description(model)
    date, time = _date_time(created)
    ds.SeriesDate, ds.SeriesTime = date, time
    # General Equipment (C.7.5.1) and SC Equipment (C.8.6.1)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = model.name
    ds.SoftwareVersions = software_versions(model)
    ds.ConversionType = "WSD"
    ds.ContributingEquipmentSequence = [processing_equipment(model)]
    set_device_uid(ds, model)
    # Encapsulated Document (C.24.2)
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = created.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = series_description(model)
    ds.ConceptNameCodeSequence = [_REPORT_TITLE]
    ds.VerificationFlag = "UNVERIFIED"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf
    ds.EncapsulatedDocumentLength = len(buffer.getvalue())
    return ds
