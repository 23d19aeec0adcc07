"""The asyncpg pool of gateway's own database, its codecs, and named statements; failures via errors.translate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from gateway.config import Database as DatabaseConfig
from gateway.errors import DatabaseUnavailable, translate

log = logging.getLogger("gateway")


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="text",
        encoder=lambda value: msgspec.json.encode(value).decode(), decoder=msgspec.json.decode,
    )


async def create_pool(config: DatabaseConfig, url: str) -> Any:
    """A pool with the jsonb codec; connects lazily so a down database does not stop the start."""
    return await asyncpg.create_pool(
        url, min_size=0, max_size=config.max_open_conn, max_inactive_connection_lifetime=300,
        init=_init_connection, timeout=5, command_timeout=config.query_timeout,
        server_settings={"statement_timeout": str(int(config.query_timeout * 1000)), "application_name": "gateway"},
    )


class DatabaseUnreachable(Exception):
    """The database did not answer within [database] wait_timeout; the message names the host, never a password."""


async def wait_for_database(config: DatabaseConfig, url: str) -> None:
    """Retry connecting with backoff until the database answers or [database] wait_timeout has passed.

    Only failures to connect are retried (refused, timed out, still starting up): a wrong password fails at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.wait_timeout
    delay = 0.1
    while True:
        remaining = deadline - loop.time()
        try:
            conn = await asyncpg.connect(url, timeout=max(min(remaining, 5.0), 0.5))
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as error:
            remaining = deadline - loop.time()
            if remaining <= 0:
                parts = urlsplit(url)
                raise DatabaseUnreachable(
                    f"database {parts.hostname or 'localhost'}:{parts.port or 5432} did not answer within"
                    f" [database] wait_timeout ({config.wait_timeout:g}s): {type(error).__name__}: {error}"
                ) from None
            log.warning("database %s not reachable yet (%s), retrying for %.0fs more",
                        urlsplit(url).hostname or "localhost", type(error).__name__, remaining)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)
            continue
        except asyncpg.PostgresError as error:  # it answered and said no: waiting will not change that
            parts = urlsplit(url)
            raise DatabaseUnreachable(
                f"database {parts.hostname or 'localhost'}:{parts.port or 5432} refused the connection:"
                f" {type(error).__name__}: {error}"
            ) from None
        await conn.close()
        return


CLOSE_TIMEOUT = 10.0  # seconds a graceful close may wait for connections in use before they are cut


async def close_pool(pool: Any, what: str) -> None:
    """Close an asyncpg pool gracefully, or terminate it when a connection is still held after CLOSE_TIMEOUT
    (asyncpg's close() waits for every connection in use, without a limit of its own)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await pool.close()
    except TimeoutError:
        log.warning("%s did not close within %gs: its connections are cut", what, CLOSE_TIMEOUT)
        pool.terminate()


class Database:
    """The pool plus the named statements; every store goes through `connection()`."""

    def __init__(self, pool: Any, queries: Mapping[str, str], acquire_timeout: float = 5.0) -> None:
        self.pool = pool
        self.queries = queries
        self._acquire_timeout = acquire_timeout

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection; outages become 503s and invalid data 400s (errors.translate)."""
        try:
            async with self.pool.acquire(timeout=self._acquire_timeout) as conn:
                yield conn
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as error:
            known = translate(error, database=True)
            if known is None or known is error:
                raise
            raise known from error

    async def close(self) -> None:
        """Close the pool (bounded: see close_pool)."""
        await close_pool(self.pool, "the database pool")

    async def ping(self) -> bool:
        """True when Postgres answers SELECT 1 within two seconds."""
        try:
            async with asyncio.timeout(2.0), self.connection() as conn:
                await conn.fetchval("SELECT 1")
        except (DatabaseUnavailable, TimeoutError):
            return False
        return True
