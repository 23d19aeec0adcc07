"""Grafana data frames and query responses, and their one encoder (JSON, MessagePack).

The wire shapes are the SDK's (spec-query §6-§7): a frame is `{"schema", "data"}`, values travel as one
column per field, NaN and ±Inf as `null` plus `data.entities`, sub-millisecond time as `data.nanos`.
Columns are plain Python lists that msgspec writes in C; nothing here loops over points except to find
the rows of non-finite floats, and that only after a C-level sum says there are some.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from operator import is_not
from typing import Any

import msgspec

# simple JSON type of each Go item type (data/field_type.go)
_KIND = {
    "int8": "number", "int16": "number", "int32": "number", "int64": "number",
    "uint8": "number", "uint16": "number", "uint32": "number", "uint64": "number",
    "float32": "number", "float64": "number", "string": "string", "bool": "boolean",
    "time.Time": "time", "json.RawMessage": "other", "enum": "enum",
}
_FLOATS = frozenset({"float32", "float64"})
_not_none = partial(is_not, None)


class TypeInfo(msgspec.Struct, omit_defaults=True):
    frame: str
    nullable: bool = False


class FieldSchema(msgspec.Struct, omit_defaults=True):
    name: str = ""
    type: str = ""
    type_info: TypeInfo = msgspec.field(default_factory=lambda: TypeInfo(""), name="typeInfo")
    labels: dict[str, str] | None = None
    config: dict[str, Any] | None = None


class Notice(msgspec.Struct, omit_defaults=True):
    severity: str
    text: str
    link: str = ""
    inspect: int = 0


class FrameMeta(msgspec.Struct, omit_defaults=True, kw_only=True, rename="camel"):
    """SDK FrameMeta, keys in its order; typeVersion is always written."""

    type: str = ""
    type_version: tuple[int, int]
    path: str = ""
    path_separator: str = ""
    custom: Any = None
    stats: list[dict[str, Any]] | None = None
    notices: list[Notice] | None = None
    channel: str = ""
    preferred_visualisation_type: str = ""
    preferred_visualisation_plugin_id: str = ""
    executed_query_string: str = ""
    data_topic: str = ""
    unique_row_id_fields: list[int] | None = None


def meta(frame_type: str = "", version: tuple[int, int] = (0, 0), **values: Any) -> FrameMeta:
    """A FrameMeta; keyword names are the Struct's (snake_case)."""
    return FrameMeta(type=frame_type, type_version=version, **values)


class Field:
    """One column: its Go item type (`float64`, `time.Time`, ...), its values, labels and config.

    Times are epoch milliseconds (ints); `nanos`, when given, holds the sub-millisecond remainder per row.
    Float values may be NaN or ±Inf: they are written as null with an entities entry.
    """

    __slots__ = ("config", "item_type", "labels", "name", "nanos", "nullable", "values")

    def __init__(self, name: str, item_type: str, values: list[Any], *, nullable: bool = False,
                 labels: Mapping[str, str] | None = None, config: dict[str, Any] | None = None,
                 nanos: list[int] | None = None) -> None:
        if item_type not in _KIND:
            raise ValueError(f"unknown field type {item_type!r}")
        self.name = name
        self.item_type = item_type
        self.values = values
        self.nullable = nullable
        self.labels = dict(sorted(labels.items())) if labels is not None else None
        self.config = config
        self.nanos = nanos

    def __len__(self) -> int:
        return len(self.values)

    def schema(self) -> FieldSchema:
        """The field's entry in `schema.fields`."""
        return FieldSchema(self.name, _KIND[self.item_type], TypeInfo(self.item_type, self.nullable),
                           self.labels, self.config)

    def entities(self) -> dict[str, list[int]] | None:
        """{"NaN": [...], "Inf": [...], "NegInf": [...]} for the rows of non-finite floats, else None."""
        if self.item_type not in _FLOATS or not self.values:
            return None
        values = self.values
        try:
            total = sum(filter(_not_none, values)) if self.nullable else sum(values)
        except TypeError:  # a nullable column declared non-nullable: still answer correctly
            total = sum(filter(_not_none, values))
        if math.isfinite(total):
            return None  # no NaN or infinity anywhere (a finite sum cannot hold one)
        found: dict[str, list[int]] = {}
        for row, value in enumerate(values):
            if value is None or math.isfinite(value):
                continue
            key = "NaN" if value != value else ("Inf" if value > 0 else "NegInf")
            found.setdefault(key, []).append(row)
        if not found:
            return None  # the finite values merely overflowed the sum
        return {key: found[key] for key in ("NaN", "Inf", "NegInf") if key in found}


