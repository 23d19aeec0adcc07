"""Tests for gateway.http.pool against real loopback servers (aiohttp for well-behaved ones, raw asyncio otherwise)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from gateway.http.pool import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamHeadersTooLarge,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from tests.tls import make_tls

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# -- fixtures & helpers ------------------------------------------------------------------------------


class RawServer:
    """A raw asyncio TCP server that records connections and lets each test script the bytes."""

    def __init__(self, handler: RawHandler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.closed = 0
        self.closed_event = asyncio.Event()
        self.port = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # Cancelled only by stop(); returning normally keeps asyncio from logging it.
        finally:
            writer.close()
            self.closed += 1
            self.closed_event.set()
            self.tasks.discard(task)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def wait_closed(self, count: int, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while self.closed < count:
                self.closed_event.clear()
                await self.closed_event.wait()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def make(handler: RawHandler, tls: ssl.SSLContext | None = None) -> RawServer:
        srv = RawServer(handler, tls)
        await srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop()


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    """Read one request head; returns the request line and lower-cased headers."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    line, headers = await read_head(reader)
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return line, headers, body


async def drain_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


def peer(request: web.Request) -> Any:
    assert request.transport is not None
    return request.transport.get_extra_info("peername")


async def start_app(aiohttp_server: Any, routes: list[web.RouteDef], **kwargs: Any) -> Any:
    app = web.Application(client_max_size=1 << 30)
    app.add_routes(routes)
    return await aiohttp_server(app, **kwargs)


async def body_of(resp: UpstreamResponse) -> bytes:
    return await resp.read(1 << 30)


