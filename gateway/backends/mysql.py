"""MySQL and MariaDB (`mysql`): a bounded asyncmy pool per data source whose sessions are read-only, and
health as Grafana checks it (SELECT 1)."""

from __future__ import annotations

from typing import Any

from gateway.backends.base import Backend, Context, HealthResult, core_plugin

CONNECT_TIMEOUT = 10
DEFAULT_MAX_OPEN_CONNS = 10  # Grafana's jsonData.maxOpenConns default for SQL data sources
MAX_OPEN_CONNS = 100  # per data source and worker, whatever jsonData asks
IDLE_SECONDS = 60  # an idle connection to a data source is recycled after this


def connect_options(ctx: Context) -> dict[str, Any]:
    """asyncmy connection keyword arguments from Grafana's fields (url is host[:port])."""
    ds = ctx.ds
    host, _, port = ds.url.rpartition(":") if ds.url.count(":") == 1 else (ds.url, "", "")
    return {
        "host": host or "localhost", "port": int(port) if port.isdigit() else 3306,
        "user": ds.user or "root", "password": ctx.secrets.get("password", ""),
        "db": ds.database or str(ds.options.get("database", "")) or None,
        "connect_timeout": CONNECT_TIMEOUT, "autocommit": True, "charset": "utf8mb4",
        # every session refuses writes, whatever the user's grants allow
        "init_command": "SET SESSION TRANSACTION READ ONLY",
    }


def max_open_conns(ctx: Context) -> int:
    """jsonData.maxOpenConns when positive (at most MAX_OPEN_CONNS), else Grafana's default."""
    value = ctx.ds.options.get("maxOpenConns")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return DEFAULT_MAX_OPEN_CONNS
    return min(value, MAX_OPEN_CONNS)


class _Pool:
    """An asyncmy pool with the `close()` coroutine the Context expects of a resource."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


async def pool(ctx: Context) -> Any:
    """The data source's asyncmy pool: connections opened on demand, at most maxOpenConns."""
    import asyncmy  # an optional dependency (gateway[mysql]): only a MySQL data source needs it

    async def open_pool() -> _Pool:
        return _Pool(await asyncmy.create_pool(minsize=0, maxsize=max_open_conns(ctx), pool_recycle=IDLE_SECONDS,
                                               **connect_options(ctx)))

    wrapped: _Pool = await ctx.resource("mysql", open_pool)
    return wrapped.pool


class MySQL(Backend):
    plugin = core_plugin("mysql", "MySQL", "mysql_logo.svg")
    served = True

    def max_concurrency(self, ctx: Context) -> int:
        """As many queries at once as the pool has connections."""
        return max_open_conns(ctx)

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """SELECT 1 on the pool; admins see why it failed, others a summary."""
        try:
            connections = await pool(ctx)
            async with connections.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute("SELECT 1")
                await cursor.fetchall()
        except ImportError:
            return HealthResult(status="ERROR", message="MySQL support is not installed (pip install 'gateway[mysql]')")
        except Exception as error:  # asyncmy raises pymysql-style errors, OSError and TimeoutError
            detail = f"Failed to connect to the server: {type(error).__name__}: {_public(error)}"
            return HealthResult(status="ERROR", message=detail if is_admin else "Database connection failed")
        return HealthResult(message="Database Connection OK", status="OK")


def _public(error: Exception) -> str:
    """A driver error's text without anything that could hold the password (asyncmy does not echo it)."""
    return str(error)[:300]
