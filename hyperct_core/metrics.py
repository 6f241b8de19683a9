"""Discrimination, calibration and decision metrics of one task's probabilities.

* ROC AUC by the rank-sum formula (ties half) and a percentile bootstrap CI of it.
* Decision curves: net benefit ``TP/n - FP/n * pt/(1-pt)`` of referring when the
  probability is >= pt, against "refer all" (``prev - (1-prev) pt/(1-pt)``) and "refer
  none" (0) (Vickers & Elkin 2006).
* Calibration: Brier score, calibration-in-the-large, expected calibration error and a
  reliability table.
* An operating threshold by a stated rule (:func:`choose_threshold`) and the rates at it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hyperct_core.errors import HyperCTError

__all__ = [
    "DCA_THRESHOLDS",
    "RULES",
    "EvaluateError",
    "bootstrap_auc",
    "calibration",
    "choose_threshold",
    "net_benefit",
    "rates",
    "refer_all_benefit",
    "roc_auc",
    "roc_curve",
]

RULES = ("sensitivity", "net_benefit")
DCA_THRESHOLDS = np.round(np.arange(0.05, 0.8001, 0.01), 2)


class EvaluateError(HyperCTError):
    """Evaluation cannot run; the message says why."""


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum, ties counted half; NaN with one class."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=float)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks = np.empty(len(score))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), from (0, 0) to (1, 1)."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(t)[distinct]
    fp = (distinct + 1) - tp
    tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def bootstrap_auc(
    y: np.ndarray, score: np.ndarray, *, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, int]:
    """Percentile CI of the AUC over ``n`` resamples; returns (low, high, resamples used)."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        auc = roc_auc(y[idx], score[idx])
        if not math.isnan(auc):
            values.append(auc)
    if not values:
        return float("nan"), float("nan"), 0
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high), len(values)


def net_benefit(
    y: np.ndarray, prob: np.ndarray, thresholds: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Net benefit of referring when ``prob >= pt``, for each threshold pt."""
    y = np.asarray(y).astype(bool)
    prob = np.asarray(prob, dtype=float)
    n = len(y)
    out = []
    for pt in thresholds:
        refer = prob >= pt
        tp = int((refer & y).sum())
        fp = int((refer & ~y).sum())
        out.append(tp / n - fp / n * pt / (1.0 - pt))
    return np.array(out)


def refer_all_benefit(y: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    prev = float(np.mean(np.asarray(y).astype(bool)))
    pt = np.asarray(thresholds, dtype=float)
    return prev - (1.0 - prev) * pt / (1.0 - pt)


def calibration(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Brier score, calibration-in-the-large, ECE and a reliability table (equal width)."""
    y = np.asarray(y).astype(float)
    prob = np.asarray(prob, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        sel = which == b
        count = int(sel.sum())
        mean_p = float(prob[sel].mean()) if count else float("nan")
        observed = float(y[sel].mean()) if count else float("nan")
        if count:
            ece += count / len(y) * abs(mean_p - observed)
        table.append(
            {"bin_low": edges[b], "bin_high": edges[b + 1], "count": count,
             "mean_probability": mean_p, "observed_rate": observed}
        )  # fmt: skip
    return {
        "brier": float(np.mean((prob - y) ** 2)),
        "calibration_in_the_large": float(prob.mean() - y.mean()),
        "ece": float(ece),
        "table": table,
    }


def choose_threshold(
    y: np.ndarray,
    prob: np.ndarray,
    rule: str = "sensitivity",
    target_sensitivity: float = 0.9,
) -> float:
    """Operating threshold by ``rule`` (module docstring)."""
    y = np.asarray(y).astype(bool)
    prob = np.asarray(prob, dtype=float)
    if rule == "sensitivity":
        # Highest threshold t with sensitivity(prob >= t) >= target: the target'th
        # quantile from the top of the positives' probabilities.
        pos = np.sort(prob[y])[::-1]
        k = max(int(math.ceil(target_sensitivity * len(pos))), 1)
        return float(pos[k - 1])
    if rule == "net_benefit":
        gain = net_benefit(y, prob, DCA_THRESHOLDS) - np.maximum(
            refer_all_benefit(y, DCA_THRESHOLDS), 0.0
        )
        return float(DCA_THRESHOLDS[int(np.argmax(gain))])
    raise EvaluateError(f"unknown threshold rule {rule!r}; use one of {', '.join(RULES)}")


def rates(y: np.ndarray, prob: np.ndarray, t: float) -> dict[str, float]:
    y = np.asarray(y).astype(bool)
    refer = np.asarray(prob) >= t
    tp, fp = int((refer & y).sum()), int((refer & ~y).sum())
    fn, tn = int((~refer & y).sum()), int((~refer & ~y).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
    }
