"""HU volume to model images, the preprocessing card, and batch padding."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperct_core.errors import HyperCTError, PreprocessError
from hyperct_core.grid_phantom import Grid, make_series
from hyperct_core.preprocess import (
    PreprocessConfig,
    PreprocessConfigError,
    images_from_volume,
    pad_batch,
    preprocess_series,
)
from hyperct_core.volume import volume_from_array

GRID = Grid()
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def spec_images(hu_cube: np.ndarray) -> np.ndarray:
    """The spec's steps 3-7 written out directly, for a volume already 164^3 in LPS."""
    x = np.clip(hu_cube, -1000, 1000)[:, 10:154, 10:154]
    x = x[~np.all(np.abs(x + 1000) <= 1, axis=(1, 2))]
    if len(x) % 3 == 1:
        x = x[:-1]
    elif len(x) % 3 == 2:
        x = np.concatenate([x, x[-1:]])
    x = x.reshape(-1, 3, 144, 144)
    return ((x + 1000) / 2000 - MEAN[None, :, None, None]) / STD[None, :, None, None]


def to_hu(images: torch.Tensor) -> np.ndarray:
    """Undo scaling and normalisation (channel c is slice 3i + c)."""
    x = images.numpy() * STD[None, :, None, None] + MEAN[None, :, None, None]
    return x * 2000 - 1000


