"""Process-level setup of a serving worker (gateway.__main__)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Fill and free eight 400 KiB chunks 64 times and print the minor page faults that took. With glibc's
# sliding thresholds the freed heap top is trimmed every round, so each round faults its pages in again,
# as every streamed chunk in the proxy did.
_CHURN = """
import resource, sys
from gateway.__main__ import _retain_freed_memory
if sys.argv[1] == "tuned":
    _retain_freed_memory()
block = b"x" * (1 << 20)  # an earlier large body raises glibc's sliding thresholds
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(64):
    chunks = [b"x" * (400 << 10) for _ in range(8)]  # chunks of a few streams in flight
    del chunks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=60,
                            check=True)
    return int(result.stdout)


def test_freed_body_memory_is_reused_not_faulted_in_again():
    default, tuned = _faults("default"), _faults("tuned")
    pages = 8 * (400 << 10) // 4096  # one round's chunks
    assert default > 16 * pages, (default, tuned)  # glibc's defaults: fresh pages round after round
    assert tuned < 2 * pages, (default, tuned)  # fixed thresholds: the first round's pages are reused


async def test_three_hundred_data_sources_proxied_once_each_keep_the_worker_under_150_mib(
        database_url, aiohttp_server, unused_tcp_port):
    import asyncio
    import os
    import time
    from pathlib import Path

    import aiohttp
    from aiohttp import web

    from tests.conftest import ADMIN

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    upstream = await aiohttp_server(app)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "GF_DATABASE_URL": database_url, "GF_SERVER_HTTP_PORT": str(unused_tcp_port),
           "GF_SERVER_HTTP_ADDR": "127.0.0.1", "GF_SERVER_WORKERS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=30)) as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(base + "/api/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline and process.poll() is None, "gateway did not start"
                await asyncio.sleep(0.1)

            async def one(n: int) -> None:
                body = {"name": f"ds{n}", "uid": f"ds{n}", "type": "prometheus", "access": "proxy",
                        "url": f"http://127.0.0.1:{upstream.port}"}
                async with session.post(base + "/api/datasources", json=body) as response:
                    assert response.status == 200
                async with session.get(f"{base}/api/datasources/proxy/uid/ds{n}/api/v1/labels") as response:
                    assert response.status == 200

            for start in range(0, 300, 20):
                await asyncio.gather(*(one(n) for n in range(start, start + 20)))
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        assert rss_kib < 150 * 1024, f"the serving worker holds {rss_kib >> 10} MiB"
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_malformed_requests_are_logged_in_one_line_without_their_headers(database_url, tmp_path):
    import asyncio

    from tests.test_shutdown import running_gateway

    token = "glsa_" + "S" * 32 + "_0badc0de"
    requests = [
        f"GET /api/datasources HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x00\r\n\r\n",
        f"GET /a b c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n",
        f"GET /api/datasources HTTP/1.1\r\nHost: x\r\nX-Long: {'y' * 9000}\r\nAuthorization: Bearer {token}\r\n\r\n",
    ]
    async with running_gateway(database_url, tmp_path, workers=1) as gateway:
        for raw in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(raw.encode())
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))
        await asyncio.sleep(0.3)
        log = gateway.log.read_text()
    assert token not in log and "Traceback" not in log
    assert log.count("malformed request refused") == len(requests)


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def test_a_worker_that_dies_is_replaced_and_the_event_logged(database_url, tmp_path):
    import asyncio
    import os
    import signal
    import time

    import aiohttp

    from tests.test_shutdown import running_gateway

    async with running_gateway(database_url, tmp_path, workers=2) as gateway:
        workers = _children(gateway.process.pid)
        assert len(workers) == 2
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while gateway.log.read_text().count("INFO gateway serving (pid") < 3:
            assert time.monotonic() < deadline, gateway.log.read_text()
            await asyncio.sleep(0.1)
        now = _children(gateway.process.pid)
        assert len(now) == 2 and victim not in now and (now - workers)
        (replacement,) = now - workers
        assert f"worker {victim} died (killed by SIGKILL): started worker {replacement} in its place" in (
            gateway.log.read_text())
        # the dead worker's metrics socket is gone with it: every scrape would knock on it for good
        (socket,) = tmp_path.glob(f"gateway-metrics-*/{replacement}.sock")  # running_gateway sets TMPDIR
        assert {path.name for path in socket.parent.iterdir()} == {f"{pid}.sock" for pid in now}
        async with aiohttp.ClientSession() as session:
            for _ in range(10):  # both workers (whichever accepts) answer
                async with session.get(f"{gateway.url}/api/health") as response:
                    assert response.status == 200
        assert gateway.process.poll() is None


