"""PostgreSQL: health runs SELECT 1 on the data source's own pool (bounded, closed when it changes)."""

from __future__ import annotations

import ssl
from typing import Any

import asyncpg

from gateway.backends.base import Backend, Context, HealthResult, core_plugin

CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_OPEN_CONNS = 10  # Grafana's jsonData.maxOpenConns default for SQL data sources
MAX_OPEN_CONNS = 100  # per data source and worker, whatever jsonData asks (asyncpg allocates them up front)
IDLE_SECONDS = 60.0  # an idle connection to a data source is closed after this


def connect_options(ctx: Context) -> dict[str, Any]:
    """asyncpg connection keyword arguments from Grafana's fields (url is host[:port], or a socket directory)."""
    ds = ctx.ds
    host, _, port = ds.url.rpartition(":") if ds.url.count(":") == 1 else (ds.url, "", "")
    mode = str(ds.options.get("sslmode", "require"))
    tls: object = False
    if mode in ("require", "verify-ca", "verify-full"):
        context = ssl.create_default_context()
        if mode == "require":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        tls = context
    return {
        "host": host or "localhost", "port": int(port) if port.isdigit() else 5432,
        "database": ds.database or str(ds.options.get("database", "")) or None,
        "user": ds.user or None, "password": ctx.secrets.get("password"), "ssl": tls,
        "timeout": CONNECT_TIMEOUT, "command_timeout": CONNECT_TIMEOUT,
    }


def max_open_conns(ctx: Context) -> int:
    """jsonData.maxOpenConns when positive (at most MAX_OPEN_CONNS), else Grafana's default."""
    value = ctx.ds.options.get("maxOpenConns")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return DEFAULT_MAX_OPEN_CONNS
    return min(value, MAX_OPEN_CONNS)


async def pool(ctx: Context) -> Any:
    """The data source's asyncpg pool: connections opened on demand, at most maxOpenConns."""
    async def open_pool() -> Any:
        return await asyncpg.create_pool(min_size=0, max_size=max_open_conns(ctx),
                                         max_inactive_connection_lifetime=IDLE_SECONDS, **connect_options(ctx))

    return await ctx.resource("postgres", open_pool)


class Postgres(Backend):
    plugin = core_plugin("grafana-postgresql-datasource", "PostgreSQL", "postgresql_logo.svg", "postgres")
    served = True

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """SELECT 1 on the pool; admins see why it failed (Grafana's detailed message), others a summary."""
        try:
            connections = await pool(ctx)
            async with connections.acquire(timeout=CONNECT_TIMEOUT) as conn:
                await conn.fetchval("SELECT 1")
        except asyncpg.PostgresError as error:
            code = getattr(error, "sqlstate", "") or ""
            detail = f"Database error: Failed to connect to the postgres server. Postgres error code: {code}"
            return HealthResult(status="ERROR", message=detail if is_admin else "Database connection failed")
        except (TimeoutError, OSError, asyncpg.InterfaceError, ValueError) as error:
            detail = f"Network error: Failed to connect to the server. Error message: {type(error).__name__}: {error}"
            return HealthResult(status="ERROR", message=detail if is_admin else "Database connection failed")
        return HealthResult(message="Database Connection OK", status="OK")