class Frame:
    """A data frame: name, refId, meta and equal-length fields."""

    __slots__ = ("fields", "meta", "name", "ref_id")

    def __init__(self, fields: Sequence[Field] = (), *, name: str = "", ref_id: str = "",
                 meta: FrameMeta | None = None) -> None:
        self.fields = list(fields)
        self.name = name
        self.ref_id = ref_id
        self.meta = meta

    @property
    def rows(self) -> int:
        """The number of rows (0 without fields)."""
        return len(self.fields[0]) if self.fields else 0


class DataResponse:
    """The result of one refId: frames, or an error with its status and source.

    A response may hold its frames already encoded (`encoded`, the JSON array encode_frames wrote, as the query
    cache keeps them), instead of or besides the frames themselves: the JSON writer copies those bytes, and
    reading `frames` (decoded from the bytes when there are no frames) drops them, so frames changed afterwards
    are written anew.
    """

    __slots__ = ("_frames", "encoded", "error", "error_source", "status")

    def __init__(self, frames: list[Frame] | None = None, *, error: str | None = None, status: int = 0,
                 error_source: str = "", encoded: bytes | None = None) -> None:
        self._frames = frames
        self.encoded = encoded
        self.error = error
        self.error_source = error_source
        self.status = status or (500 if error is not None else 200)

    @property
    def frames(self) -> list[Frame] | None:
        """The frames; reading them drops `encoded` (decoding it first when there are no frames)."""
        if self.encoded is not None:
            if self._frames is None:
                self._frames = decode_frames(self.encoded)
            self.encoded = None
        return self._frames

    @frames.setter
    def frames(self, frames: list[Frame] | None) -> None:
        self._frames = frames
        self.encoded = None


# -- wire shapes ------------------------------------------------------------------------------------------

class _Schema(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True):
    name: str = ""
    ref_id: str = ""
    meta: FrameMeta | None = None
    fields: list[FieldSchema]  # always written, [] included


class _Data(msgspec.Struct, omit_defaults=True):
    values: list[list[Any]]
    entities: list[dict[str, list[int]] | None] | None = None
    nanos: list[list[int] | None] | None = None


class _Frame(msgspec.Struct):
    schema: _Schema
    data: _Data


class _Head(msgspec.Struct, omit_defaults=True, rename="camel"):
    """A DataResponse without its frames: error and errorSource (always together), status."""

    error: str | None = None
    error_source: str | None = None
    status: int = 0


def _wire(frame: Frame) -> _Frame:
    fields = frame.fields
    rows = frame.rows
    if any(len(field) != rows for field in fields):
        raise ValueError(f"frame {frame.name!r} has fields of different lengths")
    entities = [field.entities() for field in fields]
    nanos = [field.nanos if field.nanos and any(field.nanos) else None for field in fields]
    return _Frame(
        _Schema(name=frame.name, ref_id=frame.ref_id, meta=frame.meta, fields=[field.schema() for field in fields]),
        _Data([field.values for field in fields], entities if any(entities) else None,
              nanos if any(nanos) else None),
    )


_json = msgspec.json.Encoder()
_decode_wire = msgspec.json.Decoder(list[_Frame]).decode
_NON_FINITE = {"NaN": math.nan, "Inf": math.inf, "NegInf": -math.inf}


def encode_frame(frame: Frame) -> bytes:
    """One frame as JSON."""
    return _json.encode(_wire(frame))


def encode_frames(frames: list[Frame], ref_id: str) -> bytes:
    """A refId's frames as the JSON array json_chunks writes; frames without a refId are given `ref_id`, as
    json_chunks gives them."""
    for frame in frames:
        if not frame.ref_id:
            frame.ref_id = ref_id
    return b"[" + b",".join(map(encode_frame, frames)) + b"]"


def decode_frames(data: bytes) -> list[Frame]:
    """Frames from the JSON encode_frames wrote, as they were: NaN and ±Inf back from entities, nanos and
    RawMessage values (re-encoded compactly) kept. ValueError for anything else."""
    frames = []
    for wire in _decode_wire(data):
        schemas, columns = wire.schema.fields, wire.data.values
        if len(columns) != len(schemas):
            raise ValueError("a frame's data does not match its schema")
        entities = wire.data.entities or [None] * len(schemas)
        nanos = wire.data.nanos or [None] * len(schemas)
        fields = []
        for schema, values, found, remainders in zip(schemas, columns, entities, nanos, strict=True):
            item_type = schema.type_info.frame
            if found:
                try:
                    for key, rows in found.items():
                        for row in rows:
                            values[row] = _NON_FINITE[key]
                except (KeyError, IndexError, TypeError):
                    raise ValueError("a frame's entities do not match its values") from None
            if item_type == "json.RawMessage":
                values = [None if value is None else msgspec.Raw(_json.encode(value)) for value in values]
            fields.append(Field(schema.name, item_type, values, nullable=schema.type_info.nullable,
                                labels=schema.labels, config=schema.config, nanos=remainders))
        frames.append(Frame(fields, name=wire.schema.name, ref_id=wire.schema.ref_id, meta=wire.schema.meta))
    return frames


