"""The query result cache: Grafana Enterprise's cache API, X-Cache, keys, coalescing within a worker and
across two gateways sharing a real Redis, delta fetches for Prometheus range queries (against a stub and a
real Prometheus), and a Redis that is down or hangs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest
import redis
import redis.asyncio
from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.app import SERVER_OPTIONS, create_app
from gateway.backends.base import DataQuery
from gateway.cache import codec
from gateway.cache.keys import query_key, rounded_range
from gateway.cache.service import x_cache
from gateway.cache.store import RETRY_AFTER, CacheStats, MemoryStore, RedisStore, StoreError
from gateway.config import Config, ConfigError
from gateway.crypto import derive_key
from gateway.datasources.models import DataSource
from gateway.frames import DataResponse, Field, Frame, encode_json, encode_msgpack, meta
from gateway.gtime import TimeRange
from gateway.keys import query_cache_key
from tests.conftest import ADMIN, free_port, make_config
from tests.test_prometheus import prom_query, real_prometheus  # noqa: F401  (the fixture)
from tests.test_query import add, post

REDIS = "redis://127.0.0.1:6379/0"
OPTIONS = {name: value for name, value in SERVER_OPTIONS.items() if name != "handler_cancellation"}


async def start(aiohttp_client: Any, aiohttp_server: Any, config: Config) -> Any:
    return await aiohttp_client(await aiohttp_server(create_app(config), **OPTIONS))


def caching(database_url: str, **values: Any) -> Config:
    """A config with the cache on for every data source, plus `values` for [caching]."""
    redis_values = {key.removeprefix("redis_"): values.pop(key) for key in list(values) if key.startswith("redis_")}
    sections: dict[str, dict[str, Any]] = {"caching": {"enabled_by_default": True, **values}}
    if redis_values:
        sections["caching_redis"] = redis_values
    return make_config(database_url, **sections)


def redis_config(database_url: str, prefix: str, **values: Any) -> Config:
    return caching(database_url, **{"backend": "redis", "redis_url": REDIS, "redis_prefix": prefix, **values})


@pytest.fixture
def prefix() -> str:
    """A Redis key prefix of this test alone."""
    return f"gateway-test-{uuid.uuid4().hex[:12]}:"


class Counting:
    """A Prometheus-API upstream: range queries answer two series with value = time, after `delay`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode())) or dict(request.query)
        self.calls.append(form)
        await asyncio.sleep(self.delay)
        if request.path.endswith("query_range"):
            start, end, step = float(form["start"]), float(form["end"]), float(form["step"])
            times = [start + index * step for index in range(int((end - start) / step) + 1)]
            result = [{"metric": {"__name__": "m", "i": str(i)}, "values": [[t, str(t * (i + 1))] for t in times]}
                      for i in (0, 1)]
            data: Any = {"resultType": "matrix", "result": result}
        else:
            data = {"resultType": "vector", "result": [{"metric": {"secret_label": "s3cr3t"}, "value": [1, "7"]}]}
        return web.json_response({"status": "success", "data": data})


async def counting(aiohttp_server: Any, upstream: Counting) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def instant(ref_id: str = "A", uid: str = "p", expr: str = "up") -> dict[str, Any]:
    return prom_query(ref_id, uid, expr, instant=True, range=False)


BODY = {"from": "1700000000000", "to": "1700000060000"}


# -- the cache API ---------------------------------------------------------------------------------------------

async def test_a_data_source_caches_nothing_until_enabled_and_the_api_answers_grafanas_shapes(client, aiohttp_server):
    upstream = Counting()
    ds = await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    response = await client.get("/api/datasources/uid/p/cache", headers=ADMIN)
    assert response.status == 200
    assert await response.json() == {
        "dataSourceID": ds["id"], "dataSourceUID": "p", "enabled": False, "ttlQueriesMs": 60000,
        "ttlResourcesMs": 60000, "useDefaultTTL": True, "defaultTTLMs": 60000,
        "created": "0001-01-01T00:00:00Z", "updated": "0001-01-01T00:00:00Z"}
    for _ in range(2):
        response = await post(client, {"queries": [instant()], **BODY})
        assert response.status == 200 and response.headers["X-Cache"] == "DISABLED"
    assert len(upstream.calls) == 2

    response = await client.post("/api/datasources/p/cache/enable", headers=ADMIN)  # Grafana's documented path
    body = await response.json()
    assert response.status == 200 and body["message"] == "Data source cache enabled" and body["enabled"] is True
    assert body["created"] != "0001-01-01T00:00:00Z"
    headers = [(await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] for _ in range(2)]
    assert headers == ["MISS", "HIT"] and len(upstream.calls) == 3

    response = await client.post("/api/datasources/uid/p/cache", headers=ADMIN,
                                 json={"enabled": True, "useDefaultTTL": False, "ttlQueriesMs": 5000,
                                       "ttlResourcesMs": 7000})
    body = await response.json()
    assert (body["message"], body["ttlQueriesMs"], body["ttlResourcesMs"], body["useDefaultTTL"]) == (
        "Data source cache updated", 5000, 7000, False)
    response = await client.post("/api/datasources/uid/p/cache/disable", headers=ADMIN)
    assert (await response.json())["enabled"] is False
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "DISABLED"
    response = await client.post("/api/datasources/uid/p/cache", headers=ADMIN, json={"ttlQueriesMs": -1})
    assert response.status == 400 and await response.json() == {"message": "bad request data", "traceID": ""}


