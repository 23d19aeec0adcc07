"""gateway's Prometheus metrics: Grafana's names, labels and buckets where Grafana has the metric, `gateway_`
for its own; one registry per app; every worker's samples merged in one scrape.

Workers merge without prometheus-client's process-global multiprocess mode: with `[server] workers` > 1 the
supervisor makes a private directory, each worker answers its own samples on a Unix socket there, and the
worker that serves `GET /metrics` adds its siblings' samples to its own (a worker that does not answer
within PEER_TIMEOUT is left out of that scrape). Every metric here is a sum over workers (counters,
histograms, in-flight gauges), so merging is adding samples with the same name and labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.config import Config
from gateway.datasources.models import DataSource
from gateway.keys import identity_key, metrics_key, request_id_key
from gateway.logs import current, request_context

log = logging.getLogger("gateway.metrics")
access_log = logging.getLogger("gateway.access")

DATASOURCE_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 25, 50, 100)
HTTP_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
PLUGIN_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 25)
SIZE_BUCKETS = tuple(float(128 << n) for n in range(14))  # 128 ... 1048576
FANOUT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
PEER_TIMEOUT = 2.0
PEER_LIMIT = 64 << 20
# a method outside these is counted as OTHER: clients choose methods, and labels must stay bounded
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
PLUGIN_TARGET = "in_memory"  # Grafana's target of core plugins, which run in its own process as ours do

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_go_float: Callable[[float], str] = floatToGoString  # the `le` label as Go (and prometheus-client) write it


# The hot path's instruments. prometheus-client's own Counter and Histogram take a lock and check for
# exemplars on every call (about 3 us per histogram observation here, 15 us per proxied request); these are
# plain numbers, safe because a worker runs one event loop and no thread touches them, and they are read by
# a Collector in the app's CollectorRegistry at scrape time.

class CounterChild:
    """One labelled series of a counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (never negative)."""
        self.value += amount


class GaugeChild(CounterChild):
    """One labelled series of a gauge."""

    __slots__ = ()

    def dec(self, amount: float = 1.0) -> None:
        """Subtract `amount`."""
        self.value -= amount


class HistogramChild:
    """One labelled series of a histogram: a count per bucket (not cumulative until collected) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation in the first bucket whose upper bound holds it (`le`)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Family(Collector):
    """A metric family (counter, gauge or histogram) with its labelled series, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry, kind: str, name: str, documentation: str,
                 labelnames: Sequence[str], buckets: Sequence[float] = ()) -> None:
        self.kind = kind
        self.name = name.removesuffix("_total") if kind == "counter" else name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = (*map(float, buckets), float("inf"))
        self.les = tuple(_go_float(bound) for bound in self.bounds)
        self.children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: str) -> Any:
        """The series with these label values (made on first use)."""
        child = self.children.get(values)
        if child is None:
            assert len(values) == len(self.labelnames)
            if self.kind == "histogram":
                child = HistogramChild(self.bounds)
            else:
                child = CounterChild() if self.kind == "counter" else GaugeChild()
            self.children[values] = child
        return child

    def observe(self, value: float) -> None:
        """Observe on the family's only series (a histogram without labels)."""
        self.labels().observe(value)

    def collect(self) -> Iterable[Metric]:
        """The family as prometheus-client exposes it."""
        metric = Metric(self.name, self.documentation, self.kind)
        for values, child in self.children.items():
            labels = dict(zip(self.labelnames, values, strict=True))
            if self.kind == "counter":
                metric.add_sample(self.name + "_total", labels, child.value)
            elif self.kind == "gauge":
                metric.add_sample(self.name, labels, child.value)
            else:
                total = 0
                for le, count in zip(self.les, child.counts, strict=True):
                    total += count
                    metric.add_sample(self.name + "_bucket", {**labels, "le": le}, total)
                metric.add_sample(self.name + "_count", labels, total)
                metric.add_sample(self.name + "_sum", labels, child.sum)
        return [metric]


def sanitize(name: str) -> str:
    """Grafana's metricutil.SanitizeLabelName: ASCII letters, `_` and (not first) digits kept, spaces as `_`."""
    out = []
    for i, char in enumerate(name):
        if char.isascii() and (char.isalpha() or char == "_" or (char.isdigit() and i > 0)):
            out.append(char)
        elif char == " ":
            out.append("_")
    return "".join(out)


class DataSourceStats(msgspec.Struct, frozen=True):
    """One data source's calls in gateway's metrics: count, errors among them, and the p95 time (None
    without calls)."""

    requests: int
    errors: int
    p95_seconds: float | None


