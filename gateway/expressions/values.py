"""Series, Number, Scalar and NoData: read from data source frames, written back as frames."""

from __future__ import annotations

import math
from typing import Any

from gateway.frames import Field, Frame, FrameMeta, Notice, meta

NAME_LABEL = "__name__"
# types whose unlabelled series Grafana names by a `__name__` label (pkg/expr/converter.go)
_NAME_FIXED_TYPES = frozenset({"graphite", "grafana-testdata-datasource", "testdata", "dynatrace", "influxdb"})
_NS = 1_000_000
_NAN = math.nan

Labels = dict[str, str] | None


class Series:
    """A time series: sorted or not, as its source gave it; values None for null."""

    __slots__ = ("config", "frame_name", "labels", "name", "notices", "time_config", "time_name", "times",
                 "values")

    def __init__(self, name: str, labels: Labels, times: list[int], values: list[float | None], *,
                 time_name: str = "Time", frame_name: str = "", time_config: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.labels = labels
        self.times = times
        self.values = values
        self.time_name = time_name
        self.frame_name = frame_name
        self.time_config = time_config
        self.config = config
        self.notices: list[Notice] = []


class Number:
    """A labelled single value."""

    __slots__ = ("config", "custom", "labels", "name", "notices", "value")

    def __init__(self, name: str, labels: Labels, value: float | None, config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.labels = labels
        self.value = value
        self.config = config
        self.notices: list[Notice] = []
        self.custom: list[dict[str, Any]] | None = None  # classic conditions: their matches


class Scalar:
    """An unlabelled constant."""

    __slots__ = ("name", "notices", "value")

    def __init__(self, name: str, value: float | None) -> None:
        self.name = name
        self.value = value
        self.notices: list[Notice] = []


class NoData:
    """No data, with the data source's empty frame when there was one."""

    __slots__ = ("frame", "notices")

    def __init__(self, frame: Frame | None = None) -> None:
        self.frame = frame
        self.notices: list[Notice] = []


Value = Series | Number | Scalar | NoData


def _kind(value: Value) -> str:
    """Grafana's name of a value type, for error messages."""
    return {Series: "seriesSet", Number: "numberSet", Scalar: "scalar", NoData: "noData"}[type(value)]


def _frame(value: Value) -> Frame:
    """The frame Grafana writes for one value (spec-query §10.2)."""
    notices = list(value.notices) or None
    if isinstance(value, Series):
        millis = [t // _NS for t in value.times]
        nanos = [t % _NS for t in value.times]
        return Frame([Field(value.time_name, "time.Time", millis, config=value.time_config,
                            nanos=nanos if any(nanos) else None),
                      Field(value.name, "float64", list(value.values), nullable=True, labels=value.labels,
                            config=value.config)],
                     name=value.frame_name, meta=meta("timeseries-multi", (0, 1), notices=notices))
    plain = FrameMeta(type_version=(0, 0), notices=notices) if notices else None
    if isinstance(value, Number):
        if value.custom is not None:
            plain = FrameMeta(type_version=(0, 0), custom=value.custom, notices=notices)
        return Frame([Field(value.name, "float64", [value.value], nullable=True, labels=value.labels,
                            config=value.config)], meta=plain)
    if isinstance(value, Scalar):
        return Frame([Field(value.name, "float64", [value.value], nullable=True)], meta=plain)
    if value.frame is not None:  # a copy: the same value may answer several refIds
        return Frame(value.frame.fields, name=value.frame.name, meta=value.frame.meta)
    return Frame(name="no data", meta=plain)


_NUMERIC = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
                      "float64"})


def _floats(field: Field) -> list[float | None]:
    """A value field as nullable float64 (SDK NullableFloatAt)."""
    if field.item_type in _NUMERIC:
        return [None if v is None else float(v) for v in field.values]
    if field.item_type == "bool":
        return [None if v is None else (1.0 if v else 0.0) for v in field.values]
    if field.item_type == "time.Time":
        return [None if v is None else float(v) for v in field.values]
    raise ValueError("unexpected value type, expected float64 but got string")


def _schema(frame: Frame) -> tuple[str, int, list[int]]:
    """The SDK's TimeSeriesSchema: (not|wide|long, time index, value indices)."""
    times = [i for i, f in enumerate(frame.fields) if f.item_type == "time.Time"]
    if not times:
        return "not", -1, []
    factors = {i for i, f in enumerate(frame.fields) if f.item_type == "string"}
    values = [i for i in range(len(frame.fields)) if i != times[0] and i not in factors]
    if not values:
        return "not", times[0], []
    return ("long" if factors else "wide"), times[0], values


def _series(frame: Frame, time_index: int, value_index: int, rename: bool) -> Series:
    time_field, value_field = frame.fields[time_index], frame.fields[value_index]
    nanos = time_field.nanos or [0] * len(time_field.values)
    times: list[int] = []
    for ms, extra in zip(time_field.values, nanos, strict=False):
        if ms is None:
            raise ValueError("time series with null time stamps are not supported")
        times.append(ms * _NS + extra)
    name = frame.name if rename and frame.name else value_field.name
    labels = dict(value_field.labels) if value_field.labels is not None else None
    return Series(name, labels, times, _floats(value_field), time_name=time_field.name, frame_name=frame.name,
                  time_config=time_field.config, config=value_field.config)


def _numbers(frame: Frame) -> list[Value]:
    """A table of one number column and string columns: one Number per row, the strings as labels."""
    numeric = next((i for i, f in enumerate(frame.fields) if f.item_type in _NUMERIC), -1)
    if numeric < 0:
        raise ValueError("no numeric field found in a numeric frame")
    strings = [f for f in frame.fields if f.item_type == "string"]
    field = frame.fields[numeric]
    out: list[Value] = []
    for row, value in enumerate(_floats(field)):
        labels = {f.name: str(f.values[row]) for f in strings} if strings else None
        out.append(Number(field.name, labels, _NAN if value is None else value, field.config))
    return out


def convert(ds_type: str, frames: list[Frame] | None) -> list[Value]:
    """A data source's frames as values (Grafana's ResultConverter); ValueError when they are not numbers or
    wide series."""
    if not frames:
        return [NoData()]
    first = frames[0]
    if first.meta is not None and first.meta.type and first.meta.type_version != (0, 0):
        return _dataplane(frames)
    if len(frames) == 1:
        if not first.fields:
            return [NoData(first)]
        kind, _, _ = _schema(first)
        numeric = sum(f.item_type in _NUMERIC for f in first.fields)
        other = sum(f.item_type not in _NUMERIC and f.item_type != "string" for f in first.fields)
        if kind == "not" and numeric == 1 and other == 0:
            return _numbers(first)
    series: list[Series] = []
    fields: list[Field] = []
    for frame in frames:
        kind, time_index, value_indices = _schema(frame)
        if kind != "wide":
            raise ValueError(f"input data must be a wide series but got type {kind} (input refid)")
        series.extend(_series(frame, time_index, index, True) for index in value_indices)
        fields.extend(frame.fields[index] for index in value_indices)
    if ds_type in _NAME_FIXED_TYPES and not any(s.labels for s in series):
        _name_series(series, fields)
    return list(series)


def _name_series(series: list[Series], fields: list[Field]) -> None:
    """Label unlabelled series `__name__` by the first of their fields' displayNameFromDS, displayName and name
    that is set and unique for every one of them."""
    for key in ("displayNameFromDS", "displayName", None):
        names = [f.name if key is None else str((f.config or {}).get(key) or "") for f in fields]
        if all(names) and len(set(names)) == len(names):
            for s, name in zip(series, names, strict=True):
                s.labels = {NAME_LABEL: name}
            return


def _dataplane(frames: list[Frame]) -> list[Value]:
    """Frames that declare a dataplane type: time series (multi/wide) or numbers (multi/wide/long)."""
    frame_type = frames[0].meta.type if frames[0].meta is not None else ""
    out: list[Value] = []
    if frame_type.startswith("timeseries-"):
        for frame in frames:
            kind, time_index, value_indices = _schema(frame)
            if kind == "not" and not frame.fields:
                continue
            if kind != "wide":
                raise ValueError(f"can not read {frame_type} data with a frame of type {kind}")
            out.extend(_series(frame, time_index, index, False) for index in value_indices)
    elif frame_type.startswith("numeric-"):
        for frame in frames:
            if any(f.item_type == "string" for f in frame.fields):
                out.extend(_numbers(frame))
                continue
            for field in frame.fields:
                if field.item_type in _NUMERIC:
                    out.extend(Number(field.name, dict(field.labels) if field.labels is not None else None,
                                      value, field.config) for value in _floats(field))
    else:
        raise ValueError(f"kind {frame_type} not supported by server side expressions")
    return out or [NoData()]