async def test_a_replacement_worker_does_not_reapply_provisioning_files_edited_since_the_start(
        database_url, tmp_path):
    import asyncio
    import os
    import signal
    import time

    import aiohttp

    from tests.conftest import ADMIN
    from tests.test_shutdown import running_gateway

    folder = tmp_path / "provisioning" / "datasources"
    folder.mkdir(parents=True)
    (folder / "a.yaml").write_text("apiVersion: 1\ndatasources:\n  - {name: kept, uid: kept, type: prometheus,"
                                   " url: 'http://kept:9090'}\n")
    extra = {"GF_PATHS_PROVISIONING": str(tmp_path / "provisioning")}
    async with running_gateway(database_url, tmp_path, workers=2, extra=extra) as gateway:
        # edited into a file the start would refuse: a worker that dies must not turn this into a crash loop
        (folder / "a.yaml").write_text("apiVersion: 1\ndatasources:\n  - {name: kept, type: prometheus,"
                                       " url: 'http://bad host:9090'}\n")
        workers = _children(gateway.process.pid)
        os.kill(min(workers), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while gateway.log.read_text().count("INFO gateway serving (pid") < 3:
            assert time.monotonic() < deadline and gateway.process.poll() is None, gateway.log.read_text()
            await asyncio.sleep(0.1)
        log = gateway.log.read_text()
        assert "Validation error" not in log and "started worker" in log
        async with aiohttp.ClientSession(headers=ADMIN) as session:
            for _ in range(6):  # whichever worker answers: the state provisioned at start, unchanged
                async with session.get(f"{gateway.url}/api/datasources/uid/kept") as response:
                    assert response.status == 200
                    assert (await response.json())["url"] == "http://kept:9090"
            async with session.post(f"{gateway.url}/api/admin/provisioning/datasources/reload") as response:
                assert response.status == 400  # a reload still reads the files, and refuses this one
                assert "url: Validation error, invalid URL" in (await response.json())["message"]
        assert gateway.process.poll() is None


def test_start_fails_fast_and_clearly_when_the_database_stays_unreachable(tmp_path):
    import os
    import socket
    import time

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {name: value for name, value in os.environ.items() if not name.startswith("GF_")}
    env.update({"GF_DATABASE_URL": f"postgres://gw:hunter2secret@127.0.0.1:{port}/gw", "GF_DATABASE_WAIT_TIMEOUT": "1",
                "GF_PATHS_DATA": str(tmp_path)})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert elapsed < 15
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gateway: database 127.0.0.1:{port} did not answer within [database] wait_timeout (1s)")
    assert "hunter2secret" not in done.stderr + done.stdout
    assert "retrying" in done.stderr  # it did retry before giving up


async def test_workers_dying_in_a_loop_stop_the_server_instead_of_spinning(database_url, tmp_path):
    import asyncio
    import os
    import signal
    import time

    from gateway.__main__ import RESTART_LIMIT
    from tests.test_shutdown import running_gateway

    async with running_gateway(database_url, tmp_path, workers=2) as gateway:
        deadline = time.monotonic() + 20
        for _ in range(RESTART_LIMIT + 1):
            children = _children(gateway.process.pid)
            os.kill(min(children), signal.SIGKILL)
            while gateway.process.poll() is None and min(children) in _children(gateway.process.pid):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        while gateway.process.poll() is None:
            assert time.monotonic() < deadline, gateway.log.read_text()
            await asyncio.sleep(0.05)
        assert gateway.process.returncode == 1
        log = gateway.log.read_text()
        assert log.count("started worker") == RESTART_LIMIT
        assert f"{RESTART_LIMIT + 1} workers died within 30s: stopping the server" in log


def test_a_database_that_answers_no_fails_the_start_at_once(database_url, tmp_path):
    import os
    import time

    missing = database_url.rsplit("/", 1)[0] + "/gateway_no_such_database"
    env = {name: value for name, value in os.environ.items() if not name.startswith("GF_")}
    env.update({"GF_DATABASE_URL": missing, "GF_DATABASE_WAIT_TIMEOUT": "60", "GF_PATHS_DATA": str(tmp_path)})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gateway", "migrate"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1 and time.monotonic() - started < 15
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: database ") and "refused the connection: InvalidCatalogNameError" in last


def test_a_port_in_use_fails_the_start_naming_the_address_not_the_database(database_url, tmp_path):
    import os
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            env = {name: value for name, value in os.environ.items() if not name.startswith("GF_")}
            env.update({"GF_DATABASE_URL": database_url, "GF_SERVER_HTTP_ADDR": "127.0.0.1",
                        "GF_SERVER_HTTP_PORT": str(port), "GF_SERVER_WORKERS": workers,
                        "GF_PATHS_PROVISIONING": str(tmp_path)})
            done = subprocess.run([sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True,
                                  timeout=60, check=False)
            assert done.returncode == 1
            last = done.stderr.strip().splitlines()[-1]
            assert last.startswith(f"gateway: cannot listen on 127.0.0.1:{port}: "), done.stderr
            assert "in use" in last


async def test_a_sibling_that_does_not_answer_a_scrape_counts_with_its_last_answer(database_url, tmp_path):
    import os
    import re
    import signal

    import aiohttp

    from tests.test_shutdown import running_gateway

    def total(text: str) -> float:  # requests counted by every worker whose samples the scrape holds
        return sum(float(value) for value in re.findall(
            r'^grafana_http_request_duration_seconds_count\{[^}]*\} (\S+)$', text, re.MULTILINE))

    # one kept-alive connection, opened while the other worker is stopped: every request below goes to one worker
    async with (running_gateway(database_url, tmp_path, workers=2) as gateway,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session):
        other = min(_children(gateway.process.pid))
        os.kill(other, signal.SIGSTOP)
        try:
            async with session.get(f"{gateway.url}/api/health") as response:
                assert response.status == 200
        finally:
            os.kill(other, signal.SIGCONT)
        async with session.get(f"{gateway.url}/metrics") as response:  # the other one answers its part
            before = await response.text()
        assert "\ngateway_workers 2.0\n" in before
        os.kill(other, signal.SIGSTOP)  # alive, but answers no sibling within the 2 s limit
        try:
            async with session.get(f"{gateway.url}/metrics") as response:
                during = await response.text()
        finally:
            os.kill(other, signal.SIGCONT)
        assert "\ngateway_workers 2.0\n" in during  # its last answer stands in for it
        assert total(during) >= total(before) > 0  # so no counter goes back
