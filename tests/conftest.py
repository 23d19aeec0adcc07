"""One real Postgres database per test run; tables emptied before each test; the app via aiohttp_client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from gateway.accounts import AccountStore
from gateway.app import SERVER_OPTIONS, create_app, open_database
from gateway.config import Config
from gateway.crypto import SecretBox
from gateway.logs import TextFormatter, context_filter
from gateway.sql import load_queries

ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}


def _server_url() -> str:
    """GATEWAY_TEST_DATABASE_URL, else the Postgres on 127.0.0.1:5432 if it answers, else an embedded one."""
    if url := os.environ.get("GATEWAY_TEST_DATABASE_URL"):
        return url
    local = "postgresql://postgres@127.0.0.1:5432/postgres"

    async def answers() -> bool:
        try:
            conn = await asyncpg.connect(local, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    if asyncio.run(answers()):
        return local
    from gateway.embedded import start_embedded_postgres

    return start_embedded_postgres(os.path.join(tempfile.gettempdir(), "gateway-test-pg"))


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this run, migrated once, dropped at the end."""
    server = _server_url()
    name = f"gateway_test_{uuid.uuid4().hex[:10]}"

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = _with_database(server, name)

    async def migrate() -> None:
        db, _ = await open_database(make_config(url))
        await db.close()

    asyncio.run(migrate())
    yield url
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class SecretScan(logging.Handler):
    """The whole run's log at debug level, formatted as gateway formats it, and every secret the tests created
    (data source secrets, tokens): no secret may appear in any line (checked when the run ends)."""

    MAX_LINES = 1_000_000
    # the test servers' own aiohttp access lines quote request lines (query strings included); gateway
    # serves with aiohttp's access log off
    IGNORED = ("aiohttp.access",)

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(TextFormatter())
        self.addFilter(context_filter())
        self.lines: list[str] = []
        self.secrets: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name not in self.IGNORED and len(self.lines) < self.MAX_LINES:
            self.lines.append(self.format(record) + repr(getattr(record, "fields", "")))

    def add(self, *values: str) -> None:
        """Remember secrets (short ones would match ordinary words, so only 6 characters or more)."""
        self.secrets.update(value for value in values if len(value) >= 6)

    def leaks(self) -> dict[str, str]:
        """Each secret found in the log, with the first line that holds it."""
        text = "\n".join(self.lines)
        found = {}
        for secret in self.secrets:
            if secret in text:
                found[secret] = next(line for line in self.lines if secret in line)[:500]
        return found


@pytest.fixture(scope="session", autouse=True)
def secret_scan() -> Iterator[SecretScan]:
    """The root logger at debug level for the whole run, every line kept and scanned at the end."""
    scan = SecretScan()
    root, harness = logging.getLogger(), logging.getLogger("aiohttp.access")
    levels = root.level, harness.level
    root.addHandler(scan)
    root.setLevel(logging.DEBUG)
    harness.setLevel(logging.WARNING)  # the test servers' access lines (see IGNORED) stay out of caplog too
    yield scan
    root.removeHandler(scan)
    root.setLevel(levels[0])
    harness.setLevel(levels[1])
    assert scan.leaks() == {}, "secrets in the log"


async def _remember_secrets(conn: asyncpg.Connection, scan: SecretScan) -> None:
    """Add the secrets of every data source the last test stored to the scan (before they are truncated)."""
    rows = await conn.fetch("SELECT secure_json_data FROM data_source WHERE secure_json_data <> '{}'::jsonb")
    if not rows:
        return
    try:
        box = await SecretBox.load(conn, load_queries(), Config().security.secret_key)
    except Exception:  # a test that rotated the secret key: its values are not readable this way
        return
    for row in rows:
        sealed = row["secure_json_data"]
        try:
            opened = box.open_all(json.loads(sealed) if isinstance(sealed, str) else sealed)
        except Exception:
            continue
        scan.add(*opened.values())


def make_config(url: str, **sections: dict[str, Any]) -> Config:
    """A test Config: defaults, the test database, and any section overrides."""
    config = Config.from_env({"GF_DATABASE_URL": url})
    for section, values in sections.items():
        config = msgspec.structs.replace(
            config, **{section: msgspec.structs.replace(getattr(config, section), **values)},
        )
    return config


