"""Pooled keep-alive HTTP/1.1 client for the data source proxy hot path, built on asyncio and llhttp."""

from __future__ import annotations

import asyncio
import contextlib
import socket as _socket
import ssl as _ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from types import TracebackType
from typing import Any, NoReturn, cast

import httptools

__all__ = [
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamHeadersTooLarge",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]


class UpstreamError(Exception):
    """Base class for failures talking to an upstream."""


class UpstreamConnectError(UpstreamError):
    """The connection (TCP, DNS or TLS handshake) to the upstream could not be established."""


class UpstreamPoolClosed(UpstreamError):
    """The pool was closed before the request could be sent on it."""


class UpstreamTimeout(UpstreamError):
    """Connecting, sending the request, waiting for the response head or waiting for body bytes took too long."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent a malformed response or closed the connection before the response ended."""


class UpstreamHeadersTooLarge(UpstreamProtocolError):
    """The response head (1xx heads included) went past one of the pool's size limits."""


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_IDEMPOTENCY_KEYS = frozenset({"idempotency-key", "x-idempotency-key"})
# Lengths of "host", "connection", "content-length" and "transfer-encoding": only those names need lower().
_SPECIAL_NAME_LENGTHS = frozenset({4, 10, 14, 17})
_SMALL_BODY = 64 * 1024
_WRITE_HIGH = 512 * 1024
_WRITE_LOW = 128 * 1024
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_HttpParserErrors = (httptools.HttpParserError, httptools.HttpParserUpgrade)


def _set_keepalive(sock: Any, seconds: int) -> None:
    """TCP keep-alive probes after `seconds` idle, as Go's dialer KeepAlive ([dataproxy] keep_alive_seconds)."""
    if sock is None:
        return
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
    for option in ("TCP_KEEPIDLE", "TCP_KEEPINTVL"):
        if hasattr(_socket, option):
            sock.setsockopt(_socket.IPPROTO_TCP, getattr(_socket, option), seconds)


class _Conn(asyncio.BufferedProtocol):
    """One upstream connection; it parses into whichever response currently owns it."""

    __slots__ = (
        "_pool",
        "_rbuf",
        "closed",
        "counted",
        "drain_waiter",
        "idle_since",
        "in_idle",
        "opened",
        "resp",
        "reused",
        "transport",
        "write_paused",
    )

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        rbuf = pool._rbuf
        if rbuf is None:
            # Allocated with the pool's first connection, so a pool that never connects costs nothing;
            # large enough that one recv can move up to read_buffer bytes.
            rbuf = pool._rbuf = memoryview(bytearray(max(16 * 1024, min(pool._read_buffer, 1 << 20))))
        self._rbuf = rbuf
        self.resp: UpstreamResponse | None = None
        self.closed = False
        self.counted = True
        self.opened = False
        self.in_idle = False
        self.idle_since = 0.0
        self.reused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)
        if self._pool._keepalive > 0:
            _set_keepalive(transport.get_extra_info("socket"), self._pool._keepalive)
        self.opened = True
        self._pool._nopen += 1

    def get_buffer(self, sizehint: int) -> memoryview:
        # The receive buffer is safe to share between connections and pools on one loop: the loop (asyncio
        # or uvloop, TLS too) fills it and calls buffer_updated() synchronously, and feed_data() leaves
        # nothing pointing into it (httptools copies what it hands out or keeps for a partial header line).
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        resp = self.resp
        if resp is None:
            # Bytes on an idle connection mean the stream is out of sync.
            self.abort()
            return
        resp._got_bytes = True
        if not resp.status:
            self._feed_head(resp, nbytes)
            return
        try:
            resp._parser.feed_data(self._rbuf[:nbytes])
        except _HttpParserErrors as exc:
            resp._parse_failed(exc)

    def _feed_head(self, resp: UpstreamResponse, nbytes: int) -> None:
        """Feed a read that starts in the response head, which max_head_bytes bounds."""
        # httptools buffers a partial header line without any callback, so on_header cannot bound the head:
        # the bytes received until it is complete do (and on_headers_complete measures it when they exceed).
        resp._head_read += nbytes
        try:
            resp._parser.feed_data(self._rbuf[:nbytes])
        except _HttpParserErrors as exc:
            resp._parse_failed(exc)
            return
        limit = self._pool._max_head_bytes
        if not resp.status and resp._head_read > limit:
            resp._fail(UpstreamHeadersTooLarge(f"upstream response head exceeds {limit} bytes"))

    def eof_received(self) -> bool | None:
        if self.resp is None:
            self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        resp = self.resp
        if resp is not None:
            self.resp = None
            resp._on_lost(exc)
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamProtocolError("upstream closed the connection while sending"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write_until_paused(self, data: bytes | memoryview) -> memoryview | None:
        """Write data in pieces until the transport pauses; return what is left, if anything.

        Written whole, a large body would vanish from a TLS transport's write buffer at once (it encrypts it
        all into the socket transport beneath, whose buffer it does not count), so neither write_timeout nor
        the start of the head timer would see it; a plain transport would copy all it cannot send.
        """
        write = self.transport.write
        if len(data) <= _WRITE_HIGH:
            write(data)
            return None
        view = memoryview(data)
        while view:
            write(view[:_WRITE_HIGH])
            view = view[_WRITE_HIGH:]
            if self.write_paused:
                return view or None
        return None

    async def flush(self, limit: float) -> None:
        """Wait until the transport's write buffer is at or below the low-water mark, whether paused or not."""
        transport = self.transport
        if transport.get_write_buffer_size() <= _WRITE_LOW:
            return
        if not self.write_paused:
            # Transports report draining below the low-water mark only after pausing at the high one:
            # lowering the high mark for a moment pauses this one now, and restoring it does not resume it.
            transport.set_write_buffer_limits(high=_WRITE_LOW, low=_WRITE_LOW)
            transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)
            if not self.write_paused:
                return
        await self.drain(limit)

    async def drain(self, limit: float) -> None:
        """Wait until a paused transport's write buffer drains below the low-water mark.

        Fails once `limit` seconds pass in which the buffer did not shrink: one wait may take long for an
        upstream that reads slowly (the socket wakes the transport only once a good part of its own buffer
        is free), and only one that stops taking bytes is an error.
        """
        loop = self._pool._get_loop()
        transport = self.transport
        while self.write_paused:
            if self.closed:
                raise UpstreamProtocolError("upstream closed the connection while sending")
            queued = transport.get_write_buffer_size()
            fut = self.drain_waiter = loop.create_future()
            try:
                async with asyncio.timeout(limit):
                    await fut
            except TimeoutError:
                if transport.get_write_buffer_size() >= queued:
                    raise UpstreamTimeout("upstream stopped reading the request body") from None
            finally:
                self.drain_waiter = None

    def close(self) -> None:
        """Close gracefully (used for idle connections)."""
        self._shut(graceful=True)

    def abort(self) -> None:
        """Close at once, discarding unsent data (used for connections in an unknown state)."""
        self._shut(graceful=False)

    def _shut(self, *, graceful: bool) -> None:
        if not self.closed:
            self.closed = True
            self.resp = None
            opened = self.opened
            self._pool._forget(self)
            if opened:
                if graceful:
                    self.transport.close()
                else:
                    self.transport.abort()


