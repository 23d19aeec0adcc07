"""The one seam for HTTP calls to a data source.

`DataSourceClient.open()` streams (the proxy), `fetch()` buffers (health, resources, queries) and
`websocket()` bridges; all three go through `_prepare()`, which applies the whitelist and the type's
route rules and injects the data source's credentials. Every call is reported to the observers with its
outcome and time; failures are raised as the pool's `UpstreamError`s (a fetch's deadline included),
which `errors.translate` maps in one place. `Clients` holds what every client of one worker shares: the
receive buffer, the default TLS context, the WebSocket session and the call observer (metrics).
Every call carries the current request's W3C `traceparent` (gateway.logs).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import posixpath
import ssl
import tempfile
import time
import zlib
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from typing import NoReturn, Protocol
from urllib.parse import urlsplit

import aiohttp
import msgspec
from yarl import URL

from gateway.config import Config
from gateway.datasources.models import (
    HEADER_NAME,
    DataSource,
    custom_header_names,
    is_valid_header_value,
    validate_url,
)
from gateway.errors import (
    GatewayError,
    InvalidDataSourceURL,
    TLSConfigError,
    UpstreamRequestInvalid,
    UpstreamUnavailable,
    not_whitelisted,
)
from gateway.http.pool import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamPoolClosed,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from gateway.logs import current

log = logging.getLogger("gateway.client")

# (role of the caller or None for gateway's own calls, method, path as sent, relative to the data source URL)
RouteRules = Callable[[str | None, str, str], None]


class CallObserver(Protocol):
    """What watches every call to a data source (gateway.metrics.Metrics)."""

    def begin(self, ds: DataSource) -> None:
        """A call starts (in flight)."""

    def end(self, ds: DataSource, method: str, outcome: str, seconds: float, streamed: bool) -> None:
        """A call ended: `outcome` is the HTTP status or the error's class name (`CancelledError` when the
        caller left); `seconds` to the response head when `streamed` (the proxy), else to the last byte."""

    def body(self, ds: DataSource, size: int) -> None:
        """A response body was read or relayed whole: `size` bytes as received."""


RECEIVE_BUFFER = 1 << 20
FETCH_LIMIT = 16 << 20


class Answer(msgspec.Struct):
    """A whole, bounded answer: status, headers (decoded body: no Content-Encoding) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def basic(user: str, password: str) -> str:
    """An Authorization header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def clean_path(path: str) -> str:
    """A decoded relative path as Go's path.Clean("/" + path) leaves it, without the leading slash:
    `.`, `..` and empty segments resolved, never above the root (Grafana's CleanRelativePath)."""
    return posixpath.normpath("/" + path).lstrip("/")


def join_path(base: str, suffix: str) -> str:
    """Grafana's JoinURLFragments: one slash at the join, `base` unchanged when suffix is empty."""
    if not suffix:
        return base or "/"
    if base.endswith("/") and suffix.startswith("/"):
        return base + suffix[1:]
    if not base.endswith("/") and not suffix.startswith("/"):
        return base + "/" + suffix
    return base + suffix


class Clients:
    """What every data source client of one worker shares, and the factory of those clients."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.observer: CallObserver | None = None
        self._buffer: memoryview | None = None
        self._tls: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None

    def receive_buffer(self) -> memoryview:
        """The receive buffer every upstream connection of this worker reads into (one event loop)."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(RECEIVE_BUFFER))
        return self._buffer

    def default_tls(self) -> ssl.SSLContext:
        """The system CAs, loaded once, for every data source without TLS settings of its own."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def session(self) -> aiohttp.ClientSession:
        """The session for WebSocket bridging: no cookie jar (nothing one caller caused reaches another),
        no connection cap of its own, explicit timeouts."""
        if self._session is None:
            proxy = self.config.dataproxy
            timeout = aiohttp.ClientTimeout(total=None, connect=proxy.dial_timeout, sock_connect=proxy.dial_timeout,
                                            sock_read=proxy.timeout)
            self._session = aiohttp.ClientSession(
                timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=100, force_close=True),
            )
        return self._session

    def open(self, ds: DataSource, secrets: Mapping[str, str], rules: RouteRules) -> DataSourceClient:
        """A client for one data source version; raises InvalidDataSourceURL or TLSConfigError."""
        return DataSourceClient(ds, secrets, self, rules)

    async def close(self) -> None:
        """Close the WebSocket session."""
        if self._session is not None:
            await self._session.close()


class DataSourceClient:
    """Everything needed to call one data source over HTTP: built once per data source version, then reused."""

    def __init__(self, ds: DataSource, secrets: Mapping[str, str], clients: Clients, rules: RouteRules) -> None:
        try:
            target = urlsplit(validate_url(ds.type, ds.url))
        except GatewayError:
            raise InvalidDataSourceURL(ds.url) from None
        config = clients.config
        self.ds = ds
        self.scheme = target.scheme.lower()
        self.host = target.hostname or ""
        self.netloc = target.netloc.rpartition("@")[2]  # host[:port] as written, for the whitelist
        self.base_path = target.path
        self.server_name = str(ds.options.get("serverName") or "") or None
        self.timeout = _positive_float(ds.options.get("timeout")) or config.dataproxy.timeout
        self.tls = _tls_context(ds, secrets, clients) if self.scheme == "https" and self.host else None
        self._clients = clients
        self._rules = rules
        self._whitelist = config.security.data_source_proxy_whitelist
        self.pool: UpstreamPool | None = None
        if self.host:
            proxy = config.dataproxy
            self.pool = UpstreamPool(
                self.host, target.port or (443 if self.scheme == "https" else 80), ssl=self.tls,
                server_hostname=self.server_name, connect_timeout=proxy.dial_timeout,
                tls_handshake_timeout=proxy.tls_handshake_timeout_seconds,
                max_conns=proxy.max_conns_per_host, max_idle=proxy.max_idle_connections,
                idle_timeout=proxy.idle_conn_timeout_seconds, keepalive=proxy.keep_alive_seconds,
                receive_buffer=clients.receive_buffer(),
            )
        if ds.basic_auth:
            self._authorization: str | None = basic(ds.basic_auth_user, secrets.get("basicAuthPassword", ""))
        elif ds.user:
            self._authorization = basic(ds.user, secrets.get("password", ""))
        else:
            self._authorization = None
        self._custom: list[tuple[str, str]] = []
        self._sendable = True
        for n, name in custom_header_names(ds.options):
            value = secrets.get(f"httpHeaderValue{n}")
            if value is None:
                continue
            if not HEADER_NAME.fullmatch(name) or not is_valid_header_value(value):
                self._sendable = False  # Go's transport refuses the whole request, so do we
            self._custom.append((name, value))
        self.custom_names = frozenset(name.lower() for name, _ in self._custom)

    def _prepare(self, method: str, path: str, query: str, headers: Sequence[tuple[str, str]],
                 role: str | None, authorization: str | None) -> tuple[str, list[tuple[str, str]]]:
        """The checks every call passes, then the request-target and the headers with credentials injected:
        the caller's `authorization` if given (the proxy's X-DS-Authorization), else the data source's;
        configured custom headers replace any header of the same name (a custom Host included)."""
        if self._whitelist and self.netloc and self.netloc not in self._whitelist:
            raise not_whitelisted()
        self._rules(role, method, path)
        if self.pool is None:
            raise UpstreamConnectError("the data source URL has no host")
        if not self._sendable:
            raise UpstreamRequestInvalid()
        out = [(name, value) for name, value in headers if name.lower() != "traceparent"]
        context = current.get()
        if context is not None:
            out.append(("traceparent", context.traceparent))
        authorization = authorization or self._authorization
        if authorization:
            out.append(("Authorization", authorization))
        if self._custom:
            out = [(name, value) for name, value in out if name.lower() not in self.custom_names]
            out.extend(self._custom)
        return join_path(self.base_path, path) + ("?" + query if query else ""), out

    async def open(
        self, method: str, path: str, query: str, headers: Sequence[tuple[str, str]],
        body: AsyncIterable[bytes] | None, *, role: str | None, content_length: int | None = None,
        authorization: str | None = None,
    ) -> UpstreamResponse:
        """Send a request and return at the response head, its body still streaming (the proxy).

        `path` and `query` are relative to the data source URL as the client sent them. Raises
        UpstreamPoolClosed, before anything was sent, when the data source changed meanwhile.
        """
        target, out = self._prepare(method, path, query, headers, role, authorization)
        observer = self._clients.observer
        if observer is not None:
            observer.begin(self.ds)
        started = time.monotonic()
        try:
            response = await self._send(method, target, out, body, content_length, self.timeout)
        except UpstreamPoolClosed:
            if observer is not None:
                observer.end(self.ds, method, "UpstreamPoolClosed", 0.0, False)  # retried: not a proxy call
            raise
        except BaseException as error:
            self._fail(method, started, error, True)
        if observer is not None:
            observer.end(self.ds, method, str(response.status), time.monotonic() - started, True)
        if log.isEnabledFor(logging.DEBUG):
            _debug(self.ds, method, path, response.status, started)
        return response

    def relayed(self, size: int) -> None:
        """The proxy relayed a response body of `size` bytes from this data source."""
        observer = self._clients.observer
        if observer is not None:
            observer.body(self.ds, size)

    async def fetch(
        self, method: str, path: str, query: str = "", headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None, *, role: str | None = None, limit: int = FETCH_LIMIT,
    ) -> Answer:
        """A whole exchange, connect to the last body byte within the data source's timeout; gzip is asked
        for and decoded, and the decoded body is bounded by `limit` (a longer one is a 502)."""
        if not any(name.lower() == "accept-encoding" for name, _ in headers):
            headers = [*headers, ("Accept-Encoding", "gzip")]
        target, out = self._prepare(method, path, query, headers, role, None)
        observer = self._clients.observer
        if observer is not None:
            observer.begin(self.ds)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._send(method, target, out, body, None, self.timeout)
                try:
                    raw = await response.read(limit)
                except BaseException:
                    response.abort()
                    raise
                response.release()
            answer = _decoded(response.status, response.headers, raw, limit)  # a bad gzip body fails the call
        except BaseException as error:
            self._fail(method, started, error, False)
        if observer is not None:
            observer.end(self.ds, method, str(answer.status), time.monotonic() - started, False)
            observer.body(self.ds, len(raw))
        if log.isEnabledFor(logging.DEBUG):
            _debug(self.ds, method, path, answer.status, started)
        return answer

    async def _send(self, method: str, target: str, headers: list[tuple[str, str]],
                    body: bytes | AsyncIterable[bytes] | None, content_length: int | None,
                    header_timeout: float) -> UpstreamResponse:
        assert self.pool is not None  # _prepare checked
        try:
            return await self.pool.request(
                method, target, headers, body, content_length=content_length, header_timeout=header_timeout,
                read_timeout=self._clients.config.gateway.proxy_idle_read_timeout,
                write_timeout=self._clients.config.gateway.proxy_idle_write_timeout,
            )
        except ValueError:  # a stored URL path or header no request line can carry (rows from before checks)
            raise UpstreamRequestInvalid() from None

    def _fail(self, method: str, started: float, error: BaseException, streamed: bool) -> NoReturn:
        """Report a failed call and raise it on; the whole fetch's deadline becomes an UpstreamTimeout, so
        that `errors.translate` (the middleware, the query path) maps every failure the same way."""
        try:
            observer = self._clients.observer
            if observer is not None:
                observer.end(self.ds, method, type(error).__name__, time.monotonic() - started, streamed)
            if not isinstance(error, asyncio.CancelledError):
                if isinstance(error, UpstreamError):
                    log.warning("call to data source %s failed: %s", self.ds.uid, type(error).__name__)
                if isinstance(error, TimeoutError):
                    raise UpstreamTimeout("the data source did not answer within its timeout") from None
            raise error
        finally:
            # the raised error's traceback holds this frame: without its `error`, no cycle keeps the failed
            # call's frames (and a body of up to the response limit) alive until a full collection
            del error

    async def websocket(self, path: str, query: str, headers: Sequence[tuple[str, str]], protocols: Sequence[str],
                        role: str | None, authorization: str | None) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket to the data source (`path` and `query` as in open()); cookies are never kept."""
        target, out = self._prepare("GET", path, query, headers, role, authorization)
        out = [(name, value) for name, value in out if name.lower() not in _WS_OWN]  # the handshake's own
        scheme = "wss" if self.scheme == "https" else "ws"
        url = URL(f"{scheme}://{self.netloc}{target}", encoded=True)
        try:
            return await self._clients.session().ws_connect(
                url, headers=out, protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10), autoping=True,
                ssl=self.tls if self.tls is not None else True, server_hostname=self.server_name,
            )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            raise UpstreamUnavailable() from None

    async def close(self) -> None:
        """Close idle connections now and busy ones when their response is done."""
        if self.pool is not None:
            await self.pool.close()


