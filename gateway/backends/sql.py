"""What every SQL data source shares (spec-query §13): the query model, the global interpolation and the
macro engine, and rows -> a data frame the way Grafana's SQL engine and the SDK shape it (time columns,
float conversion, long -> wide with labels, fill and resample, the row limit notice).

A backend runs the statements and hands over `Column`s (one Go item kind and a list of values each);
everything after that is here, so that MySQL and others reuse it. Times travel as epoch nanoseconds (ints)
until the frame is built. Error texts are Grafana's: `<prefix>: <reason>` per refId (`SqlError`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import msgspec

from gateway.backends.base import Backend, Context, DataQuery
from gateway.errors import QueryModelError
from gateway.frames import DataResponse, Field, Frame, FrameMeta, Notice, meta
from gateway.gtime import TimeRange, format_interval, parse_interval

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
# the text Grafana's SQL plugins put where a failure's details are only for the server log
USER_FACING_DEFAULT_ERROR = "please inspect Grafana server log for details"
DEFAULT_MAX_OPEN_CONNS = 10  # Grafana's jsonData.maxOpenConns default for SQL data sources
MAX_OPEN_CONNS = 100  # per data source and worker, whatever jsonData asks (drivers allocate them up front)
# cells (times x series) one long -> wide conversion or fill may make; Grafana has no bound (100k rows of
# distinct times and labels would make 1e10), gateway at least this and always a dense pivot of row_limit rows
MAX_WIDE_CELLS = 10_000_000

log = logging.getLogger("gateway.sql")


def host_port(ctx: Context, default_port: int) -> tuple[str, int]:
    """The server of a SQL data source: its URL is `host[:port]` (no scheme), or a socket directory."""
    url = ctx.ds.url
    host, _, port = url.rpartition(":") if url.count(":") == 1 else (url, "", "")
    return host or "localhost", int(port) if port.isdigit() else default_port


def max_open_conns(ctx: Context) -> int:
    """jsonData.maxOpenConns when positive (at most MAX_OPEN_CONNS: see SqlBackend.max_concurrency), else
    Grafana's default."""
    value = ctx.ds.options.get("maxOpenConns")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return DEFAULT_MAX_OPEN_CONNS
    return min(value, MAX_OPEN_CONNS)


class SqlBackend(Backend):
    """A SQL data source: its queries run concurrently on its pool, at most maxOpenConns at once; the type
    says how one query runs (`run_query`)."""

    served = True

    def max_concurrency(self, ctx: Context) -> int:
        """As many queries at once as the pool has connections (jsonData.maxOpenConns); asked once per data
        source version (Context.slot), so a capped maxOpenConns is logged once."""
        limit = max_open_conns(ctx)
        asked = ctx.ds.options.get("maxOpenConns")
        if isinstance(asked, int) and asked > limit:
            log.warning("data source %s: jsonData.maxOpenConns %d capped at %d connections per worker",
                        ctx.ds.uid, asked, limit)
        return limit

    async def run_query(self, ctx: Context, query: DataQuery, raw_sql: str, fmt: str) -> DataResponse:
        """One query with its rawSql and format."""
        raise NotImplementedError

    async def query(self, ctx: Context, queries: list[DataQuery]) -> dict[str, DataResponse]:
        """Each query with a rawSql, concurrently, each under ctx.slot(); a query without one is left out."""
        models = [(query, *read_model(query)) for query in queries]  # a refused model fails the whole call
        runnable = [(query, raw_sql, fmt) for query, raw_sql, fmt in models if raw_sql]

        async def one(query: DataQuery, raw_sql: str, fmt: str) -> DataResponse:
            async with ctx.slot():
                try:
                    return await self.run_query(ctx, query, raw_sql, fmt)
                except Exception:  # as Grafana's panic handler: this refId fails, the others still answer
                    log.exception("query %s of data source %s failed", query.ref_id, ctx.ds.uid)
                    return DataResponse(error=f"unexpected error - {USER_FACING_DEFAULT_ERROR}", error_source="plugin")

        answers = await asyncio.gather(*(one(*item) for item in runnable))
        return {query.ref_id: answer for (query, _, _), answer in zip(runnable, answers, strict=True)}

