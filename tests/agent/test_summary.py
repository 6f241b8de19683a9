"""The summary page: what a viewer that shows only images gets, read back from the file."""

from __future__ import annotations

import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.config import ReportSettings
from agent.pipeline.reporting import ReportFiles
from agent.pipeline.screen import ClaimedJob
from agent.report import Findings, ModelIdentity, ReportInputError, ReportUIDs
from agent.report.summary import (
    ENCAPSULATED_PDF_STORAGE,
    PAGE,
    KeyImage,
    choose_heart_slice,
    conclusion,
    key_image_from_volume,
    render_summary,
    summary_object,
)
from hyperct_core import phantom_anatomy, phantoms
from hyperct_core.tasks import TASK_NAMES
from hyperct_core.volume import volume_from_datasets
from storage.files import InstanceStore
from tests.agent.report_tools import dciodvfy

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CREATED = datetime.datetime(2026, 3, 4, 5, 6, 7)
# A small phantom with the training field of view (358 mm): fast, and the heart is in it.
SHAPE, SPACING = (48, 64, 64), (6.5, 5.6, 5.6)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ct")
    spec = phantoms.PhantomSpec(heart_scale=1.4, seed=3)
    return phantoms.write_dicom_series(
        spec, folder, shape=SHAPE, spacing=SPACING, rng=np.random.default_rng(0)
    )


@pytest.fixture(scope="module")
def source(series: list[Path]) -> list[Dataset]:
    return [dcmread(p, stop_before_pixels=True) for p in series]


@pytest.fixture(scope="module")
def key(series: list[Path]) -> KeyImage:
    volume = volume_from_datasets(series)
    return key_image_from_volume(volume.array, volume.spacing)


def model(version: str = "1.0.0", demo: bool = True) -> ModelIdentity:
    return ModelIdentity(
        name="hyperct-test",
        version=version,
        weights_sha256="ab" * 32,
        is_demo=demo,
        thresholds={t: 0.5 for t in TASK_NAMES},
    )


def findings(**probabilities: float) -> Findings:
    m = model()
    p = [probabilities.get(t, 0.1) for t in TASK_NAMES]
    return Findings(TASK_NAMES, p, m.thresholds, m.referral_tasks)


def read_back(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def test_secondary_capture_reads_back_as_a_page_in_the_ct_study(source, key) -> None:  # type: ignore[no-untyped-def]
    sc = read_back(
        summary_object(
            source, findings(cardiomegaly=0.8), model(), key, revision=1, series_number=9902
        )
    )
    ct = source[0]
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert sc.Modality == "OT"  # SC Image IOD: General Series modality of a secondary capture
    assert sc.ConversionType == "WSD"
    assert sc.StudyInstanceUID == ct.StudyInstanceUID
    assert sc.PatientID == ct.PatientID  # the viewer files it under the CT's patient
    sr_series = ReportUIDs.derive(ct.SeriesInstanceUID, model().device_uid, 1).series_instance_uid
    assert sc.SeriesInstanceUID not in (ct.SeriesInstanceUID, sr_series)
    assert sc.SeriesNumber == 9902
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated) == (3, "RGB", 8)
    pixels = sc.pixel_array
    assert pixels.shape == (PAGE[1], PAGE[0], 3) and pixels.dtype == np.uint8
    assert pixels.std() > 20  # text, table and image, not a blank page
    assert sc.BurnedInAnnotation == "NO"  # no patient identification in the pixels
    assert "DEMO" in sc.SeriesDescription and "unverified" in sc.SeriesDescription
    assert sc.DeviceUID == model().device_uid


def test_the_page_shows_the_demo_mark_only_for_a_demo_model(key) -> None:  # type: ignore[no-untyped-def]
    f = findings()
    demo = np.asarray(render_summary(f, model(demo=True), key, created=CREATED))
    validated = np.asarray(render_summary(f, model(demo=False), key, created=CREATED))
    # Both carry the red UNVERIFIED band; its text differs by the DEMO mark.
    assert tuple(demo[2, 2]) == tuple(validated[2, 2]) == (176, 0, 32)
    assert not np.array_equal(demo[:44], validated[:44])


def test_the_key_image_is_the_ct_slice_in_a_mediastinal_window(key) -> None:  # type: ignore[no-untyped-def]
    page = np.asarray(render_summary(findings(), model(), key, created=CREATED))
    without = np.asarray(render_summary(findings(), model(), None, created=CREATED))
    grey = page[300:600, 40:380]  # inside the key image box
    assert np.array_equal(grey[..., 0], grey[..., 1])  # greyscale CT
    assert not np.array_equal(grey, without[300:600, 40:380])
    # W400/L40: air is black, the heart's blood (40 HU) mid-grey.
    assert (grey < 10).mean() > 0.2 and ((grey > 100) & (grey < 160)).mean() > 0.05


