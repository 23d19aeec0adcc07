"""What the scenarios share: ScenarioFailure, series names, seeded random sources, Go's integer division, steps."""

from __future__ import annotations

import random

from gateway.backends.base import DataQuery
from gateway.backends.testdata.model import Model
from gateway.frames import FrameMeta, meta

MAX_POINTS = 10_000  # Grafana's cap on the points of one series
MAX_QUERY_POINTS = 1_000_000  # gateway's cap on the points of one random-walk or csv-wave query
_DIVIDE_BY_ZERO = "runtime error: integer divide by zero"


class ScenarioFailure(Exception):
    """The scenario failed (Grafana: the handler returned an error or panicked); the message is Grafana's."""


SERVER_NAMES = (
    "Backend-ops-01", "Backend-ops-02", "Backend-ops-03", "Backend-ops-04", "Frontend-web-01", "Frontend-web-02",
    "Frontend-web-03", "Frontend-web-04", "MySQL-01", "MySQL-02", "MySQL-03", "MySQL-04", "Postgres-01",
    "Postgres-02", "Postgres-03", "Postgres-04", "DB-01", "DB-02", "SAN-01", "SAN-02", "SAN-02", "SAN-04",
    "Kaftka-01", "Kaftka-02", "Kaftka-03", "Zookeeper-01", "Zookeeper-02", "Zookeeper-03", "Zookeeper-04",
)
HOUSE_LOCATIONS = ("Cellar", "Living room", "Porch", "Bedroom", "Guest room", "Kitchen", "Playroom", "Bathroom",
                   "Outside", "Roof", "Terrace")


def series_name(query: DataQuery, model: Model, index: int) -> str:
    """frameNameForQuery: the alias (`__server_names` and `__house_locations` pick the index-th name), else
    `<refId>-series` with the index after the first."""
    name = model.alias or f"{query.ref_id}-series" + (str(index) if index > 0 else "")
    if name == "__server_names" and index < len(SERVER_NAMES):
        return SERVER_NAMES[index]
    if name == "__house_locations" and index < len(HOUSE_LOCATIONS):
        return HOUSE_LOCATIONS[index]
    return name


def seeded(query: DataQuery, *parts: object) -> random.Random:
    """The random source of one query (and series): the same time range and refId give the same numbers."""
    tr = query.time_range
    return random.Random(":".join(str(part) for part in (tr.from_ms, tr.to_ms, query.ref_id, *parts)))


def start_value(query: DataQuery, model: Model) -> float:
    """`startValue`, else Grafana's default: a random value in [0, 100) (seeded here)."""
    if model.start_value is not None:
        return model.start_value
    return seeded(query, "startValue").random() * 100


def go_div(a: int, b: int) -> int:
    """Go's integer division (truncates toward zero); ScenarioFailure on zero, where Go panics."""
    if b == 0:
        raise ScenarioFailure(_DIVIDE_BY_ZERO)
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


def go_mod(a: int, b: int) -> int:
    """Go's `%` (the sign of the dividend)."""
    return a - b * go_div(a, b)


def steps(start: int, end: int, step: int, limit: int) -> int:
    """How many times `for i := 0; i < limit && t < end; i++ { t += step }` runs from `start`."""
    if start >= end or limit <= 0:
        return 0
    if step <= 0:
        return limit
    return min(limit, -((start - end) // step))


def timeseries_multi() -> FrameMeta:
    """The meta of Grafana's predictable series: a multi-frame time series, dataplane version 0.0."""
    return meta("timeseries-multi")