async def test_the_cache_api_needs_the_caching_actions_and_an_existing_data_source(client, make_token):
    await add(client, "td")
    viewer = await make_token("Viewer")
    assert (await client.get("/api/datasources/uid/td/cache", headers=viewer)).status == 403
    assert (await client.post("/api/datasources/uid/td/cache/enable", headers=viewer)).status == 403
    reader = await make_token("None", permissions=(("datasources.caching:read", "datasources:uid:td"),))
    assert (await client.get("/api/datasources/uid/td/cache", headers=reader)).status == 200
    assert (await client.post("/api/datasources/uid/td/cache/clean", headers=reader)).status == 403
    response = await client.get("/api/datasources/uid/nope/cache", headers=ADMIN)
    assert response.status == 404 and (await response.json())["message"] == "Data source not found"


async def test_clean_needs_caching_write_on_every_data_source_and_touches_only_the_callers_org(
        aiohttp_client, aiohttp_server, database_url, make_token):
    client = await start(aiohttp_client, aiohttp_server, caching(database_url))
    upstream = Counting()
    url = await counting(aiohttp_server, upstream)
    await add(client, "p", "prometheus", url=url)
    assert (await client.post("/api/orgs", json={"name": "second"}, headers=ADMIN)).status == 200
    org2 = {**ADMIN, "X-Grafana-Org-Id": "2"}
    await add(client, "p", "prometheus", headers=org2, url=url)  # the same uid, URL and query in another org
    assert [(await post(client, {"queries": [instant()], **BODY}, headers)).headers["X-Cache"]
            for headers in (ADMIN, org2, ADMIN, org2)] == ["MISS", "MISS", "HIT", "HIT"]
    # Grafana cleans every data source, so clean asks for the action on datasources:*, not on the one named
    one = await make_token("None", permissions=(("datasources.caching:write", "datasources:uid:p"),))
    assert (await client.post("/api/datasources/uid/p/cache/enable", headers=one)).status == 200
    response = await client.post("/api/datasources/uid/p/cache/clean", headers=one)
    assert response.status == 403 and "X-Cache" not in response.headers
    every = await make_token("None", permissions=(("datasources.caching:write", "datasources:*"),))
    response = await client.post("/api/datasources/uid/nope/cache/clean", headers=every)
    assert response.status == 404
    response = await client.post("/api/datasources/uid/p/cache/clean", headers=org2)
    assert response.status == 200 and (await response.json())["message"] == "Data source cache cleaned"
    # the other org's answers stay, in this worker's memory too; the cleaned org's are gone
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "HIT"
    assert (await post(client, {"queries": [instant()], **BODY}, org2)).headers["X-Cache"] == "MISS"
    assert (await client.post("/api/datasources/uid/p/cache/clean", headers=every)).status == 200
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "MISS"


# -- keys, hits and bypass --------------------------------------------------------------------------------------

async def test_hits_bypass_version_changes_and_clean(aiohttp_client, aiohttp_server, database_url):
    client = await start(aiohttp_client, aiohttp_server, caching(database_url))
    upstream = Counting()
    ds = await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    first = await post(client, {"queries": [instant()], **BODY})
    second = await post(client, {"queries": [instant()], **BODY})
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert await first.json() == await second.json() and len(upstream.calls) == 1
    skipped = await post(client, {"queries": [instant()], **BODY}, {**ADMIN, "X-Cache-Skip": "true"})
    assert skipped.headers["X-Cache"] == "BYPASS" and len(upstream.calls) == 2
    # a different refId, expression or range is another key; the same range rounded to the interval is not
    assert (await post(client, {"queries": [instant("B")], **BODY})).headers["X-Cache"] == "MISS"
    later = {"from": "1700000000400", "to": "1700000060400"}  # within the same 1 s interval
    assert (await post(client, {"queries": [instant()], **later})).headers["X-Cache"] == "HIT"
    assert len(upstream.calls) == 3
    # a saved data source (a new version) and a clean both start afresh
    response = await client.put("/api/datasources/uid/p", headers=ADMIN,
                                json={"name": "p", "type": "prometheus", "access": "proxy", "url": ds["url"]})
    assert response.status == 200
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "MISS"
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "HIT"
    assert (await client.post("/api/datasources/uid/p/cache/clean", headers=ADMIN)).status == 200
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "MISS"
    stats = client.server.app[query_cache_key].stats
    assert (stats.hit, stats.bypass) == (3, 1) and stats.miss == 4 and stats.bytes > 0
    scrape = await (await client.get("/metrics")).text()
    assert 'gateway_cache_requests_total{result="HIT"} 3.0' in scrape
    assert 'gateway_cache_requests_total{result="MISS"} 4.0' in scrape
    assert f"gateway_cache_bytes {float(stats.bytes)}" in scrape


async def test_a_caller_who_may_not_query_a_data_source_never_gets_its_cached_answer(
        aiohttp_client, aiohttp_server, database_url, make_token):
    client = await start(aiohttp_client, aiohttp_server, caching(database_url))
    upstream = Counting()
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    assert (await post(client, {"queries": [instant()], **BODY})).status == 200
    nobody = await make_token("None", permissions=(("datasources:query", "datasources:uid:other"),))
    response = await post(client, {"queries": [instant()], **BODY}, nobody)
    assert response.status == 403 and "X-Cache" not in response.headers
    assert "s3cr3t" not in await response.text()


