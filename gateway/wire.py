"""JSON on the wire: the one encoder every response goes through."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

# Go marshals maps with sorted keys and structs in declaration order; "deterministic" does the same.
_encoder = msgspec.json.Encoder(order="deterministic")


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON response with Grafana's content type."""
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")
