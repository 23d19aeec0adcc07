"""POST /api/ds/query: many queries to many data sources, answered as Grafana's data frames."""

from __future__ import annotations

import logging
import zlib
from datetime import UTC, datetime

from aiohttp import web

from gateway.auth import authorize
from gateway.binding import bind
from gateway.cache.service import skipped
from gateway.frames import DataResponse, encode_msgpack, json_chunks
from gateway.http.headers import qualities
from gateway.keys import cache_key, config_key, metrics_key, query_cache_key
from gateway.query import MetricRequest, Resolver, execute, failed, plan

MULTI_STATUS_TOGGLE = "datasourceQueryMultiStatus"
log = logging.getLogger("gateway")

WRITE_SIZE = 64 << 10  # bytes gathered before a write: few syscalls, never the whole body in memory
GZIP_AFTER = 16 << 10  # bodies smaller than this go out uncompressed


async def query_metrics_v2(request: web.Request) -> web.StreamResponse:
    """POST /api/ds/query (Grafana's QueryMetricsV2): 200 when every query succeeded, else 400 with every
    result (207 with the datasourceQueryMultiStatus toggle)."""
    identity = await authorize(request, "datasources:query")
    body = bind(await request.read(), request.content_type, MetricRequest)
    config = request.app[config_key]
    resolver = Resolver(identity.org_id, request.app[cache_key],
                        lambda uid: identity.can("datasources:query", f"datasources:uid:{uid}"))
    work = await plan(body, resolver, config, datetime.now(UTC))
    cache = request.app[query_cache_key].request(skip=skipped(request.headers.get("X-Cache-Skip")))
    results = await execute(work, config, cache, request.app[metrics_key])
    status = 200
    if failed(results):
        status = 207 if MULTI_STATUS_TOGGLE in config.feature_toggles.enable else 400
    header = cache.header
    return await write_results(request, results, status, {"X-Cache": header} if header else None)


async def write_results(request: web.Request, results: dict[str, DataResponse], status: int,
                        headers: dict[str, str] | None = None) -> web.StreamResponse:
    """The QueryDataResponse: MessagePack when the client prefers it to JSON, else JSON written frame by frame,
    gzipped when the client accepts gzip and the body is not small.

    The negotiation happens before prepare(). A large body is encoded while it is written, so that it is never
    held whole; should encoding fail past the status line, the connection is cut, so the client sees a broken
    answer, never a complete-looking one."""
    headers = {"Vary": "Accept, Accept-Encoding", **(headers or {})}
    accept = qualities(request.headers.get("Accept", ""))
    msgpack = accept.get("application/msgpack", 0.0)
    json_q = next((accept[name] for name in ("application/json", "application/*", "*/*") if name in accept), 0.0)
    encodings = qualities(request.headers.get("Accept-Encoding", ""))
    gzip = encodings.get("gzip", encodings.get("*", 0.0)) > 0
    if msgpack > json_q:  # only when asked for by name, and preferred to JSON
        return _whole(encode_msgpack(results), status, "application/msgpack", headers, gzip)
    chunks = json_chunks(results)
    first: list[bytes] = []
    size = 0
    for chunk in chunks:  # bodies up to one write are known whole before anything is sent
        first.append(chunk)
        size += len(chunk)
        if size > WRITE_SIZE:
            break
    else:
        return _whole(b"".join(first), status, "application/json", headers, gzip)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = "application/json"
    if gzip:
        response.headers["Content-Encoding"] = "gzip"
    await response.prepare(request)
    packer = zlib.compressobj(1, zlib.DEFLATED, 31) if gzip else None
    pending: list[bytes] = first
    pending_size = size

    async def flush() -> None:
        nonlocal pending, pending_size
        data = b"".join(pending)
        pending, pending_size = [], 0
        if packer is not None:
            data = packer.compress(data)
        if data:
            await response.write(data)

    try:
        for chunk in chunks:
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= WRITE_SIZE:
                await flush()
    except ConnectionResetError:
        raise  # the client left: nothing to tell it
    except Exception:
        # the status line is out: end the connection, so the client sees a cut answer, not a short 200
        log.exception("query response: encoding failed after %d bytes", response.body_length)
        if request.transport is not None:
            request.transport.abort()
        return response
    await flush()
    if packer is not None:
        await response.write(packer.flush())
    await response.write_eof()
    return response


def _whole(body: bytes, status: int, content_type: str, headers: dict[str, str], gzip: bool) -> web.Response:
    """A body known whole, gzipped when the client accepts gzip and it is not small."""
    if gzip and len(body) > GZIP_AFTER:
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)
        body = packer.compress(body) + packer.flush()
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, status=status, content_type=content_type, headers=headers)


def add_routes(app: web.Application) -> None:
    """Register the query route."""
    app.router.add_post("/api/ds/query", query_metrics_v2)