async def test_errors_are_not_cached_and_the_request_header_follows_the_rule(aiohttp_client, aiohttp_server,
                                                                             database_url):
    client = await start(aiohttp_client, aiohttp_server, caching(database_url))
    upstream = Counting()
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    await add(client, "dead", "prometheus", url="http://127.0.0.1:9")
    body = {"queries": [instant(uid="dead")], **BODY}
    assert [(await post(client, body)).headers["X-Cache"] for _ in range(2)] == ["MISS", "MISS"]
    await post(client, {"queries": [instant()], **BODY})
    mixed = await post(client, {"queries": [instant(), instant("B", "dead")], **BODY})
    assert mixed.headers["X-Cache"] == "MISS"  # one part missed
    assert x_cache(["HIT", "DISABLED"]) == "HIT" and x_cache(["DISABLED"]) == "DISABLED"
    assert x_cache(["HIT", "ERROR", "MISS"]) == "ERROR" and x_cache(["BYPASS", "BYPASS"]) == "BYPASS"
    assert x_cache([]) is None


async def test_a_model_the_key_cannot_hold_and_a_failing_backend_are_answered_uncached(aiohttp_client, aiohttp_server,
                                                                                       database_url):
    client = await start(aiohttp_client, aiohttp_server, caching(database_url))
    upstream = Counting()
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    odd = {**instant(), "huge": 2**70}  # JSON allows it; MessagePack cannot hold it
    answers = [await post(client, {"queries": [odd], **BODY}) for _ in range(2)]
    assert [answer.status for answer in answers] == [200, 200] and len(upstream.calls) == 2
    assert [answer.headers["X-Cache"] for answer in answers] == ["MISS", "MISS"]
    await add(client, "es", "graphite", url="http://127.0.0.1:9")  # served, but runs no queries
    for _ in range(2):
        response = await post(client, {"queries": [{"refId": "A", "datasource": {"uid": "es"}}], **BODY})
        assert response.status == 400 and response.headers["X-Cache"] == "MISS"
        assert (await response.json())["results"]["A"]["error"] == "Method not implemented"


def test_a_redis_url_of_another_scheme_stops_the_boot():
    with pytest.raises(ConfigError, match=r"\[caching.redis\] url"):
        Config.from_env({"GF_CACHING_BACKEND": "redis", "GF_CACHING_REDIS_URL": "http://127.0.0.1:6379"})
    with pytest.raises(ConfigError, match=r"\[caching\] backend"):
        Config.from_env({"GF_CACHING_BACKEND": "memcached"})


def test_keys_leave_out_volatile_fields_and_never_hold_secrets():
    ds = DataSource(id=1, org_id=1, version=3, type="prometheus", name="p", access="proxy", url="u", user="",
                    database="", basic_auth=True, basic_auth_user="u", with_credentials=False, is_default=False,
                    json_data={}, secure_json_data={"basicAuthPassword": "sealed-secret"}, read_only=False, uid="p",
                    api_version="", updated=None)  # type: ignore[arg-type]

    def query(model: dict[str, Any], start: int = 1_700_000_000_000) -> DataQuery:
        return DataQuery("A", "", 100, 15_000, TimeRange(start, start + 3_600_000),
                         msgspec.Raw(msgspec.json.encode({"expr": "up", **model})))

    base = query_key(ds, 0, query({}))
    assert query_key(ds, 0, query({"requestId": "x", "datasource": {"uid": "p"}})) == base
    assert query_key(ds, 0, query({"expr": "down"})) != base
    assert query_key(ds, 1, query({})) != base
    assert query_key(msgspec.structs.replace(ds, version=4), 0, query({})) != base
    assert query_key(ds, 0, query({}, 1_700_000_030_000)) != base  # a new 36 s interval
    assert query_key(ds, 0, query({}, 1_700_000_010_000)) == base  # same interval (range / maxDataPoints)
    assert rounded_range(query({}, 1_700_000_010_000)) == (1_699_999_992_000, 1_700_003_592_000)
    assert "sealed-secret" not in base and len(base) == 66


def test_answers_round_trip_through_the_codec():
    frame = Frame([Field("time", "time.Time", [1, 2]), Field("v", "float64", [1.5, float("nan")], labels={"a": "b"},
                                                             config={"unit": "s"}),
                   Field("j", "json.RawMessage", [msgspec.Raw(b'{"x":1}'), msgspec.Raw(b"[]")]),
                   Field("n", "float64", [None, -float("inf")], nullable=True),
                   Field("s", "string", ["a", "\u00e9\"\n"]), Field("b", "bool", [True, False]),
                   Field("t", "time.Time", [3, 4], nanos=[0, 500])],
                  name="n", meta=meta("timeseries-multi", (0, 1), custom={"resultType": "matrix"},
                                      executed_query_string="q"))
    answer = DataResponse([frame])
    body, packed = encode_json({"A": answer}), encode_msgpack({"A": answer})
    value, keep, _ = codec.encode(answer, "A", 1 << 20)
    assert value is not None
    kept = codec.decode(value, 1 << 20)
    assert keep and kept.encoded is not None and encode_json({"A": kept}) == body  # a hit writes the kept bytes
    read = codec.decode(value, 1 << 20)
    assert read.frames is not None and read.encoded is None  # frames read: decoded, the bytes dropped
    assert encode_json({"A": read}) == body and encode_msgpack({"A": read}) == packed
    assert codec.decode(codec.encode(DataResponse(), "A", 1).value or b"", 1).frames is None


