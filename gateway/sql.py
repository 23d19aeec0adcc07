"""The SQL in sql/: named queries loaded once, and migrations applied in order under a lock."""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)

# pg_advisory_lock key held while migrating (several replicas may start at once)
MIGRATION_LOCK = 7_200_001


def _sql_dir() -> Traversable:
    return importlib.resources.files("gateway").joinpath("sql")


def parse_queries(text: str, source: str = "<string>") -> dict[str, str]:
    """Split a file of `-- name: x` sections into name -> statement."""
    queries: dict[str, str] = {}
    parts = _NAME.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        statement = "\n".join(line for line in body.strip().splitlines() if not line.startswith("--")).strip()
        if name in queries:
            raise ValueError(f"duplicate query name {name!r} in {source}")
        queries[name] = statement.rstrip(";")
    return queries


def load_queries() -> Mapping[str, str]:
    """Every named statement in sql/queries/*.sql; a name defined twice stops the boot."""
    queries: dict[str, str] = {}
    for entry in sorted(_sql_dir().joinpath("queries").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, statement in parse_queries(entry.read_text(), entry.name).items():
            if name in queries:
                raise ValueError(f"duplicate query name {name!r} in {entry.name}")
            queries[name] = statement
    return MappingProxyType(queries)


def migrations() -> list[tuple[str, str]]:
    """(version, script) for every sql/migrations/NNNN_*.sql, in order."""
    entries = [e for e in _sql_dir().joinpath("migrations").iterdir() if e.name.endswith(".sql")]
    return [(e.name.removesuffix(".sql"), e.read_text()) for e in sorted(entries, key=lambda e: e.name)]


async def migrate(conn: Any) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the versions applied now.

    The caller holds MIGRATION_LOCK so replicas starting together apply each script once.
    """
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS gateway_migration"
        " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied = {row["version"] for row in await conn.fetch("SELECT version FROM gateway_migration")}
    done = []
    for version, script in migrations():
        if version in applied:
            continue
        async with conn.transaction():
            await conn.execute(script)
            await conn.execute("INSERT INTO gateway_migration (version) VALUES ($1)", version)
        done.append(version)
    return done
