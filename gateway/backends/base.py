"""What a backend is: the plugin it serves, its route rules, health and resources (next, queries), and the
Context it is handed for one data source. A backend never sees a web.Request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import quote

import msgspec

from gateway.config import Config
from gateway.datasources.models import DataSource
from gateway.errors import method_refused
from gateway.frames import DataResponse
from gateway.gtime import TimeRange
from gateway.http.client import Answer, Clients, DataSourceClient
from gateway.http.pool import UpstreamError, UpstreamPoolClosed

log = logging.getLogger("gateway")
T = TypeVar("T")


class Plugin(msgspec.Struct, frozen=True):
    """A data source plugin as Grafana's plugin store describes it."""

    id: str
    name: str
    logo: str
    aliases: tuple[str, ...] = ()


def core_plugin(plugin_id: str, name: str, logo: str, *aliases: str) -> Plugin:
    """A plugin that ships with Grafana (its logo under public/app/plugins/datasource/)."""
    return Plugin(plugin_id, name, f"public/app/plugins/datasource/{plugin_id}/img/{logo}", aliases)


class HealthResult(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Grafana's CheckHealthResult as JSON (keys sorted): details only when set."""

    details: dict[str, Any] | None = None
    message: str
    status: str


class ResourceRequest(msgspec.Struct, frozen=True):
    """A resource call as a plugin receives it: decoded, cleaned path without a leading slash, raw query,
    and the caller's role (the route rules apply to what a resource call sends on)."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    role: str


class DataQuery(msgspec.Struct, frozen=True):
    """One query as a backend receives it (SDK backend.DataQuery): Grafana's common fields and the whole model
    as the request sent it (JSON), which the backend decodes into its own model."""

    ref_id: str
    query_type: str
    max_data_points: int
    interval_ms: int
    time_range: TimeRange
    model: msgspec.Raw


class NotImplementedByBackend(Exception):
    """The backend has no handler for this call (Grafana: plugin.notImplemented)."""


class Closable(Protocol):
    async def close(self) -> None: ...


class Context:
    """One data source version as its backend sees it: the row, its opened secrets, the config, and the
    clients it calls the data source with, each built on first use and closed when the data source changes."""

    __slots__ = ("_backend", "_clients", "_closed", "_http", "_limit", "_resources", "_settings", "config", "ds",
                 "secrets")

    def __init__(self, ds: DataSource, secrets: Mapping[str, str], backend: Backend, clients: Clients) -> None:
        self.ds = ds
        self.secrets = secrets
        self.config: Config = clients.config
        self._backend = backend
        self._clients = clients
        self._http: DataSourceClient | None = None
        self._resources: dict[str, asyncio.Task[Any]] = {}
        self._closed = False
        self._limit: asyncio.Semaphore | None = None
        self._settings: dict[Callable[[Context], Any], Any] = {}

    @property
    def backend(self) -> Backend:
        """The backend of the data source's type."""
        return self._backend

    @property
    def http(self) -> DataSourceClient:
        """The data source's HTTP client (raises InvalidDataSourceURL or TLSConfigError for bad settings)."""
        if self._http is None:
            if self._closed:  # a request that held on past the grace period: the data source changed
                raise UpstreamPoolClosed("the data source changed")
            self._http = self._clients.open(self.ds, self.secrets, self._backend.check_route)
        return self._http

    @property
    def opened_http(self) -> DataSourceClient | None:
        """The HTTP client if one was made (for metrics: looking must not open one)."""
        return self._http

    def settings(self, read: Callable[[Context], T]) -> T:
        """`read(self)`, a reading of the data source's jsonData, made once per data source version (and
        reader)."""
        try:
            return cast(T, self._settings[read])
        except KeyError:
            value = self._settings[read] = read(self)
            return value

    def slot(self) -> asyncio.Semaphore | contextlib.nullcontext[None]:
        """What each outgoing query holds while it runs: the data source's concurrency limit (the backend's
        max_concurrency), so that a fan-out never floods one data source; no limit when that is 0."""
        if self._limit is None:
            limit = self._backend.max_concurrency(self)
            if limit <= 0:
                return contextlib.nullcontext()
            self._limit = asyncio.Semaphore(limit)
        return self._limit

    async def resource(self, name: str, open_: Callable[[], Coroutine[Any, Any, Closable]]) -> Any:
        """A per-data-source resource (a SQL connection pool), opened once by `open_` and shared."""
        if self._closed:
            raise UpstreamPoolClosed("the data source changed")
        task = self._resources.get(name)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._resources[name] = asyncio.get_running_loop().create_task(open_())
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Close the HTTP client and every resource opened; later uses raise UpstreamPoolClosed."""
        self._closed = True
        if self._http is not None:
            await self._http.close()
        for name, task in list(self._resources.items()):
            try:
                if not task.done():
                    task.cancel()
                opened = await task
                try:
                    async with asyncio.timeout(10):
                        await opened.close()
                except TimeoutError:  # a connection still held: cut them (asyncpg's close waits without limit)
                    log.warning("closing %s of data source %s timed out", name, self.ds.uid)
                    if hasattr(opened, "terminate"):
                        opened.terminate()
            except (asyncio.CancelledError, Exception) as error:  # one failing close must not skip the rest
                if not isinstance(error, asyncio.CancelledError):
                    log.warning("closing %s of data source %s failed: %s", name, self.ds.uid, type(error).__name__)


class Backend:
    """What gateway knows of one data source type. The defaults serve a type gateway only proxies: no route
    rules, and no backend plugin (`served` False: health and resources are "Plugin not registered")."""

    plugin: Plugin | None = None
    served = False

    def check_route(self, role: str | None, method: str, path: str) -> None:
        """Refuse (ProxyForbidden) a call the type's routes do not allow for the caller's `role` (None: a call
        of gateway's own); `path` is relative to the data source URL, as sent."""

    def proxy_target(self, ctx: Context, path: str, query: str) -> tuple[str, str]:
        """The path and query a proxied request goes to (some types rewrite them)."""
        return path, query

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """The data source's health; admins may see more detail."""
        raise NotImplementedByBackend

    async def call_resource(self, ctx: Context, request: ResourceRequest) -> Answer:
        """Answer a resource call."""
        raise NotImplementedByBackend

    async def query(self, ctx: Context, queries: list[DataQuery]) -> dict[str, DataResponse]:
        """Run the queries of one request for this data source (concurrently, each under ctx.slot()); a
        refId without an answer is left out, as Grafana's plugins leave it out."""
        raise NotImplementedByBackend

    def max_concurrency(self, ctx: Context) -> int:
        """Queries run at once against one data source: [dataproxy] max_conns_per_host (0: no limit)."""
        return ctx.config.dataproxy.max_conns_per_host

    def query_timeout(self, ctx: Context) -> float:
        """Seconds one request's queries may take on this data source: jsonData.timeout or [dataproxy] timeout."""
        value = ctx.ds.options.get("timeout")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        return ctx.config.dataproxy.timeout


def refuse_unlisted_writes(ds_type: str, method: str) -> None:
    """Prometheus-like types: a write method no route allows is refused (Grafana's proxy rule)."""
    if method in ("DELETE", "PUT", "POST"):
        raise method_refused(method, ds_type)


_PATH_SAFE = "$&+,/:;=@"  # with the unreserved characters, what Go's URL.EscapedPath leaves as is
_PASSED_HEADERS = frozenset({"content-type", "accept"})


async def pass_through(ctx: Context, request: ResourceRequest, path: str) -> Answer:
    """Forward a resource call to the data source (buffered and bounded, as Grafana's plugins do), under
    the same whitelist and route rules as the proxy. `path` is clean (see ResourceRequest); it is escaped
    here as Go escapes a URL's path."""
    headers = [(name, value) for name, value in request.headers if name.lower() in _PASSED_HEADERS]
    return await ctx.http.fetch(request.method, quote(path, safe=_PATH_SAFE), request.query, headers,
                                request.body or None, role=request.role)


class HttpPing(Backend):
    """A type gateway does not query: health is a GET of one path; no resources."""

    served = True

    def __init__(self, plugin: Plugin, path: str, query: str = "") -> None:
        self.plugin = plugin
        self.health_path = path
        self.health_query = query

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """OK when the data source answers the path with a status below 400."""
        try:
            answer = await ctx.http.fetch("GET", self.health_path, self.health_query, limit=1 << 20)
        except UpstreamError as error:
            return HealthResult(status="ERROR", message=f"Data source is not reachable: {type(error).__name__}")
        if answer.status >= 400:
            return HealthResult(status="ERROR", message=f"Data source answered HTTP {answer.status}")
        return HealthResult(message="Data source is working", status="OK")
