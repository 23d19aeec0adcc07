"""Grafana Enterprise's query and resource caching API: a data source's cache settings, read and written
(`/api/datasources/uid/:uid/cache`, and Grafana's documented `/api/datasources/:uid/cache`)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from aiohttp import web

from gateway.auth import authorize
from gateway.binding import bind
from gateway.cache.settings import CacheSettings
from gateway.datasources.models import DataSource
from gateway.errors import BadRequestData
from gateway.keys import config_key, query_cache_key, store_key
from gateway.responses import json_response

GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)  # what Grafana writes for a time never set


class CacheConfigResponse(msgspec.Struct, kw_only=True):
    """Grafana's CacheConfigResponse (a write puts `message` first)."""

    data_source_id: int = msgspec.field(name="dataSourceID")
    data_source_uid: str = msgspec.field(name="dataSourceUID")
    enabled: bool = msgspec.field(default=False)
    ttl_queries_ms: int = msgspec.field(default=0, name="ttlQueriesMs")
    ttl_resources_ms: int = msgspec.field(default=0, name="ttlResourcesMs")
    use_default_ttl: bool = msgspec.field(default=False, name="useDefaultTTL")
    default_ttl_ms: int = msgspec.field(default=0, name="defaultTTLMs")
    created: datetime = GO_ZERO_TIME
    updated: datetime = GO_ZERO_TIME


class CacheConfigSetter(msgspec.Struct, kw_only=True):
    """The body of POST .../cache (Grafana's CacheConfigSetter; the data source comes from the path)."""

    enabled: bool = False
    use_default_ttl: bool = msgspec.field(default=False, name="useDefaultTTL")
    ttl_queries_ms: int = msgspec.field(default=0, name="ttlQueriesMs")
    ttl_resources_ms: int = msgspec.field(default=0, name="ttlResourcesMs")


async def _data_source(request: web.Request, action: str) -> tuple[int, DataSource]:
    uid = request.match_info["uid"]
    identity = await authorize(request, action, f"datasources:uid:{uid}")
    return identity.org_id, await request.app[store_key].get_data_source(identity.org_id, uid=uid)


def _view(request: web.Request, ds: DataSource, settings: CacheSettings, message: str = "") -> web.Response:
    default_ms = int(request.app[config_key].caching.ttl * 1000)
    view = msgspec.to_builtins(CacheConfigResponse(
        data_source_id=ds.id, data_source_uid=ds.uid, enabled=settings.enabled,
        ttl_queries_ms=settings.ttl_queries_ms or default_ms, ttl_resources_ms=settings.ttl_resources_ms or default_ms,
        use_default_ttl=settings.use_default_ttl, default_ttl_ms=default_ms,
        created=settings.created or GO_ZERO_TIME, updated=settings.updated or GO_ZERO_TIME))
    return json_response({"message": message, **view} if message else view)


async def get_data_source_cache(request: web.Request) -> web.Response:
    """GET .../cache: the data source's cache settings (datasources.caching:read)."""
    org_id, ds = await _data_source(request, "datasources.caching:read")
    return _view(request, ds, await request.app[query_cache_key].settings.get(org_id, ds.uid))


async def set_data_source_cache(request: web.Request) -> web.Response:
    """POST .../cache: replace the data source's cache settings (datasources.caching:write)."""
    org_id, ds = await _data_source(request, "datasources.caching:write")
    body = bind(await request.read(), request.content_type, CacheConfigSetter)
    if body.ttl_queries_ms < 0 or body.ttl_resources_ms < 0:
        raise BadRequestData()
    settings = await request.app[query_cache_key].settings.put(
        org_id, ds.uid, body.enabled, body.use_default_ttl, body.ttl_queries_ms, body.ttl_resources_ms)
    return _view(request, ds, settings, "Data source cache updated")


async def _switch(request: web.Request, enabled: bool) -> web.Response:
    org_id, ds = await _data_source(request, "datasources.caching:write")
    cache = request.app[query_cache_key]
    current = await cache.settings.get(org_id, ds.uid)
    settings = await cache.settings.put(org_id, ds.uid, enabled, current.use_default_ttl, current.ttl_queries_ms,
                                        current.ttl_resources_ms)
    return _view(request, ds, settings, f"Data source cache {'enabled' if enabled else 'disabled'}")


async def enable_data_source_cache(request: web.Request) -> web.Response:
    """POST .../cache/enable."""
    return await _switch(request, True)


async def disable_data_source_cache(request: web.Request) -> web.Response:
    """POST .../cache/disable."""
    return await _switch(request, False)


async def clean_data_source_cache(request: web.Request) -> web.Response:
    """POST .../cache/clean: forget every cached answer of the org (Grafana cleans every data source, so it asks
    for datasources.caching:write on datasources:*); answers the named data source's settings."""
    identity = await authorize(request, "datasources.caching:write", "datasources:*")
    org_id = identity.org_id
    ds = await request.app[store_key].get_data_source(org_id, uid=request.match_info["uid"])
    cache = request.app[query_cache_key]
    await cache.clean(org_id)
    return _view(request, ds, await cache.settings.get(org_id, ds.uid), "Data source cache cleaned")


def add_routes(app: web.Application) -> None:
    """Register the cache routes under both path forms."""
    for base in ("/api/datasources/uid/{uid}/cache", "/api/datasources/{uid}/cache"):
        app.router.add_get(base, get_data_source_cache)
        app.router.add_post(base, set_data_source_cache)
        app.router.add_post(base + "/enable", enable_data_source_cache)
        app.router.add_post(base + "/disable", disable_data_source_cache)
        app.router.add_post(base + "/clean", clean_data_source_cache)
