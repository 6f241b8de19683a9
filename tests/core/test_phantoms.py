"""Synthetic chest CT phantoms: anatomy in HU, each finding where it belongs, valid DICOM."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hyperct_core.phantoms import (
    ENCODED_TASKS,
    PhantomSpec,
    labels,
    make_volume,
    random_spec,
    with_findings,
    write_dicom_series,
)
from hyperct_core.tasks import TASK_NAMES
from hyperct_core.volume import volume_from_datasets

SHAPE = (48, 96, 96)
SPACING = (6.5, 3.6, 3.6)
BASE = PhantomSpec(seed=11)


def render(spec: PhantomSpec) -> np.ndarray:
    return make_volume(spec, SHAPE, SPACING, noise_hu=0.0)


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    return render(BASE)


def test_labels_cover_all_tasks_and_only_the_encoded_ones_are_known() -> None:
    lab = labels(BASE)
    assert list(lab) == list(TASK_NAMES)
    assert {t for t, v in lab.items() if v is not None} == set(ENCODED_TASKS)
    assert all(lab[t] == 0 for t in ENCODED_TASKS)


@pytest.mark.parametrize(
    ("change", "task"),
    [
        ({"heart_scale": 1.35}, "cardiomegaly"),
        ({"pericardial_mm": 12.0}, "pericardial_effusion"),
        ({"pleural_mm": 30.0}, "pleural_effusion"),
        ({"emphysema_fraction": 0.2}, "emphysema"),
        ({"aortic_calcifications": 5}, "arterial_wall_calcification"),
        ({"coronary_calcifications": 4}, "coronary_artery_wall_calcification"),
        ({"nodules": 1}, "lung_nodule"),
        ({"consolidations": 1}, "consolidation"),
        ({"medical_material": True}, "medical_material"),
    ],
)
def test_each_finding_sets_its_own_label_only(change: dict[str, object], task: str) -> None:
    lab = labels(with_findings(BASE, **change))
    assert lab[task] == 1
    assert [t for t in ENCODED_TASKS if lab[t] == 1] == [task]


def test_grey_zone_values_follow_the_thresholds() -> None:
    assert labels(with_findings(BASE, heart_scale=1.19))["cardiomegaly"] == 0
    assert labels(with_findings(BASE, heart_scale=1.2))["cardiomegaly"] == 1
    assert labels(with_findings(BASE, pleural_mm=9.9))["pleural_effusion"] == 0


def test_normal_chest_has_plausible_hounsfield_units(normal: np.ndarray) -> None:
    z, y, x = (s // 2 for s in SHAPE)
    assert normal[z, 0, 0] == -1000  # air in the corner of the field of view
    mid = normal[z]
    lung = mid[(mid < -700)][mid[mid < -700] > -1000]
    # Lungs exist on both sides of the midline and sit near -850 HU.
    assert (mid[:, : x - 10] < -700).sum() > 200 and (mid[:, x + 10 :] < -700).sum() > 200
    assert -900 < float(np.median(lung)) < -800
    assert (normal > 500).any()  # bone
    assert ((normal > -120) & (normal < -70)).sum() > 0.02 * normal.size  # fat
    assert normal.dtype == np.float32 and np.array_equal(normal, np.rint(normal))


def test_anatomy_comes_from_the_seed_and_noise_from_the_generator() -> None:
    a = make_volume(BASE, SHAPE, SPACING, np.random.default_rng(1))
    b = make_volume(BASE, SHAPE, SPACING, np.random.default_rng(2))
    c = make_volume(BASE, SHAPE, SPACING, np.random.default_rng(1))
    assert np.array_equal(a, c)
    assert not np.array_equal(a, b)
    assert 10 < float(np.std(a - b)) / np.sqrt(2) < 30  # 15-25 HU white noise
    other = render(with_findings(BASE, seed=12))
    assert not np.array_equal(other, render(BASE))


def test_cardiomegaly_enlarges_the_heart_at_the_lungs_expense(normal: np.ndarray) -> None:
    big = render(with_findings(BASE, heart_scale=1.4))
    blood = lambda v: (v == 40).sum()  # noqa: E731 -- heart and great vessels
    lung = lambda v: ((v < -700) & (v > -990)).sum()  # noqa: E731
    assert blood(big) > 1.5 * blood(normal)
    assert lung(big) < 0.95 * lung(normal)


def test_pericardial_effusion_is_a_water_rim(normal: np.ndarray) -> None:
    vol = render(with_findings(BASE, pericardial_mm=12.0))
    changed = vol != normal
    assert changed.sum() > 500
    assert ((vol[changed] >= -100) & (vol[changed] <= 40)).all()
    # Water-density voxels appear around the heart; blood (40 HU) is not water.
    assert (vol == 10).sum() > (normal == 10).sum() + 500


def test_pleural_effusion_is_dependent_and_on_the_requested_side(normal: np.ndarray) -> None:
    right = render(with_findings(BASE, pleural_mm=30.0, pleural_side="right"))
    changed = np.argwhere(right != normal)
    assert len(changed) > 500
    assert (right[right != normal] == 10).all()
    # LPS columns run toward patient left: right-sided fluid sits in the low columns,
    # and it is posterior (high rows) since the patient lies supine.
    assert changed[:, 2].max() < SHAPE[2] // 2
    assert changed[:, 1].mean() > SHAPE[1] // 2


def test_emphysema_adds_low_attenuation_lung(normal: np.ndarray) -> None:
    vol = render(with_findings(BASE, emphysema_fraction=0.2))
    lung = (normal < -700) & (normal > -990)
    before = (normal[lung] < -950).mean()
    after = (vol[lung] < -950).mean()
    assert before < 0.01 and 0.08 < after < 0.4


@pytest.mark.parametrize("field", ["aortic_calcifications", "coronary_calcifications"])
def test_calcifications_are_dense_plaques(normal: np.ndarray, field: str) -> None:
    vol = render(with_findings(BASE, **{field: 5}))
    changed = vol != normal
    assert changed.sum() > 5
    assert (vol[changed] >= 600).all()


def test_coronary_calcium_sits_on_the_heart_and_aortic_calcium_on_the_aorta(
    normal: np.ndarray,
) -> None:
    cor = np.argwhere(render(with_findings(BASE, coronary_calcifications=6)) != normal)
    aor = np.argwhere(render(with_findings(BASE, aortic_calcifications=6)) != normal)
    # The aorta reaches the arch near the lung apices; coronaries stay low on the heart.
    assert aor[:, 0].max() > cor[:, 0].max()


def test_nodule_and_consolidation_are_solid_lesions_inside_the_lung(normal: np.ndarray) -> None:
    nod = render(with_findings(BASE, nodules=1, nodule_mm=16.0))
    con = render(with_findings(BASE, consolidations=1))
    for vol in (nod, con):
        changed = vol != normal
        assert (normal[changed] < -600).all()  # painted over lung only
        assert (vol[changed] > -20).all()
    assert (con != normal).sum() > 3 * (nod != normal).sum()


def test_random_specs_are_clearly_positive_or_negative() -> None:
    rng = np.random.default_rng(0)
    specs = [random_spec(rng) for _ in range(200)]
    for spec in specs:
        assert spec.heart_scale <= 1.05 or spec.heart_scale >= 1.3
        assert spec.pleural_mm == 0 or spec.pleural_mm >= 25
    rates = np.array([[labels(s)[t] for t in ENCODED_TASKS] for s in specs]).mean(axis=0)
    assert ((rates > 0.2) & (rates < 0.5)).all()
    only = random_spec(rng, prevalence=1.0, tasks=["cardiomegaly"])
    assert [t for t in ENCODED_TASKS if labels(only)[t]] == ["cardiomegaly"]


def test_dicom_series_round_trips_to_the_same_volume(tmp_path: Path) -> None:
    spec = with_findings(BASE, medical_material=True, nodules=1)
    vol = make_volume(spec, SHAPE, SPACING, np.random.default_rng(3))
    paths = write_dicom_series(
        vol, tmp_path, spacing=SPACING, patient_name="DOE^JANE", patient_id="X1"
    )
    assert len(paths) == SHAPE[0]
    back = volume_from_datasets(reversed(paths))
    assert back.spacing == pytest.approx(SPACING)
    assert np.array_equal(back.array, vol)  # metal above 3000 HU included
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.BodyPartExamined == "CHEST" and ds.PatientPosition == "HFS"
    assert "ContrastBolusAgent" not in ds
    assert ds.PatientID == "X1" and ds.SeriesDescription == "CHEST W/O CONTRAST"
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in paths[:3]}) == 1


def test_dicom_series_from_a_spec_passes_dciodvfy(tmp_path: Path) -> None:
    tool = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    if not os.path.exists(tool):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dciodvfy (dicom3tools) is not installed")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    paths = write_dicom_series(
        with_findings(BASE, pleural_mm=20.0),
        tmp_path,
        shape=(8, 64, 64),
        spacing=(5.0, 5.0, 5.0),
        study_uid="1.2.826.0.1.3680043.8.498.1",
    )
    for path in (paths[0], paths[-1]):
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        warnings = [line for line in report.splitlines() if line.startswith("Warning")]
        assert result.returncode == 0 and not errors, report
        assert not warnings, report
    assert pydicom.dcmread(paths[0]).StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
