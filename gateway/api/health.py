"""/api/health, /api/frontend/settings, and each data source's health and resources calls."""

from __future__ import annotations

import asyncio

from aiohttp import web
from multidict import CIMultiDict

from gateway.api.datasources import authorize, parse_id, query_entry
from gateway.auth import Identity
from gateway.backends import Backend, NotImplementedByBackend, ResourceRequest, backend_for
from gateway.cache import Entry
from gateway.errors import GatewayError
from gateway.keys import config_key, db_key, draining_key
from gateway.proxy import UpstreamTimedOut, UpstreamUnavailable, relayable_headers
from gateway.transport import InvalidDataSourceURL, TLSConfigError, clean_path
from gateway.upstream import UpstreamError, UpstreamTimeout
from gateway.wire import json_response

RESOURCE_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


class PluginNotRegistered(GatewayError):
    status, message, message_id = 404, "Plugin not registered", "plugin.notRegistered"


class MethodNotImplemented(GatewayError):
    status, message, message_id = 404, "Method not implemented", "plugin.notImplemented"

COMMIT = "gateway"


async def get_health(request: web.Request) -> web.Response:
    """Grafana's health body; 503 while Postgres does not answer ("database": "failing") or the worker drains."""
    version = request.app[config_key].gateway.grafana_version
    ok = await request.app[db_key].ping()
    body = {"commit": COMMIT, "database": "ok" if ok else "failing", "version": version}
    # from SIGTERM on, a readiness probe takes the pod out of rotation while it still serves
    ready = ok and not request.app[draining_key].is_set()
    return json_response(body, status=200 if ready else 503)


async def get_frontend_settings(request: web.Request) -> web.Response:
    """The part of Grafana's frontend settings API clients read: buildInfo.version gates their features."""
    version = request.app[config_key].gateway.grafana_version
    return json_response({
        "appSubUrl": "",
        "buildInfo": {
            "buildstamp": 0, "commit": COMMIT, "edition": "Open Source", "env": "production",
            "hideVersion": False, "latestVersion": "", "version": version,
            "versionString": f"gateway (Grafana {version})",
        },
        "featureToggles": {},
    })


async def _backend(request: web.Request, *, id_trace: bool = True) -> tuple[Identity, Entry, Backend]:
    """The caller, the data source it may query (by :id or uid/:uid) and its type's backend."""
    identity = await authorize(request, "datasources:query")
    if "uid" in request.match_info:
        reference = f"uid/{request.match_info['uid']}"
    else:
        reference = str(parse_id(request.match_info["id"], trace=id_trace))
    entry = await query_entry(request, identity, reference, not_found="Data source not found")
    backend = backend_for(entry.ds.type)
    if backend is None:
        raise PluginNotRegistered()
    return identity, entry, backend


async def check_datasource_health(request: web.Request) -> web.Response:
    """ANY /api/datasources/(:id|uid/:uid)/health: 200 when OK, 400 with the same shape otherwise."""
    identity, entry, backend = await _backend(request)
    timeout = request.app[config_key].dataproxy.timeout
    try:
        async with asyncio.timeout(timeout):
            result = await backend.check_health(entry.ds, entry.secrets, entry.transport, identity.role == "Admin")
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
    _, entry, backend = await _backend(request, id_trace=False)  # JsonApiErr without an error: no traceID
    if request.method not in RESOURCE_METHODS:
        raise GatewayError("Method not allowed", status=405, headers={"Allow": ", ".join(RESOURCE_METHODS)})
    resource = ResourceRequest(
        method=request.method, path=clean_path(request.match_info.get("rest", "")),
        query=request.raw_path.partition("?")[2],  # as the client sent it, not yarl's re-encoding
        headers=tuple(request.headers.items()), body=await request.read(),
    )
    try:
        answer = await backend.call_resource(entry.ds, entry.secrets, entry.transport, resource)
    except NotImplementedByBackend:
        raise MethodNotImplemented() from None
    except UpstreamTimeout:
        raise UpstreamTimedOut() from None
    except UpstreamError:
        raise UpstreamUnavailable() from None
    # as Grafana's plugin client sends a plugin's answer on (spec-proxy §4.3)
    headers = CIMultiDict(relayable_headers(answer.headers))
    headers.popall("User-Agent", None)
    if "Content-Type" not in headers and answer.status != 204:
        headers["Content-Type"] = "application/json"
    headers["Content-Security-Policy"] = "sandbox"
    response = web.Response(status=answer.status, body=answer.body, headers=headers)
    # Cache-Control: no-store comes from wire.default_headers, which spares answers asking to be cached
    return response


def add_routes(app: web.Application) -> None:
    """Register the health, settings, and per-data-source health and resources routes."""
    app.router.add_get("/api/health", get_health)
    app.router.add_get("/api/frontend/settings", get_frontend_settings)
    for prefix in ("/api/datasources/uid/{uid}", "/api/datasources/{id}"):
        app.router.add_route("*", f"{prefix}/health", check_datasource_health)
        app.router.add_route("*", f"{prefix}/resources", call_datasource_resource)
        app.router.add_route("*", f"{prefix}/resources/{{rest:.*}}", call_datasource_resource)
