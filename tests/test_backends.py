"""Health and resources per data source type, against real servers on loopback and the real Postgres."""

from __future__ import annotations

import base64
import gc
import socket
import types
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import ADMIN


class FakePrometheus:
    """A loopback server speaking the part of Prometheus' and Loki's HTTP API the backends use."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, str, bytes]] = []
        self.targets: list[str] = []  # each request target exactly as it came over the wire
        self.healthy = True

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.targets.append(request.raw_path)
        self.requests.append((request.method, request.path, request.query_string,
                              request.headers.get("Authorization", ""), body))
        if not self.healthy:
            return web.json_response({"status": "error", "error": "bad things"}, status=422)
        if request.path == "/api/v1/query":
            form = parse_qs(body.decode()) if body else parse_qs(request.query_string)
            assert form["query"] == ["1+1"]
            return web.json_response({"status": "success", "data": {"resultType": "scalar", "result": [4, "2"]}})
        if request.path in ("/api/v1/labels", "/loki/api/v1/labels", "/loki/api/v1/label/job/values"):
            return web.json_response({"status": "success", "data": ["job", "instance"]}, headers={
                "X-Upstream": "1", "Set-Cookie": "s=1", "Connection": "X-Hop", "X-Hop": "1",
                "Cache-Control": "max-age=5"})
        return web.json_response({"status": "error"}, status=404)


@pytest.fixture
async def prometheus(aiohttp_server: Any) -> tuple[FakePrometheus, str]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)
    return fake, f"http://127.0.0.1:{server.port}"


async def add(client: Any, **body: Any) -> dict[str, Any]:
    body = {"access": "proxy", **body}
    response = await client.post("/api/datasources", json=body, headers=ADMIN)
    assert response.status == 200, await response.text()
    return (await response.json())["datasource"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_prometheus_health_runs_one_plus_one_through_the_transport(client, prometheus):
    fake, url = prometheus
    ds = await add(client, name="p", uid="p", type="prometheus", url=url, basicAuth=True, basicAuthUser="u",
                   secureJsonData={"basicAuthPassword": "pw"})
    response = await client.get("/api/datasources/uid/p/health", headers=ADMIN)
    assert response.status == 200
    assert await response.json() == {
        "details": {"application": "Prometheus", "features": {"rulerApiEnabled": False}},
        "message": "Successfully queried the Prometheus API.", "status": "OK",
    }
    method, path, _, auth, body = fake.requests[-1]
    assert (method, path, body) == ("POST", "/api/v1/query", b"query=1%2B1&time=4")
    assert auth == "Basic " + base64.b64encode(b"u:pw").decode()
    by_id = await client.post(f"/api/datasources/{ds['id']}/health", headers=ADMIN)  # any method
    assert by_id.status == 200
    fake.healthy = False
    response = await client.get("/api/datasources/uid/p/health", headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {
        "message": "bad things - There was an error returned querying the Prometheus API.", "status": "ERROR"}


async def test_prometheus_health_with_get_method_and_unreachable_server(client, prometheus):
    fake, url = prometheus
    await add(client, name="p", uid="p", type="prometheus", url=url, jsonData={"httpMethod": "GET"})
    assert (await client.get("/api/datasources/uid/p/health", headers=ADMIN)).status == 200
    assert fake.requests[-1][:3] == ("GET", "/api/v1/query", "query=1%2B1&time=4")
    await add(client, name="down", uid="down", type="prometheus", url=f"http://127.0.0.1:{_closed_port()}")
    response = await client.get("/api/datasources/uid/down/health", headers=ADMIN)
    body = await response.json()
    assert response.status == 400 and body["status"] == "ERROR"
    assert body["message"].endswith("There was an error returned querying the Prometheus API.")


async def test_loki_health_asks_its_labels(client, prometheus):
    fake, url = prometheus
    await add(client, name="l", uid="l", type="loki", url=url)
    response = await client.get("/api/datasources/uid/l/health", headers=ADMIN)
    assert await response.json() == {"message": "Data source successfully connected.", "status": "OK"}
    assert fake.requests[-1][:2] == ("GET", "/loki/api/v1/labels")
    fake.healthy = False
    response = await client.get("/api/datasources/uid/l/health", headers=ADMIN)
    assert response.status == 400 and (await response.json())["status"] == "ERROR"


async def test_testdata_is_always_healthy_and_lists_scenarios(client):
    await add(client, name="td", uid="td", type="testdata")
    response = await client.get("/api/datasources/uid/td/health", headers=ADMIN)
    assert await response.json() == {"message": "Data source is working", "status": "OK"}
    scenarios = await (await client.get("/api/datasources/uid/td/resources/scenarios", headers=ADMIN)).json()
    assert {"random_walk", "csv_metric_values", "logs"} <= {s["id"] for s in scenarios}
    hello = await client.get("/api/datasources/uid/td/resources", headers=ADMIN)
    assert await hello.text() == "Hello world from test datasource!"
    assert hello.headers["Content-Security-Policy"] == "sandbox"


async def test_postgres_health_connects_for_real(client, database_url):
    parts = urlsplit(database_url)
    # the embedded server listens on a Unix socket only: its directory works as the url too
    url = f"{parts.hostname}:{parts.port or 5432}" if parts.hostname else parse_qs(parts.query)["host"][0]
    await add(client, name="pg", uid="pg", type="postgres", url=url, user=parts.username or "postgres",
              database=parts.path.lstrip("/"), jsonData={"sslmode": "disable"})
    response = await client.get("/api/datasources/uid/pg/health", headers=ADMIN)
    assert await response.json() == {"message": "Database Connection OK", "status": "OK"}
    await add(client, name="pg2", uid="pg2", type="grafana-postgresql-datasource",
              url=f"127.0.0.1:{_closed_port()}", user="x", jsonData={"sslmode": "disable"})
    response = await client.get("/api/datasources/uid/pg2/health", headers=ADMIN)
    body = await response.json()
    assert response.status == 400 and body["message"].startswith("Network error: Failed to connect to the server")


async def test_types_without_health_answer_as_grafana(client, make_token):
    await add(client, name="x", uid="x", type="some-external-plugin", url="http://x")
    response = await client.get("/api/datasources/uid/x/health", headers=ADMIN)
    assert (await response.json())["messageId"] == "plugin.notRegistered"
    await add(client, name="t", uid="t", type="tempo", url="http://x")
    response = await client.get("/api/datasources/uid/t/health", headers=ADMIN)
    assert response.status == 404 and (await response.json())["messageId"] == "plugin.notRegistered"
    response = await client.get("/api/datasources/uid/nope/health", headers=ADMIN)
    assert response.status == 404
    nobody = await make_token("None")
    assert (await client.get("/api/datasources/uid/x/health", headers=nobody)).status == 403


async def test_mysql_health_runs_select_1_on_a_real_mariadb(client, make_token):
    await add(client, name="my", uid="my", type="mysql", url="127.0.0.1:3306", user="root", database="test")
    response = await client.get("/api/datasources/uid/my/health", headers=ADMIN)
    assert (response.status, await response.json()) == (200, {"message": "Database Connection OK", "status": "OK"})
    await add(client, name="down", uid="down", type="mysql", url=f"127.0.0.1:{_closed_port()}", user="root",
              secureJsonData={"password": "s3cret-pw"})
    response = await client.get("/api/datasources/uid/down/health", headers=ADMIN)
    body = await response.json()
    assert response.status == 400 and body["status"] == "ERROR" and "s3cret-pw" not in str(body)
    assert body["message"].startswith("Failed to connect to the server")
    response = await client.get("/api/datasources/uid/down/health", headers=await make_token("Viewer"))
    assert (await response.json())["message"] == "Database connection failed"


async def test_prometheus_and_loki_resources_pass_through(client, prometheus):
    fake, url = prometheus
    await add(client, name="p", uid="p", type="prometheus", url=url, basicAuth=True, basicAuthUser="u",
              secureJsonData={"basicAuthPassword": "pw"})
    response = await client.get("/api/datasources/uid/p/resources/api/v1/labels?start=1&end=2",
                                headers={**ADMIN, "Cookie": "grafana_session=s"})
    assert response.status == 200
    assert await response.json() == {"status": "success", "data": ["job", "instance"]}
    # the upstream's headers come along, as Grafana's plugin client scrubs them (spec-proxy §4.3)
    assert response.headers["X-Upstream"] == "1" and response.headers["Content-Security-Policy"] == "sandbox"
    assert "Set-Cookie" not in response.headers and "X-Hop" not in response.headers
    assert response.headers.getall("Cache-Control") == ["no-store"]
    method, path, query, auth, _ = fake.requests[-1]
    assert (method, path, query) == ("GET", "/api/v1/labels", "start=1&end=2")
    assert auth == "Basic " + base64.b64encode(b"u:pw").decode()
    assert (await client.get("/api/datasources/uid/p/resources/other", headers=ADMIN)).status == 404
    response = await client.options("/api/datasources/uid/p/resources/api/v1/labels", headers=ADMIN)
    assert response.status == 405 and response.headers["Allow"] == "DELETE, GET, PATCH, POST, PUT"
    await add(client, name="l", uid="l", type="loki", url=url)
    response = await client.get("/api/datasources/uid/l/resources/label/job/values", headers=ADMIN)
    assert response.status == 200 and fake.requests[-1][1] == "/loki/api/v1/label/job/values"


NOT_IMPLEMENTED = {"message": "Method not implemented", "messageId": "plugin.notImplemented", "statusCode": 404,
                   "traceID": ""}


async def test_resource_paths_are_cleaned_and_escaped_and_never_climb_above_the_data_source_url(client, prometheus):
    fake, url = prometheus
    await add(client, name="p", uid="p", type="prometheus", url=url + "/prom")
    await add(client, name="l", uid="l", type="loki", url=url)
    for path in ["p/resources/api/v1/%2e%2e/%2e%2e/admin", "p/resources/api/v1/label/a%2F..%2F..%2F..%2Fadmin/values",
                 "l/resources/label/a%2F..%2F..%2F..%2Fadmin/values", "l/resources/%2e%2e/%2e%2e/loki/api/v1/push"]:
        response = await client.get(URL(f"/api/datasources/uid/{path}", encoded=True), headers=ADMIN)
        assert response.status == 404 and await response.json() == NOT_IMPLEMENTED, path
    assert fake.targets == []
    for path, target in [
        ("api/v1/%2e%2e/%2e%2e/%2e%2e/api/v1/labels", "/prom/api/v1/labels"),  # the root is the data source's path
        ("api/v1/label/a%2F..%2Fjob/values", "/prom/api/v1/label/job/values"),
        ("api/v1//./labels/", "/prom/api/v1/labels"),
        ("api/v1/label/a%3Fb/values", "/prom/api/v1/label/a%3Fb/values"),  # never a query
        ("api/v1/label/%C3%A9%20x%25!/values", "/prom/api/v1/label/%C3%A9%20x%25%21/values"),  # as Go escapes
    ]:
        response = await client.get(URL(f"/api/datasources/uid/p/resources/{path}", encoded=True), headers=ADMIN)
        assert fake.targets[-1] == target, path
    response = await client.get(URL("/api/datasources/uid/l/resources/label/a%2F..%2Fjob/values", encoded=True),
                                headers=ADMIN)
    assert response.status == 200 and fake.targets[-1] == "/loki/api/v1/label/job/values"


async def test_resource_query_reaches_the_data_source_byte_for_byte(client, prometheus):
    fake, url = prometheus
    await add(client, name="p", uid="p", type="prometheus", url=url)
    await add(client, name="l", uid="l", type="loki", url=url)
    for query in ["match[]=up%7Bjob%3D%22a%20b%22%7D&start=1", "match%5B%5D=%C3%A9&q=a+b%2Bc&flag", "x=%zz;y="]:
        response = await client.get(URL(f"/api/datasources/uid/p/resources/api/v1/series?{query}", encoded=True),
                                    headers=ADMIN)
        assert response.status == 404  # the fake's answer, passed through
        assert fake.targets[-1] == f"/api/v1/series?{query}"
        response = await client.get(URL(f"/api/datasources/uid/l/resources/series?{query}", encoded=True),
                                    headers=ADMIN)
        assert fake.targets[-1] == f"/loki/api/v1/series?{query}"


async def test_loki_resources_are_read_only_and_limited_to_grafanas_endpoints(client, prometheus):
    fake, url = prometheus
    await add(client, name="l", uid="l", type="loki", url=url)
    for method, path in [("POST", "labels"), ("POST", "loki/api/v1/push"), ("DELETE", "loki/api/v1/delete?query=x"),
                         ("PUT", "api/v1/labels"), ("PATCH", "series")]:
        response = await client.request(method, f"/api/datasources/uid/l/resources/{path}", data=b"{}", headers=ADMIN)
        assert response.status == 405 and response.headers["Allow"] == "GET", (method, path)
        assert await response.json() == {"message": "Method not allowed"}
    for path in ["push", "loki/api/v1/push", "api/v1/delete?query=x", "query_range?query=x", "tail", "", "loki/labels",
                 "labelsx", "detected_field"]:
        response = await client.get(f"/api/datasources/uid/l/resources/{path}", headers=ADMIN)
        assert response.status == 404 and await response.json() == NOT_IMPLEMENTED, path
    assert fake.targets == []
    for path, target in [
        ("labels?start=1", "/loki/api/v1/labels?start=1"), ("api/v1/labels", "/loki/api/v1/labels"),
        ("loki/api/v1/labels", "/loki/api/v1/labels"), ("label/job/values", "/loki/api/v1/label/job/values"),
        ("series?match[]=x", "/loki/api/v1/series?match[]=x"), ("index/stats", "/loki/api/v1/index/stats"),
        ("index/volume", "/loki/api/v1/index/volume"), ("patterns", "/loki/api/v1/patterns"),
        ("detected_labels", "/loki/api/v1/detected_labels"), ("detected_fields", "/loki/api/v1/detected_fields"),
        ("detected_field/level/values", "/loki/api/v1/detected_field/level/values"),
    ]:
        await client.get(URL(f"/api/datasources/uid/l/resources/{path}", encoded=True), headers=ADMIN)
        assert fake.requests[-1][0] == "GET" and fake.targets[-1] == target


async def test_prometheus_resources_honour_x_grafana_cache(client, prometheus):
    _, url = prometheus
    await add(client, name="p", uid="p", type="prometheus", url=url)
    labels = "/api/datasources/uid/p/resources/api/v1/labels"
    response = await client.get(labels, headers={**ADMIN, "X-Grafana-Cache": "private, max-age=60"})
    assert response.status == 200
    assert response.headers["X-Grafana-Cache"] == "y"
    assert response.headers.getall("Cache-Control") == ["private, max-age=60"]  # the upstream's one replaced
    response = await client.get(labels, headers=ADMIN)
    assert response.headers["Cache-Control"] == "no-store" and "X-Grafana-Cache" not in response.headers
    response = await client.get(labels, headers={**ADMIN, "X-Grafana-Cache": "public, max-age=60"})
    assert response.headers["Cache-Control"] == "no-store"  # Grafana's default headers cache only private answers


async def test_resource_errors_before_the_data_source_is_asked(client):
    for ds_id in ["abc", "99999999999999999999"]:
        response = await client.get(f"/api/datasources/{ds_id}/resources/api/v1/labels", headers=ADMIN)
        assert response.status == 400 and await response.json() == {"message": "id is invalid"}
    await add(client, name="down", uid="down", type="prometheus", url=f"http://127.0.0.1:{_closed_port()}")
    response = await client.get("/api/datasources/uid/down/resources/api/v1/labels", headers=ADMIN)
    assert response.status == 502
    assert await response.json() == {"message": "Bad Gateway: the data source could not be reached"}


# -- resources follow the proxy's rules (one seam for every outgoing call) ----------------------------------

async def test_prometheus_resources_refuse_writes_and_admin_routes_as_the_proxy_does(client, prometheus, make_token):
    fake, url = prometheus
    await add(client, name="p", uid="p", type="prometheus", url=url)
    viewer = await make_token("Viewer")
    before = len(fake.requests)
    for method in ("PUT", "DELETE", "PATCH"):
        response = await client.request(method, "/api/datasources/uid/p/resources/api/v1/admin/tsdb/delete_series",
                                        headers=viewer)
        assert response.status == 405 and response.headers["Allow"] == "GET, POST", method
    response = await client.post("/api/datasources/uid/p/resources/api/v1/admin/tsdb/delete_series", headers=viewer)
    assert response.status == 403
    assert await response.json() == {"message": "non allow-listed POSTs not allowed on proxied prometheus datasource"}
    response = await client.get("/api/datasources/uid/p/resources/api/v1/status/flags", headers=viewer)
    assert response.status == 403 and (await response.json())["message"] == "plugin proxy route access denied"
    assert len(fake.requests) == before  # nothing reached Prometheus
    response = await client.post("/api/datasources/uid/p/resources/api/v1/labels", headers=viewer)
    assert response.status == 200 and fake.requests[-1][:2] == ("POST", "/api/v1/labels")


async def test_the_whitelist_applies_to_health_and_resources_too(aiohttp_client, database_url, prometheus):
    from gateway.app import create_app
    from tests.conftest import make_config

    fake, url = prometheus
    client = await aiohttp_client(create_app(make_config(
        database_url, security={"data_source_proxy_whitelist": ("elsewhere:9090",)})))
    await add(client, name="p", uid="p", type="prometheus", url=url)
    refused = {"message": "Data proxy hostname and ip are not included in whitelist"}
    for path in ("/api/datasources/uid/p/health", "/api/datasources/uid/p/resources/api/v1/labels",
                 "/api/datasources/proxy/uid/p/api/v1/labels"):
        response = await client.get(path, headers=ADMIN)
        assert (response.status, await response.json()) == (403, refused), path
    assert fake.requests == []


async def test_resources_ask_for_gzip_and_answer_decoded(client, aiohttp_server):
    import gzip

    seen = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        return web.Response(body=gzip.compress(b'{"status":"success","data":["a"]}'),
                            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    await add(client, name="p", uid="p", type="prometheus", url=f"http://127.0.0.1:{server.port}")
    response = await client.get("/api/datasources/uid/p/resources/api/v1/labels", headers=ADMIN)
    assert response.status == 200 and await response.json() == {"status": "success", "data": ["a"]}
    assert "Content-Encoding" not in response.headers and seen == ["gzip"]


async def test_a_gzip_bomb_from_a_resource_is_a_502(client, aiohttp_server):
    import gzip

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(bytes(64 << 20)), headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    await add(client, name="p", uid="p", type="prometheus", url=f"http://127.0.0.1:{server.port}")
    response = await client.get("/api/datasources/uid/p/resources/api/v1/labels", headers=ADMIN)
    assert response.status == 502 and (await response.json())["message"].startswith("Bad Gateway")
    # the failed call leaves no reference cycle behind, that would hold its frames (and the up to 256 MiB it
    # decoded) until a full collection
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        response = await client.get("/api/datasources/uid/p/resources/api/v1/labels", headers=ADMIN)
        assert response.status == 502
        gc.collect()
        frames = [item for item in gc.garbage if isinstance(item, types.FrameType)
                  and item.f_code.co_filename.endswith(("client.py", "pool.py"))]
        assert frames == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_postgres_data_sources_get_their_own_bounded_pool_closed_on_change(client, database_url):
    from gateway.keys import cache_key

    parts = urlsplit(database_url)
    await add(client, name="pg", uid="pg", type="grafana-postgresql-datasource",
              url=f"{parts.hostname}:{parts.port or 5432}", user=parts.username or "postgres",
              database=parts.path.lstrip("/"), jsonData={"sslmode": "disable", "maxOpenConns": 3})
    assert (await client.get("/api/datasources/uid/pg/health", headers=ADMIN)).status == 200
    ctx = await client.app[cache_key].get(1, uid="pg")
    pool = await ctx.resource("postgres", None)  # opened by the health check: the factory is not called again
    assert pool.get_max_size() == 3 and ctx._http is None  # no HTTP pool for a SQL data source
    await ctx.close()
    assert pool._closed


async def test_a_replaced_data_source_stays_open_for_its_query_timeout(client, database_url, caplog):
    import logging

    from gateway.datasources.cache import RETIRE_GRACE
    from gateway.keys import cache_key, config_key

    parts = urlsplit(database_url)
    body = {"name": "pg", "uid": "pg", "type": "grafana-postgresql-datasource", "access": "proxy",
            "url": f"{parts.hostname}:{parts.port or 5432}", "user": parts.username or "postgres",
            "database": parts.path.lstrip("/"), "jsonData": {"sslmode": "disable", "maxOpenConns": 500, "timeout": 120}}
    created = await add(client, **body)
    cache = client.app[cache_key]
    query = {"queries": [{"refId": "A", "datasource": {"uid": "pg"}, "rawSql": "SELECT 1 AS x", "format": "table"}]}
    with caplog.at_level(logging.WARNING, logger="gateway.sql"):
        for _ in range(2):
            assert (await client.post("/api/ds/query", json=query, headers=ADMIN)).status == 200
    ctx = await cache.get(1, uid="pg")
    assert (await ctx.resource("postgres", None)).get_max_size() == 100
    # the cap on maxOpenConns is said once for this version of the data source
    assert [record.getMessage() for record in caplog.records if record.name == "gateway.sql"] == [
        "data source pg: jsonData.maxOpenConns 500 capped at 100 connections per worker"]
    # a change retires the old clients only after a query that just started could have run to its timeout
    assert cache.retiring(ctx) is None
    body["jsonData"] = {"sslmode": "disable"}
    response = await client.put(f"/api/datasources/{created['id']}", json=body, headers=ADMIN)
    assert response.status == 200, await response.text()
    assert 120 + RETIRE_GRACE - 1 < (cache.retiring(ctx) or 0) <= 120 + RETIRE_GRACE
    # without a timeout of its own, [dataproxy] timeout
    fresh = await cache.get(1, uid="pg")
    cache.invalidate(1, fresh.ds.id, "pg")
    timeout = client.app[config_key].dataproxy.timeout
    assert timeout + RETIRE_GRACE - 1 < (cache.retiring(fresh) or 0) <= timeout + RETIRE_GRACE


async def test_concurrent_first_reads_of_a_data_source_open_it_once(client):
    import asyncio

    from gateway.keys import cache_key

    await add(client, name="td", uid="td", type="grafana-testdata-datasource", access="proxy")
    cache = client.app[cache_key]
    cache.clear()  # as after a start or a lost listener: every request below reads Postgres at once
    batches = await asyncio.gather(*(cache.get_many(1, ["td"]) for _ in range(20)),
                                   *(cache.get(1, uid="td") for _ in range(5)))
    contexts = {id(batch["td"]) if isinstance(batch, dict) else id(batch) for batch in batches}
    assert len(contexts) == 1  # one set of clients, none opened only to be retired
    held = await cache.get(1, uid="td")
    assert id(held) in contexts and cache.retiring(held) is None
    assert cache.contexts() == [held]