@pytest.mark.parametrize(("seed", "scale"), [(1, 1.0), (3, 1.4), (11, 1.2)])
def test_the_key_slice_passes_through_the_heart(seed: int, scale: float) -> None:
    shape, spacing = (64, 64, 64), (5.0, 5.6, 5.6)
    spec = phantoms.PhantomSpec(heart_scale=scale, seed=seed, pleural_mm=30.0)
    hu = phantoms.make_volume(spec, shape, spacing, np.random.default_rng(0))
    anatomy = phantom_anatomy._anatomy(np.random.default_rng([seed, 0]), shape[0] * spacing[0])
    centre, radii = phantom_anatomy._heart_geometry(anatomy, scale)
    z = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
    index = choose_heart_slice(hu)
    assert abs(z[index] - centre[2]) < 0.6 * radii[2], (z[index], centre[2], radii[2])


def test_a_volume_without_lungs_gives_its_middle_slice() -> None:
    assert choose_heart_slice(np.full((9, 16, 16), 40.0, dtype=np.float32)) == 4
    with pytest.raises(ReportInputError):
        choose_heart_slice(np.zeros((4, 4), dtype=np.float32))


def test_conclusion_first_names_the_triggers_and_why() -> None:
    head, why = conclusion(findings(reduced_lv_systolic_function=0.71, cardiomegaly=0.9))
    assert head == "Echocardiography recommended: Reduced LV systolic function"
    assert "0.71" in why and "0.50" in why
    head, why = conclusion(findings(cardiomegaly=0.9))  # not an echo-derived task
    assert head == "No echocardiography referral"
    assert "echocardiography-derived" in why
    # A model with no operating point for any referral task cannot say "no".
    m = model()
    conventional = {t: v for t, v in m.thresholds.items() if t not in m.referral_tasks}
    unassessed = Findings(TASK_NAMES, [0.9] * len(TASK_NAMES), conventional, m.referral_tasks)
    head, why = conclusion(unassessed)
    assert head == "Echocardiography referral not assessed"
    assert "no validated operating point" in why


def test_uids_are_deterministic_per_result(source, key) -> None:  # type: ignore[no-untyped-def]
    def uids(revision: int = 1, version: str = "1.0.0", **kw: float) -> tuple[str, str]:
        ds = summary_object(
            source, findings(**kw), model(version), key, revision=revision, series_number=9902
        )
        return str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)

    first = uids()
    assert uids() == first  # re-rendered: the same object, so a resend is a duplicate
    assert uids(revision=2) != first
    assert uids(version="1.0.1") != first
    assert len({first[0], first[1], *uids(revision=2)}) == 4


@pytest.mark.parametrize("fmt", ["secondary_capture", "pdf"])
def test_dciodvfy_finds_no_error(source, key, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    ds = summary_object(
        source,
        findings(pericardial_effusion=0.7, ventricular_enlargement=0.6),
        model(),
        key,
        revision=1,
        series_number=9902,
        fmt=fmt,  # type: ignore[arg-type]
        created=CREATED,
    )
    path = tmp_path / "summary.dcm"
    ds.save_as(path, enforce_file_format=True)
    verdict = dciodvfy(path)
    assert verdict.errors == [], verdict.errors


def test_pdf_alternative_holds_the_page_as_a_pdf(source, key) -> None:  # type: ignore[no-untyped-def]
    doc = read_back(
        summary_object(source, findings(), model(), key, revision=1, series_number=9902, fmt="pdf")
    )
    assert doc.SOPClassUID == ENCAPSULATED_PDF_STORAGE and doc.Modality == "DOC"
    assert doc.StudyInstanceUID == source[0].StudyInstanceUID
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    body = bytes(doc.EncapsulatedDocument)[: doc.EncapsulatedDocumentLength]
    assert body.startswith(b"%PDF-") and body.rstrip().endswith(b"%%EOF")


def report_files(tmp_path: Path, series: list[Path], key: KeyImage | None, **settings: object):  # type: ignore[no-untyped-def]
    store = InstanceStore(tmp_path / "store", direct_io=False)
    store.prepare()
    writer = ReportFiles(store, ReportSettings(**settings))  # type: ignore[arg-type]
    job = ClaimedJob(1, 1, "1.2.3", 1, list(series), key_image=key)
    return store, writer(job, findings(cardiomegaly=0.9), model())


def test_reports_written_with_the_summary_by_default(tmp_path: Path, series, key) -> None:  # type: ignore[no-untyped-def]
    store, written = report_files(tmp_path, series, key)
    assert [kind for kind, *_ in written] == ["sr", "text_sr", "summary"]
    kind, sop_uid, series_uid, rel_path = written[-1]
    sc = dcmread(store.path_of(rel_path))
    assert (sc.SOPClassUID, sc.SOPInstanceUID, sc.SeriesInstanceUID) == (
        SECONDARY_CAPTURE,
        sop_uid,
        series_uid,
    )
    assert written[0][2] != series_uid  # the SRs' series is another one


def test_summary_settings(tmp_path: Path, series, key) -> None:  # type: ignore[no-untyped-def]
    _, written = report_files(tmp_path / "off", series, key, summary_image=False)
    assert [kind for kind, *_ in written] == ["sr", "text_sr"]
    store, written = report_files(
        tmp_path / "pdf", series, None, summary_format="pdf", summary_series_number=77
    )
    doc = dcmread(store.path_of(written[-1][3]))
    assert doc.SOPClassUID == ENCAPSULATED_PDF_STORAGE and doc.SeriesNumber == 77