def test_kept_answers_are_compressed_and_bounded_by_their_json():
    times = list(range(1_700_000_000_000, 1_700_003_600_000, 15_000))
    answer = DataResponse([Frame([Field("Time", "time.Time", times), Field("v", "float64", [1.5] * len(times))])])
    body = encode_json({"A": answer})
    value, keep, _ = codec.encode(answer, "A", len(body))
    assert value is not None and keep and len(value) * 5 < len(body)
    large, keep, _ = codec.encode(answer, "A", 1000)  # JSON past the largest kept value: shared as it is, not kept
    assert large is not None and not keep and encode_json({"A": codec.decode(large, 1000)}) == body
    with pytest.raises(ValueError, match="size limit"):
        codec.decode(value, 1000)  # a kept value that would expand past the limit
    stored = msgspec.msgpack.decode(value)
    for frames in (stored[2][:-10], b"not zlib"):  # cut short; not zlib at all
        with pytest.raises(ValueError):
            codec.decode(msgspec.msgpack.encode([*stored[:2], frames, True]), 1 << 20)
    with pytest.raises(ValueError):
        codec.decode(msgspec.msgpack.encode([codec.VERSION + 1, *stored[1:]]), 1 << 20)  # another version's JSON
    with pytest.raises(ValueError):
        codec.decode(msgspec.msgpack.encode([None, 200]), 1 << 20)  # the layout of an older version


def test_answers_whose_json_cells_python_cannot_read_back_are_not_kept():
    for cell in (b"[" * 5000 + b"]" * 5000, b"1e400", b'"\\ud800"'):
        answer = DataResponse([Frame([Field("j", "json.RawMessage", [msgspec.Raw(cell)])])])
        encoded = codec.encode(answer, "A", 1 << 20)
        assert (encoded.value, encoded.keep) == (None, False) and encoded.text is not None and cell in encoded.text


async def test_the_memory_store_is_an_lru_bounded_by_bytes():
    stats = CacheStats()
    store = MemoryStore(1300, stats)  # four entries of 200 bytes (298 counted) fit
    for index in range(4):
        await store.set(f"k{index}", b"x" * 200, 60)
    assert await store.get("k0") is not None  # now the most recently used
    await store.set("k4", b"x" * 200, 60)
    assert [await store.get(f"k{index}") is not None for index in range(5)] == [True, False, True, True, True]
    assert stats.evictions == 1 and stats.bytes <= 1300
    await store.set("big", b"x" * 2000, 60)  # larger than the whole store: not kept, nothing evicted
    assert await store.get("big") is None and stats.evictions == 1
    await store.set("short", b"x", 0.01)
    await asyncio.sleep(0.03)
    assert await store.get("short") is None


async def test_prometheus_resources_are_cached_per_role_under_their_own_ttl(aiohttp_client, aiohttp_server,
                                                                             database_url, make_token):
    client = await start(aiohttp_client, aiohttp_server, caching(database_url, enabled_by_default=False))
    upstream = Counting()
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    path = "/api/datasources/uid/p/resources/api/v1/labels?match[]=up"
    response = await client.get(path, headers=ADMIN)
    assert response.status == 200 and response.headers["X-Cache"] == "DISABLED"
    response = await client.post("/api/datasources/uid/p/cache", headers=ADMIN,
                                 json={"enabled": True, "useDefaultTTL": False, "ttlResourcesMs": 60000,
                                       "ttlQueriesMs": 1})
    assert response.status == 200
    first, second = [await client.get(path, headers=ADMIN) for _ in range(2)]
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert await first.read() == await second.read() and len(upstream.calls) == 2
    viewer = await client.get(path, headers=await make_token("Viewer"))  # another role: its own key
    assert viewer.status == 200 and viewer.headers["X-Cache"] == "MISS" and len(upstream.calls) == 3
    skipped = await client.get(path, headers={**ADMIN, "X-Cache-Skip": "1"})
    assert skipped.headers["X-Cache"] == "BYPASS" and len(upstream.calls) == 4
    # queries keep their own TTL (1 ms here): the second one misses; a panel's queryCachingTTL overrides it
    await post(client, {"queries": [instant()], **BODY})
    await asyncio.sleep(0.01)
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "MISS"
    panel = {**instant(), "queryCachingTTL": 60000}
    await asyncio.sleep(0.01)  # the last answer, kept for 1 ms, is gone
    await post(client, {"queries": [panel], **BODY})
    await asyncio.sleep(0.01)
    assert (await post(client, {"queries": [panel], **BODY})).headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_huge_ttl_is_capped_and_never_fails_the_query_nor_pauses_redis(aiohttp_client, aiohttp_server,
                                                                                database_url, prefix, backend, caplog):
    config = caching(database_url) if backend == "memory" else redis_config(database_url, prefix)
    client = await start(aiohttp_client, aiohttp_server, config)
    upstream = Counting()
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    # past int64 milliseconds (Redis refused it, and every caller's cache paused), and past a float (a 500)
    for index, ttl in enumerate((10**19, 10**400)):
        panel = {**instant(expr=f"m{index}"), "queryCachingTTL": ttl}
        first, second = [await post(client, {"queries": [panel], **BODY}) for _ in range(2)]
        assert (first.status, first.headers["X-Cache"], second.headers["X-Cache"]) == (200, "MISS", "HIT")
        assert (await second.json())["results"]["A"]["frames"][0]["data"]["values"][1] == [7]
    assert (await client.post("/api/datasources/uid/p/cache", headers=ADMIN,
                              json={"enabled": True, "ttlQueriesMs": 2**63 - 1})).status == 200
    assert [(await post(client, {"queries": [instant(expr="m2")], **BODY})).headers["X-Cache"]
            for _ in range(2)] == ["MISS", "HIT"]
    assert len(upstream.calls) == 3
    assert not [record for record in caplog.records if record.name == "gateway.cache"]
    if backend == "redis":
        raw = redis.asyncio.Redis.from_url(REDIS)
        try:
            ttls = [await raw.pttl(name) async for name in raw.scan_iter(match=prefix + "q:*")]
            assert len(ttls) == 3 and all(0 < ttl <= 365 * 86400 * 1000 for ttl in ttls)
        finally:
            await raw.aclose()