def slice_ramp_cube(air_before: int, air_after: int, size: int = 164) -> np.ndarray:
    """Slices with distinct body content (a disc whose HU encodes the slice), air margins."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 80) ** 2 + (xx - 85) ** 2 < 50**2
    cube = np.full((size, size, size), -1000.0, dtype=np.float32)
    for k in range(air_before, size - air_after):
        cube[k][disc] = -800 + 4 * k + 0.01 * xx[disc]
    cube[50, 0, 0] = -3000  # below the clip: must end as -1000
    cube[60, 90, 90] = 2500  # above the clip: must end as 1000
    return cube


# ----------------------------------------------------------------------------- images


def test_series_gives_55_images_of_3x144x144() -> None:
    images = preprocess_series(make_series(GRID))
    assert images.shape == (55, 3, 144, 144)
    assert images.dtype == torch.float32
    # 164 body slices, remainder 2: the last slice is repeated into the last image.
    hu = to_hu(images)
    np.testing.assert_allclose(hu[-1, 1], hu[-1, 2], atol=1e-3)


def test_reversed_or_shuffled_files_give_the_identical_tensor() -> None:
    series = make_series(GRID, row=(-1, 0, 0))
    expected = preprocess_series(series)
    shuffled = series[:]
    random.Random(11).shuffle(shuffled)
    assert torch.equal(preprocess_series(series[::-1]), expected)
    assert torch.equal(preprocess_series(shuffled), expected)


def test_same_hu_with_different_rescale_gives_the_same_tensor() -> None:
    a = make_series(GRID, rescale=[(1.0, -1024.0)], dtype=np.uint16)
    b = make_series(GRID, rescale=[(2.0, -2048.0)], dtype=np.int16)
    assert a[0].PixelData != b[0].PixelData
    assert torch.equal(preprocess_series(a), preprocess_series(b))


def test_feet_first_and_flipped_acquisitions_give_the_same_tensor() -> None:
    expected = preprocess_series(make_series(GRID))
    for row, col in [((-1, 0, 0), (0, 1, 0)), ((1, 0, 0), (0, -1, 0)), ((0, 1, 0), (0, 0, -1))]:
        assert torch.equal(preprocess_series(make_series(GRID, row=row, col=col)), expected)


def test_reads_files_from_disk(tmp_path: Path) -> None:
    series = make_series(GRID)
    paths = []
    for k, ds in enumerate(series):
        paths.append(tmp_path / f"slice{k}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    assert torch.equal(preprocess_series(paths[::-1]), preprocess_series(series))


@pytest.mark.parametrize(("air_before", "air_after"), [(10, 20), (10, 21), (0, 0), (7, 0)])
def test_air_slices_dropped_and_triplets_follow_the_spec(air_before: int, air_after: int) -> None:
    cube = slice_ramp_cube(air_before, air_after)
    images = images_from_volume(volume_from_array(cube, (1.0, 1.0, 1.0)))
    kept = 164 - air_before - air_after
    expected_count = (kept + 1) // 3 if kept % 3 == 2 else kept // 3
    assert images.shape[0] == expected_count
    np.testing.assert_allclose(images.numpy(), spec_images(cube), rtol=0, atol=1e-5)
    # First channel of the first image is the first body slice.
    hu = to_hu(images)
    expected_first = np.clip(cube[air_before, 10:154, 10:154], -1000, 1000)
    np.testing.assert_allclose(hu[0, 0], expected_first, atol=1e-3)


def test_air_means_within_1_hu_of_minus_1000() -> None:
    cube = slice_ramp_cube(0, 0)
    cube[:3] = -999.5  # air (within 1 HU)
    cube[3:6] = -1000.0
    cube[4, 70, 70] = -998.0  # one voxel 2 HU above: slice 4 is not air
    images = images_from_volume(volume_from_array(cube, (1.0, 1.0, 1.0)))
    hu = to_hu(images)
    assert images.shape[0] == 53  # 164 - 5 air = 159 slices
    assert hu[0, 0, 60, 60] == pytest.approx(-998.0, abs=1e-3)


def test_resize_is_trilinear_without_aligned_corners() -> None:
    # 82 slices upsampled to 164: output slice j samples source (j + 0.5) / 2 - 0.5.
    values = -500.0 + 10.0 * np.arange(82, dtype=np.float32)
    cube = np.broadcast_to(values[:, None, None], (82, 164, 164))
    hu = to_hu(images_from_volume(volume_from_array(cube, (2.0, 1.0, 1.0))))
    per_slice = hu[:, :, 72, 72].reshape(-1)
    source = np.clip((np.arange(164) + 0.5) / 2 - 0.5, 0, 81)
    np.testing.assert_allclose(per_slice[:164], -500 + 10 * source, atol=1e-3)


def test_orientation_of_the_input_volume_does_not_matter() -> None:
    cube = slice_ramp_cube(5, 5)
    lps = images_from_volume(volume_from_array(cube, (1.0, 1.0, 1.0)))
    rai = volume_from_array(cube[::-1, ::-1, ::-1].copy(), (1.0, 1.0, 1.0), orientation="RAI")
    assert torch.equal(images_from_volume(rai), lps)


def test_all_air_or_single_body_slice_is_refused() -> None:
    air = np.full((20, 32, 32), -1024.0)
    with pytest.raises(PreprocessError, match="only 0 of 164 resized slices"):
        images_from_volume(volume_from_array(air, (1, 1, 1)))
    one = np.full((164, 164, 164), -1000.0)
    one[80, 80, 80] = 40.0
    with pytest.raises(PreprocessError, match="only 1 of 164"):
        images_from_volume(volume_from_array(one, (1, 1, 1)))


def test_training_crop_is_a_random_window_with_a_left_right_flip() -> None:
    volume = volume_from_array(slice_ramp_cube(0, 0), (1.0, 1.0, 1.0))
    full = to_hu(images_from_volume(volume, PreprocessConfig(crop_size=164)))
    seen_offsets, flips = set(), set()
    for seed in range(12):
        hu = to_hu(images_from_volume(volume, train=True, rng=np.random.default_rng(seed)))
        matches = []
        for top, left, flipped in itertools.product(range(21), range(21), (False, True)):
            window = full[:, :, top : top + 144, left : left + 144]
            candidate = window[..., ::-1] if flipped else window  # columns run left-right
            # Cheap screen on one slice, then the whole tensor.
            if np.allclose(hu[0, 0], candidate[0, 0], atol=1e-3) and np.allclose(
                hu, candidate, atol=1e-3
            ):
                matches.append((top, left, flipped))
        assert len(matches) == 1, f"seed {seed}: not exactly one (flipped) window: {matches}"
        seen_offsets.add(matches[0][:2])
        flips.add(matches[0][2])
    assert len(seen_offsets) > 6 and flips == {False, True}
    same = [images_from_volume(volume, train=True, rng=np.random.default_rng(5)) for _ in "ab"]
    assert torch.equal(*same)


def test_inference_ignores_rng() -> None:
    volume = volume_from_array(slice_ramp_cube(0, 0), (1.0, 1.0, 1.0))
    base = images_from_volume(volume)
    for seed in range(4):
        assert torch.equal(images_from_volume(volume, rng=np.random.default_rng(seed)), base)


# ---------------------------------------------------------------------------- padding


def test_pad_batch_masks_match_padding() -> None:
    images = [torch.randn(n, 3, 8, 8) for n in (3, 5, 1)]
    batch, mask = pad_batch(images)
    assert batch.shape == (3, 5, 3, 8, 8) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [3, 5, 1]
    for b, item in enumerate(images):
        n = item.shape[0]
        assert torch.equal(batch[b, :n], item)
        assert mask[b, :n].all() and not mask[b, n:].any()
        assert torch.count_nonzero(batch[b, n:]) == 0


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "empty list"),
        ([torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9)], "volume 1 has images"),
        ([torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8, dtype=torch.float64)], "volume 1"),
        ([torch.zeros(0, 3, 8, 8)], "non-empty"),
        ([torch.zeros(3, 8, 8)], "non-empty"),
    ],
)
def test_pad_batch_refuses_inconsistent_input(images: list[torch.Tensor], message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        pad_batch(images)


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_the_spec_constants() -> None:
    config = PreprocessConfig()
    assert (config.volume_size, config.crop_size) == (164, 144)
    assert (config.clip_min_hu, config.clip_max_hu, config.air_tolerance_hu) == (-1000, 1000, 1)
    assert (config.scale_offset_hu, config.scale_range_hu) == (1000, 2000)
    assert config.orientation == "LPS" and "toward patient left" in config.orientation_description


def test_config_round_trips_through_json() -> None:
    config = PreprocessConfig(crop_size=128, orientation="RAS", train_flip_axis="AP")
    restored = PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()


def _with(**changes: object) -> dict[str, object]:
    data = PreprocessConfig().to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(patch_size=16), r"unknown keys \['patch_size'\]"),
        ({k: v for k, v in _with().items() if k != "mean"}, r"missing keys \['mean'\]"),
        (_with(volume_size="164"), "'volume_size' must be int"),
        (_with(volume_size=164.0), "'volume_size' must be int"),
        (_with(crop_size=True), "'crop_size' must be int"),
        (_with(align_corners=0), "'align_corners' must be bool"),
        (_with(mean=[0.5, 0.5]), "'mean' must be 3 numbers"),
        (_with(std=[0.2, "x", 0.2]), "'std' must be 3 numbers"),
        (_with(clip_max_hu=float("nan")), "'clip_max_hu' must be float"),
        (_with(crop_size=200), "crop_size <= volume_size"),
        (_with(clip_min_hu=1000.0), "clip_min_hu must be below"),
        (_with(std=[0.2, 0.0, 0.2]), "std values must be positive"),
        (_with(orientation="LSP"), "not axial"),
        (_with(interpolation="bicubic"), "interpolation must be one of"),
        (_with(train_flip_axis="SI"), "train_flip_axis"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_config_from_dict_is_strict(data: object, message: str) -> None:
    with pytest.raises(PreprocessConfigError, match=message) as info:
        PreprocessConfig.from_dict(data)  # type: ignore[arg-type]
    assert isinstance(info.value, HyperCTError)


def test_config_is_used_by_the_pipeline() -> None:
    volume = volume_from_array(slice_ramp_cube(0, 0), (1.0, 1.0, 1.0))
    small = PreprocessConfig(volume_size=96, crop_size=64)
    assert images_from_volume(volume, small).shape == (32, 3, 64, 64)
    narrow = to_hu(images_from_volume(volume, PreprocessConfig(clip_max_hu=-700.0)))
    assert narrow.max() == pytest.approx(-700.0, abs=1e-3)
