"""SIGTERM/SIGINT on the real service (`python -m gateway` as a subprocess): drain, then stop within the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.__main__ import DRAIN_SECONDS, SHUTDOWN_MARGIN
from tests.conftest import ADMIN, prom

TIMEOUT = 3.0  # [server] shutdown_timeout of the gateway under test
DRAIN = min(DRAIN_SECONDS, TIMEOUT / 2)  # how long it keeps listening after the signal
ROOT = Path(__file__).resolve().parent.parent


class SlowUpstream:
    """/stream sends a chunk every 50 ms forever; /slow answers after one second."""

    def __init__(self) -> None:
        self.slow_started = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/stream"):
            response = web.StreamResponse()
            response.content_type = "text/plain"
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                while True:
                    await response.write(b"tick\n")
                    await asyncio.sleep(0.05)
            return response
        self.slow_started.set()
        await asyncio.sleep(1.0)
        return web.json_response({"slow": "done"})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[SlowUpstream, str]:
    slow = SlowUpstream()
    app = web.Application()
    app.router.add_get("/{tail:.*}", slow.handle)
    server = await aiohttp_server(app)
    return slow, f"http://127.0.0.1:{server.port}"


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_gateway(database_url: str, tmp_path: Path, workers: int,
                          extra: dict[str, str] | None = None) -> AsyncIterator[Gateway]:
    """`python -m gateway` on a free port (and the `extra` environment), healthy; killed (its whole process
    group) on the way out."""
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("GF_")}
    env.update({
        "GF_DATABASE_URL": database_url, "GF_SERVER_HTTP_ADDR": "127.0.0.1", "GF_SERVER_HTTP_PORT": str(port),
        "GF_SERVER_SHUTDOWN_TIMEOUT": str(TIMEOUT), "GF_SERVER_WORKERS": str(workers),
        "TMPDIR": str(tmp_path),  # the workers' metrics sockets: SIGKILL below leaves them for pytest to remove
        **(extra or {}),
    })
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    gateway = Gateway(process, f"http://127.0.0.1:{port}", port, log)
    try:
        await _wait_serving(gateway, workers, deadline=time.monotonic() + 30)
        yield gateway
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the parent and its workers: start_new_session made the group
        process.wait(timeout=10)


async def _wait_serving(gateway: Gateway, workers: int, deadline: float) -> None:
    """Until every worker has logged that it is serving and /api/health answers 200."""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert gateway.process.poll() is None, gateway.log.read_text()
            if gateway.log.read_text().count("INFO gateway serving (pid") == workers:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{gateway.url}/api/health") as response:
                        if response.status == 200:
                            return
            await asyncio.sleep(0.1)
    raise AssertionError(f"gateway not serving within 30s:\n{gateway.log.read_text()}")


async def _exit_time(process: subprocess.Popen[bytes], limit: float) -> float:
    """When the process exited (polled every 20 ms), at most `limit` seconds from now."""
    deadline = time.monotonic() + limit
    while process.poll() is None:
        assert time.monotonic() < deadline, "the gateway did not exit"
        await asyncio.sleep(0.02)
    return time.monotonic()


async def _read_until_cut(response: aiohttp.ClientResponse) -> tuple[float, str]:
    """Read an endless body until the connection ends: when, and how (the client's error, or "eof")."""
    async with asyncio.timeout(TIMEOUT + 10):
        try:
            while await response.content.readany():
                pass
        except aiohttp.ClientError as error:
            return time.monotonic(), type(error).__name__
    return time.monotonic(), "eof"


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def _drain_and_stop(gateway: Gateway, upstream: tuple[SlowUpstream, str]) -> float:
    """A stream and a short request in flight, SIGTERM to the gateway's (parent) process; signal -> exit."""
    slow, upstream_url = upstream
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{gateway.url}/api/datasources", json=prom(url=upstream_url), headers=ADMIN)
        assert response.status == 200, await response.text()
        uid = (await response.json())["datasource"]["uid"]
        proxy = f"{gateway.url}/api/datasources/proxy/uid/{uid}"

        stream = await session.get(f"{proxy}/stream", headers=ADMIN)
        assert stream.status == 200
        assert await stream.content.readany()  # in flight
        short = asyncio.create_task(session.get(f"{proxy}/slow", headers=ADMIN))
        await asyncio.wait_for(slow.slow_started.wait(), 5)

        gateway.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        cut = asyncio.create_task(_read_until_cut(stream))
        exited = asyncio.create_task(_exit_time(gateway.process, TIMEOUT + SHUTDOWN_MARGIN + 5))

        # out of rotation at once, with Grafana's health body; still serving, each response closing its connection
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as fresh:
            async with fresh.get(f"{gateway.url}/api/health") as health:
                assert health.status == 503
                assert set(await health.json()) == {"commit", "database", "version"}
            async with fresh.get(f"{gateway.url}/api/datasources", headers=ADMIN) as listed:
                assert listed.status == 200
                assert listed.headers["Connection"] == "close"

        # the short request started before the signal ends normally
        async with asyncio.timeout(5):
            answer = await short
        assert answer.status == 200
        assert await answer.json() == {"slow": "done"}

        # after the drain period the listener is closed
        await asyncio.sleep(max(signalled + DRAIN + 0.3 - time.monotonic(), 0))
        assert await _refused(gateway.port)
        assert not cut.done()

        # the endless stream is cut at shutdown_timeout, mid-body; the process exits right after
        cut_at, how = await cut
        exit_at = await exited
        assert how != "eof"
        assert TIMEOUT - 0.1 <= cut_at - signalled <= TIMEOUT + 0.5, cut_at - signalled
        assert exit_at - signalled <= TIMEOUT + SHUTDOWN_MARGIN, exit_at - signalled
        assert gateway.process.returncode == 0, gateway.log.read_text()
        return exit_at - signalled


async def test_sigterm_drains_then_cancels_what_still_runs_at_shutdown_timeout(
    database_url: str, tmp_path: Path, upstream: tuple[SlowUpstream, str],
) -> None:
    async with running_gateway(database_url, tmp_path, workers=1) as gateway:
        took = await _drain_and_stop(gateway, upstream)
    print(f"1 worker: signal -> exit {took:.2f}s (shutdown_timeout {TIMEOUT:g}s)")
    log = gateway.log.read_text()
    assert "SIGTERM: draining" in log
    assert "cancelling 1 request(s) still running" in log


async def test_the_parent_passes_sigterm_on_and_its_workers_drain(
    database_url: str, tmp_path: Path, upstream: tuple[SlowUpstream, str],
) -> None:
    async with running_gateway(database_url, tmp_path, workers=2) as gateway:
        workers = _children(gateway.process.pid)
        assert len(workers) == 2
        took = await _drain_and_stop(gateway, upstream)
        assert all(_gone(pid) for pid in workers)
    print(f"2 workers: signal -> exit {took:.2f}s (shutdown_timeout {TIMEOUT:g}s)")
    log = gateway.log.read_text()
    assert "SIGTERM: passing it on to 2 worker(s)" in log
    assert log.count("SIGTERM: draining") == 2
    assert "killing" not in log


async def test_the_parent_kills_a_worker_that_does_not_stop_in_time(database_url: str, tmp_path: Path) -> None:
    async with running_gateway(database_url, tmp_path, workers=2) as gateway:
        workers = _children(gateway.process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGSTOP)  # cannot act on the SIGINT passed on to it
        gateway.process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        async with asyncio.timeout(TIMEOUT):
            while not _gone(workers[1]):
                await asyncio.sleep(0.02)
        idle_gone = time.monotonic() - signalled  # nothing in flight: gone when the drain period ends
        assert DRAIN - 0.1 <= idle_gone <= DRAIN + 0.5, idle_gone
        took = await _exit_time(gateway.process, TIMEOUT + SHUTDOWN_MARGIN + 5) - signalled
        assert TIMEOUT + SHUTDOWN_MARGIN - 0.1 <= took <= TIMEOUT + SHUTDOWN_MARGIN + 0.5, took
        assert all(_gone(pid) for pid in workers)
    print(f"a stopped worker: signal -> idle worker gone {idle_gone:.2f}s, exit {took:.2f}s")
    log = gateway.log.read_text()
    assert f"worker(s) {workers[0]} still running" in log
    assert "SIGINT: draining" in log
