"""GET /metrics: Grafana's metrics for proxy, health, resources and query traffic, basic auth, every worker in
one scrape, a real Prometheus scraping it; request ids, traceparent, log formats and no secret in any log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sys
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.logs import ConsoleFormatter, JsonFormatter, TextFormatter, context_filter
from gateway.metrics import quantile, sanitize
from tests.conftest import ADMIN, make_config, prometheus_query, running_prometheus
from tests.test_query import add, post

NOW = int(time.time() * 1000)
RANGE = {"from": str(NOW - 60_000), "to": str(NOW)}


class Upstream:
    """A loopback Prometheus: answers the calls gateway makes, records the headers it got."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if request.path == "/fail":
            return web.Response(status=503, text="down")
        if request.path == "/api/v1/query_range":
            return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": [
                {"metric": {"job": "x"}, "values": [[NOW / 1000, "1"]]}]}})
        if request.path == "/api/v1/query":
            return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})
        return web.json_response({"status": "success", "data": ["job"]})


async def upstream_url(aiohttp_server: Any, upstream: Upstream) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app, access_log=None)  # its log is the upstream's, not gateway's
    return f"http://127.0.0.1:{server.port}"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    matches = [v for (n, ls), v in found.items() if n == name and wanted <= ls]
    assert matches, f"no sample {name} {labels}"
    return sum(matches)


async def traffic(client: Any, url: str) -> None:
    """Proxy, health, resources and query calls to the data source `p` (and one failing proxy call)."""
    for path in ("/api/datasources/proxy/uid/p/api/v1/query?query=up",
                 "/api/datasources/proxy/uid/p/fail",
                 "/api/datasources/uid/p/health",
                 "/api/datasources/uid/p/resources/api/v1/labels"):
        response = await client.get(path, headers=ADMIN)
        assert response.status in (200, 404, 503), (path, response.status, await response.text())
        await response.read()
    query = {"refId": "A", "datasource": {"uid": "p"}, "expr": "up", "intervalMs": 1000, "maxDataPoints": 10}
    response = await post(client, {"queries": [query], **RANGE})
    assert response.status == 200, await response.text()


async def test_proxy_health_resources_and_query_traffic_shows_in_grafanas_metrics(client, aiohttp_server):
    upstream = Upstream()
    url = await upstream_url(aiohttp_server, upstream)
    await add(client, "p", "prometheus", url=url, name="My prom 1", basicAuth=True, basicAuthUser="u",
              secureJsonData={"basicAuthPassword": "pw-in-metrics-never"})
    await traffic(client, url)
    for _ in range(50):  # a handler's metrics are recorded as it returns, which can be after its last byte
        response = await client.get("/metrics")
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
        try:
            if (value(samples(text), "grafana_http_request_duration_seconds_count", status_code="200",
                      handler="/api/datasources/proxy/uid/:uid/*", method="GET") == 1
                    and value(samples(text), "gateway_upstream_connections", state="busy") == 0):
                break
        except AssertionError:  # not there yet
            pass
        await asyncio.sleep(0.1)
    assert "pw-in-metrics-never" not in text and url not in text and "127.0.0.1" not in text
    found = samples(text)
    ds = {"datasource": "My_prom_1", "datasource_type": "prometheus", "secure_socks_ds_proxy_enabled": "false"}
    assert value(found, "grafana_datasource_request_total", code="200", **ds) >= 3
    assert value(found, "grafana_datasource_request_total", code="200", method="get", **ds) >= 1
    assert value(found, "grafana_datasource_request_total", code="503", method="get", **ds) == 1
    assert value(found, "grafana_datasource_request_duration_seconds_count", code="200", **ds) >= 3
    assert value(found, "grafana_datasource_request_duration_seconds_bucket", le="100.0", code="200", **ds) >= 3
    assert value(found, "grafana_datasource_response_size_bytes_count", **ds) >= 4
    assert value(found, "grafana_datasource_request_in_flight", **ds) == 0
    for endpoint in ("queryData", "checkHealth", "callResource"):
        plugin = {"plugin_id": "prometheus", "endpoint": endpoint, "status": "ok", "target": "in_memory"}
        assert value(found, "grafana_plugin_request_total", **plugin) == 1
        assert value(found, "grafana_plugin_request_duration_seconds_count", source="grafana-backend", **plugin) == 1
    assert value(found, "grafana_http_request_duration_seconds_count", handler="/api/datasources/proxy/uid/:uid/*",
                 status_code="200", method="GET") == 1
    assert value(found, "grafana_http_request_duration_seconds_count", handler="/api/ds/query") == 1
    assert value(found, "grafana_proxy_response_status_total", code="200") == 1
    assert value(found, "grafana_proxy_response_status_total", code="unknown") == 1  # the 503
    assert value(found, "grafana_stat_totals_datasource", plugin_id="prometheus") == 1
    assert value(found, "grafana_build_info", version="12.4.0", edition="oss") == 1
    assert value(found, "gateway_datasource_call_duration_seconds_count", datasource_uid="p", org_id="1",
                 endpoint="proxy", status="error") == 1
    assert value(found, "gateway_query_fanout_width_count") == 1
    assert value(found, "gateway_query_queue_seconds_count") == 1
    assert value(found, "gateway_datasource_cache_lookups_total", result="hit") >= 4
    assert value(found, "gateway_datasource_cache_lookups_total", result="miss") >= 1
    assert value(found, "gateway_upstream_connections", state="idle") >= 1
    assert value(found, "gateway_upstream_connections", state="busy") == 0
    assert value(found, "gateway_upstream_waiting_requests") == 0
    assert value(found, "gateway_db_connections", state="idle") >= 1  # the scrape's own stat query used one
    assert not [name for name, _ in found if name.endswith("_created")]


