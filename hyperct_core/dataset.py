"""Training and validation data: a CSV manifest of labelled series and a preprocessing cache.

Manifest
--------
One row per series, comma-separated, with a header::

    path,patient_id,split,spacing,cardiomegaly,pleural_effusion,...
    ct/0001,P0001,train,,1,0,...
    arrays/0002.npz,P0002,val,,0,,...
    arrays/0003.npy,P0003,test,"2.5,0.7,0.7",,1,...

``path``
    A folder holding one DICOM CT series (every file in it is read), a ``.npy`` array or
    a ``.npz`` archive. Relative paths are relative to the manifest's folder. Arrays are
    HU volumes ``(slices, rows, columns)`` in the orientation of the ``orientation``
    column (default ``LPS``, see :mod:`hyperct_core.volume`). A ``.npz`` holds the array
    as ``hu`` and may hold ``spacing`` (3 numbers, mm); a ``.npy`` needs the ``spacing``
    column. NIfTI is not read: the only well-kept reader (nibabel) is not a dependency of
    this project; convert NIfTI to ``.npz`` (HU array in LPS order plus spacing) first.
``patient_id``
    Keeps patients out of two splits: a patient in two splits is an error.
``split``
    ``train``, ``val`` or ``test``.
``spacing`` (optional)
    ``"z,y,x"`` in mm for arrays; ignored for DICOM (the headers say it).
``orientation`` (optional)
    Orientation code of an array; default ``LPS``.
task columns
    Any of the 25 task names (:data:`hyperct_core.tasks.TASK_NAMES`): ``1``, ``0`` or
    blank (missing; masked out of loss and metrics). A task without a column is missing
    for every row.

Every problem is one :class:`ManifestError` line naming the manifest line.

Cache
-----
Reading a DICOM series and resizing it to the model's cube dominates an epoch. The
cache stores, per series, the cube after reorientation, resize and HU clipping (steps
1-3 of the spec's input pipeline) as a float32 ``.npy``; the crop, flip, air-slice
removal, triplets and normalisation run per epoch from it, so training augmentation is
unchanged and inference-mode images equal :func:`hyperct_core.preprocess.images_from_volume`
on the original volume. The cache key covers the source (path, file sizes and
modification times), the array geometry and every preprocessing constant used.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyperct_core.errors import HyperCTError
from hyperct_core.tasks import TASK_NAMES, TASKS

__all__ = [
    "SPLITS",
    "CachedImages",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "PreprocessCache",
    "StepPlan",
    "image_loader",
    "load_volume",
    "read_manifest",
    "write_manifest",
]

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("path", "patient_id", "split")
OPTIONAL_COLUMNS = ("spacing", "orientation", "series_id")
ARRAY_SUFFIXES = (".npy", ".npz")
_NIFTI = (".nii", ".nii.gz")


class ManifestError(HyperCTError, ValueError):
    """A manifest that cannot be used as it stands; the message names the line."""


@dataclass(frozen=True)
class ManifestRow:
    """One labelled series.

    Attributes:
        path: Absolute path of the DICOM folder or array file.
        patient_id: Patient identifier (never logged).
        split: ``train``, ``val`` or ``test``.
        labels: 25 floats in task order: 1.0, 0.0 or NaN (missing).
        spacing: Array voxel size (mm) or None (DICOM, or taken from a ``.npz``).
        orientation: Orientation code of an array.
        line: Line number in the manifest (for messages).
        series_id: Optional identifier for reports; defaults to the path's name.
    """

    path: Path
    patient_id: str
    split: str
    labels: np.ndarray
    spacing: tuple[float, float, float] | None = None
    orientation: str = "LPS"
    line: int = 0
    series_id: str = ""

    @property
    def labelled_tasks(self) -> np.ndarray:
        return np.flatnonzero(~np.isnan(self.labels))

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir()


@dataclass(frozen=True)
class Manifest:
    path: Path
    rows: tuple[ManifestRow, ...]
    task_columns: tuple[str, ...]

    def split(self, name: str) -> list[ManifestRow]:
        return [row for row in self.rows if row.split == name]

    def labels(self, split: str | None = None) -> np.ndarray:
        """(N, 25) label matrix of a split (all rows if None), NaN where missing."""
        rows = self.rows if split is None else self.split(split)
        return np.stack([row.labels for row in rows]) if rows else np.empty((0, len(TASKS)))

    def summary(self) -> dict[str, Any]:
        """Counts for the model card: series, patients and per-task positives per split."""
        out: dict[str, Any] = {"manifest": self.path.name, "splits": {}}
        for split in SPLITS:
            rows = self.split(split)
            if not rows:
                continue
            y = self.labels(split)
            tasks = {}
            for i, name in enumerate(TASK_NAMES):
                known = ~np.isnan(y[:, i])
                if known.any():
                    tasks[name] = {
                        "positive": int((y[known, i] == 1).sum()),
                        "negative": int((y[known, i] == 0).sum()),
                    }
            out["splits"][split] = {
                "series": len(rows),
                "patients": len({r.patient_id for r in rows}),
                "tasks": tasks,
            }
        return out


def read_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Read and validate a manifest CSV; raise :class:`ManifestError` with one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path.name}: empty manifest (no header)") from None
    where = path.name
    seen = Counter(header)
    dupes = [h for h, n in seen.items() if n > 1]
    if dupes:
        raise ManifestError(f"{where} line 1: column {dupes[0]!r} appears twice")
    for col in REQUIRED_COLUMNS:
        if col not in header:
            raise ManifestError(f"{where} line 1: missing required column {col!r}")
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS) | set(TASK_NAMES)
    for col in header:
        if col not in known:
            raise ManifestError(
                f"{where} line 1: unknown column {col!r} (not a HyperCT task name or one of "
                f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})"
            )
    task_columns = tuple(c for c in header if c in TASK_NAMES)
    base = path.parent
    rows: list[ManifestRow] = []
    patient_split: dict[str, tuple[str, int]] = {}
    for line, values in enumerate(reader, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise ManifestError(
                f"{where} line {line}: {len(values)} fields, the header has {len(header)}"
            )
        cell = {h: v.strip() for h, v in zip(header, values, strict=True)}
        row = _parse_row(cell, line, where, base, check_files)
        first = patient_split.setdefault(row.patient_id, (row.split, line))
        if first[0] != row.split:
            raise ManifestError(
                f"{where} line {line}: a patient of split {first[0]!r} (line {first[1]}) "
                f"appears again in split {row.split!r}; keep each patient in one split"
            )
        rows.append(row)
    if not rows:
        raise ManifestError(f"{where}: the manifest has no rows")
    return Manifest(path=path, rows=tuple(rows), task_columns=task_columns)


def _parse_row(
    cell: Mapping[str, str], line: int, where: str, base: Path, check_files: bool
) -> ManifestRow:
    at = f"{where} line {line}"
    raw_path = cell["path"]
    if not raw_path:
        raise ManifestError(f"{at}: empty path")
    file = Path(raw_path).expanduser()
    if not file.is_absolute():
        file = base / file
    if raw_path.lower().endswith(_NIFTI):
        raise ManifestError(
            f"{at}: NIfTI is not supported (no NIfTI reader is a dependency); convert it to "
            ".npz with an 'hu' array in LPS order and 'spacing'"
        )
    if check_files and not file.exists():
        raise ManifestError(f"{at}: file not found: {raw_path}")
    if check_files and file.is_file() and file.suffix.lower() not in ARRAY_SUFFIXES:
        raise ManifestError(
            f"{at}: {raw_path} is neither a DICOM series folder nor a .npy/.npz array"
        )
    patient = cell["patient_id"]
    if not patient:
        raise ManifestError(f"{at}: empty patient_id")
    split = cell["split"].lower()
    if split not in SPLITS:
        raise ManifestError(f"{at}: split {cell['split']!r} is not one of {', '.join(SPLITS)}")
    spacing: tuple[float, float, float] | None = None
    if cell.get("spacing"):
        try:
            parts = [float(v) for v in cell["spacing"].replace(";", ",").split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3 or not all(np.isfinite(p) and p > 0 for p in parts):
            raise ManifestError(
                f"{at}: spacing {cell['spacing']!r} is not three positive numbers 'z,y,x' (mm)"
            )
        spacing = (parts[0], parts[1], parts[2])
    if check_files and file.suffix.lower() == ".npy" and spacing is None:
        raise ManifestError(f"{at}: a .npy volume needs the spacing column ('z,y,x' in mm)")
    labels = np.full(len(TASKS), np.nan, dtype=np.float32)
    for i, name in enumerate(TASK_NAMES):
        value = cell.get(name, "")
        if value == "":
            continue
        if value not in ("0", "1"):
            raise ManifestError(
                f"{at}: label {name} = {value!r}; a label is 1, 0 or blank (missing)"
            )
        labels[i] = float(value)
    orientation = cell.get("orientation") or "LPS"
    from hyperct_core.volume import parse_orientation

    try:
        parse_orientation(orientation)
    except HyperCTError as exc:
        raise ManifestError(f"{at}: {exc}") from None
    return ManifestRow(
        path=file,
        patient_id=patient,
        split=split,
        labels=labels,
        spacing=spacing,
        orientation=orientation,
        line=line,
        series_id=cell.get("series_id") or Path(raw_path).name,
    )


def write_manifest(
    path: str | Path,
    rows: Iterable[Mapping[str, Any]],
    *,
    tasks: Sequence[str] = TASK_NAMES,
) -> Path:
    """Write a manifest; each row maps ``path``, ``patient_id``, ``split`` (and optional
    ``spacing``/``orientation``/``series_id``) plus task names to 1, 0 or None."""
    path = Path(path)
    rows = list(rows)
    optional = [c for c in OPTIONAL_COLUMNS if any(c in r for r in rows)]
    header = [*REQUIRED_COLUMNS, *optional, *tasks]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            out = []
            for col in header:
                value = r.get(col)
                if col == "spacing" and isinstance(value, Sequence) and not isinstance(value, str):
                    value = ",".join(f"{float(v):g}" for v in value)
                elif col in TASK_NAMES and value is not None and value != "":
                    value = int(value)
                out.append("" if value is None else str(value))
            writer.writerow(out)
    return path


# --------------------------------------------------------------------------- volumes


def load_volume(row: ManifestRow) -> Any:
    """The row's series as a :class:`hyperct_core.volume.HUVolume`."""
    from hyperct_core.errors import PreprocessError
    from hyperct_core.volume import volume_from_array, volume_from_datasets

    at = f"manifest line {row.line} ({row.series_id})"
    try:
        if row.path.is_dir():
            files = sorted(p for p in row.path.iterdir() if p.is_file() and p.name != "DICOMDIR")
            if not files:
                raise ManifestError(f"{at}: folder {row.path} holds no files")
            return volume_from_datasets(files)
        suffix = row.path.suffix.lower()
        if suffix == ".npy":
            array = np.load(row.path, allow_pickle=False)
            if row.spacing is None:
                raise ManifestError(f"{at}: a .npy volume needs a spacing")
            return volume_from_array(array, row.spacing, row.orientation)
        if suffix == ".npz":
            with np.load(row.path, allow_pickle=False) as z:
                if "hu" not in z:
                    raise ManifestError(f"{at}: {row.path.name} has no 'hu' array")
                array = z["hu"]
                spacing: Sequence[float] | None = row.spacing
                if spacing is None and "spacing" in z:
                    spacing = [float(v) for v in z["spacing"]]
            if spacing is None:
                raise ManifestError(f"{at}: {row.path.name} has no spacing (array or column)")
            return volume_from_array(array, spacing, row.orientation)
        raise ManifestError(f"{at}: {row.path.name} is not a DICOM folder or .npy/.npz")
    except PreprocessError as exc:
        raise ManifestError(f"{at}: {exc}") from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{at}: cannot read {row.path.name}: {exc}") from None


