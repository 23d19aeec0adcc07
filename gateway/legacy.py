"""Data frames as the legacy POST /api/tsdb/query answered them (Grafana ≤ 8.x `tsdb.Response`).

Shape (G `pkg/tsdb/models.go` 7.x, `pkg/tsdb/legacydata/contracts.go` 8.x), keys in Go's struct order:
`{"results": {refId: {"error"?, "refId", "meta"?, "series", "tables", "dataframes"}}, "message"?}`.
A wide time-series frame (a time field and numeric fields, no string field: the SDK's TimeSeriesSchema)
becomes one series per numeric field, named as Grafana's FrameToSeriesSlice names it, with `[value, timeMs]`
points; any other frame with fields becomes a table. `dataframes` is always null: gateway sends no Arrow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.frames import DataResponse, Field, Frame

_NUMERIC = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
                      "float64"})


class Series(msgspec.Struct, omit_defaults=True):
    """One legacy time series: `points` are `[value, time in epoch ms]`; `tags` omitted when empty."""

    name: str
    points: list[tuple[Any, Any]]
    tags: dict[str, str] | None = None


class Column(msgspec.Struct):
    text: str


class Table(msgspec.Struct):
    """One legacy table: column names and rows of values."""

    columns: list[Column]
    rows: list[tuple[Any, ...]]


class Result(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True):
    """tsdb.QueryResult: `error` and `meta` only when set; series, tables and dataframes always written."""

    error: str | None = None
    ref_id: str
    meta: dict[str, Any] | None = None
    series: list[Series] | None
    tables: list[Table] | None
    dataframes: None


class Response(msgspec.Struct, omit_defaults=True):
    """tsdb.Response: `message` is the last error, when there is one."""

    results: dict[str, Result]
    message: str | None = None


def _time_series_schema(frame: Frame) -> tuple[Field, list[Field]] | None:
    """(time field, value fields) of a wide time-series frame, else None (the SDK's TimeSeriesSchema)."""
    time_field = next((field for field in frame.fields if field.item_type == "time.Time"), None)
    if time_field is None or any(field.item_type == "string" for field in frame.fields):
        return None
    values = [field for field in frame.fields if field is not time_field and field.item_type in _NUMERIC]
    return (time_field, values) if values else None


def series_name(field: Field) -> str:
    """FrameToSeriesSlice's name: displayName, displayNameFromDS, `name {k=v, ...}`, else the field name."""
    config = field.config or {}
    for key in ("displayName", "displayNameFromDS"):
        name = config.get(key)
        if isinstance(name, str) and name:
            return name
    if field.labels:
        return f"{field.name} {{{', '.join(f'{key}={value}' for key, value in sorted(field.labels.items()))}}}"
    return field.name


def _series(time_field: Field, field: Field) -> Series:
    # zip in C: msgspec writes each tuple as a JSON array, NaN and ±Inf as null
    return Series(series_name(field), list(zip(field.values, time_field.values, strict=True)),
                  dict(field.labels) if field.labels else None)


def _table(frame: Frame) -> Table:
    columns = [Column(field.name) for field in frame.fields]
    values = [[msgspec.Raw(value) if isinstance(value, bytes) else value for value in field.values]
              if field.item_type == "json.RawMessage" else field.values for field in frame.fields]
    return Table(columns, list(zip(*values, strict=True)))


def _meta(frames: list[Frame]) -> dict[str, Any] | None:
    """`{"rowCount", "sql"}` as the SQL engines wrote it, when a frame carries its executed query."""
    for frame in frames:
        if frame.meta is not None and frame.meta.executed_query_string:
            return {"rowCount": sum(each.rows for each in frames), "sql": frame.meta.executed_query_string}
    return None


def result(ref_id: str, response: DataResponse) -> Result:
    """One refId's DataResponse as a legacy QueryResult."""
    if response.frames is None:
        return Result(error=response.error, ref_id=ref_id, series=None, tables=None, dataframes=None)
    series: list[Series] = []
    tables: list[Table] = []
    for frame in response.frames:
        if not frame.fields:
            continue  # nothing to show; its meta still counts
        schema = _time_series_schema(frame)
        if schema is None:
            tables.append(_table(frame))
        else:
            series.extend(_series(schema[0], field) for field in schema[1])
    return Result(error=response.error, ref_id=ref_id, meta=_meta(response.frames), series=series,
                  tables=tables or None, dataframes=None)


def convert(results: Mapping[str, DataResponse]) -> tuple[Response, int]:
    """The legacy response for the merged results and its status: 400 when any refId has an error."""
    converted = {ref_id: result(ref_id, results[ref_id]) for ref_id in sorted(results)}
    errors = [each.error for each in converted.values() if each.error is not None]
    return Response(converted, errors[-1] if errors else None), 400 if errors else 200


_json = msgspec.json.Encoder()


def encode(body: Response) -> bytes:
    """The response as one JSON document (Grafana's response.JSON: json.Marshal, no trailing newline)."""
    return _json.encode(body)
