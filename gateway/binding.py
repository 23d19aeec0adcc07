"""Request input read as Grafana reads it: JSON bodies into Structs (web.Bind) and path ids (ParseInt)."""

from __future__ import annotations

import functools
import re
from typing import Any, TypeVar

import msgspec

from gateway.errors import BadRequestData, IdInvalid

T = TypeVar("T")

# deepest JSON nesting accepted in a body; Python's decoders recurse, and no Grafana setting nests deeply
MAX_JSON_DEPTH = 100

@functools.cache
def _wire_names(cls: type) -> dict[str, str]:
    return {f.encode_name.lower(): f.encode_name for f in msgspec.structs.fields(cls)}


def decode_json(body: bytes) -> Any:
    """A JSON document no deeper than MAX_JSON_DEPTH, or BadRequestData."""
    if _too_deep(body):
        raise BadRequestData()
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise BadRequestData() from None


def _too_deep(body: bytes) -> bool:
    """True when brackets outside strings nest past MAX_JSON_DEPTH (checked before decoding)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    in_string = escaped = False
    for byte in body.translate(None, _NOT_STRUCTURAL):  # C-speed: keep brackets, quotes and backslashes
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'[]{}"\\')


def bind(body: bytes, content_type: str | None, cls: type[T]) -> T:
    """Decode a request body into `cls` as Grafana's web.Bind does, or raise BadRequestData.

    Keys match case-insensitively, the last duplicate wins, `null` means the zero value, unknown
    keys are ignored, and an empty body is an empty object. Types are strict: "3" is not an int.
    Only the top level is read here: each value the Struct keeps is decoded once, into its own type
    (a `msgspec.Raw` field keeps its JSON as it came).
    """
    if not body.strip():
        return _decode_object({}, cls)
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise BadRequestData()
    if _too_deep(body):
        raise BadRequestData()
    try:
        top = _decode_top(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise BadRequestData() from None
    names = _wire_names(cls)  # type: ignore[arg-type]  # classes are hashable; mypy cannot see it for type[T]
    fields: dict[str, msgspec.Raw] = {}
    for key, value in (top or {}).items():
        name = names.get(key.lower())
        if name is None:
            continue
        if value == _NULL:
            fields.pop(name, None)
        else:
            fields[name] = value
    return _decode_object(fields, cls)


_decode_top = msgspec.json.Decoder(dict[str, msgspec.Raw] | None).decode
_NULL = msgspec.Raw(b"null")


def _decode_object(fields: dict[str, msgspec.Raw], cls: type[T]) -> T:
    """`cls` from the kept top-level values, each one's JSON spliced back under its wire name."""
    parts = [msgspec.json.encode(name) + b":" + bytes(value) for name, value in fields.items()]
    try:
        return msgspec.json.decode(b"{" + b",".join(parts) + b"}", type=cls, strict=True)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise BadRequestData() from None


_GO_INT = re.compile(r"[+-]?[0-9]+")


def parse_id(raw: str, *, trace: bool) -> int:
    """A path id as Grafana parses it (base-10 int64), or 400 "id is invalid"."""
    if not _GO_INT.fullmatch(raw) or not -(2**63) <= (value := int(raw)) < 2**63:
        raise IdInvalid(trace=trace)  # Go's ParseInt takes no spaces, underscores or non-ASCII digits
    return value
