"""TestData: always healthy; its resources list the scenarios; its queries answer Grafana's scenarios.

The frames follow the newest Grafana (G pkg/tsdb/grafana-testdata-datasource, spec-query §11): names, field
types and nullability, labels and meta as Grafana builds them. Two things differ on purpose (README,
deliberate differences): every random scenario draws from a `random.Random` seeded by the time range and
the refId, so the same request answers the same frames; and where Grafana's handler fails as a whole
(a panic, a bad CSV, a bad `usa` model) only the refId at fault answers an error, the others their frames.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from gateway.backends.base import Backend, Context, DataQuery, HealthResult, ResourceRequest, core_plugin
from gateway.backends.csvframes import CsvError, LabelsPanic, csv_frame, go_float, go_float_error, parse_labels
from gateway.backends.csvframes import values_field as csv_values_field
from gateway.frames import DataResponse, Field, Frame, FrameMeta, meta
from gateway.gtime import parse_go_duration
from gateway.http.client import Answer

# (id, name, stringInput) of the scenarios answered here, as Grafana registers them; the resource lists
# them sorted by id, as Grafana does
SCENARIOS: tuple[tuple[str, str, str], ...] = (
    ("annotations", "Annotations", ""),
    ("csv_content", "CSV Content", ""),
    ("csv_metric_values", "CSV Metric Values", "1,20,90,30,5,0"),
    ("datapoints_outside_range", "Datapoints Outside Range", ""),
    ("error_with_source", "Error with source", ""),
    ("exponential_heatmap_bucket_data", "Exponential heatmap bucket data", ""),
    ("grafana_api", "Grafana API", ""),
    ("linear_heatmap_bucket_data", "Linear heatmap bucket data", ""),
    ("live", "Grafana Live", ""),
    ("logs", "Logs", ""),
    ("no_data_points", "No Data Points", ""),
    ("predictable_csv_wave", "Predictable CSV Wave", ""),
    ("predictable_pulse", "Predictable Pulse", ""),
    ("random_walk", "Random Walk", ""),
    ("random_walk_table", "Random Walk Table", ""),
    ("random_walk_with_error", "Random Walk (with error)", ""),
    ("server_error_500", "Conditional Error", "1,20,90,30,5,0"),
    ("slow_query", "Slow Query", "5s"),
    ("steps", "Steps", ""),
    ("streaming_client", "Streaming Client", ""),
    ("table_static", "Table Static", ""),
    ("usa", "USA generated data", ""),
)

MAX_POINTS = 10_000  # Grafana's cap on the points of one series
MAX_QUERY_POINTS = 1_000_000  # gateway's cap on one random-walk query (seriesCount x points)
_DIVIDE_BY_ZERO = "runtime error: integer divide by zero"
_NIL_POINTER = "runtime error: invalid memory address or nil pointer dereference"


class TestData(Backend):
    __test__ = False  # not a pytest class
    plugin = core_plugin("grafana-testdata-datasource", "TestData", "testdata.svg", "testdata")
    served = True

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """Always OK, as Grafana's TestData."""
        return HealthResult(message="Data source is working", status="OK")

    async def call_resource(self, ctx: Context, request: ResourceRequest) -> Answer:
        """`scenarios` lists them; every other path says hello (GET) or answers empty."""
        if request.path.strip("/") == "scenarios":
            body = msgspec.json.encode([
                {"description": "", "id": sid, "name": name, "stringInput": text} for sid, name, text in SCENARIOS
            ])
            return Answer(200, [("Content-Type", "application/json")], body)
        if request.method == "GET":
            return Answer(200, [("Content-Type", "text/plain; charset=utf-8")], b"Hello world from test datasource!")
        return Answer(200, [], b"")

    async def query(self, ctx: Context, queries: list[DataQuery]) -> dict[str, DataResponse]:
        """Each query's scenario, by `queryType` when it names one, else by `scenarioId`; one after the other,
        as Grafana runs them (a slow query delays the next); unknown scenarios answer nothing."""
        results: dict[str, DataResponse] = {}
        for query in queries:
            answer = await answer_query(query)
            if answer is not None:
                results[query.ref_id] = answer
            await asyncio.sleep(0)  # let other requests run between queries
        return results


