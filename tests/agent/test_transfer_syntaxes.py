"""Every transfer syntax the node offers, end to end through one ``serve`` process.

One signed 16-bit chest CT phantom whose stored values are the HU themselves
(intercept 0, so air and the -2000 padding are negative stored values) is the
reference. Each variant is a copy of it under new UIDs, in a study of its own
(the agent screens one series per study), encoded by a third-party encoder
(DCMTK dcmcjpeg, dcmcjpls, dcmcrle, dcmconv; CharLS and OpenJPEG through
pydicom where DCMTK has no encoder) and sent by DCMTK storescu proposing only
that one transfer syntax. Every variant must be stored in that syntax, screened,
and scored like its uncompressed counterpart:

- lossless syntaxes: the probabilities of the reference series, to float tolerance;
- lossy syntaxes: the probabilities of an uncompressed copy of the *decoded* lossy
  pixels, decoded by a second decoder (DCMTK's own for JPEG and JPEG-LS,
  OpenJPEG through pylibjpeg for JPEG 2000, where the agent uses GDCM). Lossy
  pixels legitimately differ from the original, so the original's probabilities
  are no fixed target; agreement with an independent decode shows the agent
  decoded exactly what was sent.

Legacy Converted Enhanced CT (one multi-frame object made by highdicom from the
reference slices) is sent uncompressed and as JPEG Lossless SV1.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from agent.config import LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE
from agent.node.server import decodable_transfer_syntaxes
from storage.models import Instance, Job, JobState, Result, Series, Study
from tests.agent.conftest import DCMTK_ENV, dcmtk
from tests.agent.pipeline_env import Serve, agent_config, wait_for
from tests.core.tiny_models import IMG, tiny_model

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]

SLICES = 16
PADDING = -2000  # outside the scanned field of view, as many scanners store it


@dataclass(frozen=True)
class Variant:
    name: str
    syntax: UID
    lossless: bool
    encode: Callable[[Path, Path], None]  # ELE file in, encoded file out


def _run(*cmd: str) -> Callable[[Path, Path], None]:
    def encode(src: Path, dst: Path) -> None:
        done = subprocess.run(
            [dcmtk(cmd[0]), *cmd[1:], str(src), str(dst)],
            capture_output=True, text=True, env=DCMTK_ENV, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    return encode


def _pydicom(syntax: UID, **options: object) -> Callable[[Path, Path], None]:
    """pydicom's encoders: CharLS (pyjpegls) for JPEG-LS, OpenJPEG (pylibjpeg) for JPEG 2000."""

    def encode(src: Path, dst: Path) -> None:
        ds = pydicom.dcmread(src)
        ds.compress(syntax, **options)  # type: ignore[arg-type]
        ds.save_as(dst, enforce_file_format=True)

    return encode


VARIANTS = [
    Variant("big-endian", ExplicitVRBigEndian, True, _run("dcmconv", "+tb")),
    Variant("deflated", DeflatedExplicitVRLittleEndian, True, _run("dcmconv", "+td")),
    Variant("rle", RLELossless, True, _run("dcmcrle")),
    Variant("jpeg-lossless-sv1", JPEGLosslessSV1, True, _run("dcmcjpeg", "+e1")),
    Variant("jpeg-lossless-p14", JPEGLossless, True, _run("dcmcjpeg", "+el")),
    Variant("jpeg-ls-lossless", JPEGLSLossless, True, _run("dcmcjpls", "+el")),
    Variant("jpeg-2000-lossless", JPEG2000Lossless, True, _pydicom(JPEG2000Lossless)),
    Variant("jpeg-baseline", JPEGBaseline8Bit, False, _run("dcmcjpeg", "+eb")),
    Variant("jpeg-extended-12bit", JPEGExtended12Bit, False, _run("dcmcjpeg", "+ee")),
    # dcmcjpls refuses near-lossless for signed samples; CharLS itself does not.
    Variant("jpeg-ls-near", JPEGLSNearLossless, False, _pydicom(JPEGLSNearLossless, jls_error=3)),
    Variant("jpeg-2000-lossy", JPEG2000, False, _pydicom(JPEG2000, j2k_cr=[12])),
]


def sensitive_checkpoint(folder: Path) -> Path:
    """A toy model whose outputs move with its input (``tiny_model``) at 48 px: fast on CPU."""
    from hyperct_core.checkpoint import make_card, save_checkpoint
    from hyperct_core.preprocess import PreprocessConfig

    model = tiny_model(seed=5)
    pre = PreprocessConfig(volume_size=IMG + 6, crop_size=IMG)
    path = folder / "checkpoint"
    card = make_card(model, name="hyperct-test", version="0.0.1", preprocessing=pre.to_dict())
    save_checkpoint(model, card, path)
    return path