async def test_methods_outside_http_s_own_are_counted_as_other(client, aiohttp_server):
    await add(client, "p", "generic-http", url=await upstream_url(aiohttp_server, Upstream()))
    for method in ("PROPFIND", "MKCOL", "LOCK"):  # WebDAV: the parser knows them, the labels need not
        response = await client.request(method, "/api/datasources/proxy/uid/p/api/v1/labels", headers=ADMIN)
        assert response.status == 200
    found = samples(await (await client.get("/metrics")).text())
    assert value(found, "grafana_http_request_duration_seconds_count", method="OTHER") == 3
    assert value(found, "grafana_datasource_request_total", method="other") == 3
    assert not [labels for _, labels in found if ("method", "MKCOL") in labels or ("method", "mkcol") in labels]


async def test_datasource_stats_give_the_admin_page_calls_errors_and_p95(client, aiohttp_server):
    from gateway.keys import metrics_key

    url = await upstream_url(aiohttp_server, Upstream())
    await add(client, "p", "prometheus", url=url)
    await traffic(client, url)
    metrics = client.server.app[metrics_key]
    stats = await metrics.datasource_stats(1)
    assert set(stats) == {"p"}
    assert stats["p"].requests == 5 and stats["p"].errors == 1  # 2 proxy calls, health, resources, query
    assert stats["p"].p95_seconds is not None and 0 < stats["p"].p95_seconds <= 0.1
    assert await metrics.datasource_stats(2) == {}


def test_quantiles_interpolate_within_buckets_as_prometheus_does():
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == 0.1
    assert quantile(0.95, buckets) == pytest.approx(0.75)
    assert quantile(0.95, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(1.0, 1.0), (float("inf"), 10.0)]) == 1.0  # in +Inf: the highest finite bound
    assert sanitize("My prom-1") == "My_prom1" and sanitize("1abc") == "abc" and sanitize("ü") == ""


@pytest.fixture
async def serve(aiohttp_client: Any, database_url: str) -> Any:
    async def start(**sections: dict[str, Any]) -> Any:
        return await aiohttp_client(create_app(make_config(database_url, **sections)))
    return start


async def test_metrics_can_ask_for_basic_auth_or_be_switched_off(serve):
    guarded = await serve(metrics={"basic_auth_username": "scraper", "basic_auth_password": "s3cret"})
    response = await guarded.get("/metrics")
    assert response.status == 401 and response.headers["WWW-Authenticate"] == 'Basic realm="metrics"'
    wrong = base64.b64encode(b"scraper:nope").decode()
    assert (await guarded.get("/metrics", headers={"Authorization": f"Basic {wrong}"})).status == 401
    right = base64.b64encode(b"scraper:s3cret").decode()
    response = await guarded.get("/metrics", headers={"Authorization": f"Basic {right}"})
    assert response.status == 200 and "grafana_build_info" in await response.text()
    off = await serve(metrics={"enabled": False})
    response = await off.get("/metrics")
    assert response.status == 404 and await response.json() == {"message": "Not found"}
    assert (await off.get("/api/health")).status == 200  # the app itself serves on


