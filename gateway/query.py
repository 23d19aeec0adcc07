"""POST /api/ds/query below the handler: read the queries, resolve their data sources, group them, run the
groups concurrently under the request's and each data source's limits, and merge the results by refId.

Grafana's order (spec-query §4.1): no queries -> every data source resolved (the first failure answers the
request) -> duplicate refIds. A group that fails as a whole becomes an error on each of its refIds and
never cancels or delays the others; a client that leaves cancels every group at once.

When any query targets `__expr__` (or `-100`), every query goes through the expression pipeline
(gateway.expressions): its data source queries run through the same groups, and the pipeline turns their
answers into the refIds' results. A pipeline that cannot be built is Grafana's 500 "Query data error".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import msgspec

from gateway.backends import grafana
from gateway.backends.base import Context, DataQuery, NotImplementedByBackend
from gateway.cache.service import CacheRun
from gateway.config import Config
from gateway.datasources.cache import DataSourceCache
from gateway.errors import (
    BadRequestData,
    DataSourceNotFound,
    DataSourceNotFoundTraced,
    DuplicateRefId,
    GatewayError,
    InvalidDatasourceId,
    MethodNotImplemented,
    NoQueriesFound,
    PluginNotRegistered,
    QueryAccessDenied,
    QueryDataError,
    QueryFailed,
    TooManyQueries,
    UidInvalidPath,
    translate,
)
from gateway.expressions import BuildError, Pipeline, Query, build, data_query
from gateway.frames import DataResponse
from gateway.gtime import TimeRange, parse_range
from gateway.metrics import Metrics

log = logging.getLogger("gateway.query")

EXPRESSION_UIDS = frozenset({"__expr__", "-100"})
DEFAULT_MAX_DATA_POINTS = 100
DEFAULT_INTERVAL_MS = 1000


class MetricRequest(msgspec.Struct, kw_only=True):
    """The body of POST /api/ds/query (Grafana's dtos.MetricRequest); each query stays raw JSON, read here only
    for the fields every query shares and decoded by its backend into the backend's own model."""

    from_: str = msgspec.field(default="", name="from")
    to: str = ""
    queries: list[msgspec.Raw] = msgspec.field(default_factory=list)
    debug: bool = False


class QueryHead(msgspec.Struct, rename="camel"):
    """The fields of a query that gateway reads itself, as loosely as Grafana's simplejson reads them (a value
    of the wrong type is ignored, not refused); every other field stays in the raw model."""

    ref_id: Any = None
    datasource: Any = None
    datasource_id: Any = None
    query_type: Any = None
    max_data_points: Any = None
    interval_ms: Any = None


_decode_head = msgspec.json.Decoder(QueryHead).decode


def _head(raw: msgspec.Raw) -> QueryHead:
    """A query's shared fields; a query that is not a JSON object is the request's bad data."""
    try:
        return _decode_head(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise BadRequestData() from None


class Group(msgspec.Struct):
    """The queries of one request that go to one data source, in request order. Groups are keyed by the data
    source's id: a stored data source may have taken the uid `grafana`, which the built-in one (id -1) also has."""

    context: Context
    queries: list[DataQuery]


def _int(value: Any, default: int) -> int:
    """A JSON integer as Go reads it into an int64 field; anything else is the default."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return default


def _reference(head: QueryHead) -> tuple[str, int]:
    """(uid, datasourceId) of one query: `datasource.uid`, or `datasource` as a string (pre-8.3)."""
    source = head.datasource
    uid = source.get("uid") if isinstance(source, dict) else source
    return uid if isinstance(uid, str) else "", _int(head.datasource_id, 0)


class Resolver:
    """Data sources of one request, each resolved once, with the caller's permission checked."""

    def __init__(self, org_id: int, cache: DataSourceCache, may_query: Callable[[str], bool]) -> None:
        self._org_id = org_id
        self._cache = cache
        self._may_query = may_query
        self._by_key: dict[tuple[str, object], Context] = {}
        self._loaded: dict[str, Context] = {}

    async def load(self, uids: Iterable[str]) -> None:
        """Read the data sources named by `uids` ahead, the ones not in memory in one round trip; permissions and
        unknown uids are still checked by resolve(), query by query, in request order."""
        self._loaded.update(await self._cache.get_many(self._org_id, uids))

    async def resolve(self, uid: str, ds_id: int) -> Context:
        """The data source of a query: by uid, else by datasourceId, else the org's default."""
        key: tuple[str, object] = ("uid", uid) if uid else ("id", ds_id) if ds_id > 0 else ("default", None)
        context = self._by_key.get(key)
        if context is not None:
            return context
        if uid == grafana.UID:  # Grafana's built-in data source: no lookup, no per-data-source permission
            context = self._by_key[key] = self._cache.built_in(self._org_id)
            return context
        try:
            if uid:
                context = self._loaded.get(uid) or await self._cache.resolve(self._org_id, f"uid/{uid}")
            elif ds_id > 0:
                context = await self._cache.get(self._org_id, id=ds_id)
            else:
                context = await self._cache.get_default(self._org_id)
        except DataSourceNotFound:
            if not uid and ds_id <= 0:
                raise InvalidDatasourceId() from None
            raise DataSourceNotFoundTraced() from None
        except UidInvalidPath:
            raise DataSourceNotFoundTraced() from None
        if not self._may_query(context.ds.uid):
            raise QueryAccessDenied()
        self._by_key[key] = context
        return context


class Plan(msgspec.Struct):
    """What a request runs: its data source groups, and the expression pipeline over their answers when any
    query is an expression."""

    groups: list[Group]
    pipeline: Pipeline | None = None


async def plan(body: MetricRequest, resolver: Resolver, config: Config, now: datetime) -> Plan:
    """The request's queries grouped by data source, in Grafana's validation order."""
    if not body.queries:
        raise NoQueriesFound()
    if len(body.queries) > config.query.max_queries:
        raise TooManyQueries(config.query.max_queries)
    time_range = parse_range(body.from_, body.to, now)
    heads = [_head(raw) for raw in body.queries]
    references = [_reference(head) for head in heads]
    await resolver.load(uid for uid, _ in references if uid and uid not in EXPRESSION_UIDS and uid != grafana.UID)
    resolved: list[tuple[QueryHead, msgspec.Raw, Context | None]] = []
    for head, raw, (uid, ds_id) in zip(heads, body.queries, references, strict=True):
        resolved.append((head, raw, None if uid in EXPRESSION_UIDS else await resolver.resolve(uid, ds_id)))
    seen: set[str] = set()
    for head in heads:
        ref_id = _ref_id(head)
        if ref_id in seen:
            raise DuplicateRefId()
        seen.add(ref_id)
    sources = [(head, raw, context) for head, raw, context in resolved if context is not None]
    if len(sources) < len(resolved):
        return _expression_plan(resolved, time_range)
    groups: dict[int, Group] = {}
    for head, raw, context in sources:
        group = groups.get(context.ds.id)
        if group is None:
            group = groups[context.ds.id] = Group(context, [])
        group.queries.append(_data_query(head, raw, time_range))
    return Plan(list(groups.values()))


def _expression_plan(resolved: list[tuple[QueryHead, msgspec.Raw, Context | None]], time_range: TimeRange) -> Plan:
    """Grafana's expression path: every query a node (its whole model read); data source nodes grouped per
    data source."""
    groups: dict[int, Group] = {}
    nodes: list[Query] = []
    try:
        for head, raw, context in resolved:
            ref_id = _ref_id(head)
            query = msgspec.json.decode(raw)
            if context is None:
                nodes.append(Query(ref_id, query, None))
                continue
            plugin = context.backend.plugin
            nodes.append(Query(ref_id, query, plugin.id if plugin is not None else context.ds.type))
            query_type = query.get("queryType")
            sent = data_query(query, raw, ref_id, query_type if isinstance(query_type, str) else "", time_range)
            group = groups.get(context.ds.id)
            if group is None:
                group = groups[context.ds.id] = Group(context, [])
            group.queries.append(sent)
        pipeline = build(nodes, time_range)
    except BuildError as error:
        log.warning("expression request error: %.500s", error)  # Grafana logs the reason, the client sees none
        raise QueryDataError() from None
    return Plan(list(groups.values()), pipeline)


def _ref_id(head: QueryHead) -> str:
    ref_id = head.ref_id
    return ref_id if isinstance(ref_id, str) and ref_id else "A"


def _data_query(head: QueryHead, raw: msgspec.Raw, time_range: TimeRange) -> DataQuery:
    query_type = head.query_type
    return DataQuery(
        ref_id=_ref_id(head),
        query_type=query_type if isinstance(query_type, str) else "",
        max_data_points=_int(head.max_data_points, DEFAULT_MAX_DATA_POINTS),
        interval_ms=_int(head.interval_ms, DEFAULT_INTERVAL_MS),
        time_range=time_range,
        model=raw,
    )


async def execute(work: Plan, config: Config, cache: CacheRun | None = None,
                  metrics: Metrics | None = None) -> dict[str, DataResponse]:
    """Run every group concurrently (at most [query] concurrent_query_limit at once), through the query cache
    when one is given, merge by refId, and evaluate the expression pipeline over the answers when there is one;
    `metrics` sees each group's call."""
    # a request with no more groups than the limit never waits: no semaphore to pass through per group
    limit = asyncio.Semaphore(config.query.concurrent_query_limit) \
        if len(work.groups) > config.query.concurrent_query_limit else None
    if metrics is not None and not metrics.enabled:
        metrics = None
    if metrics is not None:
        metrics.fanout.observe(len(work.groups))
    if cache is not None and len(work.groups) > 1:
        stored = (group.context.ds.uid for group in work.groups
                  if not isinstance(group.context.backend, grafana.Grafana))
        await cache.load(work.groups[0].context.ds.org_id, stored)
    if len(work.groups) == 1:  # the common case: no task of its own
        answers = [await _observed(work.groups[0], limit, cache, metrics)]
    else:
        answers = await asyncio.gather(*(_observed(group, limit, cache, metrics) for group in work.groups))
    merged: dict[str, DataResponse] = {}
    for answer in answers:
        merged.update(answer)
    if work.pipeline is not None:
        # CPU-bound: in a worker thread, so the event loop keeps serving, and within the request's time budget
        deadline = time.monotonic() + config.dataproxy.timeout
        return await asyncio.to_thread(work.pipeline.evaluate, merged, deadline)
    return merged


async def _observed(group: Group, limit: asyncio.Semaphore | None, cache: CacheRun | None,
                    metrics: Metrics | None) -> dict[str, DataResponse]:
    """_run, reported as Grafana's queryData plugin call (status ok unless a refId failed)."""
    if metrics is None:
        return await _run(group, limit, cache, None)
    started = time.perf_counter()
    ds = group.context.ds
    plugin = group.context.backend.plugin
    plugin_id = plugin.id if plugin is not None else ds.type
    try:
        answer = await _run(group, limit, cache, metrics)
    except asyncio.CancelledError:
        metrics.plugin(ds, plugin_id, "queryData", "cancelled", False, time.perf_counter() - started)
        raise
    failures = [response for response in answer.values() if response.error is not None]
    downstream = any(response.error_source == "downstream" for response in failures)
    metrics.plugin(ds, plugin_id, "queryData", "error" if failures else "ok", downstream,
                   time.perf_counter() - started)
    return answer


async def _run(group: Group, limit: asyncio.Semaphore | None, cache: CacheRun | None,
               metrics: Metrics | None) -> dict[str, DataResponse]:
    """One data source's queries, within its timeout; a failure of the whole call answers each refId.

    The query cache sits here, around the backend call: the plan has resolved every data source and checked
    the caller's permission to query it, so a cached answer only ever reaches a caller who may query it."""
    ctx = group.context
    backend = ctx.backend
    try:
        if not backend.served:
            raise PluginNotRegistered()
        if limit is None:
            if metrics is not None:
                metrics.queue.observe(0.0)
            return await _call(group, cache)
        waiting = time.perf_counter()
        async with limit:
            if metrics is not None:
                metrics.queue.observe(time.perf_counter() - waiting)
            return await _call(group, cache)
    except NotImplementedByBackend:
        error: GatewayError = MethodNotImplemented()
    except asyncio.CancelledError:
        raise
    except Exception as failure:
        known = translate(failure)
        if known is None:
            log.exception("query to data source %s failed", ctx.ds.uid)
            known = QueryFailed()
        error = known
    source = "downstream" if error.status in (502, 504) else ""
    return _errors(group, error.message, error.status, source)


async def _call(group: Group, cache: CacheRun | None) -> dict[str, DataResponse]:
    """The group's backend call (through the cache when there is one) within the data source's timeout."""
    ctx = group.context
    backend = ctx.backend
    timeout = backend.query_timeout(ctx)
    try:
        async with asyncio.timeout(timeout):
            if cache is not None and not isinstance(backend, grafana.Grafana):  # -- Grafana -- answers no cache
                return await cache.run(ctx, group.queries, backend.query)
            return await backend.query(ctx, group.queries)
    except TimeoutError:
        return _errors(group, f"the data source did not answer within {timeout:g}s", 504, "downstream")


def _errors(group: Group, message: str, status: int, source: str) -> dict[str, DataResponse]:
    return {query.ref_id: DataResponse(error=message, status=status, error_source=source)
            for query in group.queries}


def failed(results: dict[str, DataResponse]) -> bool:
    """True when any refId carries an error."""
    return any(response.error is not None for response in results.values())