def reference_series(folder: Path) -> list[Dataset]:
    """A 16-slice phantom with stored value = HU: negative stored values throughout."""
    from hyperct_core import phantoms

    paths = phantoms.write_dicom_series(
        phantoms.PhantomSpec(), folder, rng=np.random.default_rng(3),
        spacing=(2.5, 5.0, 5.0), shape=(SLICES, 64, 64),
    )  # fmt: skip
    datasets: list[Dataset] = []
    for path in paths:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept)
        hu[:3] = PADDING
        ds.RescaleIntercept = 0
        ds.PixelData = hu.astype(np.int16).tobytes()
        datasets.append(ds)
    assert min(int(ds.pixel_array.min()) for ds in datasets) == PADDING
    assert np.median(datasets[SLICES // 2].pixel_array) < 0  # mostly air: negative HU
    return datasets


def copy_series(datasets: list[Dataset], folder: Path, description: str) -> list[Path]:
    """``datasets`` in a new study and series with new instance UIDs, as ELE files."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    paths = []
    for i, source in enumerate(datasets):
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDescription = f"CT CHEST {description}"
        if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
            ds.decompress()  # the decoded copies of lossy variants
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def decoded_elsewhere(variant: Variant, files: list[Path], folder: Path) -> list[Dataset]:
    """The lossy files decoded by a decoder other than the agent's (see module docstring)."""
    folder.mkdir(parents=True)
    out: list[Dataset] = []
    for path in files:
        if variant.syntax in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless):
            tool = "dcmdjpls" if variant.syntax == JPEGLSNearLossless else "dcmdjpeg"
            _run(tool)(path, folder / path.name)
            out.append(pydicom.dcmread(folder / path.name))
        else:
            ds = pydicom.dcmread(path)
            ds.decompress(decoding_plugin="pylibjpeg")
            out.append(ds)
    return out


def legacy_converted(datasets: list[Dataset], folder: Path) -> Path:
    """The reference slices as one Legacy Converted Enhanced CT object (PS3.3 A.70)."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    slices = []
    study = generate_uid()
    for source in datasets:
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID, ds.StudyDescription = study, "CT CHEST lce"
        ds.SeriesInstanceUID = datasets[0].SeriesInstanceUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        slices.append(ds)
    image = LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=generate_uid(), series_number=3,
        sop_instance_uid=generate_uid(), instance_number=1,
    )  # fmt: skip
    folder.mkdir(parents=True)
    path = folder / "lce.dcm"
    image.save_as(path, enforce_file_format=True)
    return path


def storescu_only(syntax: UID, sop_class: str, files: list[Path], port: int, cfg: Path) -> None:
    """DCMTK storescu proposing exactly one presentation context with one transfer syntax."""
    cfg.write_text(
        f"[[TransferSyntaxes]]\n[Only]\nTransferSyntax1 = {syntax}\n"
        f"[[PresentationContexts]]\n[Only]\nPresentationContext1 = {sop_class}\\Only\n"
        f"[[Profiles]]\n[Only]\nPresentationContexts = Only\n"
    )
    sent = subprocess.run(
        [dcmtk("storescu"), "-xf", str(cfg), "Only", "-aet", "PACS", "-aec", "HYPERCT",
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0 and "E:" not in sent.stderr, f"{syntax.name}: {sent.stderr}"


@dataclass
class Outcome:
    jobs: dict[str, tuple[JobState, str | None]]  # study description -> state, reason
    probabilities: dict[str, dict[str, float]]  # study description -> task -> probability
    syntaxes: dict[str, set[str]]  # study description -> stored transfer syntaxes
    sop_classes: dict[str, set[str]]
    frames: dict[str, int]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    folder = tmp_path_factory.mktemp("syntaxes")
    reference = reference_series(folder / "phantom")
    sends: list[tuple[str, UID, str, list[Path]]] = []  # description, syntax, SOP class, files
    ct = str(reference[0].SOPClassUID)
    sends.append(
        (
            "REFERENCE",
            ExplicitVRLittleEndian,
            ct,
            copy_series(reference, folder / "ref", "REFERENCE"),
        )
    )
    for variant in VARIANTS:
        plain = copy_series(reference, folder / variant.name / "plain", variant.name)
        encoded = folder / variant.name / "encoded"
        encoded.mkdir()
        for path in plain:
            variant.encode(path, encoded / path.name)
        files = sorted(encoded.iterdir())
        assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in files} == {
            variant.syntax
        }
        sends.append((variant.name, variant.syntax, ct, files))
        if not variant.lossless:
            decoded = decoded_elsewhere(variant, files, folder / variant.name / "decoded")
            again = copy_series(decoded, folder / variant.name / "again", f"{variant.name} decoded")
            sends.append((f"{variant.name} decoded", ExplicitVRLittleEndian, ct, again))
    lce = legacy_converted(reference, folder / "lce")
    sends.append(("lce", ExplicitVRLittleEndian, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE, [lce]))
    lce_jpeg = folder / "lce" / "lce-jpeg-lossless-sv1.dcm"
    _run("dcmcjpeg", "+e1", "+ua")(lce, lce_jpeg)  # +ua: new UIDs, a second object
    sends.append(
        (
            "lce-jpeg-lossless-sv1",
            JPEGLosslessSV1,
            LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
            [_restudy(lce_jpeg)],
        )
    )

    checkpoint = sensitive_checkpoint(folder)
    config = agent_config(
        folder, checkpoint,
        extra=(
            "[eligibility]\nmin_slices = 16\n"
            # DCMTK marks its lossy output DERIVED (Image Type value 1); the
            # default ["ORIGINAL", "AXIAL"] would rightly skip those series.
            'required_image_type = ["AXIAL"]\n'
        ),
        completeness="min_coverage_mm = 30.0\n",
    )  # fmt: skip
    serve = Serve(config)
    try:
        for _, syntax, sop_class, files in sends:
            storescu_only(syntax, sop_class, files, serve.port, folder / "storescu.cfg")
        db = create_engine(f"sqlite:///{folder / 'agent.db'}")

        def settled() -> bool:
            with Session(db) as s:
                states = [j.state for j in s.scalars(select(Job))]
            return len(states) == len(sends) and all(
                st in (JobState.DONE, JobState.SKIPPED, JobState.DEAD) for st in states
            )

        wait_for(settled, 300, f"{len(sends)} series screened", serve)
        with Session(db) as s:
            rows = s.execute(
                select(Study.study_description, Series, Job)
                .select_from(Study)
                .join(Series, Series.study_id == Study.id)
                .join(Job, Job.series_id == Series.id)
            ).all()
            out = Outcome({}, {}, {}, {}, {})
            for description, series, job in rows:
                key = str(description).removeprefix("CT CHEST ")
                out.jobs[key] = (job.state, job.reason or job.last_error)
                out.probabilities[key] = {
                    r.task_name: r.probability
                    for r in s.scalars(select(Result).where(Result.job_id == job.id))
                }
                instances = s.scalars(select(Instance).where(Instance.series_id == series.id)).all()
                out.syntaxes[key] = {i.transfer_syntax_uid for i in instances}
                out.sop_classes[key] = {i.sop_class_uid for i in instances}
                out.frames[key] = sum(i.number_of_frames or 1 for i in instances)
        db.dispose()
        yield out
    finally:
        assert serve.stop() == 0


def _restudy(path: Path) -> Path:
    """The file in a study of its own (dcmcjpeg +ua renews only the instance UID)."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.StudyDescription = generate_uid(), f"CT CHEST {path.stem}"
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_node_offers_every_syntax_tested_here() -> None:
    offered = set(decodable_transfer_syntaxes())
    assert {v.syntax for v in VARIANTS} <= offered


def _screened(outcome: Outcome, key: str) -> dict[str, float]:
    state, reason = outcome.jobs[key]
    assert state == JobState.DONE, f"{key}: {state} ({reason})"
    assert len(outcome.probabilities[key]) == 25
    return outcome.probabilities[key]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_each_syntax_is_stored_as_sent_and_screened(outcome: Outcome, variant: Variant) -> None:
    assert outcome.syntaxes[variant.name] == {variant.syntax}
    assert outcome.frames[variant.name] == SLICES
    probabilities = _screened(outcome, variant.name)
    target = "REFERENCE" if variant.lossless else f"{variant.name} decoded"
    expected = _screened(outcome, target)
    for task, p in probabilities.items():
        assert p == pytest.approx(expected[task], abs=1e-6), (variant.name, task)


def test_lossy_syntaxes_really_were_lossy(outcome: Outcome) -> None:
    """Otherwise the comparison with the decoded copy would prove nothing beyond lossless."""
    reference = _screened(outcome, "REFERENCE")
    for variant in VARIANTS:
        if not variant.lossless:
            got = _screened(outcome, f"{variant.name} decoded")
            assert max(abs(got[t] - reference[t]) for t in reference) > 1e-6, variant.name


@pytest.mark.parametrize("key", ["lce", "lce-jpeg-lossless-sv1"])
def test_legacy_converted_enhanced_ct_is_screened_like_its_slices(
    outcome: Outcome, key: str
) -> None:
    assert outcome.sop_classes[key] == {LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE}
    assert outcome.frames[key] == SLICES
    reference = _screened(outcome, "REFERENCE")
    for task, p in _screened(outcome, key).items():
        assert p == pytest.approx(reference[task], abs=1e-6), (key, task)
