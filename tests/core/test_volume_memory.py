"""Reading a series within a memory budget (reliability row 19).

The budget is checked from the headers before any pixel is decoded; files are
decoded one at a time straight into the volume; a compressed frame whose own
size differs from its header is refused without being decoded. Peak resident
memory is measured in a separate process, against a baseline taken there.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from hyperct_core.errors import PreprocessError
from hyperct_core.grid_phantom import Grid, make_enhanced, make_series, reference_volume
from hyperct_core.volume import SeriesTooLarge, volume_from_datasets
from tests.support.ct_series import ct_series

ROOT = Path(__file__).resolve().parents[2]
GRID = Grid()
REFERENCE = reference_volume(GRID)
ACQUISITIONS = {
    "head-first": ((1, 0, 0), (0, 1, 0)),
    "feet-first": ((-1, 0, 0), (0, 1, 0)),
    "transposed": ((0, 1, 0), (1, 0, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
}


def write(datasets: list[Dataset], folder: Path, syntax: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_files_read_one_at_a_time_give_the_same_volume(name: str, tmp_path: Path) -> None:
    # Written straight into the final orientation (no copy): every flip and swap must hold.
    row, col = ACQUISITIONS[name]
    native = write(make_series(GRID, row=row, col=col), tmp_path / "native")
    deflated = write(
        make_series(GRID, row=row, col=col), tmp_path / "deflated", DeflatedExplicitVRLittleEndian
    )
    for paths in (native, deflated):
        volume = volume_from_datasets(paths[::-1])
        np.testing.assert_array_equal(volume.array, REFERENCE)
        assert volume.array.flags.c_contiguous
    enhanced = tmp_path / "enhanced.dcm"
    make_enhanced(GRID, row=row, col=col).save_as(enhanced, enforce_file_format=True)
    np.testing.assert_array_equal(volume_from_datasets([enhanced]).array, REFERENCE)


def test_budget_is_checked_from_headers(tmp_path: Path) -> None:
    paths = write(make_series(GRID), tmp_path)
    volume_bytes = REFERENCE.size * 4
    with pytest.raises(SeriesTooLarge, match=r"12 images of 40 x 48"):
        volume_from_datasets(paths, max_bytes=volume_bytes)
    # the volume plus one instance in flight fits
    assert volume_from_datasets(paths, max_bytes=volume_bytes + 4 * 40 * 48 * 2 + 65536)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
def test_compressed_frame_larger_than_its_header_is_not_decoded(syntax: str) -> None:
    series = make_series(GRID)
    for ds in series:
        ds.compress(syntax)
    np.testing.assert_array_equal(volume_from_datasets(series).array, REFERENCE)
    # the header now says 20 x 24, the codestreams still hold 40 x 48
    for ds in series:
        ds.Rows, ds.Columns = 20, 24
    with pytest.raises(PreprocessError, match="compressed as 40 x 48 but the header says 20 x 24"):
        volume_from_datasets(series)


_PEAK = """
import json, sys
from pathlib import Path
from hyperct_core.errors import PreprocessError
from hyperct_core.preprocess import preprocess_series

def hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM")

warm, target, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
preprocess_series(sorted(Path(warm).iterdir()))  # imports, decoders, torch kernels
baseline = hwm()
try:
    images = preprocess_series(sorted(Path(target).iterdir()), max_bytes=budget)
    outcome = f"screened {tuple(images.shape)}"
except PreprocessError as exc:
    outcome = f"refused: {exc}"
print(json.dumps({"baseline": baseline, "peak": hwm(), "outcome": outcome}))
"""


def peak_reading(warm: Path, target: Path, budget: int) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, str(warm), str(target), str(budget)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def warm_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("warm")
    write(ct_series(4, rows=32, columns=32), folder, DeflatedExplicitVRLittleEndian)
    return folder


def test_large_matrix_series_is_refused_within_the_budget(
    tmp_path: Path, warm_series: Path
) -> None:
    # 24 slices of 2048 x 2048, deflated to almost nothing: 384 MiB as a float32 volume.
    series = ct_series(24, rows=2048, columns=2048)
    for ds in series:
        ds.PixelData = bytes(2048 * 2048 * 2)
    write(series, tmp_path / "big", DeflatedExplicitVRLittleEndian)
    budget = 128 << 20
    result = peak_reading(warm_series, tmp_path / "big", budget)
    assert str(result["outcome"]).startswith("refused: reading the series needs about")
    assert int(result["peak"]) <= int(result["baseline"]) + budget  # type: ignore[call-overload]


def test_deflated_series_is_screened_within_the_budget(tmp_path: Path, warm_series: Path) -> None:
    write(ct_series(16, rows=1024, columns=1024), tmp_path / "ok", DeflatedExplicitVRLittleEndian)
    budget = 256 << 20
    result = peak_reading(warm_series, tmp_path / "ok", budget)
    assert str(result["outcome"]).startswith("screened")
    assert int(result["peak"]) <= int(result["baseline"]) + budget  # type: ignore[call-overload]


def test_rle_frame_that_overruns_its_header_is_refused_not_fatal() -> None:
    # Runs of 129 zeros: 2 MiB of segment expand to 129 MiB where the header allows 4 KiB.
    # pylibjpeg-rle decodes into a buffer of the header's size and panics (a BaseException).
    series = make_series(GRID)
    segment = bytes([0x81, 0x00]) * (1 << 20)
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    bomb = series[3]
    bomb.file_meta.TransferSyntaxUID = RLELossless
    bomb.PixelData = encapsulate([header + segment + segment])
    bomb["PixelData"].VR = "OB"
    bomb["PixelData"].is_undefined_length = True
    with pytest.raises(PreprocessError, match="cannot decode pixel data"):
        volume_from_datasets(series)
