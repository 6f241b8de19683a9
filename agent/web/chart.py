"""Charts drawn on the server as inline SVG: no script, no CDN, works offline."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from storage.results import TaskResult, ThroughputBucket

_ROW = 18
_LABEL_W = 290
_BAR_W = 360
_FLAG = "#c0392b"
_PLAIN = "#2e86c1"


def probability_chart(results: Sequence[TaskResult]) -> Markup:
    """Horizontal bars, one per task, 0-1 scale; flagged tasks in red and marked."""
    height = _ROW * len(results) + 30
    width = _LABEL_W + _BAR_W + 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="prob-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="probability per task">'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = _LABEL_W + tick * _BAR_W
        parts.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 20}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">'
            f"{tick:g}</text>"
        )
    for i, r in enumerate(results):
        y = i * _ROW + 2
        w = max(0.0, min(1.0, r.probability)) * _BAR_W
        color = _FLAG if r.flagged else _PLAIN
        name = escape(r.task)
        mark = " (flagged)" if r.flagged else ""
        parts.append(
            f'<g class="bar" data-task="{name}" data-probability="{r.probability:.6f}"'
            f' data-flagged="{str(r.flagged).lower()}">'
            f"<title>{name}: {r.probability:.3f}{mark}</title>"
            f'<text x="{_LABEL_W - 6}" y="{y + 12}" font-size="11" text-anchor="end">{name}</text>'
            f'<rect x="{_LABEL_W}" y="{y}" width="{w:.1f}" height="{_ROW - 4}" fill="{color}"/>'
            f'<text x="{_LABEL_W + w + 4:.1f}" y="{y + 12}" font-size="10">'
            f"{r.probability:.3f}{' &#9873;' if r.flagged else ''}</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def throughput_chart(buckets: Sequence[ThroughputBucket]) -> Markup:
    """Series screened per hour as bars, instances received per hour as a line."""
    width, height, pad = 720, 220, 30
    n = max(len(buckets), 1)
    step = (width - 2 * pad) / n
    top_s = max([b.screened for b in buckets] + [1])
    top_i = max([b.instances for b in buckets] + [1])
    plot_h = height - 2 * pad
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="throughput-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="throughput per hour">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        f'stroke="#999"/>',
    ]
    points = []
    for i, b in enumerate(buckets):
        x = pad + i * step
        h = plot_h * b.screened / top_s
        parts.append(
            f'<rect class="screened" x="{x + 1:.1f}" y="{height - pad - h:.1f}" '
            f'width="{max(step - 2, 1):.1f}" height="{h:.1f}" fill="{_PLAIN}">'
            f"<title>{b.start:%Y-%m-%d %H}:00 UTC: {b.screened} screened, "
            f"{b.instances} instances, {b.reports_sent} reports sent</title></rect>"
        )
        points.append(f"{x + step / 2:.1f},{height - pad - plot_h * b.instances / top_i:.1f}")
        if i % max(n // 8, 1) == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - pad + 14}" font-size="10">{b.start:%H}:00</text>'
            )
    parts.append(f'<polyline fill="none" stroke="{_FLAG}" points="{" ".join(points)}"/>')
    parts.append(
        f'<text x="{pad}" y="14" font-size="11">bars: series screened (max {top_s}); '
        f"line: instances received (max {top_i})</text></svg>"
    )
    return Markup("".join(parts))
