"""The admin page (/admin): the org's data sources with a live health badge, and a query form whose answer is
drawn as a table and a line chart. Server-rendered (aiohttp-jinja2, autoescaped), no JavaScript."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
import msgspec
from aiohttp import web

from gateway.auth import Identity, authorize
from gateway.backends.base import Context, NotImplementedByBackend
from gateway.backends.registry import plugin_for
from gateway.chart import FIRST_MS, LAST_MS, line_chart
from gateway.datasources.models import DataSource
from gateway.errors import DataSourceNotFound, GatewayError, translate
from gateway.frames import DataResponse, Frame
from gateway.keys import cache_key, config_key, metrics_key, store_key
from gateway.query import MetricRequest, Resolver, execute, plan

log = logging.getLogger("gateway.admin")

HEALTH_TIMEOUT = 3.0  # seconds one badge may take; the page never waits longer for all of them
HEALTH_CONCURRENCY = 16
MAX_LISTED = 200  # data sources on the page (with badges)
MAX_ROWS = 100  # table rows shown per frame
MAX_TABLES = 20  # frames shown as tables per refId (the chart draws at most 20 lines too)
MAX_QUERY_TEXT = 64 << 10
CHART_WIDTH = 760


async def admin_page(request: web.Request) -> web.Response:
    """GET /admin: the org's data sources (type, URL, flags, health, traffic) and the query form."""
    identity = await authorize(request, "datasources:read")
    sources = await _sources(request, identity)
    form = {"from": "now-1h", "to": "now", "uid": sources[0].uid if sources else "", "query": "",
            "format": "time_series"}
    return await _page(request, identity, sources, form)


async def admin_query(request: web.Request) -> web.Response:
    """POST /admin/query: the form's query run as /api/ds/query runs it, shown as tables and a chart."""
    identity = await authorize(request, "datasources:read")
    try:
        form = await request.post()
    except ValueError:  # aiohttp's own: bytes that are not UTF-8, a multipart body without boundary or names
        raise GatewayError("the form could not be read", status=400) from None
    if not hmac.compare_digest(str(form.get("csrf", "")), csrf_token(request, identity)):
        raise GatewayError("invalid or missing CSRF token: reload the page", status=403)
    if any(not isinstance(value, str) for value in form.values()):
        raise GatewayError("the form takes text fields only", status=400)
    values = {key: str(form.get(key, "")) for key in ("uid", "query", "from", "to", "format")}
    if len(values["query"]) > MAX_QUERY_TEXT:
        raise GatewayError("the query is too long", status=400)
    sources = await _sources(request, identity)
    ds = next((source for source in sources if source.uid == values["uid"]), None)
    if ds is None and values["uid"]:  # past the listed ones (MAX_LISTED), any the caller may read
        try:
            found = await request.app[store_key].get_data_source(identity.org_id, uid=values["uid"])
        except DataSourceNotFound:
            found = None
        if found is not None and identity.can("datasources:read", f"datasources:uid:{found.uid}"):
            ds = found
    if ds is None:
        return await _page(request, identity, sources, values, error="Choose a data source of this list.")
    model = _model(ds, values["query"], values["format"])
    if model is None:
        return await _page(request, identity, sources, values,
                           error="For this type, write the query model as a JSON object.")
    body = MetricRequest(from_=values["from"], to=values["to"], queries=[msgspec.Raw(msgspec.json.encode(
        {**model, "refId": "A", "datasource": {"uid": ds.uid}, "maxDataPoints": CHART_WIDTH}))])
    config = request.app[config_key]
    resolver = Resolver(identity.org_id, request.app[cache_key],
                        lambda uid: identity.can("datasources:query", f"datasources:uid:{uid}"))
    try:
        results = await execute(await plan(body, resolver, config, datetime.now(UTC)), config,
                                metrics=request.app[metrics_key])
    except GatewayError as error:  # the request's own errors (a bad time range, no permission to query)
        return await _page(request, identity, sources, values, error=error.message, status=error.status)
    shown = [_shown(ref_id, response) for ref_id, response in sorted(results.items())]
    return await _page(request, identity, sources, values, results=shown)


async def _page(request: web.Request, identity: Identity, sources: list[DataSource], form: dict[str, str], *,
                error: str = "", results: list[dict[str, Any]] | None = None, status: int = 200) -> web.Response:
    """The page: the data source table (with live health) above the form and what it ran."""
    return aiohttp_jinja2.render_template("admin.html", request, {
        "identity": identity, "sources": sources, "health": await _health(request, identity, sources),
        "stats": await request.app[metrics_key].datasource_stats(identity.org_id),
        "csrf": csrf_token(request, identity), "form": form, "error": error, "results": results or [],
        "version": request.app[config_key].gateway.grafana_version, "max_listed": MAX_LISTED,
    }, status=400 if error and status == 200 else status)