# --------------------------------------------------------------------------- cache


def _source_fingerprint(row: ManifestRow) -> dict[str, Any]:
    files = sorted(row.path.iterdir()) if row.path.is_dir() else [row.path]
    stats = []
    for f in files:
        st = f.stat()
        stats.append([f.name, st.st_size, st.st_mtime_ns])
    return {
        "path": str(row.path.resolve()),
        "files": stats,
        "spacing": row.spacing,
        "orientation": row.orientation,
    }


class PreprocessCache:
    """Resized, clipped cubes of manifest rows on disk (see the module docstring).

    Args:
        root: Cache folder (created on first use).
        config: A :class:`hyperct_core.preprocess.PreprocessConfig`.
    """

    def __init__(self, root: str | Path, config: Any) -> None:
        self.root = Path(root)
        self.config = config
        self.hits = 0
        self.misses = 0

    def key(self, row: ManifestRow) -> str:
        payload = {"source": _source_fingerprint(row), "config": self.config.to_dict(), "v": 1}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def cube(self, row: ManifestRow) -> np.ndarray:
        """The row's cube ``(size, size, size)`` float32, from disk or computed and stored."""
        file = self.root / f"{self.key(row)}.npy"
        if file.is_file():
            try:
                cube = np.load(file, mmap_mode="r", allow_pickle=False)
                size = self.config.volume_size
                if cube.shape == (size, size, size) and cube.dtype == np.float32:
                    self.hits += 1
                    return cube
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed below
        self.misses += 1
        cube = resize_clip(load_volume(row), self.config)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                np.save(f, cube, allow_pickle=False)
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
        return cube

    def images(
        self, row: ManifestRow, *, train: bool = False, rng: np.random.Generator | None = None
    ) -> Any:
        """Model images ``(n, 3, crop, crop)`` of the row (training augmentation if ``train``)."""
        from hyperct_core.errors import PreprocessError
        from hyperct_core.preprocess import images_from_volume
        from hyperct_core.volume import volume_from_array

        cube = self.cube(row)
        # Already in the config's orientation and size: images_from_volume skips the
        # resize and runs crop/flip/air/triplets/normalisation exactly as at inference.
        volume = volume_from_array(np.asarray(cube), (1.0, 1.0, 1.0), self.config.orientation)
        try:
            return images_from_volume(volume, self.config, train=train, rng=rng)
        except PreprocessError as exc:
            raise ManifestError(f"manifest line {row.line} ({row.series_id}): {exc}") from None

    def warm(self, rows: Iterable[ManifestRow]) -> Iterator[ManifestRow]:
        """Fill the cache for ``rows``, yielding each row when done (for a progress bar)."""
        for row in rows:
            self.cube(row)
            yield row


