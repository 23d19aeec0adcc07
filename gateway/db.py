"""The asyncpg pool of gateway's own database, its codecs, and named statements; failures via errors.translate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

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
