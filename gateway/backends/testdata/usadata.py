"""The USA generated data scenario: its strictly decoded model and the state values of each mode."""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from gateway.backends.base import DataQuery
from gateway.backends.testdata.model import Model
from gateway.backends.testdata.scenario import ScenarioFailure, go_mod, steps
from gateway.errors import go_quote
from gateway.frames import DataResponse, Field, Frame
from gateway.gtime import parse_go_duration

STATES = ("AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS",
          "KY", "LA", "ME", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "MD", "MA", "MI",
          "MN", "MS", "MO", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY")
MAX_USA_RESULTS = 10_000  # Grafana's cap on the points of one query, shared by its fields x states


class USAQuery(msgspec.Struct):
    mode: str = ""
    period: str = ""
    fields: list[str] = msgspec.field(default_factory=list)
    states: list[str] = msgspec.field(default_factory=list)


_JSON_KINDS = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object"}


def _unmarshal_error(value: Any, path: str, go_type: str) -> ScenarioFailure:
    return ScenarioFailure(f"failed to parse query json: json: cannot unmarshal {_JSON_KINDS[type(value)]} "
                           f"into Go struct field usaQueryWrapper.{path} of type {go_type}")


def usa_query(model: dict[str, Any]) -> USAQuery:
    """The `usa` object, decoded strictly as Grafana's usaQueryWrapper is: a value of the wrong type fails."""
    usa = USAQuery()
    for key, value in model.items():
        if key.lower() != "usa" or value is None:
            continue
        if not isinstance(value, dict):
            raise _unmarshal_error(value, "usa", "testdatasource.usaQuery")
        for name, item in value.items():
            field = name.lower()
            if field in ("mode", "period") and item is not None:
                if not isinstance(item, str):
                    raise _unmarshal_error(item, f"usa.{field}", "string")
                setattr(usa, field, item)
            elif field in ("fields", "states"):
                if item is not None and not isinstance(item, list):
                    raise _unmarshal_error(item, f"usa.{field}", "[]string")
                for element in item or ():
                    if element is not None and not isinstance(element, str):
                        raise _unmarshal_error(element, f"usa.{field}", "string")
                setattr(usa, field, [element or "" for element in item or ()])
    return usa


_DURATION_UNITS = frozenset({"ns", "us", "µs", "μs", "ms", "s", "m", "h"})
_DURATION_PART = re.compile(r"([0-9]*)(\.[0-9]*)?([^0-9.]*)")


def go_duration_ns(text: str) -> int:
    """time.ParseDuration in nanoseconds; ScenarioFailure with Go's message when it is not one."""
    try:
        return round(parse_go_duration(text) * 1_000_000)
    except ValueError:
        pass
    reason = f"invalid duration {go_quote(text)}"
    rest = text[1:] if text[:1] in ("+", "-") else text
    position = 0
    while rest and position < len(rest):
        match = _DURATION_PART.match(rest, position)
        assert match is not None  # every group may be empty
        number, fraction, unit = match.groups()
        if not number and len(fraction or "") <= 1:
            break
        if not unit:
            reason = f"missing unit in duration {go_quote(text)}"
            break
        if unit not in _DURATION_UNITS:
            reason = f"unknown unit {go_quote(unit)} in duration {go_quote(text)}"
            break
        position = match.end()
    raise ScenarioFailure(f"failed to parse query json: time: {reason}")


def _go_int64(value: float) -> int:
    """float64 -> int64 as Go does on amd64: out of range (or NaN) is the minimum int64."""
    if not math.isfinite(value) or not -(2.0**63) <= value < 2.0**63:
        return -(2**63)
    return int(value)


def state_values(moment_ns: int, field: str, states: list[str], period_ns: int) -> list[float]:
    """getStateValues: sin (cos for bar, tan for baz) of the time shifted along the period per state,
    truncated to 1e-10."""
    function = {"bar": math.cos, "baz": math.tan}.get(field, math.sin)
    offset = float(moment_ns)
    step = float(period_ns) / len(states)
    values = []
    for _ in states:
        offset += step
        value = function(float(go_mod(_go_int64(offset), period_ns)))
        values.append(_go_int64(value * 1e10) / 1e10)
    return values


async def usa(query: DataQuery, model: Model) -> DataResponse:
    """USA generated data in one of its modes: timeseries, timeseries-wide, values-as-fields,
    values-as-labeled-fields, else values-as-rows."""
    spec = usa_query(msgspec.json.decode(query.model))
    period = go_duration_ns(spec.period or "30m")
    fields = spec.fields or ["foo", "bar", "baz"]
    states = spec.states or list(STATES)
    end_ns = query.time_range.to_ms * 1_000_000
    if spec.mode in ("timeseries", "timeseries-wide"):
        limit = min(query.max_data_points * 2, MAX_USA_RESULTS // (len(states) * len(fields)))
        start, step = query.time_range.from_ms, query.interval_ms
        times = [start + row * step for row in range(steps(start, query.time_range.to_ms, step, limit))]
        frames = []
        for name in fields:
            rows = [state_values(moment * 1_000_000, name, states, period) for moment in times]
            for index, state in enumerate(states):
                frames.append(Frame([Field("Time", "time.Time", times),
                                     Field("Value", "float64", [row[index] for row in rows], labels={"state": state})],
                                    name=name))
        if spec.mode == "timeseries":
            return DataResponse(frames)
        wide = [frames[0].fields[0]]
        for frame in frames:
            value = frame.fields[1]
            wide.append(Field(frame.name, "float64", value.values, labels=value.labels))
        return DataResponse([Frame(wide)])
    if spec.mode in ("values-as-fields", "values-as-labeled-fields"):
        labeled = spec.mode == "values-as-labeled-fields"
        return DataResponse([
            Frame([Field("" if labeled else state, "float64", [value], labels={"state": state} if labeled else None)
                   for state, value in zip(states, state_values(end_ns, name, states, period), strict=True)],
                  name=name)
            for name in fields
        ])
    return DataResponse([Frame([Field("state", "string", list(states)),
                                *(Field(name, "float64", state_values(end_ns, name, states, period))
                                  for name in fields)])])
