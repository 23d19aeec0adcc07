"""sql/: every named statement prepares against the migrated schema; migrations run once under a lock."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
import pytest

from gateway.app import open_database
from gateway.sql import load_queries, migrations, parse_queries
from tests.conftest import make_config


async def test_every_named_statement_prepares(db):
    queries = load_queries()
    assert {"get_data_source", "update_data_source", "get_token_identity", "list_data_keys"} <= set(queries)
    for name, statement in queries.items():
        await db.prepare(statement), name


def test_every_statement_the_code_names_exists():
    queries = load_queries()
    source = "".join(p.read_text() for p in Path("gateway").rglob("*.py"))
    named = set(re.findall(r'_q\["(\w+)"\]|queries\["(\w+)"\]', source))
    for pair in named:
        name = pair[0] or pair[1]
        assert name in queries, name


def test_duplicate_query_names_stop_the_boot():
    with pytest.raises(ValueError, match="duplicate"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_migrations_are_ordered_and_never_use_string_formatting():
    versions = [version for version, _ in migrations()]
    assert versions == sorted(versions) and versions[0].startswith("0001_")


async def test_replicas_starting_together_migrate_once(database_url):
    """Five app instances open the same (already migrated) database at once without errors."""
    results = await asyncio.gather(*[open_database(make_config(database_url)) for _ in range(5)])
    for db, _ in results:
        await db.close()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM gateway_migration") == len(migrations())
        assert await conn.fetchval("SELECT count(*) FROM data_key WHERE active") == 1
    finally:
        await conn.close()
