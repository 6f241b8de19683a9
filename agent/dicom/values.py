"""Header values as plain Python: absent, empty or malformed values read as None."""

from __future__ import annotations

import math

from pydicom.dataset import Dataset


def text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def multi_text(ds: Dataset, keyword: str) -> str | None:
    """A multi-valued string as its values joined by backslash, the DICOM separator."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = [value] if isinstance(value, str) else list(value)
    return "\\".join(str(v).strip() for v in values) or None


def integer(ds: Dataset, keyword: str) -> int | None:
    """An IS or US value; None when absent or outside IS's range (PS3.5 6.2: 32-bit signed)."""
    value = ds.get(keyword)
    try:
        number = None if value in (None, "") else int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and -(2**31) <= number < 2**31 else None


def floats(ds: Dataset | None, keyword: str, n: int) -> tuple[float, ...] | None:
    """Exactly ``n`` finite numbers, or None."""
    if ds is None:
        return None
    value = ds.get(keyword)
    if (
        value is not None
        and not isinstance(value, (list, tuple))
        and not hasattr(value, "__iter__")
    ):
        value = [value]
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == n and all(map(math.isfinite, numbers)) else None


def first_item(ds: Dataset, *path: str) -> Dataset | None:
    """Follow single-item sequences, e.g. a functional group's macro."""
    node: Dataset | None = ds
    for keyword in path:
        seq = node.get(keyword) if node is not None else None
        if not seq:
            return None
        node = seq[0]
    return node
