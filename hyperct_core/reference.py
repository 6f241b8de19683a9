"""Reference distributions for drift monitoring, and the statistics that compare with them.

``model evaluate`` records in the model card (``extra.reference_distributions``) the
distribution of every task's scores on the evaluation series and, where the series are
DICOM, of four acquisition characteristics read from their headers: Manufacturer
(0008,0070), KVP (0018,0060), Slice Thickness (0018,0050) and Convolution Kernel
(0018,1210) (PS3.3 C.7.5.1 General Equipment and C.8.2.1 CT Image modules).

Which statistic, and why:

* **Scores and categorical inputs** (manufacturer, kernel): the population stability
  index, ``PSI = sum((a - e) * ln(a / e))`` over bins, ``e`` the reference proportion and
  ``a`` the live one. Score bins are the reference's deciles (equal reference mass per
  bin, so every bin is informative whatever the score range); categories are the values
  seen, and a value the reference never saw counts with a floor proportion of
  :data:`PSI_FLOOR`, so a new scanner model alone raises the index. PSI is an effect
  size independent of the number of samples, with a conventional reading
  (< 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift).
* **Continuous inputs** (kVp, slice thickness): the Kolmogorov-Smirnov distance
  ``D = max |F_live - F_ref|`` between the two empirical distribution functions. Their
  values sit on a few protocol settings (80/100/120/140 kV; 0.625/1/1.25/2.5/5 mm), so
  quantile bins collapse into one another and PSI would depend on an arbitrary binning;
  D needs no bins and, like PSI, reads as an effect size (0-1: the largest share of
  series whose position moved). Its p-value is not used: with a few thousand series any
  trivial shift is "significant".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CATEGORICAL",
    "CONTINUOUS",
    "PSI_FLOOR",
    "bin_proportions",
    "build_reference",
    "categorical_psi",
    "categorical_reference",
    "continuous_reference",
    "ks_distance",
    "normalise_category",
    "psi",
    "score_psi",
    "score_reference",
    "series_characteristics",
]

#: Input characteristics compared by PSI over categories.
CATEGORICAL = ("manufacturer", "convolution_kernel")
#: Input characteristics compared by the Kolmogorov-Smirnov distance.
CONTINUOUS = ("kvp", "slice_thickness")
#: Proportion standing in for zero in PSI (a bin or category one side never saw).
PSI_FLOOR = 1e-4
#: Score bins: reference deciles.
SCORE_BINS = 10
#: Most points kept of a continuous reference's distribution function.
MAX_CDF_POINTS = 200


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of ``actual`` against ``expected`` proportions."""
    e = np.clip(np.asarray(expected, dtype=float), PSI_FLOOR, None)
    a = np.clip(np.asarray(actual, dtype=float), PSI_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_proportions(values: Iterable[float], edges: Sequence[float]) -> list[float]:
    """Share of ``values`` in each of the ``len(edges) + 1`` bins cut at ``edges``.

    A value equal to an edge falls in the bin above it, for the reference and the live
    scores alike.
    """
    v = np.asarray(list(values), dtype=float)
    counts = np.bincount(np.searchsorted(np.asarray(edges), v, side="right"),
                         minlength=len(edges) + 1)  # fmt: skip
    return [float(c) / max(len(v), 1) for c in counts]


def score_reference(scores: Iterable[float], bins: int = SCORE_BINS) -> dict[str, Any]:
    """Interior decile edges of ``scores`` and the reference share in each bin."""
    s = np.asarray(list(scores), dtype=float)
    edges = [float(e) for e in np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)[1:-1]))]
    return {"n": len(s), "edges": edges, "proportions": bin_proportions(s, edges)}


def score_psi(reference: Mapping[str, Any], scores: Iterable[float]) -> tuple[float, list[float]]:
    """(PSI, live proportions) of ``scores`` in the reference's bins."""
    live = bin_proportions(scores, reference["edges"])
    return psi(reference["proportions"], live), live


def normalise_category(value: Any) -> str | None:
    """A categorical input as compared: trimmed, upper case; multi-valued joined by ``\\``."""
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):  # incl. pydicom MultiValue
        value = "\\".join(str(v) for v in value)
    text = str(value).strip().upper()
    return text or None


