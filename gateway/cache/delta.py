"""Delta fetches for Prometheus range queries, as Trickster's delta proxy does them: the series of a query
are kept on one step-aligned extent, and a later query asks Prometheus only for the steps the extent does
not hold, at either end, then merges by series labels. Steps newer than `backfill_tolerance` (at least two
steps) before now are never kept, because samples there may still arrive. A range query evaluates every
step on its own, so the merged answer is the one Prometheus gives for the whole range (tests/test_cache.py
checks it against a real Prometheus)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from itertools import pairwise
from operator import lt

import msgspec

from gateway.backends.base import Context, DataQuery
from gateway.backends.prometheus import Plan, Prometheus, Settings, fetch_range, finish, plan, series_frame
from gateway.cache.keys import digest
from gateway.cache.store import CacheStats
from gateway.frames import DataResponse, Frame

Labels = tuple[tuple[str, str], ...]


class Series(msgspec.Struct, array_like=True):
    labels: Labels
    times: list[int]
    values: list[float]


class Extent(msgspec.Struct, array_like=True):
    """The series of one query over [start, end] (epoch ms, both on the query's steps)."""

    start: int
    end: int
    series: list[Series]


encode_extent = msgspec.msgpack.Encoder().encode
decode_extent = msgspec.msgpack.Decoder(Extent).decode


class Delta(msgspec.Struct, frozen=True):
    """A query the delta path can answer: the data source's settings and the prepared query."""

    settings: Settings
    prepared: Plan

    @property
    def span(self) -> tuple[int, int]:
        """The step-aligned range Prometheus evaluates: all the answer depends on of the time range."""
        return int(self.prepared.start_ms), int(self.prepared.end_ms)

    def key(self, ctx: Context, generation: int) -> str:
        """The extent's key: what decides the values at each step, but not the range."""
        ds, prepared = ctx.ds, self.prepared
        return "d:" + digest(ds.org_id, generation, ds.uid, ds.type, ds.version, str(ds.updated), prepared.expr,
                             prepared.step_ms, prepared.query.utc_offset_sec, self.settings.method,
                             self.settings.custom_parameters, self.settings.query_timeout)


def eligible(ctx: Context, query: DataQuery) -> Delta | None:
    """A plain range query of a Prometheus data source (no instant or exemplar part, no statistics, no `@`
    modifier tying values to the range, whole-millisecond steps), else None."""
    if not isinstance(ctx.backend, Prometheus):
        return None
    settings = Settings.of(ctx)
    if settings.stats:
        return None
    try:
        prepared = plan(query, settings)
    except (ValueError, TypeError, OverflowError):
        return None
    if not prepared.query.range or prepared.query.instant or prepared.query.exemplar or "@" in prepared.expr:
        return None
    if prepared.step_ms != int(prepared.step_ms):
        return None
    return Delta(settings, prepared)


def _series(frames: Iterable[Frame], low: int, high: int, step: int) -> list[Series] | None:
    """The converter's frames as series, or None when any frame is more than a plain matrix series that a merge
    reproduces exactly: labelled (not `metric: null`), each series' times strictly increasing on the steps of
    the range asked for [low, high], no series empty, and the series sorted by their labels without
    duplicates, as Prometheus answers."""
    steps: set[int] | None = None
    found = []
    for frame in frames:
        custom = frame.meta.custom if frame.meta is not None else None
        if (len(frame.fields) != 2 or not isinstance(custom, dict) or custom != {"resultType": "matrix"}
                or frame.meta is None or frame.meta.notices or frame.meta.stats):
            return None
        labels = frame.fields[1].labels
        times = frame.fields[0].values
        if labels is None or not times or times[0] < low or times[-1] > high or not all(map(lt, times, times[1:])):
            return None
        steps = steps or set(range(low, high + 1, step))
        if not steps.issuperset(times):
            return None  # a sample between steps: another range's steps would not hold it
        found.append(Series(tuple(labels.items()), times, frame.fields[1].values))
    if any(a.labels >= b.labels for a, b in pairwise(found)):
        return None  # an upstream that does not sort its series as Prometheus does, or repeats one
    return found


async def run(ctx: Context, delta: Delta, cached: Extent | None, now_ms: int, tolerance_ms: float,
              stats: CacheStats) -> tuple[DataResponse, Extent | None, int]:
    """The query's answer from `cached` and what Prometheus adds, the extent to keep (None: keep nothing new,
    also when the cached extent answered it all), and the bytes fetched."""
    prepared = delta.prepared
    step, start, end = int(prepared.step_ms), int(prepared.start_ms), int(prepared.end_ms)
    offset = prepared.query.utc_offset_sec * 1000

    def aligned(ms: float) -> int:
        return math.floor((ms + offset) / step) * step - offset

    stable = min(end, aligned(now_ms - max(tolerance_ms, 2 * step)))
    if cached is not None and not (cached.start <= end and cached.end >= start - step and cached.start <= cached.end):
        cached = None
    pieces: list[tuple[int, int]] = []
    if cached is None:
        pieces.append((start, end))
    else:
        if cached.start > start:
            pieces.append((start, cached.start - step))
        if cached.end < end:
            pieces.append((max(cached.end + step, start), end))
    fetched: list[list[Series]] = []
    size = 0
    for low, high in pieces:
        result, body = await fetch_range(ctx, delta.settings,
                                         msgspec.structs.replace(prepared, start_ms=float(low), end_ms=float(high)))
        size += body
        series = None if result.error is not None else _series(result.frames or (), low, high, step)
        if series is None:
            if (low, high) == (start, end):
                return finish(result, prepared), None, size
            # something a merge cannot reproduce (an error, a warning): the whole range, as without a cache
            result, body = await fetch_range(ctx, delta.settings, prepared)
            return finish(result, prepared), None, size + body
        fetched.append(series)
    merged: dict[Labels, tuple[list[int], list[float]]] = {}

    def add(series: Iterable[Series], low: int, high: int) -> int:
        added = 0
        for item in series:
            first = bisect.bisect_left(item.times, low)
            last = bisect.bisect_right(item.times, high)
            if first >= last:
                continue
            times, values = merged.setdefault(item.labels, ([], []))
            times.extend(item.times[first:last])
            values.extend(item.values[first:last])
            added += last - first
        return added

    head = fetched[0] if cached is not None and cached.start > start else None
    tail = fetched[-1] if cached is None or cached.end < end else None
    if head is not None:
        stats.delta_fetched_points += add(head, start, end)
    if cached is not None:
        stats.delta_saved_points += add(cached.series, max(start, cached.start), min(end, cached.end))
    if tail is not None and tail is not head:
        stats.delta_fetched_points += add(tail, start, end)
    ordered = sorted(merged.items())  # Prometheus sorts a range query's series by their labels
    frames = [series_frame(dict(labels), times, values) for labels, (times, values) in ordered]
    kept = None
    if pieces and stable >= start:  # nothing fetched: the extent already holds all of it (and maybe more)
        kept_series = []
        for labels, (times, values) in ordered:
            last = bisect.bisect_right(times, stable)
            if last:
                kept_series.append(Series(labels, times[:last], values[:last]))
        kept = Extent(start, stable, kept_series)
    return finish(DataResponse(frames), prepared), kept, size