async def answer_query(query: DataQuery) -> DataResponse | None:
    """One query's answer; None leaves its refId out of the results."""
    model = go_decode(Model, msgspec.json.decode(query.model))
    handler = _HANDLERS.get(query.query_type) or _HANDLERS.get(model.scenario_id)
    if handler is None:
        return None
    try:
        return await handler(query, model)
    except (ScenarioFailure, LabelsPanic, CsvError) as failure:
        return DataResponse(error=str(failure), status=500, error_source="plugin")


class ScenarioFailure(Exception):
    """The scenario failed (Grafana: the handler returned an error or panicked); the message is Grafana's."""


# -- the query model: Grafana's kinds.TestDataQuery, decoded as Go's json.Unmarshal decodes it ------------

class CSVWave(msgspec.Struct, rename="camel"):
    time_step: int = 0
    values_csv: str = msgspec.field(default="", name="valuesCSV")
    labels: str = ""
    name: str = ""


class PulseWave(msgspec.Struct, rename="camel"):
    time_step: int = 0
    on_count: int = 0
    off_count: int = 0
    on_value: float = 0.0
    off_value: float = 0.0


class Model(msgspec.Struct, rename="camel"):
    """The fields the scenarios read; start_value None means Grafana's default, a random value in [0, 100)."""

    scenario_id: str = "random_walk"
    alias: str = ""
    labels: str = ""
    string_input: str = ""
    csv_content: str = ""
    csv_wave: list[CSVWave] = msgspec.field(default_factory=list)
    drop_percent: float = 0.0
    error_source: str = ""
    level_column: bool = False
    start_value: float | None = None
    spread: float = 1.0
    noise: float = 0.0
    min_value: float | None = msgspec.field(default=None, name="min")
    max_value: float | None = msgspec.field(default=None, name="max")
    with_nil: bool = False
    lines: int = 10
    series_count: int = 1
    pulse_wave: PulseWave | None = None


S = TypeVar("S", bound=msgspec.Struct)
_KEEP = object()  # Go leaves the field as it was: a null, or a value of the wrong type


@cache
def _struct_fields(cls: type[msgspec.Struct]) -> tuple[dict[str, mi.Field], dict[str, mi.Field]]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return ({field.encode_name: field for field in info.fields},
            {field.encode_name.lower(): field for field in info.fields})


def go_decode(cls: type[S], data: Any) -> S:
    """`data` into `cls` as Go's json.Unmarshal fills a struct that holds defaults: keys match exactly, else
    case-insensitively; unknown keys are ignored; a value of the wrong type (a string for a number, a float
    for an int) leaves its field at the default and the rest still decodes. msgspec.convert would either
    refuse the whole model (strict) or coerce "5" into 5 (strict=False), which Go does not."""
    exact, folded = _struct_fields(cls)
    values: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            field = exact.get(key) or folded.get(key.lower())
            if field is not None:
                decoded = _go_value(value, field.type)
                if decoded is not _KEEP:
                    values[field.name] = decoded
    return cls(**values)


def _go_value(value: Any, kind: mi.Type) -> Any:
    optional = isinstance(kind, mi.UnionType)
    if isinstance(kind, mi.UnionType):
        kind = next(member for member in kind.types if not isinstance(member, mi.NoneType))
    if value is None:
        return None if optional else _KEEP  # null sets a pointer to nil and leaves anything else alone
    if isinstance(kind, mi.StrType):
        return value if isinstance(value, str) else _KEEP
    if isinstance(kind, mi.BoolType):
        return value if isinstance(value, bool) else _KEEP
    if isinstance(kind, mi.FloatType):
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _KEEP
    if isinstance(kind, mi.IntType):
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
        return value if ok else _KEEP
    if isinstance(kind, mi.StructType):
        return go_decode(kind.cls, value) if isinstance(value, dict) else _KEEP
    if isinstance(kind, mi.ListType) and isinstance(value, list):
        return [_go_element(item, kind.item_type) for item in value]
    return _KEEP