async def test_every_response_carries_a_request_id_and_upstreams_get_a_traceparent(client, aiohttp_server):
    upstream = Upstream()
    await add(client, "p", "prometheus", url=await upstream_url(aiohttp_server, upstream))
    response = await client.get("/api/datasources/proxy/uid/p/api/v1/labels",
                                headers={**ADMIN, "X-Request-Id": "abc-123",
                                         "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert response.status == 200 and response.headers["X-Request-Id"] == "abc-123"
    sent = upstream.headers[-1]["traceparent"]
    assert re.fullmatch(r"00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01", sent) and "b7ad6b7169203331" not in sent
    for headers in ({"X-Request-Id": "bad id\twith spaces", "traceparent": "garbage"}, {}):
        response = await client.get("/api/datasources/uid/nope", headers={**ADMIN, **headers})
        assert response.status == 404
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])
    await client.get("/api/datasources/uid/p/resources/api/v1/labels", headers=ADMIN)
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", upstream.headers[-1]["traceparent"])
    query = {"refId": "A", "datasource": {"uid": "p"}, "expr": "up"}
    incoming = "00-" + "1" * 32 + "-" + "2" * 16 + "-00"
    await post(client, {"queries": [query], **RANGE}, headers={**ADMIN, "traceparent": incoming})
    assert upstream.headers[-1]["traceparent"].startswith("00-" + "1" * 32 + "-")


def _record(**fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "Request Completed", None, None)
    record.fields = fields
    record.request_id, record.trace_id = "rid", "tid"
    return record


def test_log_lines_in_console_text_and_json_formats():
    record = _record(method="GET", path="/api/a b", status=200)
    console = ConsoleFormatter().format(record)
    assert console.endswith('INFO gateway.access Request Completed method=GET path="/api/a b" status=200'
                            " requestID=rid traceID=tid")
    text = TextFormatter().format(record)
    assert re.fullmatch(r't=\S+Z level=info logger=gateway.access msg="Request Completed" method=GET '
                        r'path="/api/a b" status=200 requestID=rid traceID=tid', text)
    assert json.loads(JsonFormatter().format(record)) == {
        "t": json.loads(JsonFormatter().format(record))["t"], "level": "info", "logger": "gateway.access",
        "msg": "Request Completed", "method": "GET", "path": "/api/a b", "status": 200, "requestID": "rid",
        "traceID": "tid"}


def test_a_console_line_cannot_be_ended_or_forged_by_what_its_message_quotes():
    # a data source's error text is quoted in warnings (e.g. an exemplar query's); the traceback stays below
    forged = "boom\r\n2026-12-06 03:00:00,000 ERROR gateway forged\u2028\x1b[31m"
    try:
        raise ValueError("cause")
    except ValueError:
        record = logging.LogRecord("gateway.prometheus", logging.WARNING, __file__, 1, "failed: %s", (forged,),
                                   sys.exc_info())
    head, _, traceback = ConsoleFormatter().format(record).partition("\n")
    assert head.endswith("WARNING gateway.prometheus failed: boom\\r\\n2026-12-06 03:00:00,000 ERROR gateway "
                         "forged\\u2028\\u001b[31m")
    assert traceback.startswith("Traceback") and traceback.endswith("ValueError: cause")


