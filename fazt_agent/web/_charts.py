"""Charts of stored metrics as inline SVG: pure functions of the points SQLite averaged, the
thresholds and the time range. No script, no library, no CDN: the page is the chart.

Presentation attributes only (`stroke=`, `fill=`; never `style=`, which the control plane's CSP
forbids), classes for the stylesheet's colours, and no text inside the SVG (it is stretched to
the page's width): the page writes the figures beside it, and the SVG's title and description
say them to a screen reader.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..units import format_metric
from ._timeline import stamp

if TYPE_CHECKING:
    from ..pulse.base import Check

MAX_POINTS = 480          # buckets per chart: about a phone's width in pixels
WIDTH, HEIGHT, PAD = 600.0, 160.0, 6.0
Point = tuple[float, float, float, float]   # bucket middle (epoch seconds), mean, min, max

# The thresholds of a check kind's metrics: (warning field, critical field, metric units per
# field unit). A field in seconds drawn on a metric in ms or hours is scaled.
THRESHOLDS: dict[str, dict[str, tuple[str, str, float]]] = {
    "disk": {"used_percent": ("warning", "critical", 1.0),
             "inodes_used_percent": ("inodes_warning", "inodes_critical", 1.0),
             "full_in_hours": ("full_in_warning", "full_in_critical", 1 / 3600)},
    "dir_size": {"size_bytes": ("warning", "critical", 1.0)},
    "file_age": {"age_seconds": ("warning", "critical", 1.0)},
    "http": {"latency_ms": ("latency_warning", "latency_critical", 1000.0)},
    "process": {"rss_bytes": ("rss_warning", "rss_critical", 1.0),
                "cpu_percent": ("cpu_warning", "cpu_critical", 1.0)},
    "system": {"cpu_percent": ("cpu_warning", "cpu_critical", 1.0),
               "memory_percent": ("memory_warning", "memory_critical", 1.0),
               "swap_percent": ("swap_warning", "swap_critical", 1.0),
               "load_per_core": ("load_per_core_warning", "load_per_core_critical", 1.0)},
    "cert_file": {"days_left": ("warning", "critical", 1.0)},
    "tls": {"days_left": ("warning", "critical", 1.0)},
}


def primary_metric(kind: str, metrics: dict[str, float]) -> str | None:
    """The metric a check's row shows: the first judged one the result has, else its first."""
    for name in THRESHOLDS.get(kind, {}):
        if name in metrics:
            return name
    return next(iter(metrics), None)


