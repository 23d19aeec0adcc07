"""A query's answer as the cache keeps it, and back: its status and its frames as the JSON the response
writes (encode_frames), compressed with zlib (level 1: a time series' JSON shrinks several times over, to
less than its MessagePack).

A hit is then a decompression and a copy into the response: its frames are decoded into objects only when
something reads them (an expression, a MessagePack answer); the bytes are not re-encoded. An answer whose
JSON is larger than the largest value kept is not compressed: it is only handed, as it is, to identical
queries waiting in the same worker."""

from __future__ import annotations

import zlib
from typing import NamedTuple

import msgspec

from gateway.frames import DataResponse, Frame, encode_frames

VERSION = 1  # of the frames' JSON as encode_frames writes it: a value of another version is a miss


class _Stored(msgspec.Struct, array_like=True):
    version: int
    status: int
    frames: bytes | None  # the JSON array of frames, zlib-compressed when `packed`
    packed: bool


_encoder = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(_Stored).decode
_check = msgspec.json.decode


class Encoded(NamedTuple):
    """An answer made ready for the cache."""

    value: bytes | None  # what identical queries waiting in the worker take; None when it cannot be read back
    keep: bool  # whether `value` may be kept: readable, and its frames' JSON at most max_value bytes
    text: bytes | None  # the frames' JSON, for the answer's own response


def encode(response: DataResponse, ref_id: str, max_value: int) -> Encoded:
    """A successful answer of `ref_id` made ready to keep (TypeError, ValueError or OverflowError for values
    JSON cannot hold)."""
    frames = response.frames
    if frames is None:
        return Encoded(_encoder.encode(_Stored(VERSION, response.status, None, True)), True, None)
    text = encode_frames(frames, ref_id)
    if not _readable_back(frames):
        return Encoded(None, False, text)
    if len(text) > max_value:
        return Encoded(_encoder.encode(_Stored(VERSION, response.status, text, False)), False, text)
    return Encoded(_encoder.encode(_Stored(VERSION, response.status, zlib.compress(text, 1), True)), True, text)


def _readable_back(frames: list[Frame]) -> bool:
    """Whether decode_frames can read the frames' JSON back: every value gateway made can be, but a RawMessage
    cell a data source sent (a SQL json column) may hold what Python cannot (1e400, a lone surrogate, nesting
    deeper than the interpreter's recursion)."""
    for frame in frames:
        for field in frame.fields:
            if field.item_type == "json.RawMessage":
                try:
                    for value in field.values:
                        if value is not None:
                            _check(value)
                except (msgspec.DecodeError, RecursionError):
                    return False
    return True


def decode(data: bytes, max_value: int) -> DataResponse:
    """A fresh answer for one request, its frames still encoded; ValueError for bytes this version did not
    write, or kept frames that would expand past `max_value` bytes."""
    stored = _decode(data)
    if stored.version != VERSION:
        raise ValueError(f"a cached answer of version {stored.version}")
    if stored.frames is None:
        return DataResponse(status=stored.status)
    if not stored.packed:
        return DataResponse(status=stored.status, encoded=stored.frames)
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(stored.frames, max_value)
    except zlib.error as error:
        raise ValueError(f"unreadable cached frames: {error}") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("cached frames past the size limit, or cut short")
    return DataResponse(status=stored.status, encoded=text)
