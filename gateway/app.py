"""create_app(config): the one place that wires keys, resources, middlewares and routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway import proxy
from gateway.accounts import AccountStore
from gateway.api import accounts as accounts_api
from gateway.api import datasources as datasources_api
from gateway.api import health as health_api
from gateway.auth import Authenticator, auth_middleware
from gateway.cache import DataSourceCache
from gateway.config import Config
from gateway.crypto import SecretBox
from gateway.db import Database, create_pool
from gateway.errors import error_middleware
from gateway.keys import (
    accounts_key,
    authenticator_key,
    box_key,
    cache_key,
    client_key,
    config_key,
    db_key,
    draining_key,
    store_key,
)
from gateway.sql import MIGRATION_LOCK, load_queries, migrate
from gateway.store import DataSourceStore
from gateway.wire import default_headers


async def open_database(config: Config) -> tuple[Database, SecretBox]:
    """Connect, apply migrations and unwrap the data keys, under one advisory lock across replicas."""
    pool = await create_pool(config.database, config.database.url)
    db = Database(pool, load_queries())
    try:
        async with db.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await migrate(conn)
                box = await SecretBox.load(conn, db.queries, config.security.secret_key)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    except BaseException:
        await pool.close()
        raise
    return db, box


async def _database(app: web.Application) -> AsyncIterator[None]:
    db, box = await open_database(app[config_key])
    app[db_key] = db
    app[box_key] = box
    app[store_key] = DataSourceStore(db)
    app[accounts_key] = accounts = AccountStore(db)
    app[authenticator_key] = Authenticator(app[config_key], accounts)
    app[cache_key] = cache = DataSourceCache(app[store_key], box, app[config_key].dataproxy)
    await cache.start(app[config_key].database.url)
    yield
    await cache.stop()
    await db.pool.close()


async def _client(app: web.Application) -> AsyncIterator[None]:
    """The ClientSession for everything but the proxy hot path (WebSocket bridging), with explicit timeouts."""
    proxy = app[config_key].dataproxy
    timeout = aiohttp.ClientTimeout(total=None, connect=proxy.dial_timeout, sock_connect=proxy.dial_timeout,
                                    sock_read=proxy.timeout)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        app[client_key] = session
        yield


def create_app(config: Config) -> web.Application:
    """The gateway application for `config` ([database] url must be set)."""
    app = web.Application(
        client_max_size=config.gateway.max_body_bytes,
        middlewares=[error_middleware, auth_middleware],
    )
    app[config_key] = config
    app[draining_key] = asyncio.Event()
    app.on_response_prepare.append(default_headers)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_client)
    health_api.add_routes(app)
    datasources_api.add_routes(app)
    accounts_api.add_routes(app)
    proxy.add_routes(app)
    return app
