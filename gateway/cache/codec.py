"""A query's answer as the cache keeps it, and back: its status and its frames as the JSON the response
writes (encode_frames), compressed with zlib (level 1: a time series' JSON shrinks several times over, to
less than its MessagePack).

A hit is then a decompression and a copy into the response: its frames are decoded into objects only when
something reads them (an expression, a MessagePack answer); the bytes are not re-encoded. An answer whose
JSON is larger than the largest value kept is not compressed: it is only handed, as it is, to identical
queries waiting in the same worker."""

from __future__ import annotations

import zlib

import msgspec

from gateway.frames import DataResponse, encode_frames

VERSION = 1  # of the frames' JSON as encode_frames writes it: a value of another version is a miss


class _Stored(msgspec.Struct, array_like=True):
    version: int
    status: int
    frames: bytes | None  # the JSON array of frames, zlib-compressed when `packed`
    packed: bool


_encoder = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(_Stored).decode


def encode(response: DataResponse, ref_id: str, max_value: int) -> tuple[bytes, bool]:
    """A successful answer of `ref_id` as bytes, and whether they may be kept: its frames' JSON is at most
    `max_value` bytes (then compressed). TypeError, ValueError or OverflowError for values JSON cannot hold."""
    frames = response.frames
    text = None if frames is None else encode_frames(frames, ref_id)
    if text is not None and len(text) > max_value:
        return _encoder.encode(_Stored(VERSION, response.status, text, False)), False
    packed = None if text is None else zlib.compress(text, 1)
    return _encoder.encode(_Stored(VERSION, response.status, packed, True)), True


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
