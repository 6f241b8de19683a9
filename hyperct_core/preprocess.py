"""From a HU volume to the model's input: triplets of axial slices as 3-channel images.

The steps and constants follow the HyperCT input specification: resize the whole volume
to 164^3, clip to [-1000, 1000] HU, crop in-plane to 144 x 144, drop all-air slices,
make the slice count a multiple of 3, group consecutive triplets as RGB channels, scale
to [0, 1] and normalise with ImageNet statistics. The constants live in
:class:`PreprocessConfig`, which travels inside a checkpoint's model card so that the
weights are always fed what they were trained on.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hyperct_core.errors import HyperCTError, PreprocessError
from hyperct_core.volume import (
    CANONICAL_ORIENTATION,
    DatasetOrPath,
    HUVolume,
    describe_orientation,
    parse_orientation,
    volume_from_datasets,
)

SLICES_PER_IMAGE = 3  # one slice per RGB channel of the backbone
_INTERPOLATIONS = ("trilinear", "nearest", "nearest-exact", "area")
_FLIP_AXES = ("LR", "AP")


class PreprocessConfigError(HyperCTError, ValueError):
    """Preprocessing constants that are inconsistent, unknown or of the wrong type."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing constants; serialised into the checkpoint's model card.

    Attributes:
        volume_size: Edge of the cube the whole volume is resized to (slices and in-plane).
        crop_size: In-plane edge after cropping; all ``volume_size`` slices are kept.
        clip_min_hu: Lower clip bound in HU (also the value that counts as air).
        clip_max_hu: Upper clip bound in HU.
        air_tolerance_hu: A slice is air when every voxel is within this of ``clip_min_hu``.
        scale_offset_hu: Intensity scaling is ``(hu + scale_offset_hu) / scale_range_hu``.
        scale_range_hu: See ``scale_offset_hu``.
        mean: Per-channel mean subtracted after scaling (ImageNet).
        std: Per-channel standard deviation divided after scaling (ImageNet).
        orientation: Orientation code of the volume before resizing; see
            :mod:`hyperct_core.volume` (``"LPS"``: array (slices, rows, columns), columns
            toward patient left, rows toward posterior, slices toward superior).
        interpolation: ``torch.nn.functional.interpolate`` mode of the resize.
        align_corners: Its ``align_corners`` (only meaningful for ``"trilinear"``).
        train_flip_axis: In-plane patient axis the training augmentation flips with
            p = 0.5, ``"LR"`` (left-right) or ``"AP"`` (anterior-posterior).
    """

    volume_size: int = 164
    crop_size: int = 144
    clip_min_hu: float = -1000.0
    clip_max_hu: float = 1000.0
    air_tolerance_hu: float = 1.0
    scale_offset_hu: float = 1000.0
    scale_range_hu: float = 2000.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    orientation: str = CANONICAL_ORIENTATION
    interpolation: str = "trilinear"
    align_corners: bool = False
    train_flip_axis: str = "LR"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _FIELD_TYPES[f.name])
        if not 1 <= self.crop_size <= self.volume_size:
            raise PreprocessConfigError(
                f"need 1 <= crop_size <= volume_size, got {self.crop_size} and {self.volume_size}"
            )
        if not self.clip_min_hu < self.clip_max_hu:
            raise PreprocessConfigError("clip_min_hu must be below clip_max_hu")
        if self.air_tolerance_hu < 0 or self.scale_range_hu <= 0:
            raise PreprocessConfigError("air_tolerance_hu must be >= 0 and scale_range_hu > 0")
        if len(self.mean) != SLICES_PER_IMAGE or len(self.std) != SLICES_PER_IMAGE:
            raise PreprocessConfigError("mean and std need one value per channel (3)")
        if min(self.std) <= 0:
            raise PreprocessConfigError("std values must be positive")
        if self.interpolation not in _INTERPOLATIONS:
            raise PreprocessConfigError(
                f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.train_flip_axis not in _FLIP_AXES:
            raise PreprocessConfigError(
                f"train_flip_axis must be 'LR' or 'AP', got {self.train_flip_axis!r}"
            )
        try:
            parse_orientation(self.orientation)
        except PreprocessError as exc:
            raise PreprocessConfigError(str(exc)) from None

    @property
    def orientation_description(self) -> str:
        return describe_orientation(self.orientation)

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready mapping of every constant (tuples become lists)."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; every key required, unknown keys and wrong types refused."""
        if not isinstance(data, Mapping):
            raise PreprocessConfigError(
                f"preprocessing config must be a mapping, got {type(data).__name__}"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names), key=str)
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise PreprocessConfigError(
                "preprocessing config does not match this version: "
                f"unknown keys {unknown}, missing keys {missing}"
            )
        values = {}
        for name in names:
            value = data[name]
            if _FIELD_TYPES[name] == "floats3" and isinstance(value, list | tuple):
                value = tuple(value)
            values[name] = value
        return cls(**values)


