"""PostgreSQL: health connects with asyncpg and runs SELECT 1."""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import asyncpg

from gateway.backends import HealthResult, NotImplementedByBackend, ResourceRequest, ResourceResponse
from gateway.models import DataSource
from gateway.transport import Transport

CONNECT_TIMEOUT = 10.0


def connect_options(ds: DataSource, secrets: Mapping[str, str]) -> dict[str, object]:
    """asyncpg.connect() keyword arguments from Grafana's fields (url is host[:port], or a socket directory)."""
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
        "user": ds.user or None, "password": secrets.get("password"), "ssl": tls,
        "timeout": CONNECT_TIMEOUT, "command_timeout": CONNECT_TIMEOUT,
    }


class Postgres:
    async def check_health(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                           is_admin: bool) -> HealthResult:
        """Connect and SELECT 1; admins see why it failed (Grafana's detailed message), others a summary."""
        try:
            conn = await asyncpg.connect(**connect_options(ds, secrets))
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
        except asyncpg.PostgresError as error:
            code = getattr(error, "sqlstate", "") or ""
            detail = f"Database error: Failed to connect to the postgres server. Postgres error code: {code}"
            return HealthResult(status="ERROR", message=detail if is_admin else "Database connection failed")
        except (TimeoutError, OSError, asyncpg.InterfaceError, ValueError) as error:
            detail = f"Network error: Failed to connect to the server. Error message: {type(error).__name__}: {error}"
            return HealthResult(status="ERROR", message=detail if is_admin else "Database connection failed")
        return HealthResult(message="Database Connection OK", status="OK")

    async def call_resource(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                            request: ResourceRequest) -> ResourceResponse:
        """No resources."""
        raise NotImplementedByBackend
