"""Secrets at rest: envelope encryption, nothing readable in the tables, key rotation."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest
from cryptography.exceptions import InvalidTag

from gateway.app import open_database
from gateway.crypto import SecretBox, SecretKeyMismatch
from tests.conftest import ADMIN, make_config, prom

SECRET = "correct horse battery staple"


def test_sealed_values_are_bound_to_their_field_and_never_repeat():
    box = SecretBox({"k1": os.urandom(32)}, "k1")
    sealed = box.seal("password", SECRET)
    assert SECRET not in sealed and sealed.startswith("k1.")
    assert box.seal("password", SECRET) != sealed  # random nonce
    assert box.open("password", sealed) == SECRET
    with pytest.raises(InvalidTag):
        box.open("basicAuthPassword", sealed)  # moved to another key: refused
    assert "k1" in repr(box) and SECRET not in repr(box)


async def test_secrets_are_unreadable_in_the_raw_tables(client, db):
    response = await client.post("/api/datasources", json=prom(secureJsonData={"basicAuthPassword": SECRET}),
                                 headers=ADMIN)
    assert SECRET not in await response.text()
    dump = repr([dict(r) for r in await db.fetch("SELECT * FROM data_source")])
    dump += repr([dict(r) for r in await db.fetch("SELECT * FROM data_key")])
    assert SECRET not in dump
    assert SECRET.encode() not in dump.encode()
    for path in ["/api/datasources", "/api/datasources/name/prom"]:
        assert SECRET not in await (await client.get(path, headers=ADMIN)).text()


async def test_secrets_decrypt_after_restart_and_fail_with_another_secret_key(client, database_url):
    await client.post("/api/datasources", json=prom(uid="u1", secureJsonData={"password": SECRET}), headers=ADMIN)
    db, box = await open_database(make_config(database_url))
    try:
        conn: asyncpg.Connection
        async with db.pool.acquire() as conn:
            sealed = await conn.fetchval("SELECT secure_json_data FROM data_source")
        assert box.open_all(sealed) == {"password": SECRET}
    finally:
        await db.close()
    with pytest.raises(SecretKeyMismatch):
        await open_database(make_config(database_url, security={"secret_key": "another key"}))


def _gateway(database_url: str, *args: str, secret_key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GF_DATABASE_URL": database_url, "GF_SECURITY_SECRET_KEY": secret_key}
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True,
                          timeout=120)


async def test_rotate_secret_key_rewraps_data_keys_and_keeps_secrets(client, database_url):
    await client.post("/api/datasources", json=prom(uid="u1", secureJsonData={"password": SECRET}), headers=ADMIN)
    old = make_config(database_url).security.secret_key
    refused = _gateway(database_url, "migrate", secret_key="new-key-123")
    assert refused.returncode != 0
    assert "secrets rotate --old-key" in refused.stderr and "new-key-123" not in refused.stderr
    rotated = _gateway(database_url, "secrets", "rotate", "--old-key", old, secret_key="new-key-123")
    assert rotated.returncode == 0, rotated.stderr
    db, box = await open_database(make_config(database_url, security={"secret_key": "new-key-123"}))
    try:
        async with db.pool.acquire() as conn:
            sealed = await conn.fetchval("SELECT secure_json_data FROM data_source")
        assert box.open_all(sealed) == {"password": SECRET}
    finally:
        await db.close()
    # and back, so the rest of the run keeps the default key
    back = _gateway(database_url, "secrets", "rotate", "--old-key", "new-key-123", secret_key=old)
    assert back.returncode == 0, back.stderr