def json_chunks(results: Mapping[str, DataResponse]) -> Iterator[bytes]:
    """The QueryDataResponse as JSON, piece by piece (a frame at a time), refIds sorted; ends with a newline."""
    yield b'{"results":{'
    for index, ref_id in enumerate(sorted(results)):
        response = results[ref_id]
        head = _json.encode(_Head(response.error, "" if response.error is not None and not response.error_source
                                  else response.error_source or None, response.status))
        opening = (b"," if index else b"") + _json.encode(ref_id) + b":" + head[:-1]
        if response.encoded is not None:
            yield opening + b',"frames":' + response.encoded + b"}"
            continue
        if response.frames is None:
            yield opening + b"}"
            continue
        yield opening + b',"frames":['
        for position, frame in enumerate(response.frames):
            if not frame.ref_id:
                frame.ref_id = ref_id
            yield (b"," if position else b"") + encode_frame(frame)
        yield b"]}"
    yield b"}}\n"


def encode_json(results: Mapping[str, DataResponse]) -> bytes:
    """The whole QueryDataResponse as one JSON document."""
    return b"".join(json_chunks(results))


def _plain(frame: Frame, raw: Callable[[Any], Any]) -> Any:
    """A frame as plain values (RawMessage values as `raw` reads them), for MessagePack."""
    fields = [
        Field(field.name, field.item_type, [raw(value) for value in field.values], nullable=field.nullable,
              labels=field.labels, config=field.config, nanos=field.nanos)
        if field.item_type == "json.RawMessage" else field
        for field in frame.fields
    ]
    return msgspec.to_builtins(_wire(Frame(fields, name=frame.name, ref_id=frame.ref_id, meta=frame.meta)))


def _decoded(value: Any) -> Any:
    """A RawMessage cell as its value; one that JSON holds but Python cannot (1e400, a lone surrogate, nesting
    deeper than the interpreter's recursion) as its JSON text."""
    if not isinstance(value, msgspec.Raw | bytes):
        return value
    try:
        return msgspec.json.decode(value)
    except (msgspec.DecodeError, RecursionError):
        return _text(value)


def _text(value: Any) -> Any:
    """A RawMessage cell as its JSON text."""
    return bytes(value).decode("utf-8", "replace") if isinstance(value, msgspec.Raw | bytes) else value


_msgpack = msgspec.msgpack.Encoder()


def encode_msgpack(results: Mapping[str, DataResponse]) -> bytes:
    """The same QueryDataResponse structure as MessagePack."""
    body: dict[str, Any] = {}
    for ref_id in sorted(results):
        response = results[ref_id]
        entry: dict[str, Any] = {}
        if response.error is not None:
            entry["error"] = response.error
            entry["errorSource"] = response.error_source
        entry["status"] = response.status
        if response.frames is not None:
            for frame in response.frames:
                if not frame.ref_id:
                    frame.ref_id = ref_id
            entry["frames"] = [_plain(frame, _decoded) for frame in response.frames]
        body[ref_id] = entry
    try:
        return _msgpack.encode({"results": body})
    except OverflowError:  # an integer MessagePack cannot hold: a float (Go reads such a JSON number as a
        # float64), ±Inf past a float's range (where Go's reading fails)
        return _msgpack.encode({"results": _floats_for_huge_ints(body)})
    except RecursionError:  # a RawMessage cell nested too deep to write as values: as its JSON text
        for ref_id, entry in body.items():
            if "frames" in entry:
                entry["frames"] = [_plain(frame, _text) for frame in results[ref_id].frames or ()]
        return _msgpack.encode({"results": body})


def _floats_for_huge_ints(value: Any) -> Any:
    """`value` with every int outside int64 and uint64 made a float (iteratively: values may nest deeply)."""
    top = [value]
    stack: list[tuple[Any, Any]] = [(top, 0)]
    while stack:
        holder, key = stack.pop()
        item = holder[key]
        if isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**64:
            holder[key] = float(item) if abs(item) < 2**1023 else math.inf if item > 0 else -math.inf
        elif isinstance(item, dict):
            item = holder[key] = dict(item)
            stack.extend((item, name) for name in item)
        elif isinstance(item, list | tuple):
            item = holder[key] = list(item)
            stack.extend((item, index) for index in range(len(item)))
    return top[0]