def _debug(ds: DataSource, method: str, path: str, status: int, started: float) -> None:
    """A debug line per data source call: the path relative to the data source URL, never its query string
    or headers (either may carry credentials)."""
    log.debug("data source call", extra={"fields": {
        "datasource_uid": ds.uid, "method": method, "path": "/" + path.lstrip("/"), "status": status,
        "time_ms": round((time.monotonic() - started) * 1000, 3)}})


_WS_OWN = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                     "sec-websocket-protocol", "host"})


def _decoded(status: int, headers: list[tuple[str, str]], body: bytes, limit: int) -> Answer:
    """The answer with a gzip body decoded (at most `limit` bytes) and Content-Encoding dropped."""
    encoding = next((value for name, value in headers if name.lower() == "content-encoding"), "")
    if encoding.strip().lower() != "gzip":
        return Answer(status, headers, body)
    inflater = zlib.decompressobj(wbits=31)
    try:
        plain = inflater.decompress(body, limit)
    except zlib.error:
        raise UpstreamProtocolError("the upstream's gzip body does not decode") from None
    if inflater.unconsumed_tail:
        del plain  # not held by the error's traceback
        raise UpstreamProtocolError(f"decoded upstream response body exceeds {limit} bytes")
    if not inflater.eof:
        raise UpstreamProtocolError("the upstream's gzip body ends early")
    kept = [(name, value) for name, value in headers if name.lower() not in ("content-encoding", "content-length")]
    return Answer(status, kept, plain)


def _tls_context(ds: DataSource, secrets: Mapping[str, str], clients: Clients) -> ssl.SSLContext:
    """TLS options from jsonData/secureJsonData, as Grafana's dsTLSOptions (spec-proxy §2.10.3); the shared
    default context when the data source has none."""
    options = ds.options
    custom_ca = options.get("tlsAuthWithCACert") and secrets.get("tlsCACert")
    client_cert = options.get("tlsAuth") and secrets.get("tlsClientCert") and secrets.get("tlsClientKey")
    if not (custom_ca or client_cert or options.get("tlsSkipVerify")):
        return clients.default_tls()
    context = ssl.create_default_context()
    try:
        if custom_ca:
            context = ssl.create_default_context(cadata=secrets["tlsCACert"])  # that CA only, as Grafana
        if client_cert:
            # ssl can only read a key pair from files: write them readable by us alone, load, delete
            with tempfile.TemporaryDirectory() as folder:
                cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
                for path, value in ((cert, secrets["tlsClientCert"]), (key, secrets["tlsClientKey"])):
                    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(descriptor, "w") as handle:
                        handle.write(value)
                context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError, OSError):
        raise TLSConfigError() from None
    if options.get("tlsSkipVerify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