async def test_one_access_line_per_request_with_its_id_and_no_query_string(client, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    caplog.handler.addFilter(context_filter())
    response = await client.get("/api/datasources?query=secret-in-query", headers={**ADMIN, "X-Request-Id": "r-1"})
    assert response.status == 200
    lines = [record for record in caplog.records if record.name == "gateway.access"]
    assert len(lines) == 1
    fields = lines[0].fields
    assert fields["path"] == "/api/datasources" and fields["status"] == 200 and fields["uname"] == "admin"
    assert lines[0].request_id == "r-1" and len(lines[0].trace_id) == 32
    assert "secret-in-query" not in caplog.text


async def test_debug_logs_of_real_traffic_hold_none_of_its_secrets(aiohttp_client, aiohttp_server, database_url,
                                                                   make_token, caplog):
    # served as python -m gateway serves: without aiohttp's access log, which would quote the request line
    config = make_config(database_url, dataproxy={"logging": True})
    client = await aiohttp_client(await aiohttp_server(create_app(config), access_log=None))
    caplog.set_level(logging.DEBUG)  # the root logger: gateway's, aiohttp's and asyncpg's records alike
    caplog.handler.addFilter(context_filter())
    caplog.handler.setFormatter(TextFormatter())
    secrets = ["basic-pw-Zq81", "legacy-pw-Kx22", "header-token-Vb33", "tls-key-Mn44", "cookie-val-Pq55",
               "client-auth-Rt66", "ds-auth-Hy77", "query-token-Jk88", "body-secret-Lo99"]
    upstream = Upstream()
    url = await upstream_url(aiohttp_server, upstream)
    await add(client, "p", "prometheus", url=url, basicAuth=True, basicAuthUser="u",
              secureJsonData={"basicAuthPassword": secrets[0]},
              jsonData={"httpHeaderName1": "X-Token", "keepCookies": ["session"]})
    await add(client, "l", "loki", url=url, user="legacy", secureJsonData={"password": secrets[1]})
    response = await client.put("/api/datasources/uid/p", headers=ADMIN, json={
        "name": "p", "type": "prometheus", "access": "proxy", "url": url, "basicAuth": True, "basicAuthUser": "u",
        "jsonData": {"httpHeaderName1": "X-Token", "keepCookies": ["session"], "tlsAuth": True},
        "secureJsonData": {"httpHeaderValue1": secrets[2], "tlsClientKey": secrets[3]}})
    assert response.status in (200, 400), await response.text()
    token = await make_token("Admin")
    secrets.append(token["Authorization"].removeprefix("Bearer "))
    calls = [
        ("GET", "/api/datasources/proxy/uid/p/api/v1/query?query=up&auth_token=" + secrets[7],
         {**token, "Cookie": f"session={secrets[4]}; grafana_session={secrets[4]}",
          "X-DS-Authorization": f"Bearer {secrets[6]}"}),
        ("GET", "/api/datasources/proxy/uid/l/loki/api/v1/labels",
         {"Authorization": "Basic " + base64.b64encode(f"admin:{secrets[5]}".encode()).decode()}),
        ("GET", "/api/datasources/uid/p/health", token),
        ("GET", "/api/datasources/uid/p/resources/api/v1/labels", token),
        ("GET", "/api/datasources/uid/p", token),
        ("GET", "/api/datasources", {"Authorization": "Bearer glsa_not_a_real_" + secrets[8]}),
        ("POST", "/api/datasources/proxy/uid/p/api/v1/query", {**token, "Content-Type": "application/json"}),
    ]
    for method, path, headers in calls:
        response = await client.request(method, path, headers=headers, data=f'{{"secret": "{secrets[8]}"}}')
        await response.read()
    query = {"refId": "A", "datasource": {"uid": "p"}, "expr": f'up{{x="{secrets[7]}"}}'}
    assert (await post(client, {"queries": [query], **RANGE}, headers=token)).status in (200, 400)
    await client.get("/metrics")
    await asyncio.sleep(0.05)
    assert any(record.name == "gateway.access" for record in caplog.records)
    assert "Proxying incoming request" in caplog.text and "auth_token=hidden" in caplog.text
    assert any(record.levelno == logging.DEBUG for record in caplog.records)  # debug was really on
    text = caplog.text + "".join(str(record.__dict__) for record in caplog.records)
    sent = [headers.get("Authorization", "") for headers in upstream.headers]
    assert "Bearer ds-auth-Hy77" in sent and any(value.startswith("Basic ") for value in sent)  # secrets did travel
    leaked = [secret for secret in secrets if secret in text]
    assert leaked == []
    assert "Authorization" not in text or "Basic " not in text


async def test_two_workers_answer_one_scrape_with_both_workers_samples(database_url, tmp_path):
    from tests.test_shutdown import running_gateway

    async with running_gateway(database_url, tmp_path, workers=2) as gateway:
        async with aiohttp.ClientSession() as session:

            async def health_count() -> float:
                async with session.get(f"{gateway.url}/metrics") as response:
                    assert response.status == 200
                    found = samples(await response.text())
                assert value(found, "gateway_workers") == 2  # each scrape has both workers' samples
                return value(found, "grafana_http_request_duration_seconds_count", handler="/api/health")

            before = await health_count()
            for _ in range(40):  # a new connection each: the kernel hands them to either worker
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{gateway.url}/api/health") as response:
                    assert response.status == 200
            counts = {await health_count() - before for _ in range(6)}  # scrapes answered by either worker
        assert counts == {40.0}


async def test_a_real_prometheus_scrapes_samples_of_every_kind_of_traffic(client, aiohttp_server):
    with running_prometheus([f"127.0.0.1:{client.server.port}"]) as prometheus:
        await add(client, "p", "prometheus", url=prometheus)  # the data source is that Prometheus itself
        await traffic(client, prometheus)
        wanted = [
            'grafana_datasource_request_total{datasource="p",code="200",method="get"}',
            'grafana_datasource_request_duration_seconds_bucket{datasource="p",le="+Inf"}',
            'grafana_datasource_response_size_bytes_count{datasource="p"}',
            'grafana_datasource_request_in_flight{datasource="p"}',
            'grafana_plugin_request_total{plugin_id="prometheus",endpoint="queryData"}',
            'grafana_plugin_request_total{plugin_id="prometheus",endpoint="checkHealth"}',
            'grafana_plugin_request_duration_seconds_count{endpoint="callResource"}',
            'grafana_http_request_duration_seconds_count{handler="/api/datasources/proxy/uid/:uid/*"}',
            'grafana_proxy_response_status_total{code="200"}',
            'grafana_stat_totals_datasource{plugin_id="prometheus"}',
            'grafana_build_info{job="gateway"}',
            'gateway_datasource_call_duration_seconds_count{datasource_uid="p",endpoint="proxy"}',
        ]
        deadline = time.monotonic() + 30
        missing = wanted
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            missing = [expr for expr in missing if not await asyncio.to_thread(prometheus_query, prometheus, expr)]
        assert missing == []
        up = await asyncio.to_thread(prometheus_query, prometheus, 'up{job="gateway"}')
        assert up[0]["value"][1] == "1"


async def test_without_router_logging_only_answers_other_than_200_and_304_are_logged(serve, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    quiet = await serve(server={"router_logging": False})
    assert (await quiet.get("/api/health")).status == 200
    assert (await quiet.get("/api/datasources/uid/nope", headers=ADMIN)).status == 404
    lines = [record.fields for record in caplog.records if record.name == "gateway.access"]
    assert [(fields["path"], fields["status"]) for fields in lines] == [("/api/datasources/uid/nope", 404)]


def test_log_and_metrics_settings_are_read_as_grafana_names_them():
    from gateway.config import Config, ConfigError

    config = Config.from_env({"GF_LOG_CONSOLE_FORMAT": "json", "GF_LOG_LEVEL": "DEBUG", "GF_METRICS_ENABLED": "false",
                              "GF_METRICS_BASIC_AUTH_PASSWORD": "scrape-pw", "GF_SERVER_ROUTER_LOGGING": "false"})
    assert config.log_console.format == "json" and config.log.level == "DEBUG"
    assert not config.metrics.enabled and not config.server.router_logging
    assert "scrape-pw" not in repr(config)
    assert {"GF_LOG_CONSOLE_FORMAT", "GF_LOG_MODE", "GF_METRICS_BASIC_AUTH_USERNAME"} <= Config.env_names()
    for env, key in (({"GF_LOG_CONSOLE_FORMAT": "xml"}, "[log.console] format"),
                     ({"GF_LOG_LEVEL": "loud"}, "[log] level"), ({"GF_LOG_MODE": "syslog"}, "[log] mode")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            Config.from_env(env)
    assert Config.from_env({"GF_LOG_MODE": "console file"}).log.mode == "console file"  # Grafana's default


def test_the_whole_runs_log_is_kept_at_debug_level_for_the_secret_scan(secret_scan):
    from tests.conftest import SecretScan

    logging.getLogger("gateway.test").debug("scan sees debug records")
    assert secret_scan.lines and "scan sees debug records" in secret_scan.lines[-1]
    scan = SecretScan()
    scan.add("token-abc-123", "short")
    scan.emit(_record(path="/x", token="token-abc-123"))
    assert list(scan.leaks()) == ["token-abc-123"] and scan.secrets == {"token-abc-123"}
