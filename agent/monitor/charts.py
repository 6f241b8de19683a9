"""Inline SVG charts of the monitoring report: values over calendar windows or check
times, and reference-against-live proportions. Built from numbers and escaped labels
only; no script, no network (ROC and calibration charts are ``model evaluate``'s own)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

_W, _H, _PAD, _TOP = 420, 200, 40, 10


def _open(width: int, height: int, label: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{escape(label)}" '
            'font-family="sans-serif" font-size="9">']  # fmt: skip


def series_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    label: str,
    threshold: float | None = None,
    ymax: float | None = None,
) -> Markup:
    """Points joined over ``labels`` (windows or times); a dashed line at ``threshold``.

    Missing values (None, NaN) leave gaps; the y axis runs from 0 to ``ymax`` (default:
    the largest value or threshold, padded).
    """
    known = [v for v in values if v is not None and not math.isnan(v)]
    top = ymax or max([*known, threshold or 0.0, 1e-6]) * 1.15
    plot_w, plot_h = _W - _PAD - 8, _H - _PAD - _TOP
    parts = _open(_W, _H, label)
    parts.append(f'<rect x="{_PAD}" y="{_TOP}" width="{plot_w}" height="{plot_h}" '
                 'fill="#fff" stroke="#888"/>')  # fmt: skip
    for k in range(5):
        y = _TOP + plot_h * (1 - k / 4)
        parts.append(f'<text x="{_PAD - 3}" y="{y + 3:.1f}" text-anchor="end">'
                     f"{top * k / 4:.2g}</text>")  # fmt: skip
    n = len(labels)

    def x_of(i: int) -> float:
        return _PAD + (plot_w * (i + 0.5) / n if n else 0.0)

    def y_of(v: float) -> float:
        return _TOP + plot_h * (1 - min(max(v, 0.0), top) / top)

    step = max(1, math.ceil(n / 8))
    for i, text in enumerate(labels):
        if i % step == 0:
            parts.append(f'<text x="{x_of(i):.1f}" y="{_H - _PAD + 12}" text-anchor="middle">'
                         f"{escape(text)}</text>")  # fmt: skip
    if threshold is not None:
        y = y_of(threshold)
        parts.append(f'<line x1="{_PAD}" x2="{_PAD + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#c0392b" stroke-dasharray="4 3"/>')  # fmt: skip
    run: list[str] = []
    for i, v in enumerate([*values, None]):
        if v is None or math.isnan(v):
            if len(run) > 1:
                parts.append(f'<polyline points="{" ".join(run)}" fill="none" '
                             'stroke="#1f5fa8" stroke-width="1.6"/>')  # fmt: skip
            run = []
            continue
        run.append(f"{x_of(i):.1f},{y_of(v):.1f}")
        parts.append(f'<circle cx="{x_of(i):.1f}" cy="{y_of(v):.1f}" r="2.5" fill="#1f5fa8"/>')
    parts.append(f'<text x="{(_W + _PAD) / 2}" y="{_H - 6}" text-anchor="middle">'
                 f"{escape(label)}</text>")  # fmt: skip
    return Markup("".join(parts) + "</svg>")


def proportions_chart(
    categories: Sequence[str], reference: Sequence[float], live: Sequence[float], *, label: str
) -> Markup:
    """Paired bars: the reference's share (grey) and the live share (blue) per bin/category."""
    n = max(len(categories), 1)
    top = max([*reference, *live, 1e-6]) * 1.15
    plot_w, plot_h = _W - _PAD - 8, _H - _PAD - _TOP
    parts = _open(_W, _H, label)
    parts.append(f'<rect x="{_PAD}" y="{_TOP}" width="{plot_w}" height="{plot_h}" '
                 'fill="#fff" stroke="#888"/>')  # fmt: skip
    slot = plot_w / n
    for i, (cat, r, v) in enumerate(zip(categories, reference, live, strict=True)):
        for j, (share, colour) in enumerate(((r, "#aaa"), (v, "#1f5fa8"))):
            h = plot_h * share / top
            x = _PAD + slot * i + slot * (0.1 + 0.4 * j)
            parts.append(f'<rect x="{x:.1f}" y="{_TOP + plot_h - h:.1f}" width="{slot * 0.4:.1f}" '
                         f'height="{h:.1f}" fill="{colour}"/>')  # fmt: skip
        parts.append(f'<text x="{_PAD + slot * (i + 0.5):.1f}" y="{_H - _PAD + 12}" '
                     f'text-anchor="middle">{escape(cat[:14])}</text>')  # fmt: skip
    parts.append(f'<text x="{_PAD + 4}" y="{_TOP + 10}">grey: reference · blue: live</text>'
                 f'<text x="{(_W + _PAD) / 2}" y="{_H - 6}" text-anchor="middle">'
                 f"{escape(label)}</text>")  # fmt: skip
    return Markup("".join(parts) + "</svg>")
