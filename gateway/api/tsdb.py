"""POST /api/tsdb/query: the legacy query API (removed in Grafana 9), answered in its old shape.

The request is the same MetricRequest (queries usually name their data source by `datasourceId`) and runs
through the same plan and execute as /api/ds/query: resolution, limits, fan-out and errors are shared; only
the answer differs (gateway/legacy.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway.auth import authorize
from gateway.binding import bind
from gateway.keys import cache_key, config_key, metrics_key
from gateway.legacy import convert, encode
from gateway.query import MetricRequest, Resolver, execute, plan


async def query_metrics(request: web.Request) -> web.Response:
    """POST /api/tsdb/query (Grafana's QueryMetrics): 200, or 400 with every result when any query failed."""
    identity = await authorize(request, "datasources:query")
    body = bind(await request.read(), request.content_type, MetricRequest)
    config = request.app[config_key]
    resolver = Resolver(identity.org_id, request.app[cache_key],
                        lambda uid: identity.can("datasources:query", f"datasources:uid:{uid}"))
    work = await plan(body, resolver, config, datetime.now(UTC))
    answer, status = convert(await execute(work, config, metrics=request.app[metrics_key]))
    return web.Response(body=encode(answer), status=status, content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Register the legacy query route."""
    app.router.add_post("/api/tsdb/query", query_metrics)
