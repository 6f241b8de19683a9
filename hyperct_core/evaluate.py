"""Validating a checkpoint on labelled series (``hyperct-agent model evaluate CKPT MANIFEST``).

What it reports, per task with both classes in the evaluated split:

* ROC AUC (rank-sum formula, ties half) with a bootstrap 95 % CI: 1000 resamples of the
  series with replacement (seeded), percentile interval; resamples that lose a class are
  skipped and counted. Group means (all, conventional, opportunistic) are unweighted
  means over tasks, with CIs from the same resamples (a series is resampled with all its
  labels, so the groups' CIs respect the correlation between tasks).
* Decision curves: net benefit ``TP/n - FP/n * pt/(1-pt)`` of referring when the
  probability is >= pt, against "refer all" (``prev - (1-prev) pt/(1-pt)``) and "refer
  none" (0), for pt from 5 % to 80 % (Vickers & Elkin 2006).
* Calibration: Brier score, calibration-in-the-large (mean probability minus
  prevalence), expected calibration error and a 10-bin reliability table.
* An operating threshold per task by a stated rule: ``sensitivity`` (the highest
  threshold whose sensitivity on this split is >= the target; default 0.9) or
  ``net_benefit`` (the threshold in 5-80 % where the model's net benefit most exceeds
  the better of refer-all and refer-none; the net benefit alone always peaks at the
  lowest threshold for a common finding, since its harm weight pt/(1-pt) grows with pt). With
  ``write_thresholds`` the thresholds go into the checkpoint's card (re-saved, still
  ``validated: false``: choosing thresholds is not a clinical validation).

Outputs: ``metrics.csv`` (one row per task and group), ``decision_curves.csv``,
``calibration.csv`` and ``report.html`` (self-contained: ROC and decision curves as inline
SVG, no script, no network).

For scale, the full-scale HyperCT (frozen DINOv3 ViT-B/16, ~171 M parameter
hypernetwork) reached a mean AUC of 78.1 on its retrospective test set (conventional
78.5, opportunistic 77.0) and 77.8 / 78.6 in two prospective cohorts (HyperCT paper, MIDL
2026). Those are the paper's numbers, not a property of any checkpoint evaluated here.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hyperct_core.errors import HyperCTError
from hyperct_core.tasks import TASK_NAMES, TASKS

__all__ = [
    "RULES",
    "EvaluationResult",
    "EvaluateError",
    "bootstrap_auc",
    "calibration",
    "choose_threshold",
    "evaluate",
    "evaluate_predictions",
    "net_benefit",
    "roc_auc",
    "roc_curve",
]

RULES = ("sensitivity", "net_benefit")
DCA_THRESHOLDS = np.round(np.arange(0.05, 0.8001, 0.01), 2)
GROUPS = ("all", "conventional", "opportunistic")


class EvaluateError(HyperCTError):
    """Evaluation cannot run; the message says why."""


# --------------------------------------------------------------------------- metrics


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


def _rates(y: np.ndarray, prob: np.ndarray, t: float) -> dict[str, float]:
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


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationResult:
    tasks: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    thresholds: dict[str, float]
    rule: str
    target_sensitivity: float
    n_series: int
    files: dict[str, Path] = field(default_factory=dict)


def evaluate_predictions(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    rule: str = "sensitivity",
    target_sensitivity: float = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
    task_names: Sequence[str] = TASK_NAMES,
) -> EvaluationResult:
    """Every metric from a label matrix (N, T; NaN missing) and probabilities (N, T)."""
    if rule not in RULES:
        raise EvaluateError(f"unknown threshold rule {rule!r}; use one of {', '.join(RULES)}")
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    groups_of = {t.name: t.group for t in TASKS}
    tasks: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(task_names):
        known = ~np.isnan(labels[:, i])
        y, p = labels[known, i].astype(bool), probs[known, i]
        if y.all() or not y.any():
            continue
        low, high, used = bootstrap_auc(y, p, n=n_boot, seed=seed + i)
        threshold = choose_threshold(y, p, rule, target_sensitivity)
        fpr, tpr, _ = roc_curve(y, p)
        tasks[name] = {
            "group": groups_of.get(name, ""),
            "n": int(known.sum()),
            "positives": int(y.sum()),
            "auc": roc_auc(y, p),
            "ci_low": low,
            "ci_high": high,
            "bootstrap_used": used,
            "threshold": threshold,
            **_rates(y, p, threshold),
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
        thresholds={k: v["threshold"] for k, v in tasks.items()},
        rule=rule,
        target_sensitivity=target_sensitivity,
        n_series=len(labels),
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


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    rule: str = "sensitivity",
    target_sensitivity: float = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    backbone_path: str | Path | None = None,
    device: str = "auto",
    write_thresholds: bool | str | Path = False,
    progress: bool = False,
) -> EvaluationResult:
    """Score ``split`` of ``manifest`` with ``checkpoint``; write CSVs and the HTML report.

    Predictions come from :class:`hyperct_core.inference.Predictor` in fp32, the agent's
    own inference path. ``write_thresholds``: True re-saves the checkpoint in place with
    the chosen thresholds in its card; a path writes a copy there instead.
    """
    from hyperct_core.dataset import PreprocessCache, read_manifest
    from hyperct_core.inference import load_predictor

    if rule not in RULES:
        raise EvaluateError(f"unknown threshold rule {rule!r}; use one of {', '.join(RULES)}")
    if not 0.0 < target_sensitivity <= 1.0:
        raise EvaluateError("target sensitivity must be in (0, 1]")
    man = read_manifest(manifest)
    rows = [r for r in man.split(split) if len(r.labelled_tasks)]
    if not rows:
        raise EvaluateError(f"{man.path.name}: no labelled series in split {split!r}")
    predictor = load_predictor(checkpoint, device=device, dtype="fp32", backbone_path=backbone_path)
    card = predictor.card
    config = card.preprocess_config()  # type: ignore[attr-defined]
    cache = PreprocessCache(cache_dir or man.path.parent / ".hyperct-cache", config)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="predict", dynamic_ncols=True)
    probs = []
    for j in range(0, len(rows), 8):
        chunk = rows[j : j + 8]
        probs.append(predictor.predict([cache.images(r) for r in chunk]))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    labels = np.stack([r.labels for r in rows])
    result = evaluate_predictions(
        labels,
        np.concatenate(probs),
        rule=rule,
        target_sensitivity=target_sensitivity,
        n_boot=n_boot,
        seed=seed,
        task_names=list(card.tasks),  # type: ignore[attr-defined]
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
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "n_boot": n_boot,
        "seed": seed,
    }
    result.files = write_outputs(result, out, info)
    if write_thresholds:
        dest = Path(checkpoint) if write_thresholds is True else Path(write_thresholds)
        result.files["checkpoint"] = save_thresholds(checkpoint, result, info, dest, backbone_path)
    return result


def save_thresholds(
    checkpoint: str | Path,
    result: EvaluationResult,
    info: dict[str, Any],
    dest: str | Path,
    backbone_path: str | Path | None = None,
) -> Path:
    """Re-save ``checkpoint`` at ``dest`` with ``result``'s thresholds in its card."""
    from hyperct_core.checkpoint import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(checkpoint, backbone_path=backbone_path)
    card.thresholds = {**card.thresholds, **result.thresholds}
    card.extra = {
        **card.extra,
        "operating_points": {
            "rule": result.rule,
            "target_sensitivity": result.target_sensitivity
            if result.rule == "sensitivity"
            else None,
            "manifest": info["manifest"],
            "split": info["split"],
            "date": info["date"],
            "tasks": {
                t: {k: m[k] for k in ("threshold", "sensitivity", "specificity", "auc", "n")}
                for t, m in result.tasks.items()
            },
            "note": "thresholds chosen on this split; tasks not listed keep their threshold",
        },
    }
    backbone_file = None
    if card.backbone.get("weights") == "external":
        backbone_file = backbone_path or card.backbone["file"]
    save_checkpoint(model, card, dest, backbone_file=backbone_file)
    return Path(dest)


