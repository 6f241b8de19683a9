"""Validating a checkpoint on labelled series (``hyperct-agent model evaluate CKPT MANIFEST``).

Two splits, two jobs, never mixed:

* the **threshold split** (default ``val``) decides, per task, whether the model has an
  operating point at all, and chooses it: a task is *validated* when it has both classes
  there, its AUC is at least ``min_auc`` (default 0.6) and the lower end of its bootstrap
  95 % CI is above 0.5. Only validated tasks get a threshold, by a stated rule:
  ``sensitivity`` (the highest threshold whose sensitivity is >= the target; default
  0.9) or ``net_benefit`` (the threshold in 5-80 % where the model's net benefit most
  exceeds the better of refer-all and refer-none);
* the **reported split** (default ``test``) gives every figure reported: per task ROC AUC
  with a bootstrap 95 % CI (1000 series resamples, seeded, percentile interval),
  sensitivity, specificity, PPV and NPV at the threshold chosen on the other split,
  decision curves and calibration (:mod:`hyperct_core.metrics`); group means (all,
  conventional, opportunistic) with CIs from the same resamples.

A threshold chosen and scored on the same series overstates its sensitivity and
specificity, and a task without discrimination would still get one; so the two splits
must differ. ``write_thresholds`` writes the validated thresholds (and nothing else) into
the checkpoint's card with a record of both splits' figures; the card stays
``validated: false`` (choosing thresholds is not a clinical validation). Tasks not
validated get no threshold: the agent reports them "not assessed".

Outputs (:mod:`hyperct_core.evaluation_report`): ``metrics.csv``, ``decision_curves.csv``,
``calibration.csv`` and ``report.html``; and ``reference.json``, the distributions of the
scores and acquisition characteristics of every series scored (both splits), which
``write_thresholds`` also stores in the card for the agent's drift monitoring
(:mod:`hyperct_core.reference`).

For scale, the full-scale HyperCT (frozen DINOv3 ViT-B/16, a hypernetwork of 85.0 M
parameters as the paper counts it) reached a mean AUC of 78.1 on its retrospective test
set (conventional 78.5, opportunistic 77.0) and 77.8 / 78.6 in two prospective cohorts
(HyperCT paper, MIDL 2026). Those are the paper's numbers, not a property of any
checkpoint evaluated here.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperct_core.evaluation_report import render_report, write_outputs
from hyperct_core.metrics import (
    DCA_THRESHOLDS,
    RULES,
    EvaluateError,
    bootstrap_auc,
    calibration,
    choose_threshold,
    net_benefit,
    rates,
    refer_all_benefit,
    roc_auc,
    roc_curve,
)
from hyperct_core.reference import build_reference, series_characteristics
from hyperct_core.tasks import TASK_NAMES, TASKS

__all__ = [
    "DCA_THRESHOLDS",
    "MIN_AUC",
    "RULES",
    "EvaluationResult",
    "EvaluateError",
    "bootstrap_auc",
    "calibration",
    "choose_threshold",
    "evaluate",
    "evaluate_predictions",
    "net_benefit",
    "refer_all_benefit",
    "render_report",
    "roc_auc",
    "roc_curve",
    "save_thresholds",
    "validate_task",
]

GROUPS = ("all", "conventional", "opportunistic")
#: Default lowest validation AUC a task needs for an operating point.
MIN_AUC = 0.6


@dataclass
class EvaluationResult:
    """Figures of the reported split; thresholds and validation from the threshold split.

    ``tasks[name]`` holds the reported split's metrics plus ``validated``, ``reason``
    (why not, else ""), ``threshold`` (None when not validated) and ``val`` (the
    threshold split's n, positives, AUC and CI; None without a threshold split).
    """

    tasks: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    thresholds: dict[str, float]
    rule: str
    target_sensitivity: float
    n_series: int
    min_auc: float = MIN_AUC
    threshold_split: str | None = "val"
    split: str = "test"
    n_threshold_series: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    #: Score and input distributions for drift monitoring (:mod:`hyperct_core.reference`).
    reference: dict[str, Any] | None = None

    @property
    def not_validated(self) -> dict[str, str]:
        return {t: m["reason"] for t, m in self.tasks.items() if not m["validated"]}


def validate_task(
    y: np.ndarray,
    p: np.ndarray,
    *,
    min_auc: float = MIN_AUC,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Any], str]:
    """Threshold-split figures of one task and why it is not validated ("" if it is)."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    figures: dict[str, Any] = {"n": len(y), "positives": n_pos}
    if n_pos == 0 or n_pos == len(y):
        figures.update(auc=None, ci_low=None, ci_high=None)
        return figures, "the threshold split lacks positive or negative labels"
    auc = roc_auc(y, p)
    low, high, _ = bootstrap_auc(y, p, n=n_boot, seed=seed)
    figures.update(auc=auc, ci_low=low, ci_high=high)
    if auc < min_auc:
        return figures, f"AUC {auc:.3f} below the minimum {min_auc:.2f}"
    if not low > 0.5:
        return figures, f"AUC 95 % CI [{low:.3f}, {high:.3f}] includes 0.5"
    return figures, ""


def evaluate_predictions(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    threshold_labels: np.ndarray | None = None,
    threshold_probs: np.ndarray | None = None,
    rule: str = "sensitivity",
    target_sensitivity: float = 0.9,
    min_auc: float = MIN_AUC,
    n_boot: int = 1000,
    seed: int = 0,
    task_names: Sequence[str] = TASK_NAMES,
    split: str = "test",
    threshold_split: str | None = "val",
) -> EvaluationResult:
    """Every metric from label matrices (N, T; NaN missing) and probabilities (N, T).

    ``labels``/``probs`` are the reported split; ``threshold_labels``/``threshold_probs``
    the split thresholds are chosen on (none given: no task gets a threshold).
    """
    if rule not in RULES:
        raise EvaluateError(f"unknown threshold rule {rule!r}; use one of {', '.join(RULES)}")
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    have_val = threshold_labels is not None and threshold_probs is not None
    if not have_val:
        threshold_split = None
    groups_of = {t.name: t.group for t in TASKS}
    tasks: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(task_names):
        known = ~np.isnan(labels[:, i])
        y, p = labels[known, i].astype(bool), probs[known, i]
        if y.all() or not y.any():
            continue
        low, high, used = bootstrap_auc(y, p, n=n_boot, seed=seed + i)
        val, reason, threshold = None, "no threshold split was given", None
        if have_val:
            vy_all = np.asarray(threshold_labels, dtype=float)[:, i]
            v_known = ~np.isnan(vy_all)
            vy = vy_all[v_known].astype(bool)
            vp = np.asarray(threshold_probs, dtype=float)[v_known, i]
            val, reason = validate_task(vy, vp, min_auc=min_auc, n_boot=n_boot, seed=seed + i)
            if not reason:
                threshold = choose_threshold(vy, vp, rule, target_sensitivity)
        fpr, tpr, _ = roc_curve(y, p)
        at = (
            rates(y, p, threshold)
            if threshold is not None
            else dict.fromkeys(("sensitivity", "specificity", "ppv", "npv"), float("nan"))
        )
        tasks[name] = {
            "group": groups_of.get(name, ""),
            "n": int(known.sum()),
            "positives": int(y.sum()),
            "auc": roc_auc(y, p),
            "ci_low": low,
            "ci_high": high,
            "bootstrap_used": used,
            "validated": threshold is not None,
            "reason": reason if threshold is None else "",
            "threshold": threshold,
            **at,
            "val": val,
            "calibration": calibration(y, p),
            "net_benefit": net_benefit(y, p, DCA_THRESHOLDS),
            "refer_all": refer_all_benefit(y, DCA_THRESHOLDS),
            "roc": (fpr, tpr),
        }
    if not tasks:
        raise EvaluateError("no task has both a positive and a negative label in this split")
    groups = _group_means(labels, probs, tasks, task_names, n_boot, seed)
    return EvaluationResult(
        tasks=tasks,
        groups=groups,
        thresholds={k: v["threshold"] for k, v in tasks.items() if v["threshold"] is not None},
        rule=rule,
        target_sensitivity=target_sensitivity,
        n_series=len(labels),
        min_auc=min_auc,
        threshold_split=threshold_split,
        split=split,
        n_threshold_series=len(threshold_labels) if have_val else 0,  # type: ignore[arg-type]
    )


def _group_means(
    labels: np.ndarray,
    probs: np.ndarray,
    tasks: dict[str, dict[str, Any]],
    task_names: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    index = {name: i for i, name in enumerate(task_names)}
    members = {g: [t for t, m in tasks.items() if g == "all" or m["group"] == g] for g in GROUPS}
    rng = np.random.default_rng(seed + 10_000)
    boot: dict[str, list[float]] = {g: [] for g in GROUPS}
    n = len(labels)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        aucs = {}
        for t in tasks:
            i = index[t]
            known = ~np.isnan(labels[idx, i])
            aucs[t] = roc_auc(labels[idx, i][known], probs[idx, i][known])
        for g, names in members.items():
            vals = [aucs[t] for t in names]
            if names and not any(math.isnan(v) for v in vals):
                boot[g].append(float(np.mean(vals)))
    out = {}
    for g, names in members.items():
        if not names:
            continue
        low, high = np.quantile(boot[g], [0.025, 0.975]) if boot[g] else (math.nan, math.nan)
        out[g] = {
            "tasks": len(names),
            "auc": float(np.mean([tasks[t]["auc"] for t in names])),
            "ci_low": float(low),
            "ci_high": float(high),
            "bootstrap_used": len(boot[g]),
        }
    return out


def _predict(predictor: Any, rows: Sequence[Any], cache: Any, bar: Any) -> np.ndarray:
    probs = []
    for j in range(0, len(rows), 8):
        chunk = rows[j : j + 8]
        probs.append(predictor.predict([cache.images(r) for r in chunk]))
        if bar is not None:
            bar.update(len(chunk))
    return np.concatenate(probs)


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    threshold_split: str | None = "val",
    rule: str = "sensitivity",
    target_sensitivity: float = 0.9,
    min_auc: float = MIN_AUC,
    n_boot: int = 1000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    backbone_path: str | Path | None = None,
    device: str = "auto",
    write_thresholds: bool | str | Path = False,
    progress: bool = False,
) -> EvaluationResult:
    """Score ``manifest`` with ``checkpoint``; thresholds from ``threshold_split``,
    figures from ``split``; write CSVs and the HTML report.

    Predictions come from :class:`hyperct_core.inference.Predictor` in fp32, the agent's
    own inference path. ``write_thresholds``: True re-saves the checkpoint in place with
    the validated thresholds in its card; a path writes a copy there instead.
    """
    from hyperct_core.dataset import PreprocessCache, read_manifest
    from hyperct_core.inference import load_predictor

    if rule not in RULES:
        raise EvaluateError(f"unknown threshold rule {rule!r}; use one of {', '.join(RULES)}")
    if not 0.0 < target_sensitivity <= 1.0:
        raise EvaluateError("target sensitivity must be in (0, 1]")
    if not 0.0 <= min_auc <= 1.0:
        raise EvaluateError("the minimum AUC must be in [0, 1]")
    if threshold_split == split:
        raise EvaluateError(
            f"thresholds and reported figures both from split {split!r}: a threshold scored "
            "on the series it was chosen on overstates its accuracy; use another split"
        )
    if write_thresholds and threshold_split is None:
        raise EvaluateError(
            "writing thresholds needs a threshold split (e.g. --threshold-split val)"
        )
    man = read_manifest(manifest)
    rows = [r for r in man.split(split) if len(r.labelled_tasks)]
    if not rows:
        raise EvaluateError(f"{man.path.name}: no labelled series in split {split!r}")
    val_rows = (
        [r for r in man.split(threshold_split) if len(r.labelled_tasks)]
        if (threshold_split)
        else []
    )
    if threshold_split and not val_rows:
        raise EvaluateError(
            f"{man.path.name}: no labelled series in split {threshold_split!r} to choose "
            "thresholds on (or pass --threshold-split none to report figures only)"
        )
    predictor = load_predictor(checkpoint, device=device, dtype="fp32", backbone_path=backbone_path)
    card = predictor.card
    config = card.preprocess_config()  # type: ignore[attr-defined]
    cache = PreprocessCache(cache_dir or man.path.parent / ".hyperct-cache", config)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows) + len(val_rows), desc="predict", dynamic_ncols=True)
    probs = _predict(predictor, rows, cache, bar)
    val_probs = _predict(predictor, val_rows, cache, bar) if val_rows else None
    if bar is not None:
        bar.close()
    result = evaluate_predictions(
        np.stack([r.labels for r in rows]),
        probs,
        threshold_labels=np.stack([r.labels for r in val_rows]) if val_rows else None,
        threshold_probs=val_probs,
        rule=rule,
        target_sensitivity=target_sensitivity,
        min_auc=min_auc,
        n_boot=n_boot,
        seed=seed,
        task_names=list(card.tasks),  # type: ignore[attr-defined]
        split=split,
        threshold_split=threshold_split,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "checkpoint": str(checkpoint),
        "model": f"{card.name} {card.version}",  # type: ignore[attr-defined]
        "validated": card.validated,  # type: ignore[attr-defined]
        "demo": bool(card.extra.get("demo")),  # type: ignore[attr-defined]
        "manifest": man.path.name,
        "split": split,
        "threshold_split": threshold_split,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "n_boot": n_boot,
        "seed": seed,
    }
    # The drift reference: every series scored here (both splits: neither was trained on).
    result.reference = build_reference(
        probs if val_probs is None else np.concatenate([probs, val_probs]),
        list(card.tasks),  # type: ignore[attr-defined]
        [series_characteristics(r.path) for r in [*rows, *val_rows]],
        {"manifest": man.path.name, "splits": [s for s in (split, threshold_split) if s],
         "date": info["date"]},
    )  # fmt: skip
    result.files = write_outputs(result, out, info)
    result.files["reference"] = out / "reference.json"
    result.files["reference"].write_text(json.dumps(result.reference, indent=1) + "\n")
    if write_thresholds:
        dest = Path(checkpoint) if write_thresholds is True else Path(write_thresholds)
        result.files["checkpoint"] = save_thresholds(checkpoint, result, info, dest, backbone_path)
    return result