# Go item kinds a column can hold, and the frame types they become
_ITEM_TYPE = {"int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "float64": "float64",
              "bool": "bool", "time": "time.Time", "json": "json.RawMessage", "string": "string"}
_INTS = frozenset({"int8", "int16", "int32", "int64"})


class SqlError(Exception):
    """A failure of one query, answered on its refId as Grafana words it: `<prefix>: <reason>`."""

    def __init__(self, prefix: str, reason: str, source: str = "downstream") -> None:
        self.text = f"{prefix}: {reason}" if prefix else reason
        self.source = source
        super().__init__(self.text)


class Column:
    """One result column: its name, Go item kind (see _ITEM_TYPE), values, nullability and labels."""

    __slots__ = ("kind", "labels", "name", "nullable", "values")

    def __init__(self, name: str, kind: str, values: list[Any], *, nullable: bool = True,
                 labels: dict[str, str] | None = None) -> None:
        self.name = name
        self.kind = kind
        self.values = values
        self.nullable = nullable
        self.labels = labels

    def field(self) -> Field:
        """The column as a frame Field (times as epoch ms plus nanos, JSON as raw messages)."""
        values = self.values
        nanos = None
        if self.kind == "time":
            nanos = [0 if value is None else value % NS_PER_MS for value in values]
            values = [None if value is None else value // NS_PER_MS for value in values]
        elif self.kind == "json":
            values = [None if value is None else msgspec.Raw(value.encode()) for value in values]
        return Field(self.name, _ITEM_TYPE[self.kind], values, nullable=self.nullable, labels=self.labels,
                     nanos=nanos)


def epoch_ns(value: Any) -> int:
    """Epoch nanoseconds of a timestamp (without a zone: UTC) or a date (midnight UTC)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        raise SqlError("convert frame from rows error", f"cannot read {type(value).__name__} as a time")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


# -- the query model --------------------------------------------------------------------------------------

_GO_TYPES = {"rawSql": (str, "string"), "format": (str, "string"), "fill": (bool, "bool"),
             "fillInterval": (float, "float64"), "fillMode": (str, "string"), "fillValue": (float, "float64")}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def read_model(query: DataQuery) -> tuple[str, str]:
    """(rawSql, format) of a query; format is `table` or `time_series` (anything else is time_series). Raises
    QueryModelError, as Grafana fails the whole call, for fill parameters sent from outside or wrong types."""
    model = msgspec.json.decode(query.model)
    values: dict[str, Any] = {}
    for key, (kind, go_type) in _GO_TYPES.items():
        value = model.get(key)
        if value is None:
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool) if kind is float else \
            isinstance(value, kind)
        if not ok:
            raise QueryModelError(f"error unmarshal query json: json: cannot unmarshal {_json_kind(value)} into Go "
                                  f"struct field QueryJson.{key} of type {go_type}")
        values[key] = value
    if values.get("fill") or values.get("fillInterval", 0) != 0 or values.get("fillMode", "") != "" \
            or values.get("fillValue", 0) != 0:
        raise QueryModelError("query fill-parameters not supported")
    return values.get("rawSql", ""), "table" if values.get("format") == "table" else "time_series"


# -- interpolation ----------------------------------------------------------------------------------------

def interpolate_globals(sql: str, query: DataQuery) -> str:
    """The substitutions of every SQL data source: $__interval_ms, $__interval, $__unixEpochFrom/To()."""
    time_range = query.time_range
    sql = sql.replace("$__interval_ms", str(query.interval_ms))
    sql = sql.replace("$__interval", format_interval(query.interval_ms))
    sql = sql.replace("$__unixEpochFrom()", str(time_range.from_ms // 1000))
    return sql.replace("$__unixEpochTo()", str(time_range.to_ms // 1000))


class Fill(msgspec.Struct):
    """A fill mode set by a $__timeGroup macro: interval seconds, `null` | `previous` | `value`, the value."""

    interval: float
    mode: str
    value: float = 0.0


class MacroError(Exception):
    """A macro that cannot be expanded; the message is Grafana's."""


MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")


def go_float(value: float) -> str:
    """A float64 as Go's %v writes it: shortest digits, exponent form below 1e-4 and from 1e6 (`1e+06`)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    number = Decimal(repr(value)).normalize()
    exponent = number.adjusted()
    if exponent < -4 or exponent >= 6:
        sign, digits, _ = number.as_tuple()
        text = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        return ("-" if sign else "") + f"{text}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return format(number, "f")


def go_parse_float(text: str) -> float:
    """Go's strconv.ParseFloat for a decimal string (no spaces or underscores); ValueError otherwise."""
    if text != text.strip() or "_" in text or not text:
        raise ValueError(text)
    return float(text)


def rfc3339_nano(ns: int) -> str:
    """A UTC time as Go's RFC3339Nano: fraction digits only when non-zero, trailing zeros trimmed."""
    seconds, fraction = divmod(ns, NS_PER_S)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


class MacroEngine:
    """Expands `$__name(args)` macros; a data source subclass adds or changes macros in `macro`. A fill mode
    set by a group macro is kept in `fill` for the frame step."""

    def __init__(self, time_range: TimeRange, now: datetime) -> None:
        self.time_range = time_range
        self.now = now
        self.fill: Fill | None = None
        self.from_ns = time_range.from_ms * NS_PER_MS
        self.to_ns = time_range.to_ms * NS_PER_MS

    def expand(self, sql: str) -> str:
        """Every macro of `sql` expanded (arguments split on `,` and trimmed); the first failure raises."""
        failure: MacroError | None = None

        def replace(match: re.Match[str]) -> str:
            nonlocal failure
            args = [arg.strip(" ") for arg in match.group(2).split(",")]
            try:
                return self.macro(match.group(1), args, sql, match.group(0))
            except MacroError as error:
                failure = failure or error
                return "macro_error()"

        expanded = MACRO.sub(replace, sql)
        if failure is not None:
            raise failure
        return expanded

    def macro(self, name: str, args: list[str], sql: str, text: str) -> str:
        """One macro's SQL: the ones every SQL data source spells alike; unknown names fail."""
        if name == "__unixEpochFilter":
            column = self.column(name, args)
            return f"{column} >= {self.from_ns // NS_PER_S} AND {column} <= {self.to_ns // NS_PER_S}"
        if name == "__unixEpochNanoFilter":
            column = self.column(name, args)
            return f"{column} >= {self.from_ns} AND {column} <= {self.to_ns}"
        if name == "__unixEpochNanoFrom":
            return str(self.from_ns)
        if name == "__unixEpochNanoTo":
            return str(self.to_ns)
        if name == "__unixEpochGroup":
            seconds = self.group(name, args)
            return f"floor(({args[0]})/{go_float(seconds)})*{go_float(seconds)}"
        if name == "__unixEpochGroupAlias":
            return self.macro("__unixEpochGroup", args, sql, text) + ' AS "time"'
        raise MacroError(f'unknown macro "{name}"')

    @staticmethod
    def column(name: str, args: list[str]) -> str:
        """The first argument (a time column); Grafana's error without one."""
        if not args:  # split always gives one (maybe empty) argument, as Go's strings.Split does
            raise MacroError(f"missing time column argument for macro {name}")
        return args[0]

    def group(self, name: str, args: list[str]) -> float:
        """The interval in seconds of a group macro, after setting the fill mode of a third argument."""
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        try:
            seconds = parse_interval(args[1].strip("'"), self.now) / 1000
        except ValueError:
            raise MacroError(f"error parsing interval {args[1]}") from None
        if len(args) == 3:
            self.fill = parse_fill(seconds, args[2])
        return seconds


def parse_fill(seconds: float, text: str) -> Fill:
    """The third argument of a group macro: NULL, previous, or a number."""
    if text == "NULL":
        return Fill(seconds, "null")
    if text == "previous":
        return Fill(seconds, "previous")
    try:
        return Fill(seconds, "value", go_parse_float(text))
    except ValueError:
        raise MacroError(f"error parsing fill value {text}") from None


# -- rows -> frame ----------------------------------------------------------------------------------------

def row_limit_notice(limit: int) -> Notice:
    """Grafana's warning when rows were dropped at [dataproxy] row_limit."""
    return Notice("warning", f"Results have been limited to {limit} because the SQL row limit was reached")


def error_response(error: SqlError, executed: str) -> DataResponse:
    """A failed query: the error, and an empty frame carrying the executed SQL."""
    return DataResponse([Frame(meta=meta(executed_query_string=executed))], error=error.text,
                        error_source=error.source)


def _float_at(column: Column, value: Any) -> float | None:
    """SDK Field.NullableFloatAt: numbers, bools as 0/1, times as epoch ms, strings parsed; else an error."""
    if value is None:
        return None
    kind = column.kind
    if kind in _INTS or kind == "float64":
        return float(value)
    if kind == "bool":
        return 1.0 if value else 0.0
    if kind == "time":
        return float(_trunc_div(value, NS_PER_MS))
    if kind == "string":
        return go_parse_float(value)
    raise ValueError("unsupported field type data.FieldType")


def _trunc_div(a: int, b: int) -> int:
    """Go's integer division (toward zero)."""
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


def epoch_to_ms(value: float) -> float:
    """Grafana's epochPrecisionToMS: a number written with exponent 9 is seconds, 18 nanoseconds, else ms."""
    if value == 0 or not math.isfinite(value):
        return value
    exponent = Decimal(repr(value)).adjusted()
    if exponent == 9:
        return value * 1e3
    if exponent == 18:
        return value / 1e6
    return value


def to_time(column: Column) -> Column:
    """A numeric (or numeric string) column as a nullable time column; a time column as it is."""
    if column.kind == "time":
        return column
    values: list[int | None] = []
    for value in column.values:
        try:
            number = _float_at(column, value)
            ns = None if number is None else int(epoch_to_ms(number)) * NS_PER_MS
            if ns is not None and not -(2**63) <= ns < 2**63:  # a time.Time's nanoseconds are an int64
                raise OverflowError
            values.append(ns)
        except (ValueError, OverflowError):
            raise ValueError("unable to convert data to a time field") from None
    return Column(column.name, "time", values, labels=column.labels)


def to_float(column: Column) -> Column:
    """A column as nullable float64 (SDK NullableFloatAt per value)."""
    if column.kind == "float64":
        return column
    return Column(column.name, "float64", [_float_at(column, value) for value in column.values],
                  labels=column.labels)


class Schema(msgspec.Struct):
    """SDK TimeSeriesSchema: `not`, `wide` or `long`, the time index, factor and value indices."""

    kind: str
    time: int = -1
    factors: list[int] = msgspec.field(default_factory=list)
    values: list[int] = msgspec.field(default_factory=list)


def schema_of(columns: list[Column]) -> Schema:
    """The first time column indexes; strings and bools are factors; the rest are values."""
    times = [index for index, column in enumerate(columns) if column.kind == "time"]
    if not times:
        return Schema("not")
    factors = [index for index, column in enumerate(columns) if column.kind in ("string", "bool")]
    values = [index for index in range(len(columns)) if index != times[0] and index not in factors]
    if not values:
        return Schema("not", times[0], factors, values)
    return Schema("long" if factors else "wide", times[0], factors, values)


UNSORTED = ("unable to process the data because it is not sorted in ascending order by time, please updated "
            "your query to sort the data by time if possible")
NULL_TIMES = ("unable to process the data to wide series because input has null time values, make sure all time "
              "values are not null")


def _missing(fill: Fill | None, column: Column, previous: int) -> Any:
    """SDK GetMissing for a cell with no value (no fill: the zero value, null for nullable fields)."""
    if fill is None or fill.mode == "null":
        return None
    if fill.mode == "value":
        if column.kind == "float64":
            return fill.value
        if column.kind in _INTS:
            return int(fill.value)
        return None  # no numeric value: the cell keeps its zero value
    return column.values[previous] if previous >= 0 else None


def long_to_wide(columns: list[Column], fill: Fill | None, max_cells: int = MAX_WIDE_CELLS) -> list[Column]:
    """SDK LongToWide: one non-null Time field of distinct times, one field per value column and distinct
    factor values (labels `{factor name: value}`, null as ""), sorted by name then label values; ValueError
    before the value fields would hold more than `max_cells` cells."""
    schema = schema_of(columns)
    if schema.kind != "long":
        raise ValueError(f"can not convert to wide series, expected long format series input but got {schema.kind}"
                         " series")
    times = columns[schema.time].values
    if not times:
        raise ValueError("can not convert to wide series, input fields have no rows")
    if times[0] is None:
        raise ValueError(NULL_TIMES)
    wide_time = Column(columns[schema.time].name, "time", [times[0]], nullable=False)
    wide: list[Column] = []
    seen: dict[tuple[str, ...], list[Column]] = {}
    last = times[0]
    row = 0
    for index, moment in enumerate(times):
        if moment is None:
            raise ValueError(NULL_TIMES)
        if moment > last:
            if (row + 2) * len(wide) > max_cells:
                raise _too_wide(max_cells)
            row += 1
            last = moment
            wide_time.values.append(moment)
            for column in wide:
                column.values.append(_missing(fill, column, row - 1))
        if moment < last:
            raise ValueError(UNSORTED)
        key = tuple(_label(columns[factor].values[index]) for factor in schema.factors)
        targets = seen.get(key)
        if targets is None:
            labels: dict[str, str] = {}
            for factor, value in zip(schema.factors, key, strict=True):
                name = columns[factor].name
                if name in labels:
                    pairs = " ".join(f"[{columns[f].name} {v}]" for f, v in zip(schema.factors, key, strict=True))
                    raise ValueError(f"duplicate key '{labels[name]}' in lables: [{pairs}]")
                labels[name] = value
            if (row + 1) * (len(wide) + len(schema.values)) > max_cells:
                raise _too_wide(max_cells)
            targets = seen[key] = []
            for value_index in schema.values:
                source = columns[value_index]
                created = Column(source.name, source.kind, [None] * (row + 1), labels=dict(labels))
                for earlier in range(row):
                    created.values[earlier] = _missing(fill, created, row - 1)
                targets.append(created)
                wide.append(created)
        for value_index, target in zip(schema.values, targets, strict=True):
            target.values[row] = columns[value_index].values[index]
    return [wide_time, *_sorted_fields(wide, [columns[factor].name for factor in schema.factors])]


def _too_wide(max_cells: int) -> ValueError:
    return ValueError(f"the wide frame would have more than {max_cells} cells (distinct times x series); narrow the "
                      "time range, group by fewer labels or use the table format")


def _label(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _sorted_fields(fields: list[Column], keys: list[str]) -> list[Column]:
    """SDK SortWideFrameFields after the time field moved out: the last field takes its place first, then a
    stable sort by name and by the label values of `keys`."""
    if fields:
        fields = [fields[-1], *fields[:-1]]

    def less(a: Column, b: Column) -> bool:
        if a.name != b.name:
            return a.name < b.name
        if a.labels is None or b.labels is None:
            return a.labels is None
        for key in keys:
            left, right = a.labels.get(key, ""), b.labels.get(key, "")
            if left != right:
                return left < right
        return False

    def compare(a: Column, b: Column) -> int:
        return -1 if less(a, b) else 1 if less(b, a) else 0

    return sorted(fields, key=functools.cmp_to_key(compare))


class ResampleError(Exception):
    """A frame that cannot be resampled (answered with a warning notice)."""


def resample(columns: list[Column], fill: Fill, from_ns: int, to_ns: int, interval_ns: int,
             max_rows: int, max_cells: int = MAX_WIDE_CELLS) -> list[Column]:
    """SDK ResampleWideFrame: a row every `interval_ns` from `from_ns` to `to_ns` inclusive, each taking the
    last row in (t - interval, t], else the fill value; at most `max_rows` rows and `max_cells` cells."""
    schema = schema_of(columns)
    if schema.kind == "not":
        raise ResampleError("can not fill missing, not timeseries frame")
    if interval_ns == 0:
        return columns
    if to_ns >= from_ns and (to_ns - from_ns) // interval_ns + 1 > max_rows:
        raise ResampleError("too many rows")
    if to_ns >= from_ns and ((to_ns - from_ns) // interval_ns + 1) * len(columns) > max_cells:
        raise ResampleError("too many cells")
    times = columns[schema.time].values
    out = [Column(column.name, column.kind, [], nullable=column.nullable, labels=column.labels)
           for column in columns]
    values = set(schema.values)
    last_seen = -1
    current = from_ns
    while current <= to_ns:
        # the SDK restarts from row 0 while the last row seen is row 0
        row = last_seen + 1 if last_seen > 0 else 0
        between: list[int] = []
        while row < len(times):
            moment = times[row]
            if moment is None:
                raise ResampleError("time point is nil")
            if moment > current - interval_ns:
                if moment > current:
                    break
                between.append(row)
            last_seen = row
            row += 1
        for index, column in enumerate(columns):
            if index == schema.time:
                value: Any = current
            elif index in values:
                value = column.values[between[-1]] if between else _missing(fill, column, last_seen)
            else:
                value = column.values[last_seen] if last_seen >= 0 else None
            out[index].values.append(value)
        current += interval_ns
    return out


def shape(columns: list[Column], fmt: str, executed: str, notices: list[Notice], fill: Fill | None,
          time_range: TimeRange, row_limit: int, time_columns: tuple[str, ...] = ("time",)) -> DataResponse:
    """Grafana's processFrame: the frame of one query's rows in `table` or `time_series` format; the last
    column named one of `time_columns` is the time (MySQL also takes the legacy `time_sec`)."""
    frame_meta = meta(executed_query_string=executed, notices=notices or None)
    if not columns or not columns[0].values:
        return DataResponse([Frame(meta=frame_meta)])  # no rows: a frame without fields
    names = [column.name for column in columns]
    time_index = max((i for i, name in enumerate(names) if name in time_columns), default=-1)
    end_index = max((i for i, name in enumerate(names) if fmt == "table" and name.lower() == "timeend"), default=-1)
    metric_index = max((i for i, name in enumerate(names) if name == "metric"), default=-1)
    for index, label in ((time_index, "time"), (end_index, "timeend")):
        if index >= 0:
            try:
                columns[index] = to_time(columns[index])
            except ValueError as error:
                raise SqlError("converting time columns failed", f"failed to convert {label} column: {error}") \
                    from None
    if fmt == "table":
        return DataResponse([_frame(columns, frame_meta)])
    if time_index < 0:
        raise SqlError("db has no time column", "time column is missing; make sure your data includes a time column "
                       "for time series format or switch to a table format that doesn't require it")
    columns[time_index].name = "Time"
    for index, column in enumerate(columns):
        if index in (time_index, metric_index) or column.kind == "string":
            continue
        try:
            columns[index] = to_float(column)
        except ValueError as error:
            raise SqlError("convert value to float failed", str(error) or "invalid syntax") from None
    # a bound on the cells of the wide frame that any dense pivot of row_limit rows stays under
    max_cells = max(MAX_WIDE_CELLS, row_limit * len(columns))
    if schema_of(columns).kind == "long":
        try:
            wide = long_to_wide(columns, fill, max_cells)
        except ValueError as error:
            raise SqlError("failed to convert long to wide series when converting from dataframe", str(error)) \
                from None
        if len(columns) == 3:  # pre-8 naming: the `metric` value names the series
            for column in wide:
                if column.labels is not None and len(column.labels) == 1 and "metric" in column.labels:
                    column.name, column.labels = column.labels["metric"], None
        columns = wide
        frame_meta = meta("timeseries-wide", (0, 1), executed_query_string=executed, notices=notices or None)
    if fill is not None:
        interval_ns = int(fill.interval * NS_PER_S)
        if interval_ns > 0:
            step = int(fill.interval)
            if step:  # Grafana aligns the start to the whole seconds of the interval
                start_ns = _trunc_div(time_range.from_ms // 1000, step) * step * NS_PER_S
            else:  # where Grafana divides by zero (and panics), align to the interval itself
                start_ns = time_range.from_ms * NS_PER_MS // interval_ns * interval_ns
            try:
                columns = resample(columns, fill, start_ns, time_range.to_ms * NS_PER_MS, interval_ns, row_limit,
                                   max_cells)
            except ResampleError:
                frame_meta.notices = [*notices, Notice("warning", "Failed to resample dataframe")]
    return DataResponse([_frame(columns, frame_meta)])


def _frame(columns: list[Column], frame_meta: FrameMeta) -> Frame:
    return Frame([column.field() for column in columns], meta=frame_meta)