# --------------------------------------------------------------------------- outputs


def write_outputs(result: EvaluationResult, out: Path, info: dict[str, Any]) -> dict[str, Path]:
    files = {
        "metrics": out / "metrics.csv",
        "decision_curves": out / "decision_curves.csv",
        "calibration": out / "calibration.csv",
        "report": out / "report.html",
    }
    cols = ["task", "group", "n", "positives", "auc", "ci_low", "ci_high", "threshold",
            "sensitivity", "specificity", "ppv", "npv", "brier", "ece",
            "calibration_in_the_large"]  # fmt: skip
    with files["metrics"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for name, m in result.tasks.items():
            cal = m["calibration"]
            w.writerow([name, m["group"], m["n"], m["positives"], *_fmt(m["auc"], m["ci_low"],
                        m["ci_high"], m["threshold"], m["sensitivity"], m["specificity"],
                        m["ppv"], m["npv"], cal["brier"], cal["ece"],
                        cal["calibration_in_the_large"])])  # fmt: skip
        for g, m in result.groups.items():
            w.writerow([f"mean_{g}", g, "", "", *_fmt(m["auc"], m["ci_low"], m["ci_high"]),
                        *[""] * 8])  # fmt: skip
    with files["decision_curves"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "threshold", "net_benefit_model", "net_benefit_refer_all",
                    "net_benefit_refer_none"])  # fmt: skip
        for name, m in result.tasks.items():
            for pt, nb, ra in zip(DCA_THRESHOLDS, m["net_benefit"], m["refer_all"], strict=True):
                w.writerow([name, f"{pt:.2f}", *_fmt(nb, ra), "0"])
    with files["calibration"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "bin_low", "bin_high", "count", "mean_probability", "observed_rate"])
        for name, m in result.tasks.items():
            for row in m["calibration"]["table"]:
                w.writerow([name, f"{row['bin_low']:.1f}", f"{row['bin_high']:.1f}", row["count"],
                            *_fmt(row["mean_probability"], row["observed_rate"])])  # fmt: skip
    files["report"].write_text(render_report(result, info), encoding="utf-8")
    return files


