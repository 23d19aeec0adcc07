"""Each data source's plugin calls: health (/health) and resources (/resources/*), answered by its backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web
from multidict import CIMultiDict

from gateway.auth import Identity, authorize, queryable
from gateway.backends.base import Context, NotImplementedByBackend, ResourceRequest
from gateway.binding import parse_id
from gateway.cache.service import skipped
from gateway.errors import (
    DataSourceNotFoundTraced,
    InvalidDataSourceURL,
    MethodNotAllowed,
    MethodNotImplemented,
    PluginNotRegistered,
    TLSConfigError,
    translate,
)
from gateway.http.client import clean_path
from gateway.http.headers import relayable_headers
from gateway.keys import config_key, metrics_key, query_cache_key
from gateway.responses import json_response

RESOURCE_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")
T = TypeVar("T")


async def _observed(request: web.Request, ctx: Context, endpoint: str, call: Awaitable[T]) -> T:
    """Await a backend plugin call, reported as Grafana reports plugin requests: an exception is an error
    (from downstream when it is the data source's 502 or 504, or a timeout), as is a resource answer >= 500."""
    metrics = request.app[metrics_key]
    if not metrics.enabled:
        return await call
    plugin = ctx.backend.plugin
    plugin_id = plugin.id if plugin is not None else ctx.ds.type
    started = time.perf_counter()
    status, downstream = "ok", False
    try:
        answer = await call
        if getattr(answer, "status", 0) in range(500, 600) and endpoint == "callResource":
            status, downstream = "error", True
        return answer
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    except Exception as error:
        known = translate(error)
        status = "error"
        downstream = isinstance(error, TimeoutError) or (known is not None and known.status in (502, 504))
        raise
    finally:
        metrics.plugin(ctx.ds, plugin_id, endpoint, status, downstream, time.perf_counter() - started)


async def _resolve(request: web.Request, *, id_trace: bool = True) -> tuple[Identity, Context]:
    """The caller and the data source it may query (by :id or uid/:uid), whose type has a backend plugin."""
    identity = await authorize(request, "datasources:query")
    if "uid" in request.match_info:
        reference = f"uid/{request.match_info['uid']}"
    else:
        reference = str(parse_id(request.match_info["id"], trace=id_trace))
    ctx = await queryable(request, identity, reference, DataSourceNotFoundTraced)
    if not ctx.backend.served:
        raise PluginNotRegistered()
    return identity, ctx


async def check_datasource_health(request: web.Request) -> web.Response:
    """ANY /api/datasources/(:id|uid/:uid)/health: 200 when OK, 400 with the same shape otherwise."""
    identity, ctx = await _resolve(request)
    timeout = request.app[config_key].dataproxy.timeout
    try:
        async with asyncio.timeout(timeout):
            check = ctx.backend.check_health(ctx, identity.role == "Admin")
            result = await _observed(request, ctx, "checkHealth", check)
    except NotImplementedByBackend:
        raise MethodNotImplemented() from None
    except (InvalidDataSourceURL, TLSConfigError) as error:
        return json_response({"message": error.message, "status": "ERROR"}, status=400)
    except TimeoutError:
        return json_response({"message": f"Health check timed out after {timeout:g}s", "status": "ERROR"},
                             status=400)
    return json_response(result, status=200 if result.status == "OK" else 400)


async def call_datasource_resource(request: web.Request) -> web.Response:
    """ANY /api/datasources/(:id|uid/:uid)/resources/*: the type's backend answers (buffered, bounded)."""
    identity, ctx = await _resolve(request, id_trace=False)  # JsonApiErr without an error: no traceID
    if request.method not in RESOURCE_METHODS:
        raise MethodNotAllowed(", ".join(RESOURCE_METHODS))
    resource = ResourceRequest(
        method=request.method, path=clean_path(request.match_info.get("rest", "")),
        query=request.raw_path.partition("?")[2],  # as the client sent it, not yarl's re-encoding
        headers=tuple(request.headers.items()), body=await request.read(), role=identity.role,
    )
    try:
        answer, cached = await request.app[query_cache_key].resource(
            ctx, resource, skipped(request.headers.get("X-Cache-Skip")),
            lambda: _observed(request, ctx, "callResource", ctx.backend.call_resource(ctx, resource)))
    except NotImplementedByBackend:
        raise MethodNotImplemented() from None
    # as Grafana's plugin client sends a plugin's answer on (spec-proxy §4.3)
    headers = CIMultiDict(relayable_headers(answer.headers))
    headers.popall("User-Agent", None)
    if "Content-Type" not in headers and answer.status != 204:
        headers["Content-Type"] = "application/json"
    headers["Content-Security-Policy"] = "sandbox"
    if cached is not None:
        headers["X-Cache"] = cached
    # Cache-Control: no-store comes from responses.default_headers, which spares answers asking to be cached
    return web.Response(status=answer.status, body=answer.body, headers=headers)


def add_routes(app: web.Application) -> None:
    """Register the per-data-source health and resources routes."""
    for prefix in ("/api/datasources/uid/{uid}", "/api/datasources/{id}"):
        app.router.add_route("*", f"{prefix}/health", check_datasource_health)
        app.router.add_route("*", f"{prefix}/resources", call_datasource_resource)
        app.router.add_route("*", f"{prefix}/resources/{{rest:.*}}", call_datasource_resource)