def _go_element(value: Any, kind: mi.Type) -> Any:
    """A slice element: what decodes, else the type's zero value."""
    decoded = _go_value(value, kind)
    if decoded is not _KEEP:
        return decoded
    if isinstance(kind, mi.StructType):
        return kind.cls()
    return {mi.StrType: "", mi.BoolType: False, mi.FloatType: 0.0, mi.IntType: 0}.get(type(kind))


# -- shared helpers -------------------------------------------------------------------------------------

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


# -- random walks ---------------------------------------------------------------------------------------

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


_LOG_LEVELS = ("emerg", "emergency", "alert", "crit", "critical", "warn", "warning", "err", "eror", "error", "info",
               "notice", "dbug", "debug", "trace", "")
_CONTAINERS = ("f36a9eaa6d34310686f2b851655212023a216de955cbcc764210cefa71179b1a",
               "5a354a630364f3742c602f315132e16def594fe68b1e4a195b2fce628e24c97a")
_HOSTS = ("srv-001", "srv-002")
_LOG_LINE = (
    't={time} {level}msg="Request Completed" logger=context userId=1 orgId=1 uname=admin method=GET '
    "path=/api/datasources/proxy/152/api/prom/label status=502 remote_addr=[::1] time_ms=1 size=0 "
    'referer="http://localhost:3000/explore?left=%5B%22now-6h%22,%22now%22,%22Prometheus%202.x%22,%7B%7D,'
    '%7B%22ui%22:%5Btrue,true,true,%22none%22%5D%7D%5D"'
)


