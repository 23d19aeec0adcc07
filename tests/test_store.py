"""Durability and availability: restarts keep everything; a Postgres outage is a 503 and heals itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit, urlunsplit

from gateway.app import create_app
from tests.conftest import ADMIN, make_config, prom


class Relay:
    """A TCP relay on loopback between the app and Postgres that can be cut and restored."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)  # a host starting with "/" is a Unix socket directory
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target
        if host.startswith("/"):
            up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_restart_keeps_everything(aiohttp_client, config):
    first = await aiohttp_client(create_app(config))
    response = await first.post("/api/datasources", json=prom(uid="u1", secureJsonData={"password": "p"}),
                                headers=ADMIN)
    created = (await response.json())["datasource"]
    await first.close()
    second = await aiohttp_client(create_app(config))
    assert await (await second.get("/api/datasources/uid/u1", headers=ADMIN)).json() == created


async def test_postgres_outage_is_503_and_recovers_by_itself(aiohttp_client, database_url):
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]  # the embedded server listens on a socket
    relay = Relay(socket_dir or parts.hostname or "127.0.0.1", parts.port or 5432)
    await relay.start()
    relayed = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}", query=""))
    client = await aiohttp_client(create_app(make_config(relayed)))
    assert (await client.get("/api/datasources", headers=ADMIN)).status == 200

    await relay.cut()
    for path in ["/api/datasources", "/api/datasources/uid/x"]:
        response = await client.get(path, headers=ADMIN)
        assert response.status == 503
        assert await response.json() == {"message": "Database unavailable", "traceID": ""}
    response = await client.post("/api/datasources", json=prom(), headers=ADMIN)
    assert response.status == 503
    health = await client.get("/api/health")
    assert health.status == 503 and (await health.json())["database"] == "failing"

    await relay.start()  # same port
    for _ in range(50):
        if (await client.get("/api/health")).status == 200:
            break
        await asyncio.sleep(0.1)
    assert (await client.get("/api/datasources", headers=ADMIN)).status == 200
    assert (await client.post("/api/datasources", json=prom(), headers=ADMIN)).status == 200
    await relay.cut()


async def test_cli_creates_a_service_account_and_prints_a_working_token(aiohttp_client, config, database_url):
    env = {**os.environ, "GF_DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "service-accounts", "create", "--name", "bootstrap", "--role", "Admin"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("glsa_")
    client = await aiohttp_client(create_app(config))
    response = await client.post("/api/datasources", json=prom(), headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200


def test_cli_refuses_an_org_that_does_not_exist_or_cannot_be_one_in_one_line(database_url):
    env = {**os.environ, "GF_DATABASE_URL": database_url, "GF_PATHS_PROVISIONING": "/nonexistent"}
    command = [sys.executable, "-m", "gateway", "service-accounts", "create", "--name", "ci", "--org-id"]
    missing = subprocess.run([*command, "77"], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == "gateway: organization not found"
    for args in (["service-accounts", "create", "--name", "ci"], ["datasources", "export"]):
        huge = subprocess.run([sys.executable, "-m", "gateway", *args, "--org-id", str(2**63)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert huge.returncode == 2 and "Traceback" not in huge.stderr
        last = huge.stderr.strip().splitlines()[-1]
        assert last.endswith(f"argument --org-id: not an org id (1 to 2^63 - 1): {2**63}")