def _num(value: Any) -> float | None:
    """JSON-safe number: None for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def operating_points_record(result: EvaluationResult, info: dict[str, Any]) -> dict[str, Any]:
    """The card's ``extra.operating_points``: rule, both splits, and per task the
    threshold split's figures (validation) and the reported split's (held out)."""
    tasks = {}
    for name, m in result.tasks.items():
        val = m["val"] or {}
        tasks[name] = {
            "validated": m["validated"],
            **({"reason": m["reason"]} if m["reason"] else {}),
            "threshold": _num(m["threshold"]),
            "threshold_split": {k: _num(val.get(k)) for k in ("auc", "ci_low", "ci_high")}
            | {"n": val.get("n"), "positives": val.get("positives")},
            "held_out": {
                "n": m["n"],
                "positives": m["positives"],
                **{k: _num(m[k]) for k in ("auc", "ci_low", "ci_high")},
                **{k: _num(m[k]) for k in ("sensitivity", "specificity", "ppv", "npv")},
            },
        }
    return {
        "rule": result.rule,
        "target_sensitivity": result.target_sensitivity if result.rule == "sensitivity" else None,
        "min_auc": result.min_auc,
        "manifest": info["manifest"],
        "threshold_split": info["threshold_split"],
        "held_out_split": info["split"],
        "date": info["date"],
        "tasks": tasks,
        "note": (
            f"validation and thresholds from split {info['threshold_split']!r} (AUC >= "
            f"{result.min_auc:g} and its 95 % CI above 0.5); every held_out figure from split "
            f"{info['split']!r} at those thresholds. Tasks not validated, and tasks not "
            "listed, have no operating point."
        ),
    }


def save_thresholds(
    checkpoint: str | Path,
    result: EvaluationResult,
    info: dict[str, Any],
    dest: str | Path,
    backbone_path: str | Path | None = None,
) -> Path:
    """Re-save ``checkpoint`` at ``dest`` with only ``result``'s validated thresholds."""
    from hyperct_core.checkpoint import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(checkpoint, backbone_path=backbone_path)
    # Exactly the validated tasks: an old or placeholder threshold must not survive.
    card.thresholds = dict(result.thresholds)
    card.extra = {**card.extra, "operating_points": operating_points_record(result, info)}
    if result.reference is not None:
        card.extra["reference_distributions"] = result.reference
    backbone_file = None
    if card.backbone.get("weights") == "external":
        backbone_file = backbone_path or card.backbone["file"]
    save_checkpoint(model, card, dest, backbone_file=backbone_file)
    return Path(dest)
