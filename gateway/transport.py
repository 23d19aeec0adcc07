"""A data source's outgoing transport: its target, TLS, pooled connections and injected credentials."""

from __future__ import annotations

import base64
import os
import posixpath
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from gateway.config import DataProxy
from gateway.errors import GatewayError
from gateway.models import DataSource, validate_url
from gateway.upstream import UpstreamConnectError, UpstreamPool


class InvalidDataSourceURL(GatewayError):
    status, trace = 400, True


class TLSConfigError(GatewayError):
    status, message, trace = 400, "Unable to load TLS certificate", True


def basic(user: str, password: str) -> str:
    """An Authorization header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _tls_context(ds: DataSource, secrets: Mapping[str, str]) -> ssl.SSLContext:
    """TLS options from jsonData/secureJsonData, as Grafana's dsTLSOptions (spec-proxy §2.10.3)."""
    options = ds.options
    context = ssl.create_default_context()
    try:
        if options.get("tlsAuthWithCACert") and secrets.get("tlsCACert"):
            context = ssl.create_default_context(cadata=secrets["tlsCACert"])  # that CA only, as Grafana
        if options.get("tlsAuth") and secrets.get("tlsClientCert") and secrets.get("tlsClientKey"):
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


class Transport:
    """Everything needed to call one data source: built once per data source version, then reused."""

    def __init__(self, ds: DataSource, secrets: Mapping[str, str], proxy: DataProxy) -> None:
        try:
            target = urlsplit(validate_url(ds.type, ds.url))
        except GatewayError:
            raise InvalidDataSourceURL(f"Invalid data source URL: {_go_quote(ds.url)}") from None
        self.scheme = target.scheme.lower()
        self.host = target.hostname or ""
        self.netloc = target.netloc.rpartition("@")[2]  # host[:port] as written, for the whitelist
        self.port = target.port or (443 if self.scheme == "https" else 80)
        self.base_path = target.path
        self.server_name = str(ds.options.get("serverName") or "") or None
        timeout = ds.options.get("timeout")
        self.header_timeout = _positive_float(timeout) or proxy.timeout
        self.tls = _tls_context(ds, secrets) if self.scheme == "https" and self.host else None
        self.pool: UpstreamPool | None = None
        if self.host:
            self.pool = UpstreamPool(
                self.host, self.port, ssl=self.tls,
                server_hostname=self.server_name, connect_timeout=proxy.dial_timeout,
                tls_handshake_timeout=proxy.tls_handshake_timeout_seconds,
                max_conns=proxy.max_conns_per_host, max_idle=proxy.max_idle_connections,
                idle_timeout=proxy.idle_conn_timeout_seconds, keepalive=proxy.keep_alive_seconds,
            )
        self.authorization = _authorization(ds, secrets)
        self.custom_headers = _custom_headers(ds, secrets)
        self.custom_names = frozenset(name.lower() for name, _ in self.custom_headers)
        self.legacy_authorization = (
            basic(ds.user, secrets.get("password", "")) if not ds.basic_auth and ds.user else None
        )

    async def fetch(
        self, method: str, path: str, query: str = "", headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None, limit: int = 16 << 20,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """A whole (bounded) exchange with the data source, credentials injected; for backends, not the proxy."""
        if self.pool is None:
            raise UpstreamConnectError("the data source URL has no host")
        out = list(headers)
        if self.authorization or self.legacy_authorization:
            out.append(("Authorization", self.authorization or self.legacy_authorization or ""))
        out = [(n, v) for n, v in out if n.lower() not in self.custom_names] + self.custom_headers
        target = join_path(self.base_path, path) + ("?" + query if query else "")
        response = await self.pool.request(method, target, out, body, header_timeout=self.header_timeout,
                                           read_timeout=self.header_timeout)
        try:
            data = await response.read(limit)
        except BaseException:
            response.abort()
            raise
        response.release()
        return response.status, response.headers, data

    async def close(self) -> None:
        """Close idle connections now and busy ones when their response is done."""
        if self.pool is not None:
            await self.pool.close()


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


def _authorization(ds: DataSource, secrets: Mapping[str, str]) -> str | None:
    if ds.basic_auth:
        return basic(ds.basic_auth_user, secrets.get("basicAuthPassword", ""))
    if ds.type == "influxdb" and ds.user:
        return basic(ds.user, secrets.get("password", ""))
    return None


def _custom_headers(ds: DataSource, secrets: Mapping[str, str]) -> list[tuple[str, str]]:
    """jsonData.httpHeaderNameN + secureJsonData.httpHeaderValueN, N = 1, 2, ... up to the first gap."""
    headers = []
    n = 1
    while name := str(ds.options.get(f"httpHeaderName{n}") or "").strip():
        value = secrets.get(f"httpHeaderValue{n}")
        if value is not None and "\n" not in name and "\r" not in value and "\n" not in value:
            headers.append((name, value))
        n += 1
    return headers


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _go_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