async def settle(pred: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def no_asyncio_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail on asyncio's own error reports (never-retrieved exceptions, destroyed pending tasks)."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    yield
    gc.collect()
    errors = [r.getMessage() for r in caplog.get_records("call") if r.name == "asyncio"]
    errors += [r.getMessage() for r in caplog.get_records("teardown") if r.name == "asyncio"]
    assert not errors


# -- keep-alive and response framing -----------------------------------------------------------------


async def test_keepalive_reuses_one_connection(aiohttp_server: Any) -> None:
    peers: list[Any] = []
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(peer(request))
        seen.append(dict(request.headers))
        return web.Response(text=f"hello {request.raw_path}")

    server = await start_app(aiohttp_server, [web.get("/hello", handler)])
    pool = UpstreamPool("127.0.0.1", server.port)
    for i in range(10):
        resp = await pool.request("GET", f"/hello?i={i}&q=a%20b", [("X-Test", "1")])
        assert resp.status == 200
        assert resp.reason == "OK"
        expected = f"hello /hello?i={i}&q=a%20b".encode()
        assert resp.content_length == len(expected)
        assert await body_of(resp) == expected
        resp.release()
    assert len(set(peers)) == 1
    assert pool.open_connections == 1
    assert pool.idle_connections == 1
    hdrs = seen[0]
    assert hdrs["Host"] == f"127.0.0.1:{server.port}"
    assert hdrs["X-Test"] == "1"
    assert "User-Agent" not in hdrs
    assert "Accept-Encoding" not in hdrs
    assert "Content-Length" not in hdrs
    await pool.close()
    assert pool.open_connections == 0


async def test_target_and_host_sent_verbatim(raw_server: Any) -> None:
    got: list[tuple[str, dict[str, str]]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await read_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    target = "/api/v1/query?query=up%7Bjob%3D%22x%22%7D&a=%2F..%2F&b=%zz"
    resp = await pool.request("GET", target, [("Host", "grafana.example"), ("Content-Length", "99")])
    assert await body_of(resp) == b""
    assert got[0][0] == f"GET {target} HTTP/1.1"
    assert got[0][1]["host"] == "grafana.example"
    assert "content-length" not in got[0][1]
    with pytest.raises(ValueError):
        await pool.request("GET", "/", [("X-Evil", "a\r\nX-Injected: 1")])
    with pytest.raises(ValueError):
        await pool.request("GET", "/a b", [])
    await pool.close()


async def test_default_port_omitted_from_host() -> None:
    pool = UpstreamPool("::1", 80)
    head, _ = pool._build_head("GET", "/", [], "")
    assert b"\r\nHost: [::1]\r\n" in head
    pool = UpstreamPool("example.com", 8080)
    head, _ = pool._build_head("GET", "/", [], "")
    assert b"\r\nHost: example.com:8080\r\n" in head


async def test_chunked_response_and_reuse(aiohttp_server: Any) -> None:
    peers: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(peer(request))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(20):
            await resp.write(b"%d," % i)
        await resp.write_eof()
        return resp

    server = await start_app(aiohttp_server, [web.get("/c", handler)])
    pool = UpstreamPool("127.0.0.1", server.port)
    expected = "".join(f"{i}," for i in range(20)).encode()
    for _ in range(3):
        resp = await pool.request("GET", "/c", [])
        assert resp.content_length is None
        assert any(k.lower() == "transfer-encoding" for k, _ in resp.headers)
        assert await body_of(resp) == expected
    assert len(set(peers)) == 1
    resp = await pool.request("GET", "/c", [])
    with pytest.raises(UpstreamProtocolError, match="exceeds"):
        await resp.read(10)
    assert pool.open_connections == 0
    await pool.close()


async def test_read_until_close_bodies(raw_server: Any) -> None:
    responses = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close-1",
        b"HTTP/1.0 200 OK\r\n\r\nuntil-close-2",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close-3",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(responses[srv.connections - 1])
        await writer.drain()

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    for i in range(3):
        resp = await pool.request("GET", "/", [])
        assert resp.content_length is None
        assert await body_of(resp) == b"until-close-%d" % (i + 1)
        assert pool.idle_connections == 0
    assert srv.connections == 3
    await settle(lambda: pool.open_connections == 0)
    await pool.close()


async def test_http10_and_connection_close_not_reused(raw_server: Any) -> None:
    responses = [
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(responses[srv.connections - 1])

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    for _ in range(4):
        resp = await pool.request("GET", "/", [])
        assert await body_of(resp) == b"ok"
    # Two non-reusable responses, then an HTTP/1.0 keep-alive connection serves the last two requests.
    assert srv.connections == 3
    assert pool.idle_connections == 1
    await pool.close()


async def test_large_body_arrives_intact_in_big_pieces(aiohttp_server: Any) -> None:
    total = 64 << 20
    block = bytes(range(256)) * 4096

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = total
        await resp.prepare(request)
        for i in range(total // len(block)):
            await resp.write(i.to_bytes(4, "big") + block[4:])
        return resp

    server = await start_app(aiohttp_server, [web.get("/big", handler)])
    pool = UpstreamPool("127.0.0.1", server.port)
    expected = 0
    for i in range(total // len(block)):
        expected = zlib.crc32(i.to_bytes(4, "big") + block[4:], expected)
    resp = await pool.request("GET", "/big", [])
    assert resp.content_length == total
    crc = 0
    sizes: list[int] = []
    async for chunk in resp.chunks():
        crc = zlib.crc32(chunk, crc)
        sizes.append(len(chunk))
    assert sum(sizes) == total
    assert crc == expected
    # Pieces are as large as whatever one receive (up to read_buffer) plus the backlog brought in.
    assert max(sizes) >= 512 * 1024
    assert sum(sizes) / len(sizes) >= 128 * 1024, f"average piece {sum(sizes) / len(sizes):.0f} bytes"
    assert pool.idle_connections == 1
    await pool.close()


async def test_read_buffer_pauses_reading(aiohttp_server: Any) -> None:
    total = 16 << 20

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = total
        await resp.prepare(request)
        piece = b"x" * (256 * 1024)
        for _ in range(total // len(piece)):
            await resp.write(piece)
        return resp

    server = await start_app(aiohttp_server, [web.get("/big", handler)])
    limit = 64 * 1024
    pool = UpstreamPool("127.0.0.1", server.port, read_buffer=limit)
    resp = await pool.request("GET", "/big", [])
    await asyncio.sleep(0.2)
    # At most one receive buffer (== read_buffer here) beyond the limit before reading pauses.
    assert resp._buffered <= 2 * limit
    got = 0
    async for chunk in resp.chunks():
        assert len(chunk) <= 2 * limit
        got += len(chunk)
    assert got == total
    await pool.close()


async def test_receive_buffer_is_allocated_lazily(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pools = [UpstreamPool("127.0.0.1", srv.port) for _ in range(300)]
    assert all(pool._rbuf is None for pool in pools)  # a pool that never connected holds no buffer
    pool = UpstreamPool("127.0.0.1", srv.port, read_buffer=64 * 1024)
    assert await body_of(await pool.request("GET", "/", [])) == b"ok"
    assert pool._rbuf is not None and len(pool._rbuf) == 64 * 1024
    await pool.close()
    for bad in (memoryview(b"read-only"), memoryview(bytearray()), memoryview(bytearray(64)).cast("I")):
        with pytest.raises(ValueError):
            UpstreamPool("127.0.0.1", srv.port, receive_buffer=bad)


async def test_pools_sharing_a_receive_buffer(raw_server: Any) -> None:
    def body(tag: bytes, n: int) -> bytes:
        return b"".join(b"%s:%07d;" % (tag, i) for i in range(n))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _ = await read_head(reader)
        tag = line.split()[1][1:].encode()
        data = body(tag, 40_000)  # several reads of the 16 KiB buffer per response
        chunked = tag.startswith(b"b")
        writer.write(b"HTTP/1.1 200 OK\r\n" + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked
                     else b"Content-Length: %d\r\n\r\n" % len(data)))
        for i in range(0, len(data), 7000):
            piece = data[i : i + 7000]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
            await asyncio.sleep(0.001)  # lets the other connections' bytes in between
        if chunked:
            writer.write(b"0\r\n\r\n")
        await drain_until_eof(reader)

    srv_a = await raw_server(handler)
    srv_b = await raw_server(handler)
    shared = memoryview(bytearray(16 * 1024))
    pool_a = UpstreamPool("127.0.0.1", srv_a.port, receive_buffer=shared)
    pool_b = UpstreamPool("127.0.0.1", srv_b.port, receive_buffer=shared)

    async def fetch(pool: UpstreamPool, tag: str) -> bytes:
        resp = await pool.request("GET", f"/{tag}", [])
        parts = []
        async for chunk in resp.chunks():
            parts.append(chunk)
            await asyncio.sleep(0)
        return b"".join(parts)

    tags = [f"{p}{i}" for i in range(4) for p in "ab"]
    got = await asyncio.gather(*(fetch(pool_a if t[0] == "a" else pool_b, t) for t in tags))
    for tag, data in zip(tags, got, strict=True):
        assert data == body(tag.encode(), 40_000), tag
    assert pool_a._rbuf is shared and pool_b._rbuf is shared
    assert pool_a.open_connections == 4 and pool_b.open_connections == 4
    await pool_a.close()
    await pool_b.close()


async def test_head_204_304_and_interim_responses(aiohttp_server: Any) -> None:
    peers: list[Any] = []

    async def data(request: web.Request) -> web.Response:
        peers.append(peer(request))
        return web.Response(body=b"d" * 1000)

    async def empty(request: web.Request) -> web.Response:
        peers.append(peer(request))
        return web.Response(status=int(request.query["s"]))

    server = await start_app(aiohttp_server, [web.get("/data", data), web.get("/empty", empty)])
    pool = UpstreamPool("127.0.0.1", server.port)
    resp = await pool.request("HEAD", "/data", [])
    assert resp.status == 200
    assert resp.content_length == 1000
    assert await body_of(resp) == b""
    for status in (204, 304):
        resp = await pool.request("GET", f"/empty?s={status}", [])
        assert resp.status == status
        assert await body_of(resp) == b""
    resp = await pool.request("GET", "/data", [])
    assert await body_of(resp) == b"d" * 1000
    resp = await pool.request("HEAD", "/data", [])
    async with resp:
        assert [c async for c in resp.chunks()] == []
    assert len(set(peers)) == 1
    assert pool.open_connections == 1
    await pool.close()


async def test_interim_1xx_is_skipped(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok"
        )
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request("POST", "/", [("Expect", "100-continue")], b"data")
    assert resp.status == 201
    assert resp.reason == "Created"
    assert resp.headers == [("Content-Length", "2"), ("X-A", "b")]
    assert await body_of(resp) == b"ok"
    await pool.close()


async def test_chunked_trailers_are_dropped(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
            )

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    for _ in range(2):
        resp = await pool.request("GET", "/", [])
        assert await body_of(resp) == b"abc"
        assert resp.headers == [("Transfer-Encoding", "chunked"), ("Trailer", "X-T")]
    assert srv.connections == 1
    await pool.close()


async def test_unsolicited_bytes_on_idle_connection(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await asyncio.sleep(0.05)
        writer.write(b"junk")
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request("GET", "/", [])
    assert await body_of(resp) == b"ok"
    assert pool.idle_connections == 1
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    assert pool.idle_connections == 0
    await pool.close()


async def test_unsolicited_extra_response_prevents_reuse(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    for _ in range(2):
        resp = await pool.request("GET", "/", [])
        assert await body_of(resp) == b"ok"
    assert srv.connections == 2
    await pool.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_bytes_after_a_finished_response_never_change_it(raw_server: Any, method: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        # One write, so the unsolicited answer arrives in the same read as the real one.
        first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-First: 1\r\n\r\n" + (b"ok" if method == "GET" else b"")
        writer.write(first + b"HTTP/1.1 500 Boom\r\nContent-Length: 4\r\nX-Second: 1\r\n\r\nboom")
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request(method, "/", [])
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.headers == [("Content-Length", "2"), ("X-First", "1")]
    assert resp.content_length == 2
    # The connection is out of sync: it closes at once, before the response is even read.
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    assert await body_of(resp) == (b"ok" if method == "GET" else b"")
    assert pool.idle_connections == 0
    resp = await pool.request(method, "/", [])
    assert resp.status == 200
    resp.release()
    assert srv.connections == 2
    await pool.close()


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes, again: bytes) -> None:
    """Write `first`, then `again` for as long as the client keeps the connection open."""
    writer.write(first)
    if not again:
        await drain_until_eof(reader)
        return
    while True:
        writer.write(again)
        await writer.drain()


OK_LINE = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize(
    ("first", "again", "message"),
    [
        # endless header lines (1 KiB each, so the total trips before the field count)
        (OK_LINE, b"X-Filler: " + b"v" * 1024 + b"\r\n", "head exceeds 65536 bytes"),
        # one header line that never ends: httptools buffers it without calling back
        (OK_LINE + b"X-Big: ", b"a" * 4096, "head exceeds 65536 bytes"),
        # a reason phrase that never ends
        (b"HTTP/1.1 200 ", b"O" * 4096, "status line exceeds 8190 bytes"),
        # one enormous but complete header value or name, in a single write
        (OK_LINE + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"", "field exceeds 8190 bytes"),
        (OK_LINE + b"b" * 9000 + b": 1\r\n\r\n", b"", "field exceeds 8190 bytes"),
        # too many (small) fields, in a single write
        (OK_LINE + b"X-A: 1\r\n" * 129 + b"\r\n", b"", "more than 128 header fields"),
        # a head too large as a whole though it arrives in one read
        (OK_LINE + (b"X-F: " + b"f" * 8000 + b"\r\n") * 9 + b"\r\n", b"", "head exceeds 65536 bytes"),
        # endless interim responses
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n", "head exceeds 65536 bytes"),
        (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", "head exceeds 65536 bytes"),
    ],
    ids=[
        "endless-lines", "endless-line", "endless-reason", "huge-value", "huge-name", "too-many-fields",
        "large-head-in-one-read", "endless-100", "endless-103",
    ],
)
async def test_response_head_is_bounded(raw_server: Any, first: bytes, again: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        if srv.connections == 1:
            await endless(reader, writer, first, again)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    t0 = time.monotonic()
    with pytest.raises(UpstreamHeadersTooLarge, match=message) as caught:
        await pool.request("GET", "/", [], header_timeout=10)
    assert time.monotonic() - t0 < 2
    assert isinstance(caught.value, UpstreamProtocolError)
    assert not any(filler in str(caught.value) for filler in ("vvv", "aaa", "OOO", "bbb", "fff"))
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    # The pool stays usable.
    resp = await pool.request("GET", "/", [])
    assert resp.status == 200
    assert await body_of(resp) == b"ok"
    await pool.close()


@pytest.mark.parametrize("body_size", [2, 300_000], ids=["small-body", "body-in-the-same-read"])
async def test_response_head_limits_are_configurable(raw_server: Any, body_size: int) -> None:
    # With a large body in the same read, more than max_head_bytes arrives at once: the head itself is measured.
    head = b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 100 + b"\r\nX-B: 1\r\nX-C: 2\r\nContent-Length: %d\r\n\r\n" % body_size
    body = b"b" * body_size

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(head + body)

    srv = await raw_server(handler)
    # Exactly the size of this head passes; the limits are inclusive.
    pool = UpstreamPool("127.0.0.1", srv.port, max_field_size=100, max_headers=4, max_head_bytes=len(head))
    resp = await pool.request("GET", "/", [])
    assert await body_of(resp) == body
    await pool.close()
    for kwargs, message in [
        ({"max_field_size": 99}, "field exceeds 99 bytes"),
        ({"max_headers": 3}, "more than 3 header fields"),
        ({"max_head_bytes": 100}, "head exceeds 100 bytes"),
    ]:
        pool = UpstreamPool("127.0.0.1", srv.port, **kwargs)
        with pytest.raises(UpstreamHeadersTooLarge, match=message):
            await pool.request("GET", "/", [])
        await pool.close()


# -- request bodies ----------------------------------------------------------------------------------


async def echo_digest(request: web.Request) -> web.Response:
    data = await request.read()
    return web.json_response(
        {
            "len": len(data),
            "sha": hashlib.sha256(data).hexdigest(),
            "cl": request.headers.get("Content-Length"),
            "te": request.headers.get("Transfer-Encoding"),
        }
    )


async def agen(pieces: list[bytes], delay: float = 0.0) -> AsyncIterator[bytes]:
    for piece in pieces:
        if delay:
            await asyncio.sleep(delay)
        yield piece


async def test_request_bodies(aiohttp_server: Any) -> None:
    server = await start_app(aiohttp_server, [web.route("*", "/echo", echo_digest)])
    pool = UpstreamPool("127.0.0.1", server.port)
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB
    pieces = [payload[i : i + 100_000] for i in range(0, len(payload), 100_000)]
    sha = hashlib.sha256(payload).hexdigest()

    resp = await pool.request("POST", "/echo", [], payload)
    assert json.loads(await body_of(resp)) == {"len": len(payload), "sha": sha, "cl": str(len(payload)), "te": None}

    resp = await pool.request("PUT", "/echo", [], agen(pieces), content_length=len(payload))
    assert json.loads(await body_of(resp)) == {"len": len(payload), "sha": sha, "cl": str(len(payload)), "te": None}

    resp = await pool.request("POST", "/echo", [], agen([b"", *pieces, b""], delay=0.001))
    assert json.loads(await body_of(resp)) == {"len": len(payload), "sha": sha, "cl": None, "te": "chunked"}

    resp = await pool.request("POST", "/echo", [], b"small")
    assert json.loads(await body_of(resp))["len"] == 5

    resp = await pool.request("POST", "/echo", [])
    assert json.loads(await body_of(resp))["cl"] == "0"
    resp = await pool.request("GET", "/echo", [], b"")
    assert json.loads(await body_of(resp))["cl"] is None

    assert pool.open_connections == 1
    await pool.close()


async def test_request_body_length_mismatch(aiohttp_server: Any) -> None:
    server = await start_app(aiohttp_server, [web.post("/echo", echo_digest)])
    pool = UpstreamPool("127.0.0.1", server.port)
    with pytest.raises(UpstreamProtocolError, match="longer"):
        await pool.request("POST", "/echo", [], agen([b"abc", b"def"]), content_length=4)
    with pytest.raises(UpstreamProtocolError, match="shorter"):
        await pool.request("POST", "/echo", [], agen([b"abc"]), content_length=4)
    await settle(lambda: pool.open_connections == 0)

    class Broken(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise Broken

    with pytest.raises(Broken):
        await pool.request("POST", "/echo", [], broken())
    await settle(lambda: pool.open_connections == 0)
    resp = await pool.request("POST", "/echo", [], b"ok")
    assert json.loads(await body_of(resp))["len"] == 2
    await pool.close()


def kernel_buffer_limit() -> int:
    """Upper bound of what loopback socket buffers can absorb (send + receive autotuning maxima)."""
    total = 0
    for name in ("tcp_wmem", "tcp_rmem"):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as f:
                total += int(f.read().split()[2])
        except (OSError, ValueError, IndexError):
            total += 32 << 20
    return total


async def test_streamed_upload_has_backpressure(raw_server: Any) -> None:
    total = max(64 << 20, 2 * kernel_buffer_limit())
    piece = b"u" * (256 * 1024)
    produced = 0
    resume = asyncio.Event()
    received = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await read_head(reader)
        received += len(await reader.readexactly(1 << 20))
        await resume.wait()
        while received < total:
            data = await reader.read(1 << 20)
            if not data:
                break
            received += len(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        await drain_until_eof(reader)

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(total // len(piece)):
            produced += len(piece)
            yield piece

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    task = asyncio.create_task(pool.request("POST", "/", [], body(), content_length=total))
    # Wait for the producer to stall: while the upstream does not read, only kernel socket buffers
    # plus the transport's high-water mark can be in flight, never the whole body.
    seen = -1
    async with asyncio.timeout(5):
        while produced != seen:
            seen = produced
            await asyncio.sleep(0.2)
    assert produced < total // 2, produced
    resume.set()
    resp = await task
    assert await body_of(resp) == b"done"
    assert received == total
    assert pool.idle_connections == 1
    await pool.close()


async def test_early_response_before_upload_finished(raw_server: Any) -> None:
    released = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
        # Only start swallowing the upload once the client has made its reuse decision.
        await released.wait()
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        piece = b"z" * (256 * 1024)
        while True:
            sent += len(piece)
            yield piece

    resp = await pool.request("POST", "/upload", [], endless(), header_timeout=5)
    assert resp.status == 413
    assert await body_of(resp) == b"too big!"
    released.set()
    # The upload never finished, so the keep-alive response must not lead to reuse.
    assert pool.idle_connections == 0
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    assert sent > 0

    # Same with a bytes body: whatever is still queued when the answer arrives forbids reuse.
    released.clear()
    resp = await pool.request("POST", "/upload", [], b"b" * (kernel_buffer_limit() + (8 << 20)))
    assert resp.status == 413
    assert await body_of(resp) == b"too big!"
    released.set()
    await srv.wait_closed(2)
    assert srv.connections == 2
    assert pool.open_connections == 0
    await pool.close()


# -- failures ------------------------------------------------------------------------------------------


async def test_upstream_closes_mid_body(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 500)
        await writer.drain()

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request("GET", "/", [])
    got = b""
    with pytest.raises(UpstreamProtocolError):
        async for chunk in resp.chunks():
            got += chunk
    assert got == b"a" * 500
    resp.release()
    assert pool.open_connections == 0

    async def chunked_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    srv = await raw_server(chunked_handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request("GET", "/", [])
    with pytest.raises(UpstreamProtocolError):
        await body_of(resp)
    await pool.close()


async def test_consumer_abort_closes_connection(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n" + b"a" * 65536)
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request("GET", "/", [])
    async for _chunk in resp.chunks():
        break
    resp.abort()
    resp.abort()
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    with pytest.raises(UpstreamError):
        await resp.__anext__()

    # Leaving an `async with` block early with an exception aborts too.
    with pytest.raises(RuntimeError):
        async with await pool.request("GET", "/", []) as resp:
            raise RuntimeError
    await srv.wait_closed(2)

    # Releasing before the end closes rather than reuses.
    resp = await pool.request("GET", "/", [])
    resp.release()
    await srv.wait_closed(3)
    assert srv.connections == 3
    assert pool.open_connections == 0

    resp = await pool.request("GET", "/", [])
    with pytest.raises(UpstreamProtocolError, match="exceeds"):
        await resp.read(1000)
    await srv.wait_closed(4)
    await pool.close()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"",
    ],
)
async def test_malformed_responses(raw_server: Any, response: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(response)
        await writer.drain()

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    with pytest.raises(UpstreamProtocolError):
        await pool.request("GET", "/", [])
    await settle(lambda: pool.open_connections == 0)
    await pool.close()


async def test_malformed_chunk_mid_body(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"zz\r\n")
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request("GET", "/", [])
    assert await resp.__anext__() == b"abc"
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        await resp.__anext__()
    await srv.wait_closed(1)
    await pool.close()


async def test_connect_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    pool = UpstreamPool("127.0.0.1", port)
    with pytest.raises(UpstreamConnectError):
        await pool.request("GET", "/", [])
    assert pool.open_connections == 0
    assert pool._nconns == 0
    pool = UpstreamPool("does-not-exist.invalid", 80, connect_timeout=5)
    with pytest.raises(UpstreamConnectError):
        await pool.request("GET", "/", [])


async def test_connect_timeout() -> None:
    # A listener with backlog 0 whose accept queue is already full drops further SYNs, so connect hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    try:
        await asyncio.sleep(0.05)
        pool = UpstreamPool("127.0.0.1", port, connect_timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await pool.request("GET", "/", [])
        assert 0.25 < time.monotonic() - t0 < 2
        assert pool._nconns == 0
        assert pool.open_connections == 0
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_header_timeout(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await pool.request("GET", "/", [], header_timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    # With a streamed body the head timer starts only once the body is written.
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await pool.request("POST", "/", [], agen([b"a"] * 3, delay=0.1), header_timeout=0.2)
    assert time.monotonic() - t0 > 0.45
    await pool.close()


def upload(total: int, streamed: bool) -> tuple[bytes | AsyncIterator[bytes], int | None]:
    """A body of `total` bytes, as bytes or as a stream of 256 KiB pieces with that content length."""
    if not streamed:
        return b"w" * total, None
    piece = b"w" * (256 * 1024)
    return agen([piece] * (total // len(piece)) + [b"w" * (total % len(piece))]), total


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("streamed", [False, True], ids=["bytes", "streamed"])
async def test_write_timeout_when_the_upstream_stops_reading(
    raw_server: Any, tmp_path: Any, streamed: bool, tls: bool
) -> None:
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await done.wait()  # never reads the body
        await drain_until_eof(reader)

    server_ctx, ca_pem = make_tls(tmp_path)
    srv = await raw_server(handler, server_ctx if tls else None)
    # (A TLS transport that is handed a large body at once passes it all to the socket transport beneath,
    # whose buffer it does not count: only writing it piece by piece keeps the upload visible.)
    client_ctx = ssl.create_default_context(cadata=ca_pem.decode()) if tls else None
    pool = UpstreamPool("127.0.0.1", srv.port, ssl=client_ctx)
    body, length = upload(kernel_buffer_limit() + (8 << 20), streamed)
    t0 = time.monotonic()
    # Neither the header timeout nor the read timeout applies while the request is being sent.
    with pytest.raises(UpstreamTimeout, match="stopped reading the request body"):
        await pool.request("POST", "/", [], body, content_length=length, header_timeout=10, read_timeout=10,
                           write_timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 3
    done.set()
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    await pool.close()


@pytest.mark.parametrize("streamed", [False, True], ids=["bytes", "streamed"])
async def test_slow_upload_trips_neither_header_nor_write_timeout(raw_server: Any, streamed: bool) -> None:
    total = 4 << 20
    small = 64 * 1024  # socket buffers, so that the client's write buffer stays full while the upstream reads

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, small)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await read_head(reader)
        received = 0
        # Slowly (1 MiB in 0.8 s), for longer than both timeouts, but never pausing as long as either ...
        while received < (1 << 20):
            received += len(await reader.read(small))
            await asyncio.sleep(0.05)
        # ... then the rest (more than the socket buffers hold) at once, and the answer after the last byte.
        while received < total:
            received += len(await reader.read(1 << 20))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(received)), received))
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    assert await body_of(await pool.request("GET", "/", [])) == b""
    pool._idle[0].transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small)
    body, length = upload(total, streamed)
    t0 = time.monotonic()
    resp = await pool.request("POST", "/", [], body, content_length=length, header_timeout=0.3, write_timeout=0.3)
    assert time.monotonic() - t0 > 0.7
    assert await body_of(resp) == str(total).encode()
    assert srv.connections == 1
    await pool.close()


async def test_tls_handshake_that_never_completes_times_out(raw_server: Any) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await drain_until_eof(reader)  # accepts TCP, never answers the ClientHello

    srv = await raw_server(silent)
    pool = UpstreamPool("127.0.0.1", srv.port, ssl=ssl.create_default_context(), connect_timeout=0.1,
                        tls_handshake_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await pool.request("GET", "/", [])
    assert 0.35 < time.monotonic() - t0 < 2  # the dial budget plus the handshake budget
    assert pool.open_connections == 0
    await pool.close()


async def test_idle_read_timeout(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"p" * 10)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"q" * 10)
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request("GET", "/", [], read_timeout=0.3)
    chunks = []
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        async for chunk in resp.chunks():
            chunks.append(chunk)
    assert b"".join(chunks) == b"p" * 10 + b"q" * 10
    assert 0.3 < time.monotonic() - t0 < 2
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    await pool.close()


# -- TLS -------------------------------------------------------------------------------------------------


async def test_tls(aiohttp_server: Any, tmp_path: Any) -> None:
    peers: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(peer(request))
        return web.Response(body=b"secure " + request.host.encode() + b" " * 300_000)

    server_ctx, ca_pem = make_tls(tmp_path)
    server = await start_app(aiohttp_server, [web.get("/", handler)], ssl=server_ctx)

    trusting = ssl.create_default_context(cadata=ca_pem.decode())
    pool = UpstreamPool("127.0.0.1", server.port, ssl=trusting)
    for _ in range(3):
        resp = await pool.request("GET", "/", [])
        body = await body_of(resp)
        assert body.startswith(f"secure 127.0.0.1:{server.port} ".encode())
        assert len(body) == len(f"secure 127.0.0.1:{server.port}") + 300_000
    assert len(set(peers)) == 1
    await pool.close()

    pool = UpstreamPool("127.0.0.1", server.port, ssl=trusting, server_hostname="upstream.test")
    resp = await pool.request("GET", "/", [("Host", "upstream.test")])
    assert (await body_of(resp)).startswith(b"secure upstream.test ")
    await pool.close()

    pool = UpstreamPool("127.0.0.1", server.port, ssl=trusting, server_hostname="wrong.test")
    with pytest.raises(UpstreamConnectError):
        await pool.request("GET", "/", [])
    await pool.close()

    pool = UpstreamPool("127.0.0.1", server.port, ssl=ssl.create_default_context())
    with pytest.raises(UpstreamConnectError):
        await pool.request("GET", "/", [])
    assert pool.open_connections == 0
    await pool.close()

    # The Host header omits the default port for https.
    pool = UpstreamPool("upstream.test", 443, ssl=trusting)
    head, _ = pool._build_head("GET", "/", [], "")
    assert b"\r\nHost: upstream.test\r\n" in head


# -- pool behaviour ----------------------------------------------------------------------------------------


async def test_pool_limit(aiohttp_server: Any) -> None:
    peers: set[Any] = set()
    active = 0
    max_active = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal active, max_active
        peers.add(peer(request))
        active += 1
        max_active = max(max_active, active)
        await asyncio.sleep(0.1)
        active -= 1
        return web.Response(text="slow")

    server = await start_app(aiohttp_server, [web.get("/slow", handler)])
    pool = UpstreamPool("127.0.0.1", server.port, max_conns=2)
    opened: list[int] = []

    async def one() -> bytes:
        resp = await pool.request("GET", "/slow", [])
        opened.append(pool.open_connections)
        return await body_of(resp)

    results = await asyncio.gather(*(one() for _ in range(5)))
    assert results == [b"slow"] * 5
    assert len(peers) <= 2
    assert max_active <= 2
    assert max(opened) <= 2
    assert pool.open_connections <= 2

    # Waiting for a free connection counts against connect_timeout.
    pool2 = UpstreamPool("127.0.0.1", server.port, max_conns=1, connect_timeout=0.2)
    held = await pool2.request("GET", "/slow", [])
    with pytest.raises(UpstreamTimeout):
        await pool2.request("GET", "/slow", [])
    assert await body_of(held) == b"slow"
    resp = await pool2.request("GET", "/slow", [])
    assert await body_of(resp) == b"slow"
    assert pool2.open_connections == 1

    # A cancelled waiter does not leak its place; close() fails the remaining waiters.
    held = await pool2.request("GET", "/slow", [])
    waiter = asyncio.create_task(pool2.request("GET", "/slow", []))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await body_of(held) == b"slow"
    pool3 = UpstreamPool("127.0.0.1", server.port, max_conns=1)
    held = await pool3.request("GET", "/slow", [])
    waiter = asyncio.create_task(pool3.request("GET", "/slow", []))
    await asyncio.sleep(0.01)
    await pool3.close()
    with pytest.raises(UpstreamError):
        await waiter
    held.release()
    await pool.close()
    await pool2.close()


async def test_stale_keepalive_connection_is_retried_for_replayable_requests(raw_server: Any) -> None:
    bodies: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_no = srv.connections
        served = 0
        while True:
            _, _, body = await read_request(reader)
            if served == 1:
                return  # Simulates the upstream's idle timer racing with our second request.
            bodies.append(body)
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nconn%d" % (len(b"connN"), conn_no))

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port, max_conns=1)
    resp = await pool.request("GET", "/", [])
    assert await body_of(resp) == b"conn1"
    resp = await pool.request("GET", "/again", [])  # a safe method is sent again on a new connection
    assert await body_of(resp) == b"conn2"
    # a POST may have been acted on, so it is not replayed (as Go's transport) ...
    with pytest.raises(UpstreamProtocolError):
        await pool.request("POST", "/", [], b"not twice")
    assert srv.connections == 2
    resp = await pool.request("POST", "/", [], b"first")  # (on a new connection, which answers)
    assert await body_of(resp) == b"conn3"
    # ... unless it carries an idempotency key
    resp = await pool.request("POST", "/", [("Idempotency-Key", "k1")], b"replay me")
    assert await body_of(resp) == b"conn4"
    assert bodies == [b"", b"", b"first", b"replay me"]
    assert srv.connections == 4

    # A streamed body cannot be replayed, so the failure surfaces.
    async def handler2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await read_head(reader)

    srv2 = await raw_server(handler2)
    pool2 = UpstreamPool("127.0.0.1", srv2.port)
    resp = await pool2.request("GET", "/", [])
    assert await body_of(resp) == b"ok"
    with pytest.raises(UpstreamProtocolError):
        await pool2.request("POST", "/", [], agen([b"x"]))
    assert srv2.connections == 1
    await pool.close()
    await pool2.close()


async def test_idle_connection_closed_by_server(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Close the keep-alive connection while the client holds it idle.

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    resp = await pool.request("GET", "/", [])
    assert await body_of(resp) == b"ok"
    await srv.wait_closed(1)
    await settle(lambda: pool.open_connections == 0)
    assert pool.idle_connections == 0
    resp = await pool.request("GET", "/", [])
    assert await body_of(resp) == b"ok"
    await pool.close()


async def test_idle_timeout_and_max_idle(aiohttp_server: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response(text="x")

    server = await start_app(aiohttp_server, [web.get("/", handler)])
    pool = UpstreamPool("127.0.0.1", server.port, idle_timeout=0.25, max_idle=2)
    resps = await asyncio.gather(*(pool.request("GET", "/", []) for _ in range(4)))
    assert pool.open_connections == 4
    for resp in resps:
        assert await body_of(resp) == b"x"
    assert pool.idle_connections == 2
    await settle(lambda: pool.open_connections == 2)
    await asyncio.sleep(0.5)
    assert pool.idle_connections == 0
    assert pool.open_connections == 0
    await pool.close()


async def test_cancellation_closes_connection(raw_server: Any) -> None:
    got_request = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        got_request.set()
        if srv.connections == 2:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    pending = asyncio.create_task(pool.request("GET", "/", []))
    await got_request.wait()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await srv.wait_closed(1)
    assert pool.open_connections == 0

    resp = await pool.request("GET", "/", [])

    async def consume() -> None:
        async for _ in resp.chunks():
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await srv.wait_closed(2)
    assert pool.open_connections == 0
    assert pool._nconns == 0
    await pool.close()


async def test_cancellation_during_streamed_upload(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await drain_until_eof(reader)

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    finished = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"s" * 1024
                await asyncio.sleep(0.01)
        finally:
            finished.set()

    task = asyncio.create_task(pool.request("POST", "/", [], slow()))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await srv.wait_closed(1)
    assert pool.open_connections == 0
    async with asyncio.timeout(1):
        await finished.wait()
    await pool.close()


async def test_close_closes_idle_connections(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    srv = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", srv.port)
    a, b = await asyncio.gather(pool.request("GET", "/", []), pool.request("GET", "/", []))
    assert await body_of(a) == b"ok"
    c = await pool.request("GET", "/", [])  # reuses a's connection while b is still checked out
    assert pool.idle_connections == 0
    assert await body_of(c) == b"ok"
    await pool.close()
    assert pool.idle_connections == 0
    await srv.wait_closed(1)
    assert pool.open_connections == 1
    # The in-use connection closes when released.
    assert await b.read(10) == b"ok"
    await srv.wait_closed(2)
    assert pool.open_connections == 0
    with pytest.raises(UpstreamError):
        await pool.request("GET", "/", [])
