"""Manifest validation (one-line errors) and the preprocessing cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hyperct_core.dataset import (
    ManifestError,
    PreprocessCache,
    load_volume,
    read_manifest,
    write_manifest,
)
from hyperct_core.phantoms import (
    ENCODED_TASKS,
    PhantomSpec,
    labels,
    make_volume,
    write_dicom_series,
    write_phantom_dataset,
)
from hyperct_core.preprocess import PreprocessConfig, images_from_volume
from hyperct_core.tasks import TASK_NAMES
from hyperct_core.volume import volume_from_array

SHAPE = (24, 48, 48)
SPACING = (12.0, 7.0, 7.0)
CONFIG = PreprocessConfig(volume_size=30, crop_size=24)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(folder, 12, seed=3, fmt="npz", shape=SHAPE, spacing=SPACING)


def test_phantom_dataset_manifest_round_trips(dataset: Path) -> None:
    man = read_manifest(dataset)
    assert len(man.rows) == 12
    assert {r.split for r in man.rows} == {"train", "val", "test"}
    assert set(man.task_columns) == set(TASK_NAMES)
    y = man.labels()
    encoded = [TASK_NAMES.index(t) for t in ENCODED_TASKS]
    others = [i for i in range(len(TASK_NAMES)) if i not in encoded]
    assert np.isnan(y[:, others]).all()
    assert set(np.unique(y[:, encoded])) <= {0.0, 1.0}
    summary = man.summary()
    assert sum(s["series"] for s in summary["splits"].values()) == 12
    train = summary["splits"]["train"]["tasks"]["cardiomegaly"]
    assert train["positive"] + train["negative"] == summary["splits"]["train"]["series"]
    # Same arguments, same data.
    again = write_phantom_dataset(
        dataset.parent / "again", 12, seed=3, fmt="npz", shape=SHAPE, spacing=SPACING
    )
    a = np.load(dataset.parent / "PHANTOM0005.npz")["hu"]
    b = np.load(again.parent / "PHANTOM0005.npz")["hu"]
    assert np.array_equal(a, b)


def _write(tmp_path: Path, header: list[str], *rows: list[str]) -> Path:
    path = tmp_path / "m.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture
def volume_file(tmp_path: Path) -> Path:
    np.save(tmp_path / "v.npy", make_volume(PhantomSpec(), SHAPE, SPACING))
    return tmp_path / "v.npy"


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (["path", "patient_id", "split", "spacing", "cardiomegally"], ["v.npy", "P1", "train",
         "12,7,7", "1"], "line 1: unknown column 'cardiomegally'"),
        (["path", "patient_id", "split", "spacing", "cardiomegaly"], ["v.npy", "P1", "train",
         "12,7,7", "yes"], "line 2: label cardiomegaly = 'yes'"),
        (["path", "patient_id", "split", "spacing", "emphysema"], ["v.npy", "P1", "train",
         "12,7,7", "2"], "line 2: label emphysema = '2'"),
        (["path", "patient_id", "split", "spacing"], ["gone.npy", "P1", "train", "12,7,7"],
         "line 2: file not found: gone.npy"),
        (["path", "patient_id", "split"], ["v.npy", "P1", "train"], "needs the spacing column"),
        (["path", "patient_id", "split", "spacing"], ["v.npy", "P1", "holdout", "1,1,1"],
         "split 'holdout' is not one of"),
        (["path", "patient_id", "split", "spacing"], ["v.npy", "P1", "train", "1,1"],
         "is not three positive numbers"),
        (["path", "patient_id", "split"], ["scan.nii.gz", "P1", "train"], "NIfTI is not supported"),
        (["path", "split"], ["v.npy", "train"], "missing required column 'patient_id'"),
    ],
)  # fmt: skip
def test_manifest_errors_are_one_line(
    tmp_path: Path, volume_file: Path, header: list[str], row: list[str], message: str
) -> None:
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(_write(tmp_path, header, row))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("m.csv")


def test_same_patient_in_two_splits_is_refused(tmp_path: Path, volume_file: Path) -> None:
    header = ["path", "patient_id", "split", "spacing", "cardiomegaly"]
    ok = ["v.npy", "P1", "train", "12,7,7", "1"]
    with pytest.raises(ManifestError, match=r"line 4: .*line 2.*split 'val'"):
        read_manifest(
            _write(tmp_path, header, ok, ["v.npy", "P2", "val", "12,7,7", "0"],
                   ["v.npy", "P1", "val", "12,7,7", "0"])
        )  # fmt: skip
    # Two series of one patient in one split are fine.
    man = read_manifest(_write(tmp_path, header, ok, ["v.npy", "P1", "train", "12,7,7", ""]))
    assert np.isnan(man.rows[1].labels[TASK_NAMES.index("cardiomegaly")])
    assert list(man.rows[0].labelled_tasks) == [TASK_NAMES.index("cardiomegaly")]


def test_dicom_folder_rows_read_the_series(tmp_path: Path) -> None:
    spec = PhantomSpec(heart_scale=1.4, seed=2)
    vol = make_volume(spec, SHAPE, SPACING, np.random.default_rng(0))
    write_dicom_series(vol, tmp_path / "ct" / "s1", spacing=SPACING, patient_id="P9")
    lab = labels(spec)
    path = write_manifest(
        tmp_path / "ct" / "manifest.csv",
        [{"path": "s1", "patient_id": "P9", "split": "test", **lab}],
    )
    row = read_manifest(path).rows[0]
    assert row.is_dicom and row.labels[TASK_NAMES.index("cardiomegaly")] == 1
    loaded = load_volume(row)
    assert np.array_equal(loaded.array, vol)
    assert loaded.spacing == pytest.approx(SPACING)


def test_cache_gives_the_inference_images_and_is_reused(dataset: Path, tmp_path: Path) -> None:
    man = read_manifest(dataset)
    row = man.rows[0]
    cache = PreprocessCache(tmp_path / "cache", CONFIG)
    direct = images_from_volume(load_volume(row), CONFIG)
    assert np.array_equal(cache.images(row).numpy(), direct.numpy())
    assert (cache.misses, cache.hits) == (1, 0)
    # Training mode: the same random crop and flip as the uncached pipeline.
    cached_train = cache.images(row, train=True, rng=np.random.default_rng(5))
    direct_train = images_from_volume(
        load_volume(row), CONFIG, train=True, rng=np.random.default_rng(5)
    )
    assert np.array_equal(cached_train.numpy(), direct_train.numpy())
    again = PreprocessCache(tmp_path / "cache", CONFIG)
    again.images(row)
    assert (again.misses, again.hits) == (0, 1)
    # Another preprocessing config or a changed source file is a different entry.
    other = PreprocessCache(tmp_path / "cache", PreprocessConfig(volume_size=27, crop_size=24))
    assert other.key(row) != cache.key(row)
    before = cache.key(row)
    np.savez(row.path, hu=np.zeros(SHAPE, np.int16) - 1000, spacing=np.array(SPACING))
    assert cache.key(row) != before


def test_cache_refuses_an_all_air_volume_in_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "air.npz", hu=np.full(SHAPE, -1000, np.int16), spacing=np.array(SPACING))
    path = write_manifest(
        tmp_path / "m.csv", [{"path": "air.npz", "patient_id": "A", "split": "train"}]
    )
    with pytest.raises(ManifestError, match=r"manifest line 2 \(air.npz\): only 0 of 30"):
        PreprocessCache(tmp_path / "c", CONFIG).images(read_manifest(path).rows[0])


def test_volume_from_cache_matches_a_fresh_volume(dataset: Path) -> None:
    row = read_manifest(dataset).rows[1]
    with np.load(row.path) as z:
        hu, spacing = z["hu"], tuple(z["spacing"])
    expected = images_from_volume(volume_from_array(hu, spacing), CONFIG)
    assert np.array_equal(images_from_volume(load_volume(row), CONFIG), expected)
