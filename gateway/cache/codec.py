"""A query's answer (DataResponse with its frames) as MessagePack bytes and back, for the cache."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.frames import DataResponse, Field, Frame, FrameMeta

_RAW = "json.RawMessage"


class _Field(msgspec.Struct, array_like=True):
    name: str
    item_type: str
    values: list[Any]
    nullable: bool
    labels: dict[str, str] | None
    config: dict[str, Any] | None
    nanos: list[int] | None


class _Frame(msgspec.Struct, array_like=True):
    fields: list[_Field]
    name: str
    ref_id: str
    meta: FrameMeta | None


class _Response(msgspec.Struct, array_like=True):
    frames: list[_Frame] | None
    status: int


_encoder = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(_Response).decode


def _values(field: Field) -> list[Any]:
    if field.item_type != _RAW:
        return field.values
    return [bytes(value) if isinstance(value, msgspec.Raw) else value for value in field.values]


def encode(response: DataResponse) -> bytes:
    """A successful answer as bytes (TypeError or OverflowError for values MessagePack cannot hold)."""
    frames = None if response.frames is None else [
        _Frame([_Field(field.name, field.item_type, _values(field), field.nullable, field.labels, field.config,
                       field.nanos) for field in frame.fields], frame.name, frame.ref_id, frame.meta)
        for frame in response.frames]
    return _encoder.encode(_Response(frames, response.status))


def decode(data: bytes) -> DataResponse:
    """Fresh objects for one request (the encoder fills in refIds on the frames it writes)."""
    response = _decode(data)
    frames = None if response.frames is None else [
        Frame([Field(field.name, field.item_type,
                     [msgspec.Raw(value) if isinstance(value, bytes) else value for value in field.values]
                     if field.item_type == _RAW else field.values,
                     nullable=field.nullable, labels=field.labels, config=field.config, nanos=field.nanos)
               for field in frame.fields], name=frame.name, ref_id=frame.ref_id, meta=frame.meta)
        for frame in response.frames]
    return DataResponse(frames, status=response.status)
