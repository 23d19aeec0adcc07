"""The random walk scenarios (plain, with an error, slow, as a table) and the random heatmaps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.backends.base import DataQuery
from gateway.backends.testdata.csvframes import parse_labels
from gateway.backends.testdata.model import Model
from gateway.backends.testdata.scenario import (
    MAX_POINTS,
    MAX_QUERY_POINTS,
    ScenarioFailure,
    seeded,
    series_name,
    start_value,
    steps,
)
from gateway.frames import DataResponse, Field, Frame, meta
from gateway.gtime import parse_go_duration


def random_walk(query: DataQuery, model: Model, index: int, start: float) -> Frame:
    """RandomWalk: `time` and one nullable float64 field, from `from` every intervalMs while before `to`."""
    rng = seeded(query, "random_walk", index)
    times: list[int] = []
    values: list[float] = []
    walker = start
    drop = model.drop_percent / 100
    low, high = model.min_value, model.max_value
    moment, end, step = query.time_range.from_ms, query.time_range.to_ms, query.interval_ms
    for _ in range(steps(moment, end, step, MAX_POINTS)):
        value = walker + rng.random() * model.noise
        if low is not None and value < low:
            value = walker = low
        if high is not None and value > high:
            value = walker = high
        if not (drop > 0 and rng.random() < drop):
            times.append(moment)
            values.append(value)
        walker += (rng.random() - 0.5) * model.spread
        moment += step
    return Frame([
        Field("time", "time.Time", times, config={"interval": step}),
        Field(series_name(query, model, index), "float64", values, nullable=True,
              labels=parse_labels(model.labels, index)),
    ], meta=meta("timeseries-multi", custom={"customStat": 10}))


def _walk_budget(query: DataQuery, series: int) -> None:
    points = series * steps(query.time_range.from_ms, query.time_range.to_ms, query.interval_ms, MAX_POINTS)
    if points > MAX_QUERY_POINTS:
        raise ScenarioFailure(f"seriesCount {series} makes {points} points; gateway answers at most "
                              f"{MAX_QUERY_POINTS} points per random walk query")


async def random_walk_scenario(query: DataQuery, model: Model) -> DataResponse | None:
    """`seriesCount` random walks (none: no result, as in Grafana)."""
    if model.series_count <= 0:
        return None
    _walk_budget(query, model.series_count)
    start = start_value(query, model)
    frames = []
    for index in range(model.series_count):
        frames.append(random_walk(query, model, index, start))
        if index % 16 == 15:
            await asyncio.sleep(0)  # a long generation lets other requests (and the timeout) in
    return DataResponse(frames)


async def random_walk_with_error(query: DataQuery, model: Model) -> DataResponse:
    """One random walk and Grafana's error text."""
    _walk_budget(query, 1)
    return DataResponse([random_walk(query, model, 0, start_value(query, model))],
                        error="this is an error and it can include URLs http://grafana.com/", error_source="plugin")


async def slow_query(query: DataQuery, model: Model) -> DataResponse:
    """Sleeps `stringInput` (a Go duration; invalid is 0) without blocking, then one random walk; the data
    source's query timeout bounds the sleep."""
    try:
        delay = parse_go_duration(model.string_input) / 1000
    except ValueError:
        delay = 0.0
    if delay > 0:
        await asyncio.sleep(delay)
    _walk_budget(query, 1)
    return DataResponse([random_walk(query, model, 0, start_value(query, model))])


async def random_walk_table(query: DataQuery, model: Model) -> DataResponse:
    """randomWalkTable: Time, Value, Min, Max, Info and a State enum, up to maxDataPoints rows."""
    rng = seeded(query, "random_walk_table")
    walker = start_value(query, model)
    columns: list[list[Any]] = [[], [], [], [], [], []]
    moment, step = query.time_range.from_ms, query.interval_ms
    for _ in range(steps(moment, query.time_range.to_ms, step, min(query.max_data_points, MAX_POINTS))):
        delta = rng.random() - 0.5
        walker += delta
        info, state = ("up", 1) if delta > 0 else ("down", 2)
        if abs(delta) > 0.4:
            info += " fast"
        values: list[float | None] = [walker, walker - (rng.random() * 2.5 + 0.01),
                                      walker + (rng.random() * 2.5 + 0.01)]
        if model.with_nil and rng.random() > 0.8:
            for position in range(3):
                if rng.random() > 0.2:
                    values[position] = None
                    state = 0
        for column, value in zip(columns, (moment, *values, info, state), strict=True):
            column.append(value)
        moment += step
    names = ("Value", "Min", "Max")
    return DataResponse([Frame([
        Field("Time", "time.Time", columns[0], nullable=True),
        *(Field(name, "float64", column, nullable=True) for name, column in zip(names, columns[1:4], strict=True)),
        Field("Info", "string", columns[4], nullable=True),
        Field("State", "enum", columns[5], config={"type": {"enum": {"text": ["Unknown", "Up", "Down"]}}}),
    ], name=query.ref_id)])


def _heatmap(bucket: Callable[[int], int]) -> Callable[[DataQuery, Model], Awaitable[DataResponse]]:
    async def heatmap(query: DataQuery, model: Model) -> DataResponse:
        """randomHeatmapData: `time` and ten bucket fields of random counts, up to 100 rows, intervalMs*50 apart."""
        rng = seeded(query, "heatmap")
        times: list[int | None] = []
        buckets: list[list[float | None]] = [[] for _ in range(10)]
        moment, step = query.time_range.from_ms, query.interval_ms * 50
        for _ in range(steps(moment, query.time_range.to_ms, step, 100)):
            times.append(moment)
            for values in buckets:
                values.append(float(rng.randrange(100)))
            moment += step
        return DataResponse([Frame([
            Field("time", "time.Time", times, nullable=True),
            *(Field(str(bucket(index)), "float64", values, nullable=True) for index, values in enumerate(buckets)),
        ], name="data")])
    return heatmap
