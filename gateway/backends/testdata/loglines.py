"""The logs scenario: random log lines as a dataplane logs frame, with Grafana's ids."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.backends.base import DataQuery
from gateway.backends.testdata.model import Model
from gateway.backends.testdata.scenario import MAX_POINTS, go_div, seeded, steps
from gateway.frames import DataResponse, Field, Frame, meta

_LOG_LEVELS = ("emerg", "emergency", "alert", "crit", "critical", "warn", "warning", "err", "eror", "error", "info",
               "notice", "dbug", "debug", "trace", "")
_CONTAINERS = ("f36a9eaa6d34310686f2b851655212023a216de955cbcc764210cefa71179b1a",
               "5a354a630364f3742c602f315132e16def594fe68b1e4a195b2fce628e24c97a")
_HOSTS = ("srv-001", "srv-002")
_LOG_LINE = (
    't={time} {level}msg="Request Completed" logger=context userId=1 orgId=1 uname=admin method=GET '
    "path=/api/datasources/proxy/152/api/prom/label status=502 remote_addr=[::1] time_ms=1 size=0 "
    'referer="http://localhost:3000/explore?left=%5B%22now-6h%22,%22now%22,%22Prometheus%202.x%22,%7B%7D,'
    '%7B%22ui%22:%5Btrue,true,true,%22none%22%5D%7D%5D"'
)


def _fnv32(data: bytes) -> int:
    """FNV-1 32-bit (Go's hash/fnv New32)."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value * 0x01000193) & 0xFFFFFFFF) ^ byte
    return value


def _rfc3339_seconds(seconds: int) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"


async def logs(query: DataQuery, model: Model) -> DataResponse:
    """handleLogsScenario as a dataplane logs frame: labels, timestamp, body, id, labelTypes; `lines` rows
    from `to` back every intervalMs while after `from`."""
    rng = seeded(query, "logs")
    start, moment = query.time_range.from_ms, query.time_range.to_ms
    nanos = str(query.time_range.to_ms * 1_000_000)
    label_types = (b'{"container_id":"Indexed label","hostname":"Parsed field","level":"Metadata"}'
                   if model.level_column else b'{"container_id":"Indexed label","hostname":"Parsed field"}')
    columns: list[list[Any]] = [[], [], [], [], []]
    seen: dict[str, int] = {}
    for _ in range(steps(-moment, -start, query.interval_ms, min(model.lines, MAX_POINTS))):
        level = rng.choice(_LOG_LEVELS)
        line = _LOG_LINE.format(time=_rfc3339_seconds(go_div(moment, 1000)),
                                level="" if model.level_column else f"lvl={level} ")
        container, host = rng.choice(_CONTAINERS), rng.choice(_HOSTS)
        extra = f',"level":"{level}"' if model.level_column else ""
        labels = f'{{"container_id":"{container}","hostname":"{host}"{extra}}}'.encode()
        checksum = f"{nanos}_{_fnv32(line.encode() + b'_' + labels):x}"
        count = seen.get(checksum, 0)
        seen[checksum] = count + 1
        for column, value in zip(columns, (msgspec.Raw(labels), moment, line, checksum + (f"_{count}" if count else ""),
                                           msgspec.Raw(label_types)), strict=True):
            column.append(value)
        moment -= query.interval_ms
    return DataResponse([Frame([
        Field("labels", "json.RawMessage", columns[0], labels={}),
        Field("timestamp", "time.Time", columns[1]),
        Field("body", "string", columns[2]),
        Field("id", "string", columns[3]),
        Field("labelTypes", "json.RawMessage", columns[4], config={"custom": {"hidden": True}}),
    ], name=query.ref_id, meta=meta("log-lines", preferred_visualisation_type="logs"))])