def _fmt(*values: float) -> list[str]:
    return [
        "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}" for v in values
    ]


def render_report(result: EvaluationResult, info: dict[str, Any]) -> str:
    """The self-contained HTML report (Jinja2 template shipped in the package)."""
    import jinja2

    text = (
        resources.files("hyperct_core")
        .joinpath("report_templates/evaluation.html.j2")
        .read_text(encoding="utf-8")
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    display = {t.name: t.display_name for t in TASKS}
    tasks = []
    for name, m in result.tasks.items():
        tasks.append(
            {
                "name": name,
                "display": display.get(name, name),
                "m": m,
                "roc_svg": _roc_svg(m["roc"][0], m["roc"][1], m["auc"]),
                "dca_svg": _dca_svg(m["net_benefit"], m["refer_all"], m["threshold"]),
                "cal_svg": _calibration_svg(m["calibration"]["table"]),
            }
        )
    from markupsafe import Markup

    for t in tasks:
        for key in ("roc_svg", "dca_svg", "cal_svg"):
            t[key] = Markup(t[key])  # our own SVG, built from numbers only
    return env.from_string(text).render(
        info=info, result=result, tasks=tasks, groups=result.groups, fmt=_pct
    )


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}"


# --- inline SVG charts (no plotting dependency, no script) ---------------------------

_W, _H, _PAD = 260, 220, 34


def _axes(
    xlabel: str, ylabel: str, ymin: float, ymax: float, xmin: float, xmax: float
) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" '
        f'height="{_H}" role="img" font-family="sans-serif" font-size="9">',
        f'<rect x="{_PAD}" y="6" width="{_W - _PAD - 6}" height="{_H - _PAD - 6}" '
        'fill="#fff" stroke="#888"/>',
    ]
    for k in range(5):
        fx = k / 4
        x = _PAD + fx * (_W - _PAD - 6)
        y = 6 + (1 - fx) * (_H - _PAD - 6)
        parts.append(f'<text x="{x:.1f}" y="{_H - _PAD + 12}" text-anchor="middle">'
                     f"{xmin + fx * (xmax - xmin):.2g}</text>")  # fmt: skip
        parts.append(f'<text x="{_PAD - 3}" y="{y + 3:.1f}" text-anchor="end">'
                     f"{ymin + fx * (ymax - ymin):.2g}</text>")  # fmt: skip
    parts.append(f'<text x="{(_W + _PAD) / 2}" y="{_H - 4}" text-anchor="middle">'
                 f"{html.escape(xlabel)}</text>")  # fmt: skip
    mid = (_H - _PAD) / 2
    parts.append(
        f'<text x="10" y="{mid}" text-anchor="middle" transform="rotate(-90 10 {mid})">'
        f"{html.escape(ylabel)}</text>"
    )
    return parts