def categorical_reference(values: Iterable[Any]) -> dict[str, Any]:
    """Share of each category among the known values (missing ones are left out)."""
    known = [c for c in (normalise_category(v) for v in values) if c is not None]
    counts = Counter(known)
    return {
        "kind": "categorical",
        "n": len(known),
        "proportions": {k: n / len(known) for k, n in sorted(counts.items())} if known else {},
    }


def categorical_psi(
    reference: Mapping[str, Any], values: Iterable[Any]
) -> tuple[float, dict[str, float]]:
    """(PSI, live proportions) over the union of reference and live categories."""
    live = categorical_reference(values)["proportions"]
    ref = reference["proportions"]
    keys = sorted(set(ref) | set(live))
    return psi([ref.get(k, 0.0) for k in keys], [live.get(k, 0.0) for k in keys]), live


def continuous_reference(values: Iterable[Any]) -> dict[str, Any]:
    """The empirical distribution function of the known values, at most
    :data:`MAX_CDF_POINTS` points (quantiles beyond that)."""
    v = np.sort(np.asarray([float(x) for x in values if _is_number(x)], dtype=float))
    if not len(v):
        return {"kind": "continuous", "n": 0, "values": [], "cdf": []}
    points, counts = np.unique(v, return_counts=True)
    cdf = np.cumsum(counts) / len(v)
    if len(points) > MAX_CDF_POINTS:
        cdf = np.linspace(1 / MAX_CDF_POINTS, 1.0, MAX_CDF_POINTS)
        points = np.quantile(v, cdf)
    return {"kind": "continuous", "n": len(v),
            "values": [float(p) for p in points], "cdf": [float(c) for c in cdf]}  # fmt: skip


def ks_distance(reference: Mapping[str, Any], values: Iterable[Any]) -> float:
    """Kolmogorov-Smirnov distance between the live values and the reference ECDF."""
    live = np.sort(np.asarray([float(x) for x in values if _is_number(x)], dtype=float))
    ref_x = np.asarray(reference["values"], dtype=float)
    ref_f = np.asarray(reference["cdf"], dtype=float)
    if not len(live) or not len(ref_x):
        return float("nan")
    grid = np.union1d(ref_x, live)
    at = np.searchsorted(ref_x, grid, side="right") - 1
    f_ref = np.where(at >= 0, ref_f[np.clip(at, 0, None)], 0.0)
    f_live = np.searchsorted(live, grid, side="right") / len(live)
    return float(np.max(np.abs(f_live - f_ref)))


def _is_number(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def series_characteristics(path: Path) -> dict[str, Any]:
    """The four compared characteristics of a DICOM series folder (its first readable
    file's header); ``{}`` for an array or a folder without a readable DICOM file."""
    if not path.is_dir():
        return {}
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.multival import MultiValue

    tags = ["Manufacturer", "KVP", "SliceThickness", "ConvolutionKernel"]
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=tags)
        except (InvalidDicomError, OSError, ValueError):
            continue
        kernel = ds.get("ConvolutionKernel")
        return {
            "manufacturer": ds.get("Manufacturer"),
            "kvp": ds.get("KVP"),
            "slice_thickness": ds.get("SliceThickness"),
            "convolution_kernel": [str(k) for k in kernel]
            if isinstance(kernel, MultiValue)
            else kernel,
        }
    return {}


def build_reference(
    probs: np.ndarray,
    task_names: Sequence[str],
    characteristics: Sequence[Mapping[str, Any]],
    source: Mapping[str, Any],
) -> dict[str, Any]:
    """The card's ``reference_distributions``: scores of every task, and each input
    characteristic that at least one evaluation series has."""
    probs = np.asarray(probs, dtype=float)
    inputs: dict[str, Any] = {}
    for name in CATEGORICAL:
        ref = categorical_reference(c.get(name) for c in characteristics)
        if ref["n"]:
            inputs[name] = ref
    for name in CONTINUOUS:
        ref = continuous_reference(c.get(name) for c in characteristics)
        if ref["n"]:
            inputs[name] = ref
    return {
        "source": dict(source),
        "statistics": {
            "scores": "psi",
            **dict.fromkeys(CATEGORICAL, "psi"),
            **dict.fromkeys(CONTINUOUS, "ks"),
        },  # fmt: skip
        "scores": {name: score_reference(probs[:, i]) for i, name in enumerate(task_names)},
        "inputs": inputs,
    }
