"""Cache keys: a sha256 of a canonical MessagePack encoding of everything that decides an answer (org,
cache generation, data source uid, type and version, the query model without its volatile fields, the time
range rounded to the query's interval). The data source's `updated` time is part of it too, because a save
that sends no `version` keeps the version as it is. Secrets never enter a key: only the model the caller sent does."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from gateway.backends.base import DataQuery
from gateway.datasources.models import DataSource

# model fields that name or tag a query without changing its answer
VOLATILE = frozenset({"datasource", "datasourceId", "requestId", "key", "queryCachingTTL"})
_encode = msgspec.msgpack.Encoder(order="sorted").encode


def digest(*parts: Any) -> str:
    """The hex sha256 of the parts' canonical MessagePack encoding."""
    return hashlib.sha256(_encode(parts)).hexdigest()


def interval_ms(query: DataQuery) -> int:
    """The panel interval the range is rounded to: intervalMs, or range / maxDataPoints when larger."""
    points = query.max_data_points if query.max_data_points > 0 else 1
    return max(query.interval_ms, query.time_range.duration_ms // points, 1)


def rounded_range(query: DataQuery) -> tuple[int, int]:
    """from and to rounded down to the query's interval, so a refreshing relative range keeps its key."""
    step = interval_ms(query)
    return query.time_range.from_ms // step * step, query.time_range.to_ms // step * step


def normalised(model: dict[str, Any]) -> dict[str, Any]:
    """The query model without volatile fields (nulls dropped, as the backends read them)."""
    return {name: value for name, value in model.items() if name not in VOLATILE and value is not None}


def query_key(ds: DataSource, generation: int, query: DataQuery, exact: tuple[int, int] | None = None) -> str:
    """The key of one query's answer; `exact` is the range the answer depends on when the backend aligns it
    itself (a Prometheus range query's step-aligned start and end), else the range is rounded."""
    return "q:" + digest(ds.org_id, generation, ds.uid, ds.type, ds.version, str(ds.updated), query.ref_id,
                         query.query_type, query.max_data_points, query.interval_ms,
                         normalised(msgspec.json.decode(query.model)),
                         exact or rounded_range(query))


def resource_key(ds: DataSource, generation: int, method: str, path: str, query: str, body: bytes, role: str,
                 headers: list[tuple[str, str]]) -> str:
    """The key of one resource call's answer."""
    return "r:" + digest(ds.org_id, generation, ds.uid, ds.type, ds.version, str(ds.updated), method, path, query,
                         body, role, headers)