class Metrics:
    """The app's registry, its metrics, and the observer of every data source call (http.client's seam)."""

    def __init__(self, config: Config, peers: str | None = None) -> None:
        self.enabled = config.metrics.enabled
        self.router_logging = config.server.router_logging  # read by the middleware on every request
        self.version = config.gateway.grafana_version
        self.peers = peers
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ds = ("datasource", "datasource_type")
        ds_call = (*ds, "code", "method", "secure_socks_ds_proxy_enabled")

        def family(kind: str, name: str, documentation: str, labels: Sequence[str] = (),
                   buckets: Sequence[float] = ()) -> Family:
            return Family(registry, kind, name, documentation, labels, buckets)

        self.ds_requests = family("counter", "grafana_datasource_request_total",
                                  "A counter for outgoing requests for a data source", ds_call)
        self.ds_duration = family("histogram", "grafana_datasource_request_duration_seconds",
                                  "histogram of durations of outgoing data source requests", ds_call,
                                  DATASOURCE_BUCKETS)
        self.ds_size = family("histogram", "grafana_datasource_response_size_bytes",
                              "histogram of data source response sizes returned to Grafana",
                              (*ds, "secure_socks_ds_proxy_enabled"), SIZE_BUCKETS)
        self.ds_in_flight = family("gauge", "grafana_datasource_request_in_flight",
                                   "A gauge of outgoing data source requests currently being sent",
                                   (*ds, "secure_socks_ds_proxy_enabled"))
        self.plugin_requests = family("counter", "grafana_plugin_request_total", "The total amount of plugin requests",
                                      ("plugin_id", "endpoint", "status", "target", "status_source"))
        self.plugin_duration = family("histogram", "grafana_plugin_request_duration_seconds",
                                      "Plugin request duration in seconds",
                                      ("source", "plugin_id", "endpoint", "status", "target", "status_source"),
                                      PLUGIN_BUCKETS)
        self.http_duration = family("histogram", "grafana_http_request_duration_seconds",
                                    "Histogram of latencies for HTTP requests.", ("handler", "status_code", "method"),
                                    HTTP_BUCKETS)
        self.proxy_status = family("counter", "grafana_proxy_response_status_total", "proxy http response counter",
                                   ("code",))
        for code in ("200", "404", "500", "unknown"):
            self.proxy_status.labels(code)  # Grafana's pre-seeded series
        self.calls = family("histogram", "gateway_datasource_call_duration_seconds",
                            "Calls gateway made for a data source (proxy, queryData, checkHealth, callResource)",
                            ("org_id", "datasource_uid", "datasource_type", "endpoint", "status"), DATASOURCE_BUCKETS)
        self.fanout = family("histogram", "gateway_query_fanout_width", "Data source groups one query request ran",
                             (), FANOUT_BUCKETS)
        self.queue = family("histogram", "gateway_query_queue_seconds",
                            "Time a data source group waited for a [query] concurrent_query_limit slot", (),
                            HTTP_BUCKETS)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._handlers: dict[str, str] = {}
        self._server: asyncio.AbstractServer | None = None
        self._socket: str | None = None
        self.sources: list[Callable[[], Iterable[Metric]]] = []  # scrape-time samples of this worker
        self._last: dict[str, list[_Family]] = {}  # each sibling's last answer, by its socket

    # -- data source calls (gateway.http.client's CallObserver) ---------------------------------------------

    def begin(self, ds: DataSource) -> None:
        """A call to `ds` starts."""
        child = self._children.get(("flight", ds.name, ds.type))
        if child is None:
            child = self._children[("flight", ds.name, ds.type)] = self.ds_in_flight.labels(
                sanitize(ds.name), sanitize(ds.type), "false")
        child.inc()

    def end(self, ds: DataSource, method: str, outcome: str, seconds: float, streamed: bool) -> None:
        """A call to `ds` ended: `outcome` is the status (a response) or the error's class name."""
        if method not in METHODS:
            method = "OTHER"
        key = (ds.name, ds.type, method, outcome)
        children = self._children.get(key)
        if children is None:
            name, kind = sanitize(ds.name), sanitize(ds.type)
            answered = outcome.isdigit()
            children = self._children[key] = (
                self.ds_in_flight.labels(name, kind, "false"),
                self.ds_requests.labels(name, kind, outcome, method.lower(), "false") if answered and name else None,
                self.ds_duration.labels(name, kind, outcome, method.lower(), "false") if answered and name else None,
            )
        children[0].dec()
        counted, timed = children[1], children[2]
        if counted is not None and timed is not None:  # as Grafana: answered calls, with a usable name
            counted.inc()
            timed.observe(seconds)
        if streamed:
            failed = not outcome.isdigit() or outcome >= "500"
            status = "cancelled" if outcome == "CancelledError" else "error" if failed else "ok"
            self.call(ds, "proxy", status, seconds)

    def body(self, ds: DataSource, size: int) -> None:
        """A response body from `ds` was read or relayed whole (`size` bytes as received)."""
        key = ("size", ds.name, ds.type)
        if key not in self._children:
            name = sanitize(ds.name)
            self._children[key] = self.ds_size.labels(name, sanitize(ds.type), "false") if name else None
        child = self._children[key]
        if child is not None:  # as Grafana: nothing recorded for a name that sanitizes to nothing
            child.observe(size)

    # -- plugin calls and gateway's own -------------------------------------------------------------------

    def call(self, ds: DataSource, endpoint: str, status: str, seconds: float) -> None:
        """One call gateway made for `ds` (status ok, error or cancelled): the admin page's statistics."""
        key = ("call", ds.org_id, ds.uid, ds.type, endpoint, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.calls.labels(str(ds.org_id), ds.uid, ds.type, endpoint, status)
        child.observe(seconds)

    def plugin(self, ds: DataSource, plugin_id: str, endpoint: str, status: str, downstream: bool,
               seconds: float) -> None:
        """One backend plugin call (queryData, checkHealth, callResource) for `ds`, as Grafana counts it."""
        if not self.enabled:
            return
        source = "downstream" if downstream else "plugin"
        key = ("plugin", plugin_id, endpoint, status, source)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.plugin_requests.labels(plugin_id, endpoint, status, PLUGIN_TARGET, source),
                self.plugin_duration.labels("grafana-backend", plugin_id, endpoint, status, PLUGIN_TARGET, source))
        children[0].inc()
        children[1].observe(seconds)
        self.call(ds, endpoint, status, seconds)

    def request(self, handler: str, status: int, method: str, seconds: float, proxied: bool) -> None:
        """One HTTP request served (grafana_http_request_duration_seconds, and the proxy's status counter)."""
        if method not in METHODS:
            method = "OTHER"
        key = ("http", handler, status, method)
        children = self._children.get(key)
        if children is None:
            code = str(status) if status in (200, 404, 500) else "unknown"
            children = self._children[key] = (self.http_duration.labels(handler, str(status), method),
                                              self.proxy_status.labels(code))
        children[0].observe(seconds)
        if proxied:
            children[1].inc()

    def handler_label(self, request: web.Request) -> str:
        """Grafana's `handler` label: the route pattern (`:uid`, `*` for the rest), `notfound` without a route."""
        resource = request.match_info.route.resource
        if resource is None:
            return "notfound"
        pattern = resource.canonical
        label = self._handlers.get(pattern)
        if label is None:
            label = self._handlers[pattern] = re.sub(r"\{(\w+)\}", r":\1", re.sub(r"\{rest[^}]*\}", "*", pattern))
        return label

    # -- scraping -------------------------------------------------------------------------------------------

    def _local(self) -> list[Metric]:
        worker = Metric("gateway_workers", "Worker processes whose samples this scrape holds", "gauge")
        worker.add_sample("gateway_workers", {}, 1.0)
        return [*self.registry.collect(), worker, *(metric for source in self.sources for metric in source())]

    async def families(self) -> list[Metric]:
        """This worker's samples with every sibling worker's added."""
        own = _wire(self._local())
        if self.peers is None:
            return _merge([own])
        paths = [os.path.join(self.peers, name) for name in sorted(os.listdir(self.peers))
                 if name.endswith(".sock") and os.path.join(self.peers, name) != self._socket]
        answers = await asyncio.gather(*(_ask(path) for path in paths))
        # a sibling that does not answer in time (busy, stopped) counts with its last answer: left out, its
        # counters would drop and come back, which Prometheus reads as resets (false rate spikes); a worker
        # that died is left out, as its socket went with it
        last = {path: answer if answer is not None else self._last.get(path)
                for path, answer in zip(paths, answers, strict=True)}
        self._last = {path: answer for path, answer in last.items() if answer is not None}
        return _merge([own, *self._last.values()])

    async def exposition(self, extra: Sequence[Metric] = ()) -> bytes:
        """The text exposition of every worker's samples, plus `extra` (scrape-time, not per worker)."""
        families = [*await self.families(), *extra, _build_info(self.version)]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families))
        return generate_latest(registry)

    async def datasource_stats(self, org_id: int) -> dict[str, DataSourceStats]:
        """Per data source uid of the org, over every worker since start: calls, errors among them, p95 time."""
        counts: dict[str, list[float]] = {}
        buckets: dict[str, dict[float, float]] = {}
        for family in await self.families():
            if family.name != "gateway_datasource_call_duration_seconds":
                continue
            for sample in family.samples:
                if sample.labels.get("org_id") != str(org_id):
                    continue
                uid = sample.labels["datasource_uid"]
                if sample.name.endswith("_count"):
                    total = counts.setdefault(uid, [0.0, 0.0])
                    total[0] += sample.value
                    if sample.labels["status"] == "error":
                        total[1] += sample.value
                elif sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    per = buckets.setdefault(uid, {})
                    per[bound] = per.get(bound, 0.0) + sample.value
        return {uid: DataSourceStats(int(total), int(errors), quantile(0.95, sorted(buckets.get(uid, {}).items())))
                for uid, (total, errors) in counts.items()}

    async def start(self) -> None:
        """Answer this worker's samples to its siblings (when there are any)."""
        if self.peers is None:
            return
        self._socket = os.path.join(self.peers, f"{os.getpid()}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket)
        self._server = await asyncio.start_unix_server(self._answer, self._socket)

    async def stop(self) -> None:
        """Stop answering siblings."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._socket)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(msgspec.msgpack.encode(_wire(self._local())))
            await writer.drain()
        except OSError:
            pass  # the asking worker gave up
        finally:
            writer.close()


# one family on the wire between workers: (name, documentation, type, unit, [(sample name, labels, value)])
_Family = tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]


def _wire(metrics: Iterable[Metric]) -> list[_Family]:
    return [(m.name, m.documentation, m.type, m.unit,
             [(s.name, s.labels, s.value) for s in m.samples if not s.name.endswith("_created")])
            for m in metrics]


def _merge(workers: Iterable[list[_Family]]) -> list[Metric]:
    """Families with the samples of equal name and labels added up; `_created` timestamps left out."""
    merged: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]]]] = {}
    for families in workers:
        for name, documentation, kind, unit, samples in families:
            entry = merged.get(name)
            if entry is None:
                entry = merged[name] = (Metric(name, documentation, kind, unit), {})
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(labels.items()))
                found = entry[1].get(key)
                if found is None:
                    entry[1][key] = [sample_name, labels, value]
                else:
                    found[2] += value
    out = []
    for metric, found_samples in merged.values():
        for sample_name, labels, value in found_samples.values():
            metric.add_sample(sample_name, labels, value)
        out.append(metric)
    return out


async def _ask(path: str) -> list[_Family] | None:
    """A sibling worker's samples, or None when it does not answer in time (gone, busy, starting)."""
    try:
        async with asyncio.timeout(PEER_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(path, limit=PEER_LIMIT)
            try:
                data = await reader.read(PEER_LIMIT + 1)
                while len(data) <= PEER_LIMIT and (more := await reader.read(PEER_LIMIT + 1 - len(data))):
                    data += more
            finally:
                writer.close()
        if len(data) > PEER_LIMIT:
            return None
        return msgspec.msgpack.decode(data, type=list[_Family])
    except (OSError, TimeoutError, msgspec.DecodeError):
        return None


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets sorted by bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower  # Prometheus answers the highest finite bound
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = bound, count
    return lower


def _build_info(version: str) -> Metric:
    metric = Metric("grafana_build_info", "A metric with a constant '1' value labeled by version, revision, branch, "
                    "and goversion from which Grafana was built", "gauge")
    metric.add_sample("grafana_build_info", {"version": version, "revision": "", "branch": "", "edition": "oss",
                                             "goversion": f"python{platform.python_version()}"}, 1.0)
    return metric


def stat_totals(counts: dict[str, int]) -> Metric:
    """grafana_stat_totals_datasource: configured data sources per type (every org)."""
    metric = Metric("grafana_stat_totals_datasource", "total number of defined datasources, labeled by pluginId",
                    "gauge")
    for plugin_id, count in sorted(counts.items()):
        metric.add_sample("grafana_stat_totals_datasource", {"plugin_id": plugin_id}, float(count))
    return metric


def worker_state(hits: int, misses: int, pools: Iterable[Any], db_pool: Any) -> list[Metric]:
    """This worker's state at scrape time: data source cache lookups, upstream and database connections."""
    lookups = Metric("gateway_datasource_cache_lookups", "Data source lookups answered from memory (hit) or "
                     "Postgres (miss)", "counter")
    lookups.add_sample("gateway_datasource_cache_lookups_total", {"result": "hit"}, float(hits))
    lookups.add_sample("gateway_datasource_cache_lookups_total", {"result": "miss"}, float(misses))
    opened = idle = waiting = 0
    for pool in pools:
        opened += pool.open_connections
        idle += pool.idle_connections
        waiting += pool.waiting
    upstream = Metric("gateway_upstream_connections", "Connections to data sources (HTTP), by state", "gauge")
    upstream.add_sample("gateway_upstream_connections", {"state": "busy"}, float(max(opened - idle, 0)))
    upstream.add_sample("gateway_upstream_connections", {"state": "idle"}, float(idle))
    waits = Metric("gateway_upstream_waiting_requests", "Requests waiting for a connection to a data source "
                   "([dataproxy] max_conns_per_host reached)", "gauge")
    waits.add_sample("gateway_upstream_waiting_requests", {}, float(waiting))
    database = Metric("gateway_db_connections", "Connections to gateway's own Postgres, by state", "gauge")
    size, free = db_pool.get_size(), db_pool.get_idle_size()
    database.add_sample("gateway_db_connections", {"state": "busy"}, float(size - free))
    database.add_sample("gateway_db_connections", {"state": "idle"}, float(free))
    return [lookups, upstream, waits, database]


def cache_state(stats: Any) -> list[Metric]:
    """The query cache's counters (gateway.cache's CacheStats) at scrape time."""
    requests = Metric("gateway_cache_requests", "Queries and resource calls by X-Cache result", "counter")
    for result in ("hit", "miss", "bypass", "error", "disabled"):
        requests.add_sample("gateway_cache_requests_total", {"result": result.upper()}, float(getattr(stats, result)))
    held = Metric("gateway_cache_bytes", "Bytes the memory store holds", "gauge")
    held.add_sample("gateway_cache_bytes", {}, float(stats.bytes))
    metrics = [requests, held]
    for name, text in (("evictions", "Memory entries dropped to stay under [caching.memory] max_size_mb"),
                       ("coalesced_waits", "Queries answered by an identical one in flight"),
                       ("delta_saved_points", "Samples taken from cached extents instead of the data source"),
                       ("delta_fetched_points", "Samples fetched from the data source by delta queries"),
                       ("store_outages", "Times Redis turned unavailable or full (queries went to the data sources)")):
        counter = Metric(f"gateway_cache_{name}", text, "counter")
        counter.add_sample(f"gateway_cache_{name}_total", {}, float(getattr(stats, name)))
        metrics.append(counter)
    return metrics


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware: the request's id and trace context, Grafana's HTTP metrics, and the one
    access log line per request (the path without its query string, which may hold tokens)."""
    headers = request.headers
    context = request_context(headers.get("X-Request-Id"), headers.get("traceparent"))
    request[request_id_key] = context.request_id
    token = current.set(context)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    except BaseException:
        status = 499  # the client left (nginx's code), or a failure the error middleware let through
        raise
    finally:
        seconds = time.perf_counter() - started
        metrics = request.app[metrics_key]
        if metrics.enabled:
            metrics.request(metrics.handler_label(request), status, request.method, seconds,
                            request.path.startswith("/api/datasources/proxy/"))
        if (metrics.router_logging or status not in (200, 304)) and access_log.isEnabledFor(logging.INFO):
            _access(request, status, seconds)
        current.reset(token)


def _access(request: web.Request, status: int, seconds: float) -> None:
    identity = request.get(identity_key)
    fields: dict[str, Any] = {"method": request.method, "path": request.path, "status": status,
                              "remote_addr": request.remote or "", "time_ms": round(seconds * 1000, 3)}
    if identity is not None:
        fields.update(uname=identity.login, userId=identity.id, orgId=identity.org_id)
    uid = request.match_info.get("uid")
    if uid is not None:
        fields["datasource_uid"] = uid
    level = logging.ERROR if status >= 500 and status != 499 else logging.INFO
    # the record made directly: Logger.log would walk the stack for a caller every line names the same way
    access_log.handle(access_log.makeRecord(access_log.name, level, __file__, 0, "Request Completed", (), None,
                                            extra={"fields": fields}))


async def request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every response carries its request's X-Request-Id (an on_response_prepare hook)."""
    request_id = request.get(request_id_key)
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id
