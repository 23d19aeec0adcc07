"""POST /api/ds/query below the handler: read the queries, resolve their data sources, group them, run the
groups concurrently under the request's and each data source's limits, and merge the results by refId.

Grafana's order (spec-query §4.1): no queries -> every data source resolved (the first failure answers the
request) -> duplicate refIds. A group that fails as a whole becomes an error on each of its refIds and
never cancels or delays the others; a client that leaves cancels every group at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from gateway.backends.base import Context, DataQuery, NotImplementedByBackend
from gateway.config import Config
from gateway.datasources.cache import DataSourceCache
from gateway.datasources.store import DataSourceStore
from gateway.errors import (
    DataSourceNotFound,
    DataSourceNotFoundTraced,
    DuplicateRefId,
    GatewayError,
    InvalidDatasourceId,
    MethodNotImplemented,
    NoQueriesFound,
    PluginNotRegistered,
    QueryAccessDenied,
    QueryFailed,
    TooManyQueries,
    UidInvalidPath,
    translate,
)
from gateway.frames import DataResponse
from gateway.gtime import TimeRange, parse_range

log = logging.getLogger("gateway.query")

EXPRESSION_UIDS = frozenset({"__expr__", "-100"})
DEFAULT_MAX_DATA_POINTS = 100
DEFAULT_INTERVAL_MS = 1000


class MetricRequest(msgspec.Struct, kw_only=True):
    """The body of POST /api/ds/query (Grafana's dtos.MetricRequest); each query stays a free JSON object."""

    from_: str = msgspec.field(default="", name="from")
    to: str = ""
    queries: list[dict[str, Any]] = msgspec.field(default_factory=list)
    debug: bool = False


class Group(msgspec.Struct):
    """The queries of one request that go to one data source, in request order."""

    context: Context
    queries: list[DataQuery]


def _int(value: Any, default: int) -> int:
    """A JSON integer as Go reads it into an int64 field; anything else is the default."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return default


def _reference(query: dict[str, Any]) -> tuple[str, int]:
    """(uid, datasourceId) of one query: `datasource.uid`, or `datasource` as a string (pre-8.3)."""
    source = query.get("datasource")
    uid = source.get("uid") if isinstance(source, dict) else source
    return uid if isinstance(uid, str) else "", _int(query.get("datasourceId"), 0)


class Resolver:
    """Data sources of one request, each resolved once, with the caller's permission checked."""

    def __init__(self, org_id: int, cache: DataSourceCache, store: DataSourceStore,
                 may_query: Callable[[str], bool]) -> None:
        self._org_id = org_id
        self._cache = cache
        self._store = store
        self._may_query = may_query
        self._by_key: dict[tuple[str, object], Context] = {}

    async def resolve(self, uid: str, ds_id: int) -> Context:
        """The data source of a query: by uid, else by datasourceId, else the org's default."""
        key: tuple[str, object] = ("uid", uid) if uid else ("id", ds_id) if ds_id > 0 else ("default", None)
        context = self._by_key.get(key)
        if context is not None:
            return context
        try:
            if uid:
                context = await self._cache.resolve(self._org_id, f"uid/{uid}")
            elif ds_id > 0:
                context = await self._cache.get(self._org_id, id=ds_id)
            else:
                default = await self._store.get_default_data_source(self._org_id)
                context = await self._cache.get(self._org_id, uid=default.uid)
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


async def plan(body: MetricRequest, resolver: Resolver, config: Config, now: datetime) -> list[Group]:
    """The request's queries grouped by data source, in Grafana's validation order."""
    if not body.queries:
        raise NoQueriesFound()
    if len(body.queries) > config.query.max_queries:
        raise TooManyQueries(config.query.max_queries)
    time_range = parse_range(body.from_, body.to, now)
    groups: dict[str, Group] = {}
    for query in body.queries:
        uid, ds_id = _reference(query)
        if uid in EXPRESSION_UIDS:
            raise GatewayError("Server-side expressions are not available yet", status=400)
        context = await resolver.resolve(uid, ds_id)
        data_query = _data_query(query, time_range)
        group = groups.get(context.ds.uid)
        if group is None:
            group = groups[context.ds.uid] = Group(context, [])
        group.queries.append(data_query)
    seen: set[str] = set()
    for group in groups.values():
        for data_query in group.queries:
            if data_query.ref_id in seen:
                raise DuplicateRefId()
            seen.add(data_query.ref_id)
    return list(groups.values())


def _data_query(query: dict[str, Any], time_range: TimeRange) -> DataQuery:
    ref_id = query.get("refId")
    query_type = query.get("queryType")
    return DataQuery(
        ref_id=ref_id if isinstance(ref_id, str) and ref_id else "A",
        query_type=query_type if isinstance(query_type, str) else "",
        max_data_points=_int(query.get("maxDataPoints"), DEFAULT_MAX_DATA_POINTS),
        interval_ms=_int(query.get("intervalMs"), DEFAULT_INTERVAL_MS),
        time_range=time_range,
        model=query,
    )


async def execute(groups: list[Group], config: Config) -> dict[str, DataResponse]:
    """Run every group concurrently (at most [query] concurrent_query_limit at once) and merge by refId."""
    limit = asyncio.Semaphore(config.query.concurrent_query_limit)
    answers = await asyncio.gather(*(_run(group, limit) for group in groups))
    merged: dict[str, DataResponse] = {}
    for answer in answers:
        merged.update(answer)
    return merged


async def _run(group: Group, limit: asyncio.Semaphore) -> dict[str, DataResponse]:
    """One data source's queries, within its timeout; a failure of the whole call answers each refId."""
    ctx = group.context
    backend = ctx.backend
    try:
        if not backend.served:
            raise PluginNotRegistered()
        async with limit:
            timeout = backend.query_timeout(ctx)
            try:
                async with asyncio.timeout(timeout):
                    return await backend.query(ctx, group.queries)
            except TimeoutError:
                return _errors(group, f"the data source did not answer within {timeout:g}s", 504, "downstream")
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


def _errors(group: Group, message: str, status: int, source: str) -> dict[str, DataResponse]:
    return {query.ref_id: DataResponse(error=message, status=status, error_source=source)
            for query in group.queries}


def failed(results: dict[str, DataResponse]) -> bool:
    """True when any refId carries an error."""
    return any(response.error is not None for response in results.values())