async def test_a_kept_value_this_version_cannot_read_is_a_miss_and_is_replaced(aiohttp_client, aiohttp_server,
                                                                               database_url, prefix):
    config = redis_config(database_url, prefix)
    client = await start(aiohttp_client, aiohttp_server, config)
    upstream = Counting()
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    path = "/api/datasources/uid/p/resources/api/v1/labels"
    await post(client, {"queries": [instant()], **BODY})
    assert (await client.get(path, headers=ADMIN)).status == 200
    # sealed under the right key, as an older or newer gateway with another layout would have written it
    cipher = AESGCM(derive_key(config.security.secret_key, "gateway query cache"))
    raw = redis.asyncio.Redis.from_url(REDIS)
    try:
        names = [name async for name in raw.scan_iter(match=prefix + "[qr]:*")]
        assert len(names) == 2
        for name in names:
            nonce = os.urandom(12)
            await raw.set(name, nonce + cipher.encrypt(nonce, b"\xc1 not this layout", name))
    finally:
        await raw.aclose()
    for _ in range(2):
        answers = [await post(client, {"queries": [instant()], **BODY}), await client.get(path, headers=ADMIN)]
        assert [answer.status for answer in answers] == [200, 200]
        assert (await answers[0].json())["results"]["A"]["frames"][0]["data"]["values"][1] == [7]
    assert [answer.headers["X-Cache"] for answer in answers] == ["HIT", "HIT"]  # replaced by the misses before
    assert len(upstream.calls) == 4


# -- coalescing --------------------------------------------------------------------------------------------------

async def test_identical_queries_in_flight_share_one_backend_call(aiohttp_client, aiohttp_server, database_url):
    client = await start(aiohttp_client, aiohttp_server, caching(database_url))
    upstream = Counting(delay=0.3)
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    responses = await asyncio.gather(*(post(client, {"queries": [instant()], **BODY}) for _ in range(5)))
    assert all(response.status == 200 for response in responses)
    bodies = [await response.json() for response in responses]
    assert all(body == bodies[0] for body in bodies) and len(upstream.calls) == 1
    assert sorted(response.headers["X-Cache"] for response in responses) == ["HIT"] * 4 + ["MISS"]
    assert client.server.app[query_cache_key].stats.coalesced_waits == 4


