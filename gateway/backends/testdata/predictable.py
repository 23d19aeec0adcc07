"""The predictable scenarios (pulse, CSV wave) and the static ones (a point outside the range, a fixed table)."""

from __future__ import annotations

import math
from collections.abc import Callable

from gateway.backends.base import DataQuery
from gateway.backends.testdata.csvframes import go_float, go_float_error, parse_labels
from gateway.backends.testdata.model import Model
from gateway.backends.testdata.scenario import (
    MAX_POINTS,
    MAX_QUERY_POINTS,
    ScenarioFailure,
    go_mod,
    series_name,
    steps,
    timeseries_multi,
)
from gateway.frames import DataResponse, Field, Frame

_NIL_POINTER = "runtime error: invalid memory address or nil pointer dereference"


def predictable_series(query: DataQuery, time_step: int, length: int,
                       value_at: Callable[[int], float | None]) -> list[Field]:
    """predictableSeries: `Time` on multiples of time_step (ms) from before `from` while before `to`, and
    `Value` as value_at(offset in the wave's period)."""
    start, end = query.time_range.from_ms, query.time_range.to_ms
    moment = start - go_mod(start, time_step)
    period = time_step * length
    times: list[int] = []
    values: list[float | None] = []
    for _ in range(steps(moment, end, time_step, MAX_POINTS)):
        values.append(value_at(go_mod(moment, period)))
        times.append(moment)
        moment += time_step
    return [Field("Time", "time.Time", times), Field("Value", "float64", values, nullable=True)]


async def predictable_pulse(query: DataQuery, model: Model) -> DataResponse:
    """A pulse of `onCount` points at `onValue` then `offCount` at `offValue`, `timeStep` seconds apart."""
    wave = model.pulse_wave
    if wave is None:
        raise ScenarioFailure(_NIL_POINTER)
    step = wave.time_step * 1000

    def value_at(offset: int) -> float:
        return wave.on_value if offset % step == 0 and 0 <= offset // step < wave.on_count else wave.off_value

    fields = predictable_series(query, step, wave.on_count + wave.off_count, value_at)
    fields[1].labels = parse_labels(model.labels, 0)
    return DataResponse([Frame(fields, name=series_name(query, model, 0), meta=timeseries_multi())])


def _wave_values(text: str) -> list[float | None]:
    values: list[float | None] = []
    for token in text.strip().rstrip(",").split(","):
        token = token.strip()
        if token == "null":
            values.append(None)
        elif token == "nan":
            values.append(math.nan)
        else:
            value = go_float(token)
            if value is None:
                raise ScenarioFailure(f"failed to parse value '{token}' into nullable float: {go_float_error(token)}")
            values.append(value)
    return values


async def predictable_csv_wave(query: DataQuery, model: Model) -> DataResponse:
    """One frame per `csvWave` entry: its values in turn, `timeStep` seconds apart (no entries: no frames)."""
    frames = []
    points = 0
    start, end = query.time_range.from_ms, query.time_range.to_ms
    for wave in model.csv_wave:
        step = wave.time_step * 1000
        points += steps(start - go_mod(start, step) if step else start, end, step, MAX_POINTS)
        if points > MAX_QUERY_POINTS:
            raise ScenarioFailure(f"csvWave makes more than {MAX_QUERY_POINTS} points; gateway answers at most "
                                  f"{MAX_QUERY_POINTS} points per predictable_csv_wave query")
    for wave in model.csv_wave:
        values = _wave_values(wave.values_csv)
        step = wave.time_step * 1000

        def value_at(offset: int, values: list[float | None] = values, step: int = step) -> float | None:
            if step and offset % step == 0 and 0 <= offset // step < len(values):
                return values[offset // step]
            raise ScenarioFailure("did not get value at point in waveform - should not be here")

        fields = predictable_series(query, step, len(values), value_at)
        fields[1].labels = parse_labels(wave.labels, 0)
        frames.append(Frame(fields, name=wave.name or series_name(query, model, 0), meta=timeseries_multi()))
    return DataResponse(frames or None)


async def datapoints_outside_range(query: DataQuery, model: Model) -> DataResponse:
    """One point, an hour before `from`."""
    return DataResponse([Frame([
        Field("Time", "time.Time", [query.time_range.from_ms - 3_600_000]),
        Field("Value", "float64", [10.0]),
    ], name=series_name(query, model, 0))])


async def table_static(query: DataQuery, model: Model) -> DataResponse:
    """Up to ten rows of a fixed message from `from`, every intervalMs while before `to`."""
    start, step = query.time_range.from_ms, query.interval_ms
    count = steps(start, query.time_range.to_ms, step, 10)
    return DataResponse([Frame([
        Field("Time", "time.Time", [start + row * step for row in range(count)]),
        Field("Message", "string", ["This is a message"] * count),
        Field("Description", "string", ["Description"] * count),
        Field("Value", "float64", [23.1] * count),
    ], name=query.ref_id)])