class UpstreamResponse:
    """Response head plus a streaming body; release() or abort() must be called when done."""

    __slots__ = (
        "_body_sent",
        "_buffered",
        "_chunked",
        "_chunks",
        "_cl",
        "_complete",
        "_conn",
        "_exc",
        "_got_bytes",
        "_head_fut",
        "_head_parsed",
        "_head_read",
        "_header_timeout",
        "_interim",
        "_is_head",
        "_keep_alive",
        "_limit",
        "_lost_early",
        "_parser",
        "_pool",
        "_read_timeout",
        "_reason",
        "_released",
        "_reuse_ok",
        "_rpaused",
        "_sender",
        "_te",
        "_timer",
        "_until_close",
        "_waiter",
        "content_length",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Conn,
        head_fut: asyncio.Future[None],
        is_head: bool,
        reuse_ok: bool,
        read_timeout: float,
    ) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self._pool = pool
        self._conn = conn
        self._parser: Any = httptools.HttpResponseParser(self)
        self._head_fut = head_fut
        self._is_head = is_head
        self._reuse_ok = reuse_ok
        self._read_timeout = read_timeout
        self._header_timeout = 0.0
        self._limit = pool._read_buffer
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._reason = b""
        self._cl: int | None = None
        self._te = False
        self._chunked = False
        self._interim = False
        self._complete = False
        self._keep_alive = False
        self._until_close = False
        self._body_sent = False
        self._got_bytes = False
        self._head_read = 0
        self._head_parsed = 0
        self._lost_early = False
        self._rpaused = False
        self._released = False
        self._exc: UpstreamError | None = None

    def on_message_begin(self) -> None:
        if self._complete:
            # A second response nobody asked for: the connection is out of sync. Raising stops llhttp
            # before it parses a byte of it into this finished response (see _parse_failed).
            raise UpstreamProtocolError("upstream sent bytes after the end of its response")

    def on_status(self, status: bytes) -> None:
        self._reason += status
        limit = self._pool._max_field_size
        if len(self._reason) > limit:
            raise UpstreamHeadersTooLarge(f"upstream response status line exceeds {limit} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            return  # Chunked trailers: the head was already handed out, so they are dropped.
        nlen = len(name)
        vlen = len(value)
        pool = self._pool
        limit = pool._max_field_size
        if nlen > limit or vlen > limit or len(self.headers) >= pool._max_headers:
            self._head_too_large(nlen, vlen)
        # as aiohttp's server decodes what clients send: UTF-8, other bytes kept as surrogate escapes
        n = name.decode("utf-8", "surrogateescape")
        v = value.decode("utf-8", "surrogateescape")
        self.headers.append((n, v))
        if nlen == 14 or nlen == 17:
            lname = n.lower()
            if lname == "content-length":
                self._cl = int(v)
            elif lname == "transfer-encoding":
                self._te = True
                self._chunked = v.rstrip().lower().endswith("chunked")

    def _head_too_large(self, nlen: int, vlen: int) -> NoReturn:
        """Raise the error naming the limit the head went past (the message never quotes the upstream)."""
        pool = self._pool
        if nlen > pool._max_field_size or vlen > pool._max_field_size:
            raise UpstreamHeadersTooLarge(f"upstream response header field exceeds {pool._max_field_size} bytes")
        raise UpstreamHeadersTooLarge(f"upstream response has more than {pool._max_headers} header fields")

    def _measure_head(self) -> None:
        """Add this head's size to the heads before it (1xx), and fail if they exceed max_head_bytes."""
        # At least "HTTP/1.1 200" CRLF, the reason, "name:value" CRLF per field and the blank line.
        size = self._head_parsed + len(self._reason) + 16
        for name, value in self.headers:
            size += len(name.encode("utf-8", "surrogateescape")) + len(value.encode("utf-8", "surrogateescape")) + 3
        self._head_parsed = size
        limit = self._pool._max_head_bytes
        if size > limit:
            raise UpstreamHeadersTooLarge(f"upstream response head exceeds {limit} bytes")

    def on_headers_complete(self) -> None:
        parser = self._parser
        status: int = parser.get_status_code()
        # Everything received so far bounds the heads (_feed_head); only when that is more than the limit,
        # as when the head arrives with a large piece of body, must the head itself be measured. A 1xx head
        # is measured now, as its fields are about to be dropped but count toward the limit.
        if status < 200 or self._head_read > self._pool._max_head_bytes:
            self._measure_head()
        if status < 200:
            if status == 101:
                raise UpstreamProtocolError("upstream switched protocols, which the proxy does not support")
            # Interim 1xx response: forget it and wait for the final one.
            self._interim = True
            self.headers = []
            self._reason = b""
            self._cl = None
            self._te = self._chunked = False
            return
        self.status = status
        self.reason = self._reason.decode("latin-1")
        self.content_length = None if self._te else self._cl
        if self._is_head:
            # llhttp cannot be told the request was HEAD, so the message ends here by our decision;
            # any further bytes mark the connection unusable (see on_body / buffer_updated).
            self._complete = True
            self._keep_alive = parser.should_keep_alive()
        elif status != 204 and status != 304:
            self._until_close = self._cl is None and not self._chunked
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        fut = self._head_fut
        if not fut.done():
            fut.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._complete:
            # Only after a HEAD response, whose end llhttp does not know: the connection is out of sync.
            raise UpstreamProtocolError("upstream sent bytes after the end of its response")
        self._chunks.append(body)
        self._buffered += len(body)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._buffered > self._limit and not self._rpaused:
            self._rpaused = True
            self._conn.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _parse_failed(self, exc: BaseException) -> None:
        if self._complete:
            # Whatever follows a finished response is out of sync: keep the response, drop the connection.
            self._keep_alive = False
            self._conn.abort()
            return
        cause = exc.__context__
        err = (
            cause
            if isinstance(cause, UpstreamError)
            else UpstreamProtocolError(f"malformed response from upstream: {exc}")
        )
        self._fail(err)

    def _fail(self, err: UpstreamError) -> None:
        """Fail the exchange: reject the head future or poison the body, and drop the connection."""
        fut = self._head_fut
        if not fut.done():
            fut.set_exception(err)
        elif self._exc is None:
            self._exc = err
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._conn.abort()
        self._stop_sender()

    def _on_lost(self, exc: Exception | None) -> None:
        self._keep_alive = False
        if self._complete or self._exc is not None:
            return
        if not self._head_fut.done():
            if not self._got_bytes:
                self._lost_early = True
            self._fail(UpstreamProtocolError("upstream closed the connection before sending a response"))
            return
        if self._until_close and exc is None:
            self._complete = True
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        self._fail(UpstreamProtocolError("upstream closed the connection before the response body ended"))

    def _on_head_timeout(self) -> None:
        self._timer = None
        if not self._head_fut.done():
            self._fail(UpstreamTimeout("timed out waiting for the upstream response head"))

    def _on_read_timeout(self) -> None:
        if not self._complete and not self._chunks and self._exc is None:
            self._fail(UpstreamTimeout("timed out waiting for upstream response body bytes"))

    def _stop_sender(self) -> None:
        sender = self._sender
        if sender is not None:
            self._sender = None
            if not sender.done():
                sender.cancel()

    async def _send(
        self, stream: AsyncIterable[bytes] | None, length: int | None, rest: memoryview | None, write_timeout: float
    ) -> None:
        """Write the rest of the request body, wait until it has left, then start the head timer.

        Every wait for the upstream to take more bytes is bounded by write_timeout (see _Conn.drain).
        """
        conn = self._conn
        try:
            if stream is not None:
                await self._write_stream(stream, length, write_timeout)
            elif rest is not None:
                await self._write_rest(rest, write_timeout)
            if conn.closed:
                raise UpstreamProtocolError("upstream closed the connection while receiving the body")
            self._body_sent = True
            await conn.flush(write_timeout)
            if conn.closed:
                raise UpstreamProtocolError("upstream closed the connection while receiving the body")
            if not self._head_fut.done():
                # Like Go's ResponseHeaderTimeout, the head timer starts once the request is fully written:
                # here also out of the transport's buffer (down to its low-water mark), as write_timeout
                # bounds the time until then.
                self._timer = self._pool._get_loop().call_later(self._header_timeout, self._on_head_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._sender = None
            if self._complete:
                # The upstream already answered in full; it just did not take the whole upload.
                self._keep_alive = False
                return
            fut = self._head_fut
            if not fut.done():
                # Not an UpstreamError (e.g. the client upload broke): hand it to request() as is.
                fut.set_exception(exc)
                self._conn.abort()
            else:
                self._fail(
                    exc
                    if isinstance(exc, UpstreamError)
                    else UpstreamProtocolError(f"sending the request body failed: {exc!r}")
                )

    async def _write_stream(self, stream: AsyncIterable[bytes], length: int | None, write_timeout: float) -> None:
        conn = self._conn
        transport = conn.transport
        total = 0
        async for chunk in stream:
            if not chunk:
                continue
            if conn.closed:
                raise UpstreamProtocolError("upstream closed the connection while receiving the body")
            n = len(chunk)
            total += n
            if length is None:
                transport.writelines((b"%x\r\n" % n, chunk, _CRLF))
            elif total > length:
                raise UpstreamProtocolError("request body is longer than its declared content length")
            else:
                transport.write(chunk)
            if conn.write_paused:
                await conn.drain(write_timeout)
        if length is None:
            transport.write(_LAST_CHUNK)
        elif total != length:
            raise UpstreamProtocolError("request body is shorter than its declared content length")

    async def _write_rest(self, rest: memoryview | None, write_timeout: float) -> None:
        """Write what write_until_paused left of a bytes body, piece by piece as the transport drains."""
        conn = self._conn
        while rest is not None:
            await conn.drain(write_timeout)
            if conn.closed:
                raise UpstreamProtocolError("upstream closed the connection while receiving the body")
            rest = conn.write_until_paused(rest)

    def chunks(self) -> AsyncIterator[bytes]:
        """Iterate over the body as it arrives, joined into as large pieces as are buffered."""
        return self

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._rpaused:
                    self._rpaused = False
                    if not self._released:
                        self._conn.transport.resume_reading()
                return data
            if self._complete:
                self.release()
                raise StopAsyncIteration
            exc = self._exc
            if exc is not None:
                self.abort()
                raise exc
            loop = self._pool._get_loop()
            fut = self._waiter = loop.create_future()
            timer = loop.call_later(self._read_timeout, self._on_read_timeout)
            try:
                await fut
            except asyncio.CancelledError:
                self.abort()
                raise
            finally:
                timer.cancel()
                self._waiter = None

    async def read(self, limit: int) -> bytes:
        """Read the whole body, failing with UpstreamProtocolError if it is longer than limit bytes."""
        if self.content_length is not None and self.content_length > limit:
            self.abort()
            raise UpstreamProtocolError(f"upstream response body exceeds {limit} bytes")
        parts: list[bytes] = []
        total = 0
        async for chunk in self:
            total += len(chunk)
            if total > limit:
                self.abort()
                raise UpstreamProtocolError(f"upstream response body exceeds {limit} bytes")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Return the connection to the pool if the exchange ended cleanly, else close it."""
        if self._released:
            return
        self._released = True
        self._detach()
        conn = self._conn
        if conn.resp is self:
            conn.resp = None
        if (
            self._complete
            and self._keep_alive
            and self._body_sent
            and self._reuse_ok
            and not conn.closed
            # Request bytes still queued means the upstream answered without reading them all (like Go,
            # only a fully written request lets the connection be reused).
            and not conn.transport.get_write_buffer_size()
        ):
            if self._rpaused:
                self._rpaused = False
                conn.transport.resume_reading()
            self._pool._put_idle(conn)
        else:
            self._stop_sender()
            conn.abort()
            if not self._complete and self._exc is None:
                self._exc = UpstreamError("response was released before its end")

    def abort(self) -> None:
        """Close the connection now, whatever state the exchange is in."""
        if self._released:
            return
        self._released = True
        self._detach()
        self._stop_sender()
        self._conn.abort()
        if not self._complete and self._exc is None:
            self._exc = UpstreamError("response was aborted")

    def _detach(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        # Breaks the response <-> parser reference cycle so the pair is freed without the GC.
        self._parser = None
        self._chunks.clear()
        self._buffered = 0

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abort()


def _replayable(method: str, headers: Sequence[tuple[str, str]]) -> bool:
    """Go's Request.isReplayable: a safe method, or an idempotency key that lets the upstream deduplicate."""
    return method in _SAFE_METHODS or any(name.lower() in _IDEMPOTENCY_KEYS for name, _ in headers)


class UpstreamPool:
    """Keep-alive HTTP/1.1 connection pool for one upstream origin (scheme, host, port)."""

    __slots__ = (
        "_closed",
        "_connect_timeout",
        "_host",
        "_host_line",
        "_idle",
        "_idle_timeout",
        "_keepalive",
        "_loop",
        "_max_conns",
        "_max_field_size",
        "_max_head_bytes",
        "_max_headers",
        "_max_idle",
        "_nconns",
        "_nopen",
        "_port",
        "_rbuf",
        "_read_buffer",
        "_server_hostname",
        "_ssl",
        "_sweep",
        "_waiters",
    )

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
        tls_handshake_timeout: float = 10.0,
        max_conns: int = 0,
        max_idle: int = 100,
        idle_timeout: float = 90.0,
        read_buffer: int = 1 << 20,
        keepalive: float = 0.0,
        max_field_size: int = 8190,
        max_headers: int = 128,
        max_head_bytes: int = 64 * 1024,
        receive_buffer: memoryview | None = None,
    ) -> None:
        """The first options say where and how to connect (as Go's transport); the last ones how to read.

        receive_buffer is where connections take their socket reads: pools on one event loop may share one
        (see _Conn.get_buffer for why that is safe). Without it the pool allocates its own, sized by
        read_buffer (16 KiB to 1 MiB), on its first connection, so a pool that never connects costs nothing.
        A response buffers up to read_buffer bytes plus one read before reading pauses.

        max_field_size, max_headers and max_head_bytes bound what an upstream can make the pool buffer
        before the body. max_field_size is the longest header name, header value or status line reason, in
        bytes, and max_headers the most header fields in one head: both aiohttp's client defaults.
        max_head_bytes bounds the whole head, 1xx interim heads included (nginx refuses an upstream head
        beyond proxy_buffer_size, 4 or 8 KiB by default; Go allows 10 MiB). A response past any of them
        fails with UpstreamHeadersTooLarge.
        """
        self._host = host
        self._keepalive = int(keepalive)
        self._port = port
        self._ssl = ssl
        self._server_hostname = server_hostname if ssl is not None else None
        # Go's transport gives dialing and the TLS handshake a budget each; here they share one deadline
        self._connect_timeout = connect_timeout + (tls_handshake_timeout if ssl is not None else 0.0)
        self._max_conns = max_conns
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._read_buffer = read_buffer
        self._max_field_size = max_field_size
        self._max_headers = max_headers
        self._max_head_bytes = max_head_bytes
        if receive_buffer is not None and (
            receive_buffer.readonly or receive_buffer.format != "B" or receive_buffer.ndim != 1
            or not receive_buffer.c_contiguous or not receive_buffer.nbytes
        ):
            raise ValueError("receive_buffer must be a writable, contiguous, non-empty memoryview of bytes")
        self._rbuf = receive_buffer
        name = f"[{host}]" if ":" in host and not host.startswith("[") else host
        default_port = 443 if ssl is not None else 80
        self._host_line = f"Host: {name}\r\n" if port == default_port else f"Host: {name}:{port}\r\n"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_Conn] = []
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._nconns = 0
        self._nopen = 0
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def open_connections(self) -> int:
        """Number of established connections, idle or in use."""
        return self._nopen

    @property
    def idle_connections(self) -> int:
        """Number of idle keep-alive connections ready for reuse."""
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Number of requests waiting for a connection (max_conns reached)."""
        return len(self._waiters)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        content_length: int | None = None,
        header_timeout: float = 30.0,
        read_timeout: float = 60.0,
        write_timeout: float = 60.0,
    ) -> UpstreamResponse:
        """Send one request and return once the response head has arrived.

        Each timeout bounds one kind of wait, and each fails with UpstreamTimeout:
        - write_timeout: the longest the upstream may take to accept more request bytes, for bytes and
          streamed bodies alike: a wait for the transport's write buffer to drain below its low-water mark
          fails once write_timeout passes in which the buffer did not shrink ("upstream stopped reading
          the request body");
        - header_timeout: from when the whole request (head and body, bytes or streamed) has been written
          and the write buffer has drained below its low-water mark, until the final response head arrives;
        - read_timeout: the longest pause between response body bytes (UpstreamResponse reads).
        Connecting, and waiting for a free connection, is bounded by the pool's connect_timeout; waiting for
        a streamed body's own source is not bounded here.
        """
        if self._closed:
            raise UpstreamPoolClosed("upstream pool is closed")
        payload: bytes | None = None
        stream: AsyncIterable[bytes] | None = None
        if body is None:
            framing = "Content-Length: 0\r\n" if method in _BODY_METHODS else ""
        elif isinstance(body, bytes | bytearray | memoryview):
            payload = body if type(body) is bytes else bytes(body)
            if payload:
                framing = f"Content-Length: {len(payload)}\r\n"
            else:
                payload = None
                framing = "Content-Length: 0\r\n" if method in _BODY_METHODS else ""
        else:
            stream = body
            if content_length is not None and content_length < 0:
                raise ValueError("content_length must not be negative")
            if content_length is None:
                framing = "Transfer-Encoding: chunked\r\n"
            else:
                framing = f"Content-Length: {content_length}\r\n"
        head, reuse_ok = self._build_head(method, target, headers, framing)
        conn = self._pop_idle()
        if conn is None:
            conn = await self._acquire(fresh=False)
        resp = await self._exchange(
            conn, method, head, payload, stream, content_length, header_timeout, read_timeout, write_timeout,
            reuse_ok,
        )
        if resp is None:
            # A reused connection died before answering (the upstream closed it while idle). The upstream
            # may still have acted on it, so, as Go's transport, only a replayable request is sent again.
            if not _replayable(method, headers):
                raise UpstreamProtocolError("upstream closed a reused connection before sending a response")
            conn = await self._acquire(fresh=True)
            resp = await self._exchange(
                conn, method, head, payload, stream, content_length, header_timeout, read_timeout, write_timeout,
                reuse_ok,
            )
            if resp is None:
                raise UpstreamProtocolError("upstream closed the connection before sending a response")
        return resp

    def _build_head(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], framing: str
    ) -> tuple[bytes, bool]:
        parts = [method, " ", target, " HTTP/1.1\r\n"]
        append = parts.append
        has_host = False
        reuse_ok = True
        lines = 2
        for name, value in headers:
            if len(name) in _SPECIAL_NAME_LENGTHS:
                lname = name.lower()
                if lname == "host":
                    has_host = True
                elif lname == "content-length" or lname == "transfer-encoding":
                    continue
                elif lname == "connection" and "close" in value.lower():
                    reuse_ok = False
            append(f"{name}: {value}\r\n")
            lines += 1
        if not has_host:
            append(self._host_line)
            lines += 1
        if framing:
            append(framing)
            lines += 1
        append("\r\n")
        text = "".join(parts)
        # One cheap scan instead of per-value checks: any CR/LF smuggled in a value shows up here.
        if text.count("\n") != lines or text.count("\r") != lines or " " in target:
            raise ValueError("request line or header contains CR, LF or a misplaced space")
        # aiohttp's server decoded the client's header bytes as UTF-8 with surrogate escapes: this restores
        # them byte for byte (a value that cannot be encoded raises UnicodeEncodeError, a ValueError)
        return text.encode("utf-8", "surrogateescape"), reuse_ok

    async def _exchange(
        self,
        conn: _Conn,
        method: str,
        head: bytes,
        payload: bytes | None,
        stream: AsyncIterable[bytes] | None,
        content_length: int | None,
        header_timeout: float,
        read_timeout: float,
        write_timeout: float,
        reuse_ok: bool,
    ) -> UpstreamResponse | None:
        loop = self._get_loop()
        fut: asyncio.Future[None] = loop.create_future()
        resp = UpstreamResponse(self, conn, fut, method == "HEAD", reuse_ok, read_timeout)
        conn.resp = resp
        transport = conn.transport
        if stream is None:
            size = len(head)
            rest = None
            if payload is None:
                transport.write(head)
            elif len(payload) <= _SMALL_BODY:
                size += len(payload)
                transport.write(head + payload)
            else:
                size += len(payload)
                transport.write(head)
                rest = conn.write_until_paused(payload)
            # A request starts on an empty write buffer (only such connections are reused), so one no larger
            # than the low-water mark cannot leave more than that queued: the head timer starts now.
            if rest is None and (size <= _WRITE_LOW or transport.get_write_buffer_size() <= _WRITE_LOW):
                resp._body_sent = True
                resp._timer = loop.call_later(header_timeout, resp._on_head_timeout)
            else:
                resp._header_timeout = header_timeout
                resp._sender = loop.create_task(resp._send(None, None, rest, write_timeout))
        else:
            transport.write(head)
            resp._header_timeout = header_timeout
            resp._sender = loop.create_task(resp._send(stream, content_length, None, write_timeout))
        try:
            await fut
        except asyncio.CancelledError:
            resp.abort()
            raise
        except BaseException:
            resp.abort()
            if resp._lost_early and conn.reused and stream is None:
                return None
            raise
        return resp

    def _pop_idle(self) -> _Conn | None:
        idle = self._idle
        if not idle:
            return None
        now = self._get_loop().time()
        limit = self._idle_timeout
        while idle:
            conn = idle.pop()
            conn.in_idle = False
            if conn.closed or conn.transport.is_closing() or now - conn.idle_since >= limit:
                conn.close()
                continue
            return conn
        return None

    async def _acquire(self, *, fresh: bool) -> _Conn:
        loop = self._get_loop()
        deadline = loop.time() + self._connect_timeout
        while True:
            if self._closed:
                raise UpstreamPoolClosed("upstream pool is closed")
            max_conns = self._max_conns
            if fresh and max_conns and self._nconns >= max_conns and self._idle:
                self._idle[0].close()
            if not max_conns or self._nconns < max_conns:
                self._nconns += 1
                return await self._connect(deadline)
            fut: asyncio.Future[_Conn | None] = loop.create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    got = await fut
            except BaseException as exc:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._give_back(fut.result())
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeout(
                        f"timed out waiting for a free connection to {self._host}:{self._port}"
                    ) from exc
                raise
            if got is None:
                return await self._connect(deadline)
            if not got.closed:
                return got

    async def _connect(self, deadline: float) -> _Conn:
        """Open a new connection; the caller has already reserved its slot in _nconns."""
        loop = self._get_loop()
        conn = _Conn(self)
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError as exc:
            conn.abort()
            raise UpstreamTimeout(f"connecting to {self._host}:{self._port} timed out") from exc
        except OSError as exc:
            conn.abort()
            raise UpstreamConnectError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        except BaseException:
            conn.abort()
            raise
        if self._closed:
            conn.abort()
            raise UpstreamPoolClosed("upstream pool is closed")
        return conn

    def _give_back(self, got: _Conn | None) -> None:
        if got is None:
            self._nconns -= 1
            self._wake_slot()
        else:
            self._put_idle(got)

    def _wake_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self._nconns += 1
                waiter.set_result(None)
                return

    def _forget(self, conn: _Conn) -> None:
        """Account for a connection that is closing (idempotent)."""
        if conn.in_idle:
            conn.in_idle = False
            self._idle.remove(conn)
        if conn.opened:
            conn.opened = False
            self._nopen -= 1
        if conn.counted:
            conn.counted = False
            self._nconns -= 1
            if self._waiters:
                self._wake_slot()

    def _put_idle(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if self._closed:
            conn.close()
            return
        conn.reused = True
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        idle = self._idle
        if len(idle) >= self._max_idle:
            conn.close()
            return
        loop = self._get_loop()
        conn.idle_since = loop.time()
        conn.in_idle = True
        idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_at(conn.idle_since + self._idle_timeout, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._sweep = None
        idle = self._idle
        loop = self._get_loop()
        # Idle connections are appended in time order, so the oldest is always at the front.
        cutoff = loop.time() + 0.001 - self._idle_timeout
        while idle and idle[0].idle_since <= cutoff:
            idle[0].close()
        if idle:
            self._sweep = loop.call_at(idle[0].idle_since + self._idle_timeout, self._sweep_idle)

    async def close(self) -> None:
        """Close idle connections now and in-use ones when released; later requests fail."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle = self._idle
        while idle:
            idle[-1].close()
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamPoolClosed("upstream pool is closed"))
        # Let the transports deliver connection_lost before the caller moves on.
        await asyncio.sleep(0)
