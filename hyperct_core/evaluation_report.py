"""What ``model evaluate`` writes: CSV tables and a self-contained HTML report.

``metrics.csv`` (one row per task and group), ``decision_curves.csv``,
``calibration.csv`` and ``report.html`` (ROC and decision curves and calibration as
inline SVG: no script, no network).
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hyperct_core.metrics import DCA_THRESHOLDS
from hyperct_core.tasks import TASKS

__all__ = ["render_report", "write_outputs"]


def write_outputs(result: Any, out: Path, info: dict[str, Any]) -> dict[str, Path]:
    files = {
        "metrics": out / "metrics.csv",
        "decision_curves": out / "decision_curves.csv",
        "calibration": out / "calibration.csv",
        "report": out / "report.html",
    }
    # Every figure is of the reported split; "threshold" and "validated" (with the
    # threshold split's AUC and CI) come from the threshold split.
    cols = ["task", "group", "n", "positives", "auc", "ci_low", "ci_high", "threshold",
            "sensitivity", "specificity", "ppv", "npv", "brier", "ece",
            "calibration_in_the_large", "validated", "val_auc", "val_ci_low", "val_ci_high",
            "not_validated_because"]  # fmt: skip
    with files["metrics"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for name, m in result.tasks.items():
            cal = m["calibration"]
            val = m["val"] or {}
            w.writerow([name, m["group"], m["n"], m["positives"], *_fmt(m["auc"], m["ci_low"],
                        m["ci_high"], m["threshold"], m["sensitivity"], m["specificity"],
                        m["ppv"], m["npv"], cal["brier"], cal["ece"],
                        cal["calibration_in_the_large"]), int(m["validated"]),
                        *_fmt(val.get("auc"), val.get("ci_low"), val.get("ci_high")),
                        m["reason"]])  # fmt: skip
        for g, m in result.groups.items():
            w.writerow([f"mean_{g}", g, "", "", *_fmt(m["auc"], m["ci_low"], m["ci_high"]),
                        *[""] * 13])  # fmt: skip
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


def _fmt(*values: float | None) -> list[str]:
    return [
        "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}" for v in values
    ]


def render_report(result: Any, info: dict[str, Any]) -> str:
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


def _dca_svg(nb: np.ndarray, refer_all: np.ndarray, threshold: float | None) -> str:
    top = max(float(np.nanmax(nb)), float(np.nanmax(refer_all)), 0.05)
    box = (0.0, 0.8, -0.05, top * 1.1)
    parts = _axes("threshold probability", "net benefit", box[2], box[3], 0.0, 0.8)
    xs = list(DCA_THRESHOLDS)
    parts.append(_polyline([0.05, 0.8], [0, 0], box, 'stroke="#555" stroke-dasharray="2 2"'))
    parts.append(_polyline(xs, list(refer_all), box, 'stroke="#d08a1c" stroke-width="1.4"'))
    parts.append(_polyline(xs, list(nb), box, 'stroke="#1f5fa8" stroke-width="1.8"'))
    if threshold is not None and 0.05 <= threshold <= 0.8:
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
