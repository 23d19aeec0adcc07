"""A query's answer as the cache keeps it, and back: its status and its frames as the JSON the response
writes (encode_frames), compressed with zlib (level 1: a time series' JSON shrinks several times over, to
less than its MessagePack).

A hit is then a decompression and a copy into the response: its frames are decoded into objects only when
something reads them (an expression, a MessagePack or legacy answer); the bytes are not re-encoded."""

from __future__ import annotations

import zlib

import msgspec

from gateway.frames import DataResponse, encode_frames


class _Stored(msgspec.Struct, array_like=True):
    status: int
    frames: bytes | None  # zlib of the JSON array of frames


_encoder = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(_Stored).decode
EXPANSION = 64  # the most a kept value is let expand when read, over the largest value kept


def encode(response: DataResponse, ref_id: str) -> bytes:
    """A successful answer of `ref_id` as bytes (TypeError, ValueError or OverflowError for values JSON
    cannot hold)."""
    frames = response.frames
    packed = None if frames is None else zlib.compress(encode_frames(frames, ref_id), 1)
    return _encoder.encode(_Stored(response.status, packed))


def decode(data: bytes, max_value: int) -> DataResponse:
    """A fresh answer for one request, its frames still encoded; ValueError for bytes this version did not
    write, or frames that would expand past EXPANSION x `max_value` bytes."""
    stored = _decode(data)
    if stored.frames is None:
        return DataResponse(status=stored.status)
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(stored.frames, EXPANSION * max_value)
    except zlib.error as error:
        raise ValueError(f"unreadable cached frames: {error}") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("cached frames past the size limit, or cut short")
    return DataResponse(status=stored.status, encoded=text)