def _fnv32(data: bytes) -> int:
    """FNV-1 32-bit (Go's hash/fnv New32)."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value * 0x01000193) & 0xFFFFFFFF) ^ byte
    return value


def _rfc3339_seconds(seconds: int) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"


async def logs(query: DataQuery, model: Model) -> DataResponse:
    """handleLogsScenario as a dataplane logs frame: labels, timestamp, body, id, labelTypes; `lines` rows
    from `to` back every intervalMs while after `from`."""
    rng = seeded(query, "logs")
    start, moment = query.time_range.from_ms, query.time_range.to_ms
    nanos = str(query.time_range.to_ms * 1_000_000)
    label_types = (b'{"container_id":"Indexed label","hostname":"Parsed field","level":"Metadata"}'
                   if model.level_column else b'{"container_id":"Indexed label","hostname":"Parsed field"}')
    columns: list[list[Any]] = [[], [], [], [], []]
    seen: dict[str, int] = {}
    for _ in range(steps(-moment, -start, query.interval_ms, min(model.lines, MAX_POINTS))):
        level = rng.choice(_LOG_LEVELS)
        line = _LOG_LINE.format(time=_rfc3339_seconds(go_div(moment, 1000)),
                                level="" if model.level_column else f"lvl={level} ")
        container, host = rng.choice(_CONTAINERS), rng.choice(_HOSTS)
        extra = f',"level":"{level}"' if model.level_column else ""
        labels = f'{{"container_id":"{container}","hostname":"{host}"{extra}}}'.encode()
        checksum = f"{nanos}_{_fnv32(line.encode() + b'_' + labels):x}"
        count = seen.get(checksum, 0)
        seen[checksum] = count + 1
        for column, value in zip(columns, (msgspec.Raw(labels), moment, line, checksum + (f"_{count}" if count else ""),
                                           msgspec.Raw(label_types)), strict=True):
            column.append(value)
        moment -= query.interval_ms
    return DataResponse([Frame([
        Field("labels", "json.RawMessage", columns[0], labels={}),
        Field("timestamp", "time.Time", columns[1]),
        Field("body", "string", columns[2]),
        Field("id", "string", columns[3]),
        Field("labelTypes", "json.RawMessage", columns[4], config={"custom": {"hidden": True}}),
    ], name=query.ref_id, meta=meta("log-lines", preferred_visualisation_type="logs"))])


# -- predictable and static scenarios -------------------------------------------------------------------

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


# -- CSV and errors -------------------------------------------------------------------------------------

async def csv_metric_values(query: DataQuery, model: Model) -> DataResponse | None:
    """`stringInput` values spread evenly over the time range. A blank input answers nothing (Grafana builds
    an empty frame there but never stores it in the response)."""
    if not model.string_input.strip():
        return None
    field = csv_values_field(model.string_input.replace(" ", "").split(","))
    field.name = series_name(query, model, 0)
    start, end = query.time_range.from_ms, query.time_range.to_ms
    count = len(field)
    step = go_div(end - start, count - 1) if count > 1 else 0
    return DataResponse([Frame([Field("time", "time.Time", [start + row * step for row in range(count)]), field])])


async def server_error_500(query: DataQuery, model: Model) -> DataResponse | None:
    """CSV Metric Values, except that an empty `stringInput` is an error (Grafana panics with this text)."""
    if model.string_input == "":
        raise ScenarioFailure("Test Data Panic!")
    return await csv_metric_values(query, model)


async def csv_content(query: DataQuery, model: Model) -> DataResponse | None:
    """`csvContent` as one frame named by the alias; `dropPercent` drops rows at random."""
    if not model.csv_content:
        return None
    frame = csv_frame(model.csv_content, model.alias)
    if 0 < model.drop_percent < 100:
        rng = seeded(query, "csv_content")
        keep = [row for row in range(frame.rows) if not rng.random() < model.drop_percent / 100]
        for field in frame.fields:
            field.values = [field.values[row] for row in keep]
            if field.nanos is not None:
                field.nanos = [field.nanos[row] for row in keep]
    return DataResponse([frame])


async def error_with_source(query: DataQuery, model: Model) -> DataResponse:
    """No frames; the error `error`, from downstream when the query says so, else from the plugin."""
    return DataResponse(error="error", error_source="downstream" if model.error_source == "downstream" else "plugin")


async def client_side(query: DataQuery, model: Model) -> None:
    """Scenarios the browser answers: the backend has no result for them."""
    return None


# -- USA generated data ---------------------------------------------------------------------------------

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


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def go_duration_ns(text: str) -> int:
    """time.ParseDuration in nanoseconds; ScenarioFailure with Go's message when it is not one."""
    try:
        return round(parse_go_duration(text) * 1_000_000)
    except ValueError:
        pass
    reason = f"invalid duration {_go_quote(text)}"
    rest = text[1:] if text[:1] in ("+", "-") else text
    position = 0
    while rest and position < len(rest):
        match = _DURATION_PART.match(rest, position)
        assert match is not None  # every group may be empty
        number, fraction, unit = match.groups()
        if not number and len(fraction or "") <= 1:
            break
        if not unit:
            reason = f"missing unit in duration {_go_quote(text)}"
            break
        if unit not in _DURATION_UNITS:
            reason = f"unknown unit {_go_quote(unit)} in duration {_go_quote(text)}"
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


Handler = Callable[[DataQuery, Model], Awaitable[DataResponse | None]]

_HANDLERS: dict[str, Handler] = {
    "random_walk": random_walk_scenario,
    "random_walk_with_error": random_walk_with_error,
    "slow_query": slow_query,
    "random_walk_table": random_walk_table,
    "exponential_heatmap_bucket_data": _heatmap(lambda index: 2**index),
    "linear_heatmap_bucket_data": _heatmap(lambda index: index * 10),
    "logs": logs,
    "predictable_pulse": predictable_pulse,
    "predictable_csv_wave": predictable_csv_wave,
    "datapoints_outside_range": datapoints_outside_range,
    "table_static": table_static,
    "csv_metric_values": csv_metric_values,
    "server_error_500": server_error_500,
    "csv_content": csv_content,
    "error_with_source": error_with_source,
    "usa": usa,
    **{sid: client_side for sid in ("no_data_points", "streaming_client", "live", "steps", "grafana_api",
                                    "annotations")},
}
