"""The blood-pool measurement on phantoms: recovers the HU it was drawn with, or says why not."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct_core import phantoms
from hyperct_core.bloodpool import measure_blood_pool
from hyperct_core.volume import volume_from_array

SPACING = phantoms.DEFAULT_SPACING  # with DEFAULT_SHAPE: the phantoms' own geometry


def volume(spec: phantoms.PhantomSpec, noise: float = 20.0, seed: int = 0) -> np.ndarray:
    return phantoms.make_volume(spec, phantoms.DEFAULT_SHAPE, SPACING,
                                np.random.default_rng(seed), noise_hu=noise)  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("blood", "expected"), [(None, phantoms.BLOOD), (250.0, 250.0),
                                                 (150.0, 150.0), (400.0, 400.0)])  # fmt: skip
def test_recovers_the_blood_pool_hu_under_noise(blood: float | None, expected: float,
                                                seed: int) -> None:  # fmt: skip
    # Findings that put bone-bright voxels next to the blood: calcified aortic and
    # coronary plaques, a pacemaker lead, a pericardial effusion, a large heart.
    spec = phantoms.PhantomSpec(
        blood_pool_hu=blood, seed=seed, aortic_calcifications=5, coronary_calcifications=3,
        medical_material=seed == 1, pericardial_mm=6.0 if seed == 2 else 0.0,
        heart_scale=1.3 if seed == 0 else 1.0,
    )  # fmt: skip
    pool = measure_blood_pool(volume_from_array(volume(spec, noise=25.0, seed=seed), SPACING))
    assert pool.measured, pool.reason
    assert pool.hu == pytest.approx(expected, abs=15.0)
    assert pool.volume_ml > 50 and pool.slices > 5


@pytest.mark.parametrize("noise", [60.0, 100.0])
def test_low_dose_noise_does_not_make_plain_blood_look_enhanced(noise: float) -> None:
    """Per-voxel noise as in thin low-dose slices: the spine must not pass for blood."""
    for seed in (0, 5):
        spec = phantoms.PhantomSpec(seed=seed, aortic_calcifications=4)
        plain = measure_blood_pool(volume_from_array(volume(spec, noise, seed=1), SPACING))
        assert plain.hu is not None and plain.hu < 90
        enhanced = phantoms.PhantomSpec(seed=seed, aortic_calcifications=4, blood_pool_hu=250.0)
        hu = measure_blood_pool(volume_from_array(volume(enhanced, noise, seed=1), SPACING)).hu
        assert hu == pytest.approx(250.0, abs=15.0)


def test_unenhanced_and_enhanced_fall_either_side_of_the_default_threshold() -> None:
    plain = measure_blood_pool(volume_from_array(volume(phantoms.PhantomSpec()), SPACING))
    enhanced = measure_blood_pool(
        volume_from_array(volume(phantoms.PhantomSpec(blood_pool_hu=200.0)), SPACING)
    )
    assert plain.hu is not None and enhanced.hu is not None
    assert plain.hu < 80 < 120 < enhanced.hu


def test_any_orientation_gives_the_same_value() -> None:
    hu = volume(phantoms.PhantomSpec(blood_pool_hu=250.0))
    lps = measure_blood_pool(volume_from_array(hu, SPACING))
    # The same voxels stored feet-first and mirrored left-right (code "RPI").
    flipped = volume_from_array(hu[::-1, :, ::-1].copy(), SPACING, "RPI")
    assert measure_blood_pool(flipped).hu == lps.hu


def test_a_small_field_of_view_is_not_measured() -> None:
    hu = volume(phantoms.PhantomSpec(blood_pool_hu=250.0))
    # A 90 mm target reconstruction around the heart: no two lungs in any slice.
    centre = hu[:, 46:78, 50:82].copy()
    pool = measure_blood_pool(volume_from_array(centre, SPACING))
    assert not pool.measured and pool.hu is None and "lungs" in pool.reason


def test_a_volume_without_a_chest_is_not_measured() -> None:
    water = np.full((20, 64, 64), -1000.0, dtype=np.float32)
    water[:, 8:56, 8:56] = 0.0  # a water cylinder: no lungs
    pool = measure_blood_pool(volume_from_array(water, SPACING))
    assert not pool.measured and pool.reason


def test_the_phantom_option_changes_only_the_blood_pool() -> None:
    plain = volume(phantoms.PhantomSpec(), noise=0.0)
    enhanced = volume(phantoms.PhantomSpec(blood_pool_hu=250.0), noise=0.0)
    changed = plain != enhanced
    assert set(np.unique(plain[changed])) == {phantoms.BLOOD}
    assert set(np.unique(enhanced[changed])) <= {250.0, phantoms.ENHANCED_MYOCARDIUM}
    assert changed.sum() > 1000
    with pytest.raises(ValueError, match="blood_pool_hu"):
        phantoms.PhantomSpec(blood_pool_hu=5000.0)