def csrf_token(request: web.Request, identity: Identity) -> str:
    """A token only this caller's page carries: an HMAC of who they are under the server's secret key."""
    key = hashlib.sha256(b"gateway admin csrf\0" + request.app[config_key].security.secret_key.encode()).digest()
    who = f"{identity.kind}:{identity.id}:{identity.org_id}:{identity.login}".encode()
    return hmac.new(key, who, hashlib.sha256).hexdigest()


async def _sources(request: web.Request, identity: Identity) -> list[DataSource]:
    rows = await request.app[store_key].list_data_sources(identity.org_id, MAX_LISTED)
    rows = [ds for ds in rows if identity.can("datasources:read", f"datasources:uid:{ds.uid}")]
    return sorted(rows, key=lambda ds: ds.name.lower())[:MAX_LISTED]


async def _health(request: web.Request, identity: Identity,
                  sources: list[DataSource]) -> dict[str, tuple[str, str]]:
    """(status, message) per uid: OK, ERROR, or NONE for a type without a health check or a data source the
    caller may not query (the API's health check needs datasources:query too); all at once, bounded."""
    cache = request.app[cache_key]
    limit = asyncio.Semaphore(HEALTH_CONCURRENCY)

    async def one(ds: DataSource) -> tuple[str, tuple[str, str]]:
        if not identity.can("datasources:query", f"datasources:uid:{ds.uid}"):
            return ds.uid, ("NONE", "no permission to query this data source")
        async with limit:
            try:
                ctx: Context = await cache.get(ds.org_id, uid=ds.uid)
                async with asyncio.timeout(HEALTH_TIMEOUT):
                    result = await ctx.backend.check_health(ctx, True)
            except TimeoutError:
                return ds.uid, ("ERROR", f"no answer within {HEALTH_TIMEOUT:g}s")
            except NotImplementedByBackend:
                return ds.uid, ("NONE", "no health check for this type")
            except Exception as error:  # the badge shows why, as /health would answer it
                known = translate(error)
                if known is None:
                    log.exception("health check of data source %s failed", ds.uid)
                return ds.uid, ("ERROR", known.message if known is not None else "the health check failed")
            return ds.uid, (result.status, result.message)

    return dict(await asyncio.gather(*(one(ds) for ds in sources)))


def _model(ds: DataSource, text: str, table_format: str) -> dict[str, Any] | None:
    """The query model the text means for the data source's type; None when it must be JSON and is not."""
    plugin = plugin_for(ds.type)
    kind = plugin.id if plugin is not None else ds.type
    if kind in ("prometheus", "loki"):
        return {"expr": text, "range": True, "queryType": "range"}
    if kind in ("grafana-postgresql-datasource", "mysql"):
        return {"rawSql": text, "format": "table" if table_format == "table" else "time_series"}
    if kind == "grafana-testdata-datasource" and not text.lstrip().startswith("{"):
        return {"scenarioId": text.strip() or "random_walk"}
    try:
        model = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    return model if isinstance(model, dict) else None


def _shown(ref_id: str, response: DataResponse) -> dict[str, Any]:
    frames = response.frames or []
    return {
        "ref_id": ref_id, "error": response.error, "status": response.status,
        "chart": line_chart(frames, CHART_WIDTH),
        "tables": [_table(frame) for frame in frames[:MAX_TABLES]],
        "hidden_tables": max(len(frames) - MAX_TABLES, 0),
    }


def _table(frame: Frame) -> dict[str, Any]:
    """A frame's first MAX_ROWS rows as text cells (times as UTC), with its size."""
    columns = [field.name + ("{" + ", ".join(f"{k}={v}" for k, v in sorted(field.labels.items())) + "}"
                             if field.labels else "") for field in frame.fields]
    length = max((len(field.values) for field in frame.fields), default=0)
    rows = [[_cell(field.item_type, field.values[row] if row < len(field.values) else None) for field in frame.fields]
            for row in range(min(length, MAX_ROWS))]
    notices = [notice.text for notice in (frame.meta.notices or [])] if frame.meta is not None else []
    return {"name": frame.name, "columns": columns, "rows": rows, "length": length, "notices": notices}


def _cell(field_type: str, value: Any) -> str:
    if value is None:
        return "null"
    if field_type == "time.Time" and isinstance(value, int | float) and FIRST_MS <= value <= LAST_MS:
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= 200 else text[:200] + "…"


def add_routes(app: web.Application) -> None:
    """The admin page's routes and its templates (autoescaped)."""
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("gateway", "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined)
    app.router.add_get("/admin", admin_page)
    app.router.add_post("/admin/query", admin_query)