def resize_clip(volume: Any, config: Any) -> np.ndarray:
    """Steps 1-3 of the input pipeline (reorient, resize to the cube, clip HU), cached."""
    from hyperct_core.preprocess import resized_cube

    return np.ascontiguousarray(resized_cube(volume, config).numpy(), dtype=np.float32)


# --------------------------------------------------------------------------- loading


class CachedImages:
    """Model images of manifest rows from a :class:`PreprocessCache` (a map-style dataset).

    An item is ``(row index, seed)``: the seed draws that volume's augmentation, so a
    batch's images do not depend on which worker process made them or in what order.
    """

    def __init__(self, rows: Sequence[ManifestRow], cache: PreprocessCache, augment: bool) -> None:
        self.rows = list(rows)
        self.cache = cache
        self.augment = augment

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        rng = np.random.default_rng(seed)
        return self.cache.images(self.rows[index], train=self.augment, rng=rng)


class StepPlan:
    """Batch sampler whose steps the training loop sets each epoch (in the main process)."""

    def __init__(self) -> None:
        self.steps: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def image_loader(images: CachedImages, plan: StepPlan, *, workers: int, pin_memory: bool) -> Any:
    """A DataLoader yielding each planned step as a list of ``(n_i, 3, H, W)`` tensors.

    Workers read the cache's memory-mapped cubes and run crop, flip, air-slice removal
    and normalisation; pinned memory lets the copy to a GPU overlap the next step.
    """
    from torch.utils.data import DataLoader

    return DataLoader(
        images,  # type: ignore[arg-type]
        batch_sampler=plan,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=list,
        persistent_workers=workers > 0,
    )
