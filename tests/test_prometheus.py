"""Prometheus queries through POST /api/ds/query: Grafana's converter and full-path goldens, the step and the
calls sent, errors per refId, fan-out and cancellation against loopback upstreams, and a real Prometheus."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest
from aiohttp import web

from gateway.backends.base import DataQuery
from gateway.backends.prometheus import Settings, legend, legend_parts, plan, read_result
from gateway.frames import encode_json
from gateway.gtime import TimeRange
from tests.conftest import ADMIN, running_prometheus
from tests.test_frames import load
from tests.test_query import add, post

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "prometheus"
CONVERTER = sorted(path.stem for path in GOLDEN.glob("prom-*.json"))
FULL_PATH = sorted(path.name.removesuffix(".query.json") for path in GOLDEN.glob("*.query.json"))


def _wire(response: Any) -> dict[str, Any]:
    """One DataResponse as its JSON under results.A."""
    return json.loads(encode_json({"A": response}))["results"]["A"]


def _expected(golden: dict[str, Any]) -> dict[str, Any]:
    for frame in golden.get("frames") or ():
        frame["schema"]["refId"] = "A"  # goldens are plugin answers; /api/ds/query adds the refId
    return golden


# -- converter goldens ------------------------------------------------------------------------------------

def test_every_converter_golden_is_listed():
    assert len(CONVERTER) == 20 and "prom-query-range-big" in CONVERTER


@pytest.mark.parametrize("name", [name for name in CONVERTER if name != "prom-error"])
def test_prometheus_bodies_convert_to_grafanas_golden_frames(name):
    response = read_result((GOLDEN / f"{name}.json").read_bytes())
    assert _wire(response) == _expected(load(GOLDEN / f"{name}-frame.jsonc"))


def test_a_prometheus_error_body_is_an_error():
    response = read_result((GOLDEN / "prom-error.json").read_bytes())
    assert response.frames is None
    assert response.error == load(GOLDEN / "prom-error-frame.jsonc")["error"]


def test_plus_inf_is_rewritten_only_as_a_sample_value():
    body = (b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"le":"+Inf"},'
            b'"values":[[1,"+Inf"],[2,"-Inf"],[3,"NaN"],[4,"1.5"]]}]}}')
    frame = _wire(read_result(body))["frames"][0]
    assert frame["schema"]["fields"][1]["labels"] == {"le": "+Inf"}
    assert frame["data"] == {"values": [[1000, 2000, 3000, 4000], [None, None, None, 1.5]],
                             "entities": [None, {"NaN": [2], "Inf": [0], "NegInf": [1]}]}


def test_sample_strings_the_fast_path_refuses_are_read_exactly():
    body = (b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},'
            b'"value":[1.5,"0x1p3"]},{"metric":{},"value":[2,"+Inf"]}]},"warnings":["w"]}')
    frames = _wire(read_result(body))["frames"]
    assert [frame["data"]["values"] for frame in frames] == [[[1500], [8.0]], [[2000], [None]]]
    assert all(frame["schema"]["meta"]["notices"] == [{"severity": "warning", "text": "w"}] for frame in frames)


def test_query_stats_go_to_the_first_frame():
    stats = {"timings": {"evalTotalTime": 0.1}, "samples": {"totalQueryableSamples": 42}}
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [], "stats": stats}})
    frame = _wire(read_result(body.encode()))["frames"][0]["schema"]
    assert frame["name"] == "Query statistics" and frame["fields"] == []
    assert frame["meta"] == {"typeVersion": [0, 0], "custom": {"stats": stats},
                             "stats": [{"displayName": "Total queryable samples", "value": 42}]}


@pytest.mark.parametrize("body", [b"", b"<html>", b"[1]", b'{"data":{"resultType":"matrix","result":[{"values":1}]}}',
                                  b'{"data":{"resultType":"weird","result":[]}}', b'{"data":{"result":[]}}'])
def test_bodies_that_are_not_prometheus_answers_are_a_502_not_a_crash(body):
    response = read_result(body)
    assert response.error is not None and response.status == 502 and response.error_source == "downstream"


def test_a_million_point_matrix_converts_exactly():
    values = ",".join(f'[{1700000000 + n},"{n}.5"]' for n in range(1_000_000))
    body = ('{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"m"},"values":['
            + values + "]}]}}").encode()
    response = read_result(body)  # its speed is measured by bench/prometheus.py, not here
    field = response.frames[0].fields[1]  # type: ignore[index]
    assert len(field.values) == 1_000_000 and field.values[-1] == 999_999.5
    assert response.frames[0].fields[0].values[-1] == (1700000000 + 999_999) * 1000  # type: ignore[index]


def test_whole_fractional_and_mixed_sample_times_are_exact_milliseconds():
    def times(stamps: str) -> list[Any]:
        body = ('{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":['
                + ",".join(f'[{stamp},"1"]' for stamp in stamps.split()) + "]}]}}").encode()
        return _wire(read_result(body))["frames"][0]["data"]["values"][0]

    assert times("1700000000 1700000015") == [1700000000000, 1700000015000]
    assert times("1700000000.123 1700000000.5") == [1700000000123, 1700000000500]
    assert times("1700000000 1700000000.001 -1.5") == [1700000000000, 1700000000001, -1500]
    assert all(type(value) is int for value in times("1 2.5"))
    big = read_result(b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},'
                      b'"values":[[1,"1"],[9223372036854776,"1"]]}]}}')  # past an int64 of milliseconds
    assert big.status == 502 and "outside the range" in (big.error or "")
    for stamp in (b'"NaN"', b'"Inf"'):  # read as floats by the fast path: no millisecond to give them
        odd = read_result(b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":['
                          + stamp + b',"1"]}]}}')
        assert odd.status == 502 and odd.error_source == "downstream"


# -- step, variables and legends -------------------------------------------------------------------------

def _query(model: dict[str, Any], from_ms: int = 1_700_000_000_000, to_ms: int = 1_700_003_600_000,
           interval_ms: int = 15_000, max_data_points: int = 1500) -> DataQuery:
    return DataQuery("A", "", max_data_points, interval_ms, TimeRange(from_ms, to_ms),
                     msgspec.Raw(msgspec.json.encode(model)))


SETTINGS = Settings("POST", "", "", 60.0, "")


def test_step_follows_interval_max_data_points_and_the_safe_resolution():
    assert plan(_query({"expr": "up"}), SETTINGS).step_ms == 15_000  # intervalMs wins over 1h/1500 = 2.4s
    assert plan(_query({"expr": "up"}, max_data_points=100), SETTINGS).step_ms == 30_000  # 36s rounds to 30s
    assert plan(_query({"expr": "up", "interval": "1m"}), SETTINGS).step_ms == 60_000
    assert plan(_query({"expr": "up", "intervalFactor": 2}), SETTINGS).step_ms == 30_000
    week = _query({"expr": "up", "interval": "1ms"}, to_ms=1_700_000_000_000 + 7 * 86_400_000, interval_ms=0,
                  max_data_points=100_000)
    assert plan(week, SETTINGS).step_ms == 60_000  # 7d / 100000 = 6s -> 5s, but the safe 7d / 11000 = 55s -> 1m
    scraped = Settings.from_options({"timeInterval": "30s"})
    assert plan(_query({"expr": "up"}, interval_ms=0), scraped).step_ms == 30_000
    rate = plan(_query({"expr": "rate(x[$__rate_interval])", "interval": "$__rate_interval"}), SETTINGS)
    assert rate.step_ms == 60_000 and rate.expr == "rate(x[1m0s])"  # max(15s + 15s, 4 x 15s)


def test_null_model_fields_read_as_their_defaults_and_wrong_types_are_refused():
    prepared = plan(_query({"expr": "up", "interval": None, "intervalFactor": None, "legendFormat": None}), SETTINGS)
    assert prepared.step_ms == 15_000 and prepared.query.legend_format == "" and prepared.query.range
    with pytest.raises(ValueError, match=r"^error unmarshaling query: Expected `str`, got `int` - at `\$\.expr`$"):
        plan(_query({"expr": 5}), SETTINGS)


def test_integers_past_an_int64_are_refused_as_go_refuses_them():
    for field in ("intervalFactor", "utcOffsetSec"):
        for number in (2**63, -(2**63) - 1, 10**400):
            with pytest.raises(ValueError, match=r"^error unmarshaling query: "):
                plan(_query({"expr": "up", field: number}), SETTINGS)
    assert plan(_query({"expr": "up", "utcOffsetSec": 2**63 - 1}), SETTINGS).query.utc_offset_sec == 2**63 - 1


def test_deeply_nested_answers_are_a_502_not_a_crash():
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (b'{"status":"success","data":{"resultType":"vector","result":[],"stats":' + deep + b"}}", deep):
        response = read_result(body)
        assert response.status == 502 and response.error_source == "downstream"


def test_a_scrape_interval_that_is_not_a_duration_fails_each_query():
    broken = Settings.from_options({"timeInterval": "often"})
    with pytest.raises(ValueError):
        plan(_query({"expr": "up"}), broken)
    assert plan(_query({"expr": "up"}, interval_ms=0), Settings.from_options({"timeInterval": "1m"})).step_ms == 60_000


def test_variables_are_replaced_ms_variants_first():
    prepared = plan(_query({"expr": "a[$__interval] $__interval_ms ${__interval} $__range $__range_s $__range_ms "
                                    "$__rate_interval_ms ${__rate_interval}"}), SETTINGS)
    assert prepared.expr == "a[15s] 15000 15s 3600s 3600 3600000 60000 1m0s"


def test_start_and_end_align_to_the_step_with_the_utc_offset():
    prepared = plan(_query({"expr": "up"}, from_ms=1_700_000_007_000, to_ms=1_700_000_052_500), SETTINGS)
    assert (prepared.start_ms, prepared.end_ms, prepared.to_ms) == (1_699_999_995_000, 1_700_000_040_000,
                                                                    1_700_000_052_500)
    shifted = plan(_query({"expr": "up", "utcOffsetSec": 3}, from_ms=1_700_000_007_000), SETTINGS)
    assert shifted.start_ms == 1_700_000_007_000  # floor((t + 3s) / 15s) * 15s - 3s
    assert plan(_query({"expr": "up", "utcOffsetSec": -3}, from_ms=1_700_000_007_000), SETTINGS).start_ms \
        == 1_699_999_998_000


def test_a_model_of_the_wrong_shape_is_an_unmarshaling_error():
    with pytest.raises(ValueError, match=r"^error unmarshaling query: "):
        plan(_query({"expr": 5}), SETTINGS)
    assert plan(_query({"expr": "up", "interval": None}), SETTINGS).expr == "up"


@pytest.mark.parametrize(("template", "labels", "expected"), [
    ("", {"__name__": "up", "job": "a", "instance": "b"}, 'up{instance="b", job="a"}'),
    ("", {"job": 'q"x'}, '{job="q\\"x"}'),
    ("", {}, "EXPR"), ("", {"__name__": "up"}, "up"),
    ("__auto", {"job": "a"}, ""), ("__auto", {}, "EXPR"),
    ("{{job}} on {{ instance }} {{missing}}", {"job": "a", "instance": "b"}, "a on b "),
])
def test_legends_as_promlib_names_series(template, labels, expected):
    assert legend(legend_parts(template), labels, "EXPR") == expected


def test_a_legend_template_is_bounded_and_read_once():
    with pytest.raises(ValueError, match="legendFormat is longer than 4096 characters"):
        plan(_query({"expr": "up", "legendFormat": "{{" * 20_000}), SETTINGS)
    parts = legend_parts("{{" * 2000 + "\n}}")  # the longest template: one regex pass, not one per series
    assert legend(parts, {"job": "a"}, "EXPR") == ""  # the whole template is one placeholder of no label


# -- the full query path against loopback upstreams ------------------------------------------------------

class Upstream:
    """A loopback Prometheus: records each call and answers with a fixed status and body after a delay."""

    def __init__(self, body: bytes = b"", status: int = 200, delay: float = 0.0) -> None:
        self.body = body
        self.status = status
        self.delay = delay
        self.calls: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self.cancelled = 0
        self.authorizations: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.authorizations.append(request.headers.get("Authorization", ""))
        self.calls.append((request.method, request.path, dict(parse_qsl(request.query_string)),
                           dict(parse_qsl(body.decode()))))
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return web.Response(body=self.body, status=self.status, content_type="application/json")


async def serve(aiohttp_server: Any, upstream: Upstream) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)  # the test server cancels the handlers of callers that leave
    return f"http://127.0.0.1:{server.port}"


def prom_query(ref_id: str, uid: str, expr: str, **extra: Any) -> dict[str, Any]:
    return {"refId": ref_id, "datasource": {"uid": uid, "type": "prometheus"}, "expr": expr, **extra}


@pytest.mark.parametrize("name", FULL_PATH)
async def test_the_full_query_path_answers_grafanas_golden(client, aiohttp_server, name):
    spec = json.loads((GOLDEN / f"{name}.query.json").read_text())
    upstream = Upstream((GOLDEN / f"{name}.result.json").read_bytes())
    await add(client, "p", "prometheus", url=await serve(aiohttp_server, upstream))
    step = spec["Step"]
    query = prom_query("A", "p", spec.get("Expr", ""), range=spec.get("RangeQuery", False),
                       exemplar=spec.get("ExemplarQuery", False), legendFormat=spec.get("LegendFormat", ""),
                       intervalMs=step * 1000, interval=f"{step}s", maxDataPoints=1500)
    response = await post(client, {"queries": [query], "from": str(spec["Start"] * 1000),
                                   "to": str(spec["End"] * 1000)})
    assert response.status == 200, await response.text()
    result = (await response.json())["results"]["A"]
    assert result == _expected(load(GOLDEN / f"{name}.result.golden.jsonc"))
    # neither range nor instant means range, so the exemplar golden holds two sampled exemplar frames
    expected_paths = {"/api/v1/query_range", "/api/v1/query_exemplars"} if spec.get("ExemplarQuery") \
        else {"/api/v1/query_range"}
    assert {path for _, path, _, _ in upstream.calls} == expected_paths
    for method, _, _, form in upstream.calls:
        assert method == "POST"
        assert form["start"] == str(spec["Start"] // step * step) and form["end"] == str(spec["End"] // step * step)


VECTOR = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"__name__": "up", "job": "j"}, "value": [1700000040, "1"]}]}}).encode()
FROM, TO = "1700000000000", "1700000050000"


async def test_get_and_post_send_the_same_parameters_with_custom_ones_in_the_url(client, aiohttp_server):
    upstream = Upstream(VECTOR)
    url = await serve(aiohttp_server, upstream)
    await add(client, "post", "prometheus", url=url + "/prefix",
              jsonData={"queryTimeout": "20s", "customQueryParameters": "dedup=false&x=1"})
    await add(client, "get", "prometheus", url=url, jsonData={"httpMethod": "GET", "timeInterval": "5s",
                                                              "queryStatsEnabled": True})
    queries = [prom_query("A", "post", "up", instant=True, range=True, intervalMs=10_000),
               prom_query("B", "get", "sum(up)", instant=True, intervalMs=0)]
    response = await post(client, {"queries": queries, "from": FROM, "to": TO})
    assert response.status == 200
    calls = sorted(upstream.calls, key=lambda call: call[1] + call[0])
    assert calls == [
        ("GET", "/api/v1/query", {"query": "sum(up)", "stats": "all", "time": "1700000050"}, {}),
        ("POST", "/prefix/api/v1/query", {"dedup": "false", "x": "1"},
         {"query": "up", "time": "1700000050", "timeout": "20s"}),
        ("POST", "/prefix/api/v1/query_range", {"dedup": "false", "x": "1"},
         {"query": "up", "start": "1700000000", "end": "1700000050", "step": "10", "timeout": "20s"}),
    ]
    results = (await response.json())["results"]
    assert len(results["A"]["frames"]) == 2  # instant then range, concatenated
    first = results["A"]["frames"][0]["schema"]
    assert first["meta"]["executedQueryString"] == "Expr: up\nStep: 10s"
    assert first["meta"]["custom"] == {"calculatedMinStep": 10000, "resultType": "vector"}
    assert first["fields"][1]["name"] == "up" and first["fields"][1]["config"] == {"displayNameFromDS": 'up{job="j"}'}
    assert results["B"]["frames"][0]["schema"]["meta"]["executedQueryString"] == "Expr: sum(up)\nStep: 5s"


async def test_queries_carry_the_data_sources_credentials_and_honour_its_whitelist(client, aiohttp_server,
                                                                                  database_url, aiohttp_client):
    upstream = Upstream(VECTOR)
    url = await serve(aiohttp_server, upstream)
    await add(client, "p", "prometheus", url=url, basicAuth=True, basicAuthUser="u",
              secureJsonData={"basicAuthPassword": "pw"})
    response = await post(client, {"queries": [prom_query("A", "p", "up", instant=True)], "from": FROM, "to": TO})
    assert response.status == 200 and upstream.authorizations == ["Basic dTpwdw=="]

    from gateway.app import create_app
    from tests.conftest import make_config

    fenced = await aiohttp_client(create_app(make_config(
        database_url, security={"data_source_proxy_whitelist": ("elsewhere:9090",)})))
    response = await post(fenced, {"queries": [prom_query("A", "p", "up")], "from": FROM, "to": TO})
    result = (await response.json())["results"]["A"]
    assert response.status == 400 and result["status"] == 403 and "whitelist" in result["error"].lower()
    assert len(upstream.calls) == 1


async def test_upstream_errors_are_answered_per_refid(client, aiohttp_server):
    bad_data = json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode()
    cases = {"E": Upstream(bad_data, 400), "U": Upstream(b"<html>oops</html>" + b"x" * 2000, 500),
             "N": Upstream(b"nope", 405), "G": Upstream(b'{"status":"success","data":{"resultType":"x"}}')}
    for ref_id, upstream in cases.items():
        await add(client, ref_id.lower(), "prometheus", url=await serve(aiohttp_server, upstream))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    await add(client, "down", "prometheus", url=f"http://127.0.0.1:{closed}")
    queries = [prom_query(ref_id, ref_id.lower(), "up") for ref_id in cases] + [prom_query("D", "down", "up")]
    response = await post(client, {"queries": queries, "from": FROM, "to": TO})
    assert response.status == 400
    results = (await response.json())["results"]
    assert results["E"] == {"error": "bad_data: parse error", "errorSource": "downstream", "status": 400}
    assert results["U"]["status"] == 500 and results["U"]["errorSource"] == "downstream"
    assert results["U"]["error"] == "unexpected response with status code 500: <html>oops</html>" + "x" * 1007
    assert results["N"] == {"error": "unexpected response with status code 405: nope", "errorSource": "plugin",
                            "status": 405}
    assert results["G"]["status"] == 502 and results["G"]["errorSource"] == "downstream"
    assert results["D"] == {"error": "Bad Gateway: the data source could not be reached",
                            "errorSource": "downstream", "status": 502}


async def test_an_unparseable_model_fails_only_its_refid(client, aiohttp_server):
    await add(client, "p", "prometheus", url=await serve(aiohttp_server, Upstream(VECTOR)))
    response = await post(client, {"queries": [prom_query("A", "p", "up"), prom_query("B", "p", "up", range=1)],
                                   "from": FROM, "to": TO})
    results = (await response.json())["results"]
    assert results["A"]["status"] == 200
    assert results["B"]["error"].startswith("error unmarshaling query: ") and results["B"]["status"] == 400


async def test_fifty_data_sources_answering_in_200ms_complete_together(client, aiohttp_server):
    upstream = Upstream(VECTOR, delay=0.2)
    url = await serve(aiohttp_server, upstream)
    for n in range(50):
        await add(client, f"p{n}", "prometheus", url=url)
    queries = [prom_query(f"Q{n}", f"p{n}", "up", instant=True) for n in range(50)]
    started = time.monotonic()
    response = await post(client, {"queries": queries, "from": FROM, "to": TO})
    elapsed = time.monotonic() - started
    assert response.status == 200
    results = (await response.json())["results"]
    assert len(results) == 50 and all(result["status"] == 200 for result in results.values())
    assert len(upstream.calls) == 50 and elapsed < 1.0, elapsed


async def test_a_failing_and_a_hanging_upstream_leave_the_others_untouched(client, aiohttp_server):
    healthy = Upstream(VECTOR, delay=0.05)
    hanging = Upstream(VECTOR, delay=60)
    url = await serve(aiohttp_server, healthy)
    await add(client, "ok1", "prometheus", url=url)
    await add(client, "ok2", "prometheus", url=url)
    await add(client, "bad", "prometheus", url=await serve(aiohttp_server, Upstream(b"boom", 503)))
    await add(client, "hang", "prometheus", url=await serve(aiohttp_server, hanging), jsonData={"queryTimeout": "1s"})
    queries = [prom_query("A", "ok1", "up"), prom_query("B", "bad", "up"), prom_query("C", "hang", "up"),
               prom_query("D", "ok2", "up")]
    started = time.monotonic()
    response = await post(client, {"queries": queries, "from": FROM, "to": TO})
    elapsed = time.monotonic() - started
    results = (await response.json())["results"]
    assert response.status == 400 and 1.0 <= elapsed < 3.0, elapsed
    assert results["A"]["status"] == results["D"]["status"] == 200
    assert results["A"]["frames"][0]["data"] == results["D"]["frames"][0]["data"] == {"values": [[1700000040000], [1]]}
    assert results["B"] == {"error": "unexpected response with status code 503: boom", "errorSource": "downstream",
                            "status": 503}
    assert results["C"]["status"] == 504 and results["C"]["errorSource"] == "downstream"
    for _ in range(100):  # the timed-out call is abandoned, and the upstream sees it go
        if hanging.cancelled:
            break
        await asyncio.sleep(0.05)
    assert hanging.cancelled == 1


async def test_a_client_that_leaves_cancels_every_upstream_call(client, aiohttp_server):
    upstream = Upstream(VECTOR, delay=30)
    url = await serve(aiohttp_server, upstream)
    await add(client, "p", "prometheus", url=url)
    await add(client, "q", "prometheus", url=url)
    queries = [prom_query("A", "p", "up", instant=True, exemplar=True), prom_query("B", "q", "up"),
               prom_query("C", "p", "rate(x[1m])")]
    request = asyncio.ensure_future(post(client, {"queries": queries, "from": FROM, "to": TO}))
    for _ in range(100):
        if len(upstream.calls) == 4:
            break
        await asyncio.sleep(0.05)
    assert len(upstream.calls) == 4  # A: instant and exemplars; B and C: a range each
    request.cancel()  # the client goes away mid-request
    with pytest.raises(asyncio.CancelledError):
        await request
    for _ in range(100):
        if upstream.cancelled == 4:
            break
        await asyncio.sleep(0.05)
    assert upstream.cancelled == 4


# -- a real Prometheus --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_prometheus() -> Iterator[str]:
    """/usr/bin/prometheus on a free loopback port scraping itself every second, once it has a few samples."""
    with running_prometheus() as url:
        yield url


def _now_range(seconds: int = 60) -> dict[str, str]:
    now = int(time.time() * 1000)
    return {"from": str(now - seconds * 1000), "to": str(now)}


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_real_prometheus_answers_range_instant_and_scalar_queries(client, real_prometheus, method):
    await add(client, "real", "prometheus", url=real_prometheus, jsonData={"httpMethod": method})
    queries = [prom_query("A", "real", "up", intervalMs=1000, maxDataPoints=100),
               prom_query("B", "real", "prometheus_build_info", instant=True, legendFormat="{{version}}"),
               prom_query("C", "real", "1+1", instant=True),
               prom_query("D", "real", "sum(rate(prometheus_http_requests_total[$__rate_interval]))", intervalMs=1000)]
    response = await post(client, {"queries": queries, **_now_range()})
    assert response.status == 200, await response.text()
    results = (await response.json())["results"]
    up = results["A"]["frames"][0]
    assert up["schema"]["meta"]["type"] == "timeseries-multi" and up["schema"]["fields"][1]["name"] == "up"
    assert up["schema"]["fields"][1]["labels"]["job"] == "prometheus"
    assert up["data"]["values"][1] and set(up["data"]["values"][1]) == {1}
    assert up["schema"]["meta"]["executedQueryString"] == "Expr: up\nStep: 1s"
    build = results["B"]["frames"][0]["schema"]
    assert build["meta"]["type"] == "numeric-multi"
    assert build["fields"][1]["config"]["displayNameFromDS"] == build["fields"][1]["labels"]["version"]
    scalar = results["C"]["frames"][0]
    assert scalar["schema"]["meta"]["custom"]["resultType"] == "scalar" and scalar["data"]["values"][1] == [2]
    rate = results["D"]["frames"][0]["schema"]["meta"]["executedQueryString"]
    assert rate == "Expr: sum(rate(prometheus_http_requests_total[1m0s]))\nStep: 1s"  # 4 x the default 15s scrape


async def test_a_real_prometheus_reports_a_bad_expression_on_its_refid(client, real_prometheus):
    await add(client, "real", "prometheus", url=real_prometheus)
    queries = [prom_query("A", "real", "up", instant=True), prom_query("B", "real", "sum(", instant=True),
               prom_query("C", "real", "no_such_metric"), prom_query("D", "real", "no_such_metric", exemplar=True)]
    response = await post(client, {"queries": queries, **_now_range()})
    assert response.status == 400
    results = (await response.json())["results"]
    assert results["A"]["status"] == 200 and results["A"]["frames"][0]["data"]["values"][1] == [1]
    assert results["B"]["status"] == 400 and results["B"]["errorSource"] == "downstream"
    assert results["B"]["error"].startswith("bad_data: ")
    empty = results["C"]["frames"]  # no series: one frame without fields carries the meta
    assert len(empty) == 1 and empty[0]["schema"]["fields"] == []
    assert empty[0]["schema"]["meta"]["executedQueryString"].startswith("Expr: no_such_metric\nStep: ")
    assert results["D"] == {"status": 200, "frames": []}  # an exemplar query adds no such frame, as promlib


def test_forms_are_encoded_as_go_url_values():
    from gateway.http.form import encode_form, query_escape

    # Go: url.QueryEscape("a b+c/ü~_.-") == "a+b%2Bc%2F%C3%BC~_.-"
    assert query_escape("a b+c/ü~_.-") == "a+b%2Bc%2F%C3%BC~_.-"
    assert query_escape("rate(x[5m])") == "rate%28x%5B5m%5D%29"
    assert encode_form([("step", "15"), ("query", "up"), ("end", "2"), ("start", "1")]) == \
        "end=2&query=up&start=1&step=15"
    assert encode_form([("b", "2"), ("a", "z"), ("a", "y")]) == "a=z&a=y&b=2"  # a key's values keep their order


@pytest.mark.parametrize("accept", ["application/json", "application/msgpack"])
async def test_a_sample_time_past_an_int64_is_a_parse_error_of_its_refid(client, aiohttp_server, accept):
    matrix = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[10**30, "1"]]}]}}).encode()
    await add(client, "p", "prometheus", url=await serve(aiohttp_server, Upstream(matrix)))
    await add(client, "q", "prometheus", url=await serve(aiohttp_server, Upstream(VECTOR)))
    response = await client.post("/api/ds/query", headers={**ADMIN, "Accept": accept}, json={
        "queries": [prom_query("A", "p", "x", range=True), prom_query("B", "q", "up", instant=True)],
        "from": FROM, "to": TO})
    assert response.status == 400
    body = await response.read()
    results = (msgspec.msgpack.decode(body) if accept == "application/msgpack" else json.loads(body))["results"]
    assert results["A"] == {"error": "response from prometheus couldn't be parsed: sample time outside the range "
                                     "of a time.Time", "errorSource": "downstream", "status": 502}
    assert results["B"]["status"] == 200
