"""Trend maths for fill-rate estimates: pure functions over (time, value) points, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


def fill_rate(points: Sequence[tuple[datetime, float]], *, min_points: int = 3,
              min_span: timedelta = timedelta(minutes=10)) -> float | None:
    """The least-squares slope of `points` in value units per hour.

    None when there are fewer than `min_points` points or they span less than `min_span`:
    too little history to say anything.
    """
    if len(points) < min_points:
        return None
    start = min(ts for ts, _ in points)
    if max(ts for ts, _ in points) - start < min_span:
        return None
    xs = [(ts - start).total_seconds() / 3600 for ts, _ in points]
    ys = [value for _, value in points]
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def hours_until_full(free: float, rate: float | None) -> float | None:
    """Hours until `free` is used up at `rate` per hour; None unless it is growing."""
    if rate is None or rate <= 0:
        return None
    return max(free, 0.0) / rate