def metric_label(name: str) -> str:
    """`size_bytes` -> "size", `used_percent` -> "used", `growth_bytes_per_hour` -> "growth"."""
    for suffix in ("_bytes_per_hour", "_bytes", "_percent", "_seconds", "_ms", "_hours"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[:-len(suffix)]
            break
    return name.replace("_", " ")


def thresholds(check: Check | None, metric: str) -> list[tuple[str, float]]:
    """(warning|critical, value in the metric's unit) of `metric` as `check` is configured now."""
    if check is None:
        return []
    fields = THRESHOLDS.get(check.kind, {}).get(metric)
    if fields is None:
        return []
    out = []
    for level, field in zip(("warning", "critical"), fields[:2]):
        value = getattr(check.config, field, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((level, float(value) * fields[2]))
    return out


def sort_metrics(check: Check | None, series: dict[str, Any]) -> list[tuple[str, Any]]:
    """Judged metrics first (in their kind's order), then the rest by name."""
    judged = list(THRESHOLDS.get(check.kind, {})) if check is not None else []
    return sorted(series.items(), key=lambda kv: (judged.index(kv[0]) if kv[0] in judged else len(judged), kv[0]))


def chart(cid: str, metric: str, points: list[Point], lines: list[tuple[str, float]], start: datetime,
          end: datetime, title: str, last: float | None = None) -> dict[str, Any]:
    """What the page shows of one metric: the SVG (element ids prefixed `cid`), its figures in
    words (`last`: the newest value measured, not its bucket's mean), the thresholds. The time axis
    starts at the range's start, or half a bucket before the first value when the history is
    younger than the range (a check added ten minutes ago fills its chart)."""
    from markupsafe import Markup

    facts: dict[str, float] = {}
    if points:
        facts = {"last": last if last is not None else points[-1][1], "min": min(p[2] for p in points),
                 "max": max(p[3] for p in points)}
    step = (end - start).total_seconds() / MAX_POINTS
    t0 = max(start.timestamp(), points[0][0] - step / 2) if points else start.timestamp()
    t0 = min(t0, end.timestamp() - 1)
    return {"metric": metric, "label": metric_label(metric), "points": len(points),
            "svg": Markup(svg(cid, points, lines, t0, end.timestamp(), step, title, metric, facts)),
            "facts": [(k, format_metric(metric, v)) for k, v in facts.items()],
            "thresholds": [(level, format_metric(metric, v)) for level, v in lines],
            "from": stamp(datetime.fromtimestamp(t0, timezone.utc)), "to": stamp(end)}


def svg(cid: str, points: list[Point], lines: list[tuple[str, float]], t0: float, t1: float, step: float,
        title: str, metric: str, facts: dict[str, float]) -> str:
    """A line chart: the bucket means as a line (broken where beats are missing; a lone bucket is a
    dot), their min..max as a band, the newest value as a dot, each threshold as a dashed line, over
    [t0, t1] and the values' and thresholds' span."""
    data = [v for p in points for v in (p[2], p[3])]
    marks = [v for _, v in lines]
    lo, hi = min(data + marks, default=0.0), max(data + marks, default=1.0)
    if 0 <= lo < hi * 0.5:   # mostly above zero: from zero, so the height means something
        lo = 0.0
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    lo, hi = lo - (pad if lo != 0 else 0), hi + pad

    def x(t: float) -> str:
        return f"{(t - t0) / (t1 - t0) * WIDTH:.1f}"

    def y(v: float) -> str:
        return f"{HEIGHT - PAD - (v - lo) / (hi - lo) * (HEIGHT - 2 * PAD):.1f}"

    segments: list[list[Point]] = []
    for p in points:
        if segments and p[0] - segments[-1][-1][0] <= 3.5 * max(step, 1.0):
            segments[-1].append(p)
        else:
            segments.append([p])
    line = " ".join("M" + " L".join(f"{x(p[0])},{y(p[1])}" for p in seg) if len(seg) > 1
                    else f"M{x(seg[0][0])},{y(seg[0][1])} l0.01,0" for seg in segments)
    band = " ".join("M" + " L".join([f"{x(p[0])},{y(p[3])}" for p in seg] + [f"{x(p[0])},{y(p[2])}" for p in seg[::-1]])
                    + " Z" for seg in segments if len(seg) > 1)
    said = ", ".join(f"{k} {format_metric(metric, v)}" for k, v in facts.items()) or "no values in this range"
    limits = "; ".join(f"{level} at {format_metric(metric, v)}" for level, v in lines)
    desc = f"{len(points)} points: {said}" + (f"; {limits}" if limits else "")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH:.0f} {HEIGHT:.0f}" '
             f'preserveAspectRatio="none" role="img" aria-labelledby="{cid}-t {cid}-d" focusable="false">',
             f'<title id="{cid}-t">{html.escape(title)}</title><desc id="{cid}-d">{html.escape(desc)}</desc>',
             f'<rect class="frame" x="0" y="0" width="{WIDTH:.0f}" height="{HEIGHT:.0f}" fill="none" '
             'stroke="#8888" vector-effect="non-scaling-stroke"/>']
    if band:
        parts.append(f'<path class="band" d="{band}" fill="#1f6feb" fill-opacity="0.15" stroke="none"/>')
    for level, v in lines:
        colour = "#cf222e" if level == "critical" else "#9a6700"
        parts.append(f'<line class="threshold {level}" x1="0" x2="{WIDTH:.0f}" y1="{y(v)}" y2="{y(v)}" '
                     f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4" vector-effect="non-scaling-stroke">'
                     f'<title>{html.escape(f"{level}: {format_metric(metric, v)}")}</title></line>')
    if line:
        parts.append(f'<path class="line" d="{line}" fill="none" stroke="#1f6feb" stroke-width="2" '
                     'stroke-linejoin="round" stroke-linecap="round" vector-effect="non-scaling-stroke"/>')
        newest = points[-1]
        parts.append(f'<path class="last" d="M{x(newest[0])},{y(newest[1])} l0.01,0" fill="none" stroke="#1f6feb" '
                     'stroke-width="7" stroke-linecap="round" vector-effect="non-scaling-stroke"/>')
    parts.append("</svg>")
    return "".join(parts)
