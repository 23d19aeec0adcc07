"""A small line chart of data frames, laid out server-side for an SVG template: no JavaScript, bounded size.

Every numeric field of a frame that has a time field becomes one line over the shared time and value ranges.
Lines are thinned to at most two points per horizontal pixel (the lowest and highest of each pixel column),
so a million points draw as about as many as the chart is wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from gateway.frames import Field, Frame

MAX_LINES = 20
MAX_POINTS = 200_000  # drawn from all lines together; the rest of a longer answer is left out
COLORS = ("#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0")
# epoch milliseconds of datetime's years 1 to 9999: a time outside them has no axis label, and is not drawn
FIRST_MS, LAST_MS = -62_135_596_800_000, 253_402_300_799_000
_NUMERIC = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                      "float32", "float64"})


class Line(msgspec.Struct, frozen=True):
    """One series as drawn: its legend name, colour and SVG `points` attribute."""

    name: str
    color: str
    points: str


class Tick(msgspec.Struct, frozen=True):
    """An axis label at a pixel position."""

    position: float
    label: str


class Chart(msgspec.Struct, frozen=True):
    """What the template draws: the plot area, the lines and the axis ticks."""

    width: int
    height: int
    left: int
    top: int
    lines: list[Line]
    x_ticks: list[Tick]
    y_ticks: list[Tick]


def line_chart(frames: Sequence[Frame], width: int = 760, height: int = 260) -> Chart | None:
    """The chart of `frames`, or None when they hold no time series with a finite value."""
    series: list[tuple[str, list[float], list[float | None]]] = []
    budget = MAX_POINTS
    for frame in frames:
        for name, times, values in _series(frame):
            if len(series) == MAX_LINES or budget <= 0:
                break
            series.append((name, times[:budget], values[:budget]))
            budget -= len(times)
    points = [(t, v) for _, times, values in series for t, v in zip(times, values, strict=True)
              if v is not None and t is not None and math.isfinite(v) and FIRST_MS <= t <= LAST_MS]
    if not points:
        return None
    left, top, right, bottom = 64, 12, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    v0, v1 = min(p[1] for p in points), max(p[1] for p in points)
    if t1 == t0:
        t0, t1 = t0 - 1, t1 + 1
    if v1 == v0:
        v0, v1 = v0 - 1, v1 + 1

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return top + (v1 - v) / (v1 - v0) * plot_h

    lines = []
    for index, (name, times, values) in enumerate(series):
        drawn = _thin([(x(t), y(v)) for t, v in zip(times, values, strict=True)
                       if v is not None and t is not None and math.isfinite(v) and FIRST_MS <= t <= LAST_MS], plot_w)
        if drawn:
            lines.append(Line(name, COLORS[index % len(COLORS)], " ".join(f"{px:.1f},{py:.1f}" for px, py in drawn)))
    x_ticks = [Tick(x(t), _time_label(t, t1 - t0)) for t in _steps(t0, t1, 5)]
    y_ticks = [Tick(y(v), f"{v:.6g}") for v in _steps(v0, v1, 4)]
    return Chart(width, height, left, top, lines, x_ticks, y_ticks)


def _series(frame: Frame) -> list[tuple[str, list[float], list[float | None]]]:
    time_field = next((f for f in frame.fields if f.item_type == "time.Time"), None)
    if time_field is None:
        return []
    times = time_field.values
    return [(_name(frame, field), times, field.values) for field in frame.fields
            if field.item_type in _NUMERIC and len(field.values) == len(times)]


def _name(frame: Frame, field: Field) -> str:
    config = field.config or {}
    shown = config.get("displayNameFromDS") or config.get("displayName")
    if isinstance(shown, str) and shown:
        return shown
    if field.labels:
        return field.name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(field.labels.items())) + "}"
    return f"{frame.name} {field.name}".strip() if frame.name else field.name


def _thin(points: list[tuple[float, float]], columns: int) -> list[tuple[float, float]]:
    """At most the first, lowest and highest point of each pixel column, in order."""
    if len(points) <= 2 * columns:
        return points
    kept: list[tuple[float, float]] = []
    column: list[tuple[float, float]] = []
    current = int(points[0][0])
    for point in points:
        if int(point[0]) != current:
            kept.extend(_extremes(column))
            column, current = [], int(point[0])
        column.append(point)
    kept.extend(_extremes(column))
    return kept


def _extremes(column: list[tuple[float, float]]) -> list[tuple[float, float]]:
    low = min(column, key=lambda p: p[1])
    high = max(column, key=lambda p: p[1])
    return sorted({low, high}, key=column.index)


def _steps(low: float, high: float, count: int) -> list[float]:
    return [low + (high - low) * i / count for i in range(count + 1)]


def _time_label(ms: float, span_ms: float) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    if span_ms > 2 * 86_400_000:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%H:%M:%S" if span_ms < 600_000 else "%H:%M")