_FIELD_TYPES = {
    "volume_size": "int",
    "crop_size": "int",
    "clip_min_hu": "float",
    "clip_max_hu": "float",
    "air_tolerance_hu": "float",
    "scale_offset_hu": "float",
    "scale_range_hu": "float",
    "mean": "floats3",
    "std": "floats3",
    "orientation": "str",
    "interpolation": "str",
    "align_corners": "bool",
    "train_flip_axis": "str",
}


def _is_number(value: object) -> bool:
    # bool is an int subclass; a True where a size belongs is a bug, not a 1.
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _check_type(name: str, value: object, kind: str) -> None:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": _is_number(value),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "floats3": isinstance(value, tuple)
        and len(value) == SLICES_PER_IMAGE
        and all(_is_number(v) for v in value),
    }[kind]
    if not ok:
        expected = {"floats3": "3 numbers"}.get(kind, kind)
        raise PreprocessConfigError(
            f"preprocessing config field {name!r} must be {expected}, got {value!r}"
        )


def images_from_volume(
    volume: HUVolume,
    config: PreprocessConfig | None = None,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Turn a HU volume into model images of shape ``(n, 3, crop, crop)``, float32.

    Channel ``c`` of image ``i`` is resized slice ``3 i + c`` among the non-air slices,
    counted in the slice order of ``config.orientation`` (inferior to superior for LPS).

    Args:
        volume: Any orientation; it is reoriented to ``config.orientation`` first.
        config: Constants; the defaults of :class:`PreprocessConfig` if omitted.
        train: Random in-plane crop and random flip (``config.train_flip_axis``) instead
            of the centre crop.
        rng: Randomness for ``train``; a fresh default generator if omitted.

    Raises:
        PreprocessError: No slice contains anything but air, or only one does.
    """
    config = config or PreprocessConfig()
    size, crop = config.volume_size, config.crop_size
    x = resized_cube(volume, config)

    margin = size - crop
    flip = False
    if train:
        gen = rng if rng is not None else np.random.default_rng()
        top, left = (int(v) for v in gen.integers(0, margin + 1, size=2))
        flip = bool(gen.random() < 0.5)
    else:
        top = left = margin // 2
    x = x[:, top : top + crop, left : left + crop]
    if flip:
        x = x.flip(_flip_dim(config))

    air = ((x - config.clip_min_hu).abs() <= config.air_tolerance_hu).flatten(1).all(dim=1)
    x = x[~air]
    count = x.shape[0]
    if count < 2:
        # Remainder 1 drops the last slice: one body slice would leave no image at all.
        raise PreprocessError(
            f"only {count} of {size} resized slices contain anything but air; "
            "is the series empty or outside the body?"
        )
    remainder = count % SLICES_PER_IMAGE
    if remainder == 1:
        x = x[:-1]
    elif remainder == 2:
        x = torch.cat([x, x[-1:]])
    x = x.reshape(-1, SLICES_PER_IMAGE, crop, crop)

    mean = torch.tensor(config.mean, dtype=x.dtype).view(1, SLICES_PER_IMAGE, 1, 1)
    std = torch.tensor(config.std, dtype=x.dtype).view(1, SLICES_PER_IMAGE, 1, 1)
    scaled = (x + config.scale_offset_hu) / config.scale_range_hu
    return ((scaled - mean) / std).contiguous()


def resized_cube(volume: HUVolume, config: PreprocessConfig) -> torch.Tensor:
    """Steps 1-3: reorient, resize to the ``volume_size`` cube, clip HU (a new tensor)."""
    vol = volume.reoriented(config.orientation)
    size = config.volume_size
    x = _read_only_tensor(np.ascontiguousarray(vol.array))
    if tuple(x.shape) != (size, size, size):
        align = config.align_corners if config.interpolation == "trilinear" else None
        x = F.interpolate(
            x[None, None], size=(size, size, size), mode=config.interpolation, align_corners=align
        )[0, 0]
    return x.clamp(config.clip_min_hu, config.clip_max_hu)


def _read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """Share a (possibly read-only) array with torch without copying it.

    torch warns that writes to a non-writable array are undefined; every step below
    produces a new tensor (interpolate, clamp), so the volume is never written.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(array)


def _flip_dim(config: PreprocessConfig) -> int:
    """Array dimension (1 or 2) of the in-plane patient axis ``train_flip_axis``."""
    letters = set(config.train_flip_axis)
    # The code lists columns, rows, slices; columns are array dim 2, rows dim 1.
    return 2 if config.orientation[0] in letters else 1


def preprocess_bytes(config: PreprocessConfig) -> int:
    """Memory preprocessing needs beside the volume: the float32 cubes alive at once, at most."""
    return 6 * 4 * config.volume_size**3


def preprocess_series(
    datasets_or_paths: Iterable[DatasetOrPath],
    config: PreprocessConfig | None = None,
    *,
    max_bytes: int | None = None,
) -> torch.Tensor:
    """DICOM CT series (datasets or file paths, any order) to inference images ``(n, 3, H, W)``.

    ``max_bytes`` bounds the memory this needs, estimated from the headers before any
    pixel is decoded (:func:`~hyperct_core.volume.volume_from_datasets`); the resized
    cube and its few working copies are counted too.
    """
    config = config or PreprocessConfig()
    volume = volume_from_datasets(
        datasets_or_paths,
        config.orientation,
        max_bytes=max_bytes,
        extra_bytes=preprocess_bytes(config),
    )
    return images_from_volume(volume, config)


def pad_batch(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad per-volume images to one batch.

    Args:
        images: One ``(n_i, 3, H, W)`` tensor per volume, same ``(3, H, W)`` and dtype.

    Returns:
        ``(batch, mask)``: ``batch`` is ``(B, N, 3, H, W)`` with ``N = max n_i``;
        ``mask[b, i]`` is True where image ``i`` of volume ``b`` is real, False for padding.
    """
    if len(images) == 0:
        raise PreprocessError("cannot batch an empty list of volumes")
    first = images[0]
    for b, item in enumerate(images):
        if not isinstance(item, torch.Tensor) or item.ndim != 4 or item.shape[0] < 1:
            raise PreprocessError(f"volume {b} of the batch is not a non-empty (n, 3, H, W) tensor")
        if item.shape[1:] != first.shape[1:] or item.dtype != first.dtype:
            raise PreprocessError(
                f"volume {b} has images {tuple(item.shape[1:])} {item.dtype}, "
                f"volume 0 has {tuple(first.shape[1:])} {first.dtype}"
            )
    longest = max(item.shape[0] for item in images)
    batch = first.new_zeros((len(images), longest, *first.shape[1:]))
    mask = torch.zeros((len(images), longest), dtype=torch.bool, device=first.device)
    for b, item in enumerate(images):
        batch[b, : item.shape[0]] = item
        mask[b, : item.shape[0]] = True
    return batch, mask