@pytest.fixture
def config(database_url: str) -> Config:
    return make_config(database_url)


@pytest.fixture(autouse=True)
async def clean_tables(request: pytest.FixtureRequest) -> None:
    """Empty every table but the seeded org and the data keys before each test that uses the database."""
    if "database_url" not in request.fixturenames:
        return
    url = request.getfixturevalue("database_url")
    conn = await asyncpg.connect(url)
    try:
        await _remember_secrets(conn, request.getfixturevalue("secret_scan"))
        await conn.execute(
            "TRUNCATE data_source, data_source_cache, cache_generation, api_token, service_account_permission,"
            " service_account, provisioning_state RESTART IDENTITY CASCADE;"
            " DELETE FROM org WHERE id <> 1;"
            " SELECT setval(pg_get_serial_sequence('org', 'id'), 1);"
            " SELECT setval(pg_get_serial_sequence('service_account', 'id'), 1);"
        )
    finally:
        await conn.close()


@pytest.fixture
async def client(aiohttp_client: Any, aiohttp_server: Any, config: Config) -> TestClient[Any, Any]:
    """The app under test, on a real socket, configured as `python -m gateway` serves it (aiohttp's test
    server always cancels handlers of clients that leave; the other options go to start_server)."""
    options = {name: value for name, value in SERVER_OPTIONS.items() if name != "handler_cancellation"}
    return await aiohttp_client(await aiohttp_server(create_app(config), **options))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, for asserting on raw rows."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


TokenFactory = Callable[..., Any]


@pytest.fixture
async def make_token(config: Config, secret_scan: SecretScan) -> AsyncIterator[TokenFactory]:
    """Create a service account with a role (and optional grants) and return headers with its token."""
    db, _ = await open_database(config)
    accounts = AccountStore(db)
    counter = 0

    async def factory(role: str = "Viewer", permissions: tuple[tuple[str, str], ...] = (), org_id: int = 1,
                      seconds_to_live: int = 0) -> dict[str, str]:
        nonlocal counter
        counter += 1
        sa = await accounts.create_service_account(org_id, f"sa{counter}-{role}", role, False, permissions)
        _, _, token = await accounts.create_token(org_id, sa["id"], "t", seconds_to_live)
        secret_scan.add(token)
        return {"Authorization": f"Bearer {token}"}

    yield factory
    await db.close()


def prom(**overrides: Any) -> dict[str, Any]:
    """A typical create body."""
    body = {"name": "prom", "type": "prometheus", "access": "proxy", "url": "http://prom:9090"}
    body.update(overrides)
    return body


# -- a real Prometheus --------------------------------------------------------------------------------------

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    """The result vector of an instant query (empty when Prometheus does not answer)."""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}),
                                    timeout=2) as answer:
            return list(json.load(answer)["data"]["result"])
    except (OSError, ValueError, KeyError):
        return []


def _has_samples(url: str) -> bool:
    result = prometheus_query(url, 'count_over_time(up{job="prometheus"}[1m])')
    return bool(result) and float(result[0]["value"][1]) >= 3  # a few scrapes: ranges ending now hold some


@contextlib.contextmanager
def running_prometheus(targets: Sequence[str] = ()) -> Iterator[str]:
    """/usr/bin/prometheus on a free loopback port scraping itself and `targets` (host:port, /metrics)
    every second, once it has a few samples of itself."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir = tempfile.mkdtemp(prefix="gateway-prometheus-")
    config = os.path.join(workdir, "prometheus.yml")
    with open(config, "w") as file:
        file.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                   f"scrape_configs:\n  - job_name: prometheus\n    static_configs:\n"
                   f"      - targets: ['127.0.0.1:{port}']\n")
        if targets:
            listed = ", ".join(f"'{target}'" for target in targets)
            file.write(f"  - job_name: gateway\n    static_configs:\n      - targets: [{listed}]\n")
    log = open(os.path.join(workdir, "log"), "wb")  # closed in the finally below
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _has_samples(url):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("prometheus did not start: " + open(os.path.join(workdir, "log")).read()[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