def _xy(x: float, y: float, box: tuple[float, float, float, float]) -> tuple[float, float]:
    xmin, xmax, ymin, ymax = box
    y = min(max(y, ymin), ymax)
    px = _PAD + (x - xmin) / (xmax - xmin) * (_W - _PAD - 6)
    py = 6 + (1 - (y - ymin) / (ymax - ymin)) * (_H - _PAD - 6)
    return px, py


def _polyline(xs: Sequence[float], ys: Sequence[float], box: tuple[float, ...], style: str) -> str:
    pts = " ".join("{:.1f},{:.1f}".format(*_xy(x, y, box)) for x, y in zip(xs, ys, strict=True))  # type: ignore[arg-type]
    return f'<polyline points="{pts}" fill="none" {style}/>'


def _roc_svg(fpr: np.ndarray, tpr: np.ndarray, auc: float) -> str:
    box = (0.0, 1.0, 0.0, 1.0)
    parts = _axes("1 - specificity", "sensitivity", 0, 1, 0, 1)
    parts.append(_polyline([0, 1], [0, 1], box, 'stroke="#bbb" stroke-dasharray="3 3"'))
    parts.append(_polyline(list(fpr), list(tpr), box, 'stroke="#1f5fa8" stroke-width="1.8"'))
    parts.append(f'<text x="{_W - 12}" y="{_H - _PAD - 10}" text-anchor="end">AUC {auc:.3f}</text>')
    return "".join(parts) + "</svg>"


def _dca_svg(nb: np.ndarray, refer_all: np.ndarray, threshold: float) -> str:
    top = max(float(np.nanmax(nb)), float(np.nanmax(refer_all)), 0.05)
    box = (0.0, 0.8, -0.05, top * 1.1)
    parts = _axes("threshold probability", "net benefit", box[2], box[3], 0.0, 0.8)
    xs = list(DCA_THRESHOLDS)
    parts.append(_polyline([0.05, 0.8], [0, 0], box, 'stroke="#555" stroke-dasharray="2 2"'))
    parts.append(_polyline(xs, list(refer_all), box, 'stroke="#d08a1c" stroke-width="1.4"'))
    parts.append(_polyline(xs, list(nb), box, 'stroke="#1f5fa8" stroke-width="1.8"'))
    if 0.05 <= threshold <= 0.8:
        x, _ = _xy(threshold, 0, box)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="6" y2="{_H - _PAD}" stroke="#2a2" '
                     'stroke-dasharray="4 2"/>')  # fmt: skip
    legend = [("model", "#1f5fa8"), ("refer all", "#d08a1c"), ("refer none", "#555")]
    for k, (label, colour) in enumerate(legend):
        y = 16 + 11 * k
        parts.append(f'<line x1="{_W - 70}" x2="{_W - 58}" y1="{y}" y2="{y}" stroke="{colour}"/>'
                     f'<text x="{_W - 55}" y="{y + 3}">{label}</text>')  # fmt: skip
    return "".join(parts) + "</svg>"


def _calibration_svg(table: list[dict[str, Any]]) -> str:
    box = (0.0, 1.0, 0.0, 1.0)
    parts = _axes("mean predicted probability", "observed rate", 0, 1, 0, 1)
    parts.append(_polyline([0, 1], [0, 1], box, 'stroke="#bbb" stroke-dasharray="3 3"'))
    pts = [(r["mean_probability"], r["observed_rate"]) for r in table if r["count"]]
    if pts:
        parts.append(_polyline([p[0] for p in pts], [p[1] for p in pts], box,
                               'stroke="#1f5fa8" stroke-width="1.5"'))  # fmt: skip
        for x, y in pts:
            px, py = _xy(x, y, box)
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="#1f5fa8"/>')
    return "".join(parts) + "</svg>"
