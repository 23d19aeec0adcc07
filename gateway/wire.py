"""What every response looks like on the wire: the one JSON encoder, and Grafana's default headers."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

# Go marshals maps with sorted keys and structs in declaration order; "deterministic" does the same.
_encoder = msgspec.json.Encoder(order="deterministic")


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON response with Grafana's content type."""
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")


_PROXY_PREFIX = "/api/datasources/proxy/"
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "deny"),
                     ("X-XSS-Protection", "1; mode=block"))


async def default_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Grafana's AddDefaultResponseHeaders (spec-proxy §1.6), as an on_response_prepare hook.

    The security headers on every response. `Cache-Control: no-store` (and no Pragma or Expires) on all
    but the proxy's, which keep the upstream's caching headers, and a resource answer that asked to be
    cached (a private Cache-Control with X-Grafana-Cache).
    """
    headers = response.headers
    headers.update(SECURITY_HEADERS)
    path = request.path
    if path.startswith(_PROXY_PREFIX):
        return
    cache_control = headers.get("Cache-Control", "")
    if not (headers.get("X-Grafana-Cache") and "private" in cache_control and "public" not in cache_control
            and "/resources" in path):
        headers["Cache-Control"] = "no-store"
        headers.popall("Pragma", None)
        headers.popall("Expires", None)
