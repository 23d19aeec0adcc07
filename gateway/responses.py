"""How gateway writes every response: the one JSON encoder, errors rendered as Grafana renders them (the
error middleware, the only place that does so), and Grafana's default headers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from gateway.errors import GatewayError, NotFound, RequestBodyTooLarge, translate

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Go marshals maps with sorted keys and structs in declaration order; "deterministic" does the same.
_encoder = msgspec.json.Encoder(order="deterministic")


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON response with Grafana's content type."""
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")


def error_response(error: GatewayError) -> web.Response:
    """The response Grafana writes for `error`."""
    response = json_response(error.body(), status=error.status)
    if error.headers:
        response.headers.update(error.headers)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into Grafana's JSON error body; anything unexpected is a logged 500 without internals."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        if error.status == 404:
            return error_response(NotFound())
        if error.status == 413:
            return error_response(RequestBodyTooLarge())
        allow = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return error_response(GatewayError(error.reason, status=error.status, headers=allow))
    except ConnectionResetError:
        raise
    except Exception as error:
        known = translate(error)
        if known is not None:
            return error_response(known)
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return error_response(GatewayError())


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