async def test_two_gateways_sharing_redis_call_the_backend_once(aiohttp_client, aiohttp_server, database_url, prefix):
    config = redis_config(database_url, prefix)
    one = await start(aiohttp_client, aiohttp_server, config)
    two = await start(aiohttp_client, aiohttp_server, config)
    upstream = Counting(delay=0.3)
    await add(one, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    responses = await asyncio.gather(*(post(client, {"queries": [instant()], **BODY})
                                       for client in (one, two, one, two)))
    assert [response.status for response in responses] == [200] * 4 and len(upstream.calls) == 1
    assert sorted(response.headers["X-Cache"] for response in responses) == ["HIT", "HIT", "HIT", "MISS"]
    assert sum(client.server.app[query_cache_key].stats.coalesced_waits for client in (one, two)) == 3
    later = await post(two, {"queries": [instant()], **BODY})
    assert later.headers["X-Cache"] == "HIT" and len(upstream.calls) == 1
    # values are sealed at rest: nothing of the answer is readable in Redis
    raw = redis.asyncio.Redis.from_url(REDIS)
    try:
        names = [name async for name in raw.scan_iter(match=prefix + "*")]
        values = [await raw.get(name) for name in names]
        assert names and all(value is not None and b"s3cr3t" not in value for value in values)
    finally:
        await raw.aclose()


async def test_followers_on_another_replica_stop_waiting_when_the_leader_keeps_nothing(
        aiohttp_client, aiohttp_server, database_url, prefix):
    calls = []

    async def failing(request: web.Request) -> web.Response:
        calls.append(request.path)
        await asyncio.sleep(0.3)
        return web.json_response({"status": "error", "errorType": "bad_data", "error": "no"}, status=400)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", failing)
    upstream = await aiohttp_server(app)
    config = redis_config(database_url, prefix, coalesce_timeout=10)
    one = await start(aiohttp_client, aiohttp_server, config)
    two = await start(aiohttp_client, aiohttp_server, config)
    await add(one, "p", "prometheus", url=str(upstream.make_url("")).rstrip("/"))
    began = time.monotonic()
    responses = await asyncio.gather(post(one, {"queries": [instant()], **BODY}),
                                     post(two, {"queries": [instant()], **BODY}))
    assert [response.status for response in responses] == [400, 400]
    assert time.monotonic() - began < 3  # not the 10 s coalesce_timeout: the released lock ends the wait
    assert len(calls) == 2  # errors are not shared: each replica asked itself


# -- a failing Redis ---------------------------------------------------------------------------------------------

async def _silent_server() -> tuple[asyncio.Server, int]:
    """A loopback TCP server that accepts and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
async def test_a_redis_that_is_down_or_hangs_never_fails_a_query(aiohttp_client, aiohttp_server, database_url, kind,
                                                                 caplog):
    server = None
    if kind == "silent":
        server, port = await _silent_server()
    else:
        port = 9  # discard: nothing listens on loopback
    try:
        config = redis_config(database_url, "x:", timeout=0.2)
        config = msgspec.structs.replace(config, caching_redis=msgspec.structs.replace(
            config.caching_redis, url=f"redis://:hunter2@127.0.0.1:{port}/0"))
        client = await start(aiohttp_client, aiohttp_server, config)
        upstream = Counting()
        await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
        for _ in range(3):
            began = time.monotonic()
            response = await post(client, {"queries": [instant()], **BODY})
            assert response.status == 200 and response.headers["X-Cache"] == "ERROR"
            assert time.monotonic() - began < 1.5
            assert (await response.json())["results"]["A"]["frames"][0]["data"]["values"][1] == [7]
        stats = client.server.app[query_cache_key].stats
        assert len(upstream.calls) == 3 and (stats.error, stats.store_outages) == (3, 1)
        lines = [record.getMessage() for record in caplog.records if record.name == "gateway.cache"]
        assert len(lines) == 1 and "Redis unavailable" in lines[0]  # one line per change of state
        assert all("hunter2" not in record.getMessage() for record in caplog.records)
    finally:
        if server is not None:
            server.close()


async def test_a_slow_redis_is_left_alone_rather_than_waited_on_by_every_query(aiohttp_client, aiohttp_server,
                                                                              database_url, prefix, caplog):
    delay = [0.0]

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Between gateway and the real Redis: Redis' answers arrive delay[0] seconds late."""
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 6379)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, late: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if late:
                        await asyncio.sleep(delay[0])
                    sink.write(data)
            sink.close()

        await asyncio.gather(pump(reader, upstream_writer, False), pump(upstream_reader, writer, True))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        config = redis_config(database_url, prefix, timeout=0.3)
        config = msgspec.structs.replace(config, caching_redis=msgspec.structs.replace(
            config.caching_redis, url=f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"))
        client = await start(aiohttp_client, aiohttp_server, config)
        upstream = Counting()
        await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
        response = await post(client, {"queries": [instant()], **BODY})  # connections made while Redis is fast
        assert response.headers["X-Cache"] == "MISS"
        delay[0] = 0.2  # slower than half the timeout, within it
        began = time.monotonic()
        for minute in range(1, 5):  # four other queries: four misses
            response = await post(client, {"queries": [instant()], "from": str(1_700_000_000_000 + minute * 60_000),
                                           "to": str(1_700_000_060_000 + minute * 60_000)})
            assert response.status == 200 and response.headers["X-Cache"] == "ERROR"
        assert time.monotonic() - began < 1.2  # one slow call, not ~4 per query (a get, a lock, a set, an unlock)
        stats = client.server.app[query_cache_key].stats
        assert len(upstream.calls) == 5 and stats.store_outages == 1
        lines = [record.getMessage() for record in caplog.records if record.name == "gateway.cache"]
        assert len(lines) == 1 and "Redis slow" in lines[0]
    finally:
        server.close()


async def test_a_query_waiting_on_an_identical_one_shares_an_answer_too_large_to_keep(aiohttp_client, aiohttp_server,
                                                                                    database_url):
    calls: list[int] = []

    async def big(request: web.Request) -> web.Response:
        calls.append(1)
        await asyncio.sleep(0.3)
        result = [{"metric": {"__name__": "m", "i": str(index)}, "value": [1, "1"]} for index in range(400)]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    client = await start(aiohttp_client, aiohttp_server, caching(database_url, max_value_mb=0.001))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", big)
    upstream = await aiohttp_server(app)
    await add(client, "p", "prometheus", url=str(upstream.make_url("")).rstrip("/"))
    responses = await asyncio.gather(*(post(client, {"queries": [instant()], **BODY}) for _ in range(2)))
    assert sorted(response.headers["X-Cache"] for response in responses) == ["HIT", "MISS"]
    bodies = [await response.read() for response in responses]
    assert [response.status for response in responses] == [200, 200] and bodies[0] == bodies[1]
    assert len(calls) == 1 and len(json.loads(bodies[0])["results"]["A"]["frames"]) == 400
    response = await post(client, {"queries": [instant()], **BODY})
    assert response.headers["X-Cache"] == "MISS" and len(calls) == 2  # not kept


@pytest.fixture
def full_redis() -> Iterator[str]:
    """A private redis-server (1 MB, no eviction, no persistence) on a free port, filled until writes fail with
    OOM; the shared Redis on 6379 is left as it is."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxmemory", "1mb", "--maxmemory-policy", "noeviction", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        filler = redis.Redis(port=port)
        try:
            size = 1000  # ever smaller values: the request buffer of a large one counts too
            for index in range(10_000):
                try:
                    filler.set(f"fill:{index}", b"x" * size)
                except redis.exceptions.OutOfMemoryError:
                    if size == 1:
                        break
                    size //= 10
            else:
                raise AssertionError("redis-server never filled up")
        finally:
            filler.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(5)


async def test_a_busy_worker_is_not_a_slow_redis_and_a_call_from_before_a_pause_does_not_end_it(caplog, prefix):
    stats = CacheStats()
    store = RedisStore("redis://127.0.0.1:6379/0", prefix, 0.25, "a secret key", stats)
    try:
        await store.get("warm")  # the connection made
        call = asyncio.ensure_future(store.get("k"))
        await asyncio.sleep(0)  # sent
        began = time.thread_time()
        while time.thread_time() - began < 0.2:  # the worker's thread computing (a large answer, say)
            pass
        await call
        assert stats.store_outages == 0 and await store.get("k") is None
        first = asyncio.ensure_future(store.get("k"))
        await asyncio.sleep(0)
        time.sleep(0.2)  # not computing: to the store, Redis took this long
        second = asyncio.ensure_future(store.get("k"))  # begun before the first's answer is read
        await asyncio.gather(first, second)  # the first: slow; the second, fast, does not end the pause
        with pytest.raises(StoreError):
            await store.get("k")
    finally:
        await store.close()
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.cache"]
    assert len(lines) == 1 and "Redis slow" in lines[0] and stats.store_outages == 1


async def test_each_change_of_redis_state_is_logged_once(full_redis, caplog):
    stats = CacheStats()
    store = RedisStore(full_redis, "states:", 0.5, "a secret key", stats)
    try:
        for _ in range(2):  # refused, then left alone: one line
            with pytest.raises(StoreError):
                await store.set("k", b"v" * 1000, 60)
        raw = redis.asyncio.Redis.from_url(full_redis)
        try:
            await raw.shutdown(nosave=True)  # this private server only
        finally:
            await raw.aclose()
        await asyncio.sleep(RETRY_AFTER + 0.1)
        with pytest.raises(StoreError):
            await store.get("k")  # full, then gone: another state, another line
    finally:
        await store.close()
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.cache"]
    assert len(lines) == 2 and "Redis full" in lines[0] and "Redis unavailable" in lines[1]
    assert stats.store_outages == 1  # one outage, that changed its nature


async def test_a_full_redis_never_fails_a_query_and_logs_once_until_it_takes_writes_again(
        aiohttp_client, aiohttp_server, database_url, full_redis, caplog):
    config = redis_config(database_url, "full:", timeout=0.5, redis_url=full_redis)
    client = await start(aiohttp_client, aiohttp_server, config)
    upstream = Counting()
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    for index in range(3):
        if index == 2:
            await asyncio.sleep(2.2)  # past the pause after a failure: Redis is asked again, and is still full
        began = time.monotonic()
        response = await post(client, {"queries": [instant()], **BODY})
        assert response.status == 200 and response.headers["X-Cache"] == "ERROR"
        assert time.monotonic() - began < 1.5
        assert (await response.json())["results"]["A"]["frames"][0]["data"]["values"][1] == [7]
    assert len(upstream.calls) == 3 and client.server.app[query_cache_key].stats.error == 3
    scrape = await (await client.get("/metrics")).text()
    assert 'gateway_cache_requests_total{result="ERROR"} 3.0' in scrape
    assert "gateway_cache_store_outages_total 1.0" in scrape  # one outage: reads between refused writes
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.cache"]
    assert len(lines) == 1 and "Redis full" in lines[0]  # reads still work, but a full Redis is not back
    # room again: the next write succeeds, is logged once, and the answer after it is a hit
    raw = redis.asyncio.Redis.from_url(full_redis)
    try:
        await raw.flushall()
    finally:
        await raw.aclose()
    await asyncio.sleep(2.2)
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "MISS"
    assert (await post(client, {"queries": [instant()], **BODY})).headers["X-Cache"] == "HIT"
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.cache"]
    assert len(lines) == 2 and "available again" in lines[1]


# -- delta fetches -----------------------------------------------------------------------------------------------

def _range(ref_id: str = "A", expr: str = "m") -> dict[str, Any]:
    return prom_query(ref_id, "p", expr, range=True, intervalMs=1000, maxDataPoints=100)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_moving_window_fetches_only_the_new_steps_and_answers_what_a_full_fetch_answers(
        aiohttp_client, aiohttp_server, database_url, prefix, backend):
    config = caching(database_url) if backend == "memory" else redis_config(database_url, prefix)
    client = await start(aiohttp_client, aiohttp_server, config)
    upstream = Counting()
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, upstream))
    settled = (int(time.time()) - 3600) * 1000  # long past: every step may be kept
    for shift in (0, 10_000, 20_000, -5_000, 400_000):
        window = {"from": str(settled - 300_000 + shift), "to": str(settled + shift)}
        before = len(upstream.calls)
        cached = await post(client, {"queries": [_range()], **window})
        fetched = upstream.calls[before:]
        full = await post(client, {"queries": [_range()], **window}, {**ADMIN, "X-Cache-Skip": "1"})
        assert cached.status == full.status == 200
        got, want = await cached.json(), await full.json()
        assert got == want, shift
        spans = [(float(call["start"]), float(call["end"])) for call in fetched]
        if shift in (10_000, 20_000):  # the window moved on by 10 s: only the new steps are asked for
            assert len(spans) == 1 and spans[0][1] - spans[0][0] <= 12
        if shift == -5_000:  # moved back: only the older head
            assert len(spans) == 1 and spans[0][1] - spans[0][0] <= 30
    stats = client.server.app[query_cache_key].stats
    assert stats.delta_saved_points > 5 * stats.delta_fetched_points / 10


class Odd(Counting):
    """An upstream whose range answers a merge could not reproduce, chosen by the expression."""

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode()))
        self.calls.append(form)
        start, end, step = float(form["start"]), float(form["end"]), float(form["step"])
        times = [start + index * step for index in range(int((end - start) / step) + 1)]
        series = {"metric": {"__name__": "m"}, "values": [[t, str(t)] for t in times]}
        shape = form["query"]
        if shape == "duplicate":
            result = [series, {"metric": {"__name__": "m"}, "values": [[times[0], "1"]]}]
        elif shape == "outside":
            result = [{**series, "values": [[start - 600, "1"], *series["values"], [end + 600, "2"]]}]
        elif shape == "empty":
            result = [series, {"metric": {"__name__": "n"}, "values": []}]
        elif shape == "unlabelled":
            result = [{**series, "metric": None}]
        elif shape == "offgrid":  # a second after each step (within the range): between two steps
            result = [{**series, "values": [[t + 1, str(t)] for t in times[:-1]]}]
        else:
            result = [{**series, "values": list(reversed(series["values"]))}]  # times going backwards
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": result}})


async def test_delta_answers_of_odd_upstreams_equal_their_uncached_answers(aiohttp_client, aiohttp_server,
                                                                         database_url):
    client = await start(aiohttp_client, aiohttp_server, caching(database_url))
    await add(client, "p", "prometheus", url=await counting(aiohttp_server, Odd()))
    settled = (int(time.time()) - 3600) * 1000
    for shape in ("duplicate", "outside", "empty", "unlabelled", "offgrid", "backwards"):
        for shift in (0, 10_000, 20_000, 35_000):  # a miss, then windows that a cached extent would serve in part
            window = {"from": str(settled - 300_000 + shift), "to": str(settled + shift)}
            cached = await post(client, {"queries": [_range(expr=shape)], **window})
            full = await post(client, {"queries": [_range(expr=shape)], **window}, {**ADMIN, "X-Cache-Skip": "1"})
            assert cached.status == full.status == 200
            assert await cached.read() == await full.read(), (shape, shift)


def _has_data_at(url: str, seconds_ago: float) -> bool:
    at = time.time() - seconds_ago
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?query=up&time={at}", timeout=2) as answer:
            return bool(json.load(answer)["data"]["result"])
    except (OSError, ValueError, KeyError):
        return False


async def test_delta_answers_equal_uncached_answers_of_a_real_prometheus(aiohttp_client, aiohttp_server,
                                                                         database_url, real_prometheus):  # noqa: F811
    # windows end 8 s ago, so both answers see the same samples (a loaded machine ingests a scrape late); the
    # tolerance of 5 s lets the whole window be kept, so each refresh asks only for its newest steps
    client = await start(aiohttp_client, aiohttp_server, caching(database_url, backfill_tolerance=5))
    await add(client, "p", "prometheus", url=real_prometheus)
    deadline = time.monotonic() + 40
    while not _has_data_at(real_prometheus, 20) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # a Prometheus just started scrapes slowly: wait until it has run a while
    queries = [_range("A", "up"), _range("B", "rate(prometheus_http_requests_total[10s])"),
               _range("C", "sum by (handler) (prometheus_http_requests_total)"),
               _range("D", "prometheus_tsdb_head_series")]
    compared = 0
    for _ in range(8):
        now = int(time.time() * 1000) - 8_000
        body = {"queries": queries, "from": str(now - 300_000), "to": str(now)}
        skip = {**ADMIN, "X-Cache-Skip": "1"}
        before = json.loads(await (await post(client, body, skip)).text())
        cached = await post(client, body)
        after = json.loads(await (await post(client, body, skip)).text())
        assert cached.status == 200, await cached.text()
        if before == after:  # no sample of the window arrived meanwhile: there is one right answer
            assert json.loads(await cached.text()) == after
            assert all(result["frames"][0]["data"]["values"] for result in after["results"].values())
            compared += 1
        await asyncio.sleep(1.1)
    assert compared >= 4
    stats = client.server.app[query_cache_key].stats
    assert stats.delta_saved_points > stats.delta_fetched_points > 0
