"""create_app(config): the one place that wires keys, resources, middlewares and routes."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType

from aiohttp import web

from gateway.accounts import AccountStore
from gateway.api import accounts as accounts_api
from gateway.api import admin as admin_api
from gateway.api import cache as cache_api
from gateway.api import datasources as datasources_api
from gateway.api import metrics as metrics_api
from gateway.api import plugins as plugins_api
from gateway.api import provisioning as provisioning_api
from gateway.api import proxy as proxy_api
from gateway.api import query as query_api
from gateway.api import system as system_api
from gateway.api import tsdb as tsdb_api
from gateway.auth import Authenticator, auth_middleware
from gateway.cache.service import QueryCache
from gateway.cache.settings import SettingsStore
from gateway.cache.store import CacheStats, open_store
from gateway.config import Config
from gateway.crypto import SecretBox
from gateway.datasources.cache import DataSourceCache
from gateway.datasources.service import DataSourceService
from gateway.datasources.store import DataSourceStore
from gateway.db import Database, create_pool, wait_for_database
from gateway.http.client import Clients
from gateway.keys import (
    accounts_key,
    authenticator_key,
    box_key,
    cache_key,
    clients_key,
    config_key,
    db_key,
    draining_key,
    metrics_key,
    peers_key,
    provisioner_key,
    query_cache_key,
    service_key,
    store_key,
)
from gateway.metrics import Metrics, cache_state, metrics_middleware, request_id_header, worker_state
from gateway.provisioning import Provisioner
from gateway.responses import default_headers, error_middleware
from gateway.sql import MIGRATION_LOCK, load_queries, migrate


def provisioner(config: Config, store: DataSourceStore, box: SecretBox) -> Provisioner:
    """The data source provisioner of `[paths] provisioning`, interpolating from this process's environment."""
    return Provisioner(store, box, config.paths.provisioning, config.security.secret_key, os.environ,
                       MIGRATION_LOCK)


async def open_database(config: Config, *, provision: bool = True) -> tuple[Database, SecretBox]:
    """Wait for the database ([database] wait_timeout), then apply migrations, unwrap the data keys and (unless
    another replica already did) apply the provisioning files, under one advisory lock across replicas."""
    await wait_for_database(config.database, config.database.url)
    pool = await create_pool(config.database, config.database.url)
    db = Database(pool, load_queries())
    try:
        async with db.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await migrate(conn)
                box = await SecretBox.load(conn, db.queries, config.security.secret_key)
                if provision:
                    await provisioner(config, DataSourceStore(db), box).start(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    except BaseException:
        await db.close()
        raise
    return db, box


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    """The app's metrics, answering sibling workers' scrapes when there are any (first in, last out)."""
    app[metrics_key] = metrics = Metrics(app[config_key], app.get(peers_key))
    await metrics.start()
    try:
        yield
    finally:
        await metrics.stop()


async def _database(app: web.Application, provision: bool = True) -> AsyncIterator[None]:
    """gateway's own Postgres (migrated), the unwrapped data keys, and the stores on top of them."""
    db, box = await open_database(app[config_key], provision=provision)
    app[db_key] = db
    app[box_key] = box
    app[store_key] = store = DataSourceStore(db)
    app[service_key] = DataSourceService(store, box)
    app[provisioner_key] = provisioner(app[config_key], store, box)
    app[accounts_key] = accounts = AccountStore(db)
    app[authenticator_key] = Authenticator(app[config_key], accounts)
    try:
        yield
    finally:
        await db.close()


async def _clients(app: web.Application) -> AsyncIterator[None]:
    """What every data source client of this worker shares (closed after the cache closed its clients)."""
    app[clients_key] = clients = Clients(app[config_key])
    if app[metrics_key].enabled:
        clients.observer = app[metrics_key]
    try:
        yield
    finally:
        await clients.close()


async def _cache(app: web.Application) -> AsyncIterator[None]:
    """The data source cache, listening for changes from every replica."""
    app[cache_key] = cache = DataSourceCache(app[store_key], app[box_key], app[clients_key])
    db_pool = app[db_key].pool
    app[metrics_key].sources.append(lambda: worker_state(
        cache.hits, cache.misses,
        (client.pool for context in cache.contexts() if (client := context.opened_http) and client.pool), db_pool))
    await cache.start(app[config_key].database.url)
    try:
        yield
    finally:
        await cache.stop()


async def _query_cache(app: web.Application) -> AsyncIterator[None]:
    """The query result cache ([caching]): its store, the data sources' cache settings, its counters."""
    config = app[config_key]
    stats = CacheStats()
    store = open_store(config, stats)
    settings = SettingsStore(app[db_key], config.caching.enabled_by_default)
    app[query_cache_key] = cache = QueryCache(config, store, settings, stats)
    app[metrics_key].sources.append(lambda: cache_state(stats))
    try:
        yield
    finally:
        await cache.close()


# how every server of the app runs it (python -m gateway and the tests alike): a client that leaves cancels
# its handler; request bodies are never decompressed (the proxy streams them as sent, and Grafana's JSON
# API reads no compressed body either)
SERVER_OPTIONS: Mapping[str, bool] = MappingProxyType({"handler_cancellation": True, "auto_decompress": False})


def create_app(config: Config, *, provision: bool = True) -> web.Application:
    """The gateway application for `config` ([database] url must be set). With `provision` its start applies
    the provisioning files (unless a replica applied the same ones); `serve` applies them once before its
    workers start, so that a worker started later, in place of one that died, never refuses to start over a
    file edited since (the files are then applied on reload only)."""
    app = web.Application(
        client_max_size=config.gateway.max_body_bytes,
        middlewares=[metrics_middleware, error_middleware, auth_middleware],
    )
    app[config_key] = config
    app[draining_key] = asyncio.Event()
    app.on_response_prepare.append(default_headers)
    app.on_response_prepare.append(request_id_header)
    app.cleanup_ctx.append(_metrics)
    app.cleanup_ctx.append(functools.partial(_database, provision=provision))
    app.cleanup_ctx.append(_clients)
    app.cleanup_ctx.append(_cache)
    app.cleanup_ctx.append(_query_cache)
    system_api.add_routes(app)
    datasources_api.add_routes(app)
    cache_api.add_routes(app)
    plugins_api.add_routes(app)
    accounts_api.add_routes(app)
    provisioning_api.add_routes(app)
    proxy_api.add_routes(app)
    query_api.add_routes(app)
    tsdb_api.add_routes(app)
    admin_api.add_routes(app)
    metrics_api.add_routes(app)
    return app
