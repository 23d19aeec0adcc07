"""Loki queries through POST /api/ds/query: the converter against Grafana's golden files, the request Loki
receives (a loopback server speaking Loki's query API), Grafana's Loki frames, and errors."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from gateway.backends.base import DataQuery
from gateway.backends.loki import (
    calculate_step_ns,
    interpolate,
    parse_query,
    parse_stats,
    read_loki_result,
    series_name,
)
from gateway.backends.testdata.csvframes import go_float_error
from gateway.errors import GatewayError, go_quote
from gateway.frames import encode_json
from gateway.gtime import TimeRange
from tests.test_frames import load
from tests.test_query import add, post

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "prometheus"
FROM_MS, TO_MS = 1_700_000_000_000, 1_700_003_600_000  # one hour
# Loki answers are Prometheus-style: the same converter reads both, so every converter golden applies
CONVERTER_GOLDENS = ["loki-streams-a", "loki-streams-b", "loki-streams-c", "prom-matrix", "prom-vector",
                     "prom-scalar", "prom-string", "prom-matrix-with-nans", "prom-warnings", "prom-warnings-no-data",
                     "prom-infos", "prom-infos-no-data", "prom-query-range", "prom-query-range-big"]


def _converted(body: bytes) -> dict[str, Any]:
    result = json.loads(encode_json({"A": read_loki_result(body)}))["results"]["A"]
    for frame in result.get("frames", []):
        frame["schema"].pop("refId", None)  # the converter goldens are frames before the refId is set
    return result


@pytest.mark.parametrize("name", CONVERTER_GOLDENS)
def test_loki_answers_convert_exactly_as_grafanas_golden_files(name):
    assert _converted((GOLDEN / f"{name}.json").read_bytes()) == load(GOLDEN / f"{name}-frame.jsonc")


def test_the_loki_goldens_are_all_covered():
    names = {path.name.removesuffix(".json") for path in GOLDEN.glob("loki-*.json")}
    assert names and names <= set(CONVERTER_GOLDENS)


def test_log_ids_hash_line_and_labels_as_grafana_and_number_repeats():
    # pkg/tsdb/loki testdata/streams_simple.golden.jsonc: the same labels, lines and ids
    body = json.dumps({"status": "success", "data": {"resultType": "streams", "result": [
        {"stream": {"code": 'one",', "location": "moon🌙"},
         "values": [["1645030244810757120", "log line error 1"]]},
        {"stream": {"location": "moon🌙", "code": '",two'},
         "values": [["1645030247027735040", "log line info 1"], ["1645030246277587968", "log line info 2"],
                    ["1645030246277587968", "log line info 2"]]}]}}).encode()
    response = read_loki_result(body)
    query = parse_query(_data_query({"expr": "query1"}))
    from gateway.backends.loki import adjust_frame

    assert response.frames is not None
    adjust_frame(response.frames[0], query)
    frame = response.frames[0]
    assert [field.name for field in frame.fields] == ["labels", "Time", "Line", "tsNs", "id"]
    assert frame.fields[4].values == ["1645030244810757120_1d8c2178", "1645030247027735040_87a7aed2",
                                      "1645030246277587968_318d05c9", "1645030246277587968_318d05c9_1"]
    assert bytes(frame.fields[0].values[1]) == '{"code":"\\",two","location":"moon🌙"}'.encode()


def test_labels_json_escapes_html_characters_as_go_does():
    from gateway.backends.loki import go_labels_json

    assert go_labels_json({"b": "<a&b>", "a": "x"}) == b'{"a":"x","b":"\\u003ca\\u0026b\\u003e"}'


# -- the query model ---------------------------------------------------------------------------------------

def _data_query(model: dict[str, Any], ref_id: str = "A", interval_ms: int = 1000,
                from_ms: int = FROM_MS, to_ms: int = TO_MS) -> DataQuery:
    return DataQuery(ref_id, str(model.get("queryType") or ""), 100, interval_ms, TimeRange(from_ms, to_ms),
                     msgspec.Raw(msgspec.json.encode(model)))


def test_the_step_is_interval_times_resolution_or_range_over_11000_rounded_up_to_ms():
    assert calculate_step_ns(1000, 3_600_000, 1, None) == 1_000_000_000
    assert calculate_step_ns(1000, 3_600_000, 5, "") == 5_000_000_000
    assert calculate_step_ns(1, 30 * 86_400_000, 1, None) == 235_637_000_000  # 2592000000 ms / 11000, ceiled
    assert calculate_step_ns(1000, 3_600_000, 2, "30s") == 60_000_000_000
    assert calculate_step_ns(1000, 3_600_000, 1, "15") == 15_000_000_000  # bare digits are seconds
    with pytest.raises(GatewayError) as raised:
        calculate_step_ns(1000, 3_600_000, 1, "soon")
    assert raised.value.status == 400 and raised.value.message == 'time: invalid duration "soon"'


def test_variables_are_replaced_ms_forms_first_and_auto_by_query_type():
    expr = "$__interval_ms $__interval ${__interval} $__range_ms $__range_s $__range ${__range_s} $__auto"
    assert interpolate(expr, 15_000, 3_600_500, False, 60_000_000_000) == "15000 15s 15s 3600500 3601 3601s 3601 1m"
    assert interpolate("$__auto", 15_000, 3_600_000, True, 60_000_000_000) == "3600s"


def test_the_model_defaults_to_a_backward_range_query_and_refuses_what_grafana_refuses():
    query = parse_query(_data_query({"expr": "{app=\"web\"}"}))
    assert (query.instant, query.direction, query.max_lines, query.source) == (False, "backward", 0, "")
    assert query.path_and_query() == ("loki/api/v1/query_range", (
        "direction=backward&end=1700003600000000000&query=%7Bapp%3D%22web%22%7D&start=1700000000000000000"
        "&step=1000ms"))
    query = parse_query(_data_query({"expr": "x y", "queryType": "instant", "maxLines": 50, "direction": "forward",
                                     "supportingQueryType": "logsVolume"}))
    assert query.path_and_query() == ("loki/api/v1/query",
                                      "direction=forward&limit=50&query=x+y&time=1700003600000000000")
    assert query.source == "logvolhist"
    assert parse_query(_data_query({"supportingQueryType": "explore"})).source == "explore"
    assert parse_query(_data_query({"direction": "scan", "queryType": "stream"})).direction == "backward"
    for model, message in (({"queryType": "sideways"}, "invalid queryType: sideways"),
                           ({"direction": "up"}, "invalid queryDirection: up")):
        with pytest.raises(GatewayError) as raised:
            parse_query(_data_query(model))
        assert (raised.value.status, raised.value.message) == (400, message)
    with pytest.raises(GatewayError) as raised:
        parse_query(_data_query({"maxLines": "many"}))
    assert raised.value.status == 400 and raised.value.message.startswith("failed to parse query model: ")


def test_series_names_are_prometheus_style_or_the_legend_template():
    labels = {"level": "error", "app": 'we"b', "a-b": "1"}
    assert series_name(labels, "") == '{a-b="1", app="we\\"b", level="error"}'
    assert series_name({}, "") == "{}"
    assert series_name(labels, "{{ level }} of {{app}} {{missing}}!") == 'error of we"b !'



def test_label_values_are_quoted_as_gos_strconv_quote_everywhere():
    # Go: strconv.Quote("a\"b\\c é😀 \n\x00\x7f\u2028\U000e0001\a\v")
    text = 'a"b\\c é😀 \n\x00\x7f\u2028\U000e0001\a\v'
    quoted = '"a\\"b\\\\c é😀 \\n\\x00\\x7f\\u2028\\U000e0001\\a\\v"'
    assert go_quote(text) == quoted and go_quote('plain "x"') == '"plain \\"x\\""'
    assert series_name({"k": text}, "") == "{k=" + quoted + "}"
    assert go_float_error("1\n") == 'strconv.ParseFloat: parsing "1\\n": invalid syntax'


def test_stats_become_grafanas_named_query_stats():
    stats = parse_stats({"stats": {"summary": {"execTime": 0.5, "totalBytesProcessed": "x"}, "other": {}}})
    assert stats is not None and len(stats) == 5
    assert stats[0] == {"displayName": "Summary: bytes processed per second", "unit": "Bps", "value": 0.0}
    assert stats[2] == {"displayName": "Summary: total bytes processed", "unit": "decbytes", "value": 0.0}
    assert stats[4] == {"displayName": "Summary: exec time", "unit": "s", "value": 0.5}
    assert parse_stats(None) is None and parse_stats({"stats": []}) is None


# -- a Loki on loopback ----------------------------------------------------------------------------------

STATS = {"summary": {"bytesProcessedPerSecond": 1000, "linesProcessedPerSecond": 10, "totalBytesProcessed": 300,
                     "totalLinesProcessed": 3, "execTime": 0.25}}


class FakeLoki:
    """Answers Loki's query API from the request: log lines inside [start, end] (`limit` of them, newest first
    unless direction=forward), one series per level for metric queries (values from `start` by `step`), and
    errors or silence for the expressions that ask for them. Records every request."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.in_flight = self.most_in_flight = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        expr = request.query.get("query", "")
        if "slow" in expr:
            await asyncio.sleep(0.3)
        if "hang" in expr:
            await asyncio.sleep(30)
        if "bad" in expr:
            return web.json_response({"message": "parse error at line 1, col 1: syntax error: unexpected IDENTIFIER"},
                                     status=400)
        if "boom" in expr:
            return web.Response(status=500, text="internal error: too many outstanding requests\n")
        if request.path.endswith("/query_range"):
            start, end = int(request.query["start"]), int(request.query["end"])
            step_ms = int(request.query["step"].removesuffix("ms"))
            if expr.startswith(("rate(", "count_over_time(", "sum")):
                stamps = range(start // 1_000_000, end // 1_000_000 + 1, step_ms)
                result = [{"metric": {"level": level}, "values": [[t / 1000, str(index + n)] for n, t in
                                                                    enumerate(stamps)]}
                          for index, level in enumerate(("error", "info"))]
                return _success("matrix", result)
            if "many" in expr:  # one stream of 3000 lines, one per millisecond from start
                entries = [[str(start + k * 1_000_000), f"line {k % 7}"] for k in range(3000)]
                return _success("streams", [{"stream": {"app": "many"}, "values": entries}])
            span = end - start
            stamps = [start + span * k // 4 + 123 for k in range(1, 4)]  # three sub-millisecond stamps inside
            if request.query.get("direction") != "forward":
                stamps.reverse()
            limit = int(request.query.get("limit", "1000"))
            entries = [[str(t), f"GET /api/{k} 200"] for k, t in enumerate(stamps[:limit])]
            return _success("streams", [{"stream": {"app": "web", "level": "info"}, "values": entries}])
        moment = int(request.query["time"]) / 1e9
        return _success("vector", [{"metric": {"level": "error"}, "value": [moment, "7"]}])


def _success(result_type: str, result: Any) -> web.Response:
    return web.json_response({"status": "success", "data": {"resultType": result_type, "result": result,
                                                            "stats": STATS}})


async def _serve(client: Any, aiohttp_server: Any) -> FakeLoki:
    fake = FakeLoki()
    app = web.Application()
    app.router.add_get("/prefix/loki/api/v1/query_range", fake.handle)
    app.router.add_get("/prefix/loki/api/v1/query", fake.handle)
    server = await aiohttp_server(app)
    await add(client, "loki", "loki", url=str(server.make_url("/prefix")), basicAuth=True, basicAuthUser="u",
              secureJsonData={"basicAuthPassword": "p"}, jsonData={"timeout": 1})
    return fake


@pytest.fixture
async def loki(client: Any, aiohttp_server: Any) -> FakeLoki:
    """A Loki on loopback, and a data source `loki` pointing at it (under a path prefix) with a 1 s timeout."""
    return await _serve(client, aiohttp_server)


def _loki_query(ref_id: str, expr: str, **model: Any) -> dict[str, Any]:
    return {"refId": ref_id, "datasource": {"uid": "loki"}, "expr": expr, **model}


async def test_a_log_query_sends_grafanas_request_and_answers_grafanas_log_frame(client, loki):
    body = {"from": str(FROM_MS), "to": str(TO_MS), "queries": [
        _loki_query("A", '{app="web"} |= "$__interval"', maxLines=2, intervalMs=2000,
                    supportingQueryType="logsSample")]}
    response = await post(client, body)
    assert response.status == 200, await response.text()
    (request,) = loki.requests
    assert request.path == "/prefix/loki/api/v1/query_range"
    assert request.raw_path.partition("?")[2] == (
        "direction=backward&end=1700003600000000000&limit=2&query=%7Bapp%3D%22web%22%7D+%7C%3D+%222s%22"
        "&start=1700000000000000000&step=2000ms")
    assert request.headers["X-Query-Tags"] == "Source=logsample"
    assert request.headers["Authorization"] == "Basic dTpw"
    (frame,) = (await response.json())["results"]["A"]["frames"]
    schema, data = frame["schema"], frame["data"]
    assert schema["refId"] == "A"
    assert [(f["name"], f["typeInfo"]["frame"]) for f in schema["fields"]] == [
        ("labels", "json.RawMessage"), ("Time", "time.Time"), ("Line", "string"), ("tsNs", "string"),
        ("id", "string")]
    assert schema["meta"]["custom"] == {"frameType": "LabeledTimeValues"}
    assert schema["meta"]["typeVersion"] == [0, 0]
    assert schema["meta"]["executedQueryString"] == 'Expr: {app="web"} |= "2s"'
    assert schema["meta"]["stats"][4] == {"displayName": "Summary: exec time", "unit": "s", "value": 0.25}
    newest = FROM_MS * 1_000_000 + 3 * 3_600_000_000_000 // 4 + 123
    middle = FROM_MS * 1_000_000 + 2 * 3_600_000_000_000 // 4 + 123
    labels, times, lines, stamps, ids = data["values"]
    assert labels == [{"app": "web", "level": "info"}] * 2
    assert stamps == [str(newest), str(middle)] and lines == ["GET /api/0 200", "GET /api/1 200"]
    assert times == [newest // 1_000_000, middle // 1_000_000] and data["nanos"] == [None, [123, 123], None, None,
                                                                                       None]
    assert [value.rsplit("_", 1)[0] for value in ids] == stamps and len(set(ids)) == 2


async def test_metric_queries_answer_grafanas_series_frames_range_and_instant(client, loki):
    body = {"from": str(FROM_MS), "to": str(FROM_MS + 60_000), "queries": [
        _loki_query("R", "rate({app=\"web\"}[$__range])", intervalMs=15000, legendFormat="{{level}} rate"),
        _loki_query("I", "sum(count_over_time({app=\"web\"}[5m]))", queryType="instant", direction="forward")]}
    response = await post(client, body)
    assert response.status == 200, await response.text()
    by_path = {request.path: request for request in loki.requests}
    assert by_path["/prefix/loki/api/v1/query_range"].query["step"] == "15000ms"
    assert by_path["/prefix/loki/api/v1/query_range"].query["query"] == 'rate({app="web"}[60s])'
    instant = by_path["/prefix/loki/api/v1/query"]
    assert dict(instant.query) == {"direction": "forward", "query": 'sum(count_over_time({app="web"}[5m]))',
                                   "time": str((FROM_MS + 60_000) * 1_000_000)}
    results = (await response.json())["results"]
    error, info = results["R"]["frames"]
    assert error["schema"]["meta"] == {
        "type": "timeseries-multi", "typeVersion": [0, 1], "stats": error["schema"]["meta"]["stats"],
        "executedQueryString": 'Expr: rate({app="web"}[60s])\nStep: 15s'}
    assert len(error["schema"]["meta"]["stats"]) == 5 and "stats" not in info["schema"]["meta"]
    assert error["schema"]["fields"] == [
        {"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time"}, "config": {"interval": 15000}},
        {"name": "Value", "type": "number", "typeInfo": {"frame": "float64"}, "labels": {"level": "error"},
         "config": {"displayNameFromDS": "error rate"}}]
    assert error["data"]["values"] == [[FROM_MS + k * 15000 for k in range(5)], [0, 1, 2, 3, 4]]
    assert info["data"]["values"][1] == [1, 2, 3, 4, 5]
    (vector,) = results["I"]["frames"]
    assert vector["schema"]["meta"]["type"] == "numeric-multi"
    assert vector["schema"]["meta"]["executedQueryString"] == 'Expr: sum(count_over_time({app="web"}[5m]))'
    assert vector["schema"]["fields"][1]["config"] == {"displayNameFromDS": '{level="error"}'}
    assert "config" not in vector["schema"]["fields"][0]
    assert vector["data"]["values"] == [[FROM_MS + 60_000], [7]]


async def test_queries_of_one_call_run_concurrently(client, loki):
    body = {"from": str(FROM_MS), "to": str(TO_MS),
            "queries": [_loki_query(ref, "{app=\"slow\"}") for ref in "ABCD"]}
    response = await post(client, body)
    assert response.status == 200 and sorted((await response.json())["results"]) == ["A", "B", "C", "D"]
    assert len(loki.requests) == 4 and loki.most_in_flight == 4


async def test_loki_errors_are_per_refid_with_the_message_grafana_shows(client, loki):
    body = {"from": str(FROM_MS), "to": str(TO_MS), "queries": [
        _loki_query("A", "{bad"), _loki_query("B", "{boom=\"1\"}"), _loki_query("C", "{app=\"web\"}")]}
    response = await post(client, body)
    assert response.status == 400
    results = (await response.json())["results"]
    assert results["A"] == {"error": "parse error at line 1, col 1: syntax error: unexpected IDENTIFIER",
                            "errorSource": "downstream", "status": 500}
    assert results["B"] == {"error": "internal error: too many outstanding requests\n", "errorSource": "downstream",
                            "status": 500}
    assert results["C"]["status"] == 200 and results["C"]["frames"]


async def test_a_hanging_loki_is_a_504_within_the_data_source_timeout(client, loki):
    started = time.monotonic()
    response = await post(client, {"from": str(FROM_MS), "to": str(TO_MS), "queries": [_loki_query("A", "{hang}")]})
    elapsed = time.monotonic() - started
    assert response.status == 400 and elapsed < 3
    result = (await response.json())["results"]["A"]
    assert result["status"] == 504 and result["errorSource"] == "downstream" and result["error"]


async def test_an_unreachable_loki_is_a_502_downstream(client):
    await add(client, "gone", "loki", url="http://127.0.0.1:1")
    response = await post(client, {"queries": [{"refId": "A", "datasource": {"uid": "gone"}, "expr": "{a=\"b\"}"}]})
    assert response.status == 400
    assert (await response.json())["results"]["A"] == {
        "error": "Bad Gateway: the data source could not be reached", "errorSource": "downstream", "status": 502}


async def test_a_model_grafana_refuses_fails_the_call_with_a_400_and_sends_nothing(client, loki):
    response = await post(client, {"queries": [_loki_query("A", "{a}"), _loki_query("B", "{a}", queryType="x")]})
    assert response.status == 400
    results = (await response.json())["results"]
    assert results["A"] == results["B"] == {"error": "invalid queryType: x", "errorSource": "", "status": 400}
    assert loki.requests == []


async def test_long_log_answers_keep_one_unique_id_per_line(client, loki):
    response = await post(client, {"from": str(FROM_MS), "to": str(TO_MS), "queries": [_loki_query("A", "{many}")]})
    assert response.status == 200
    values = (await response.json())["results"]["A"]["frames"][0]["data"]["values"]
    assert len(values[4]) == 3000 and len(set(values[4])) == 3000
    assert values[2][:2] == ["line 0", "line 1"] and values[1][1] == FROM_MS + 1


async def test_each_data_source_limit_holds_its_queries_and_the_whitelist_applies(aiohttp_client, aiohttp_server,
                                                                                 database_url):
    from gateway.app import create_app
    from tests.conftest import make_config

    limited = await aiohttp_client(create_app(make_config(database_url, dataproxy={"max_conns_per_host": 1})))
    fake = await _serve(limited, aiohttp_server)
    body = {"from": str(FROM_MS), "to": str(TO_MS), "queries": [_loki_query(ref, "{slow}") for ref in "AB"]}
    assert (await post(limited, body)).status == 200
    assert len(fake.requests) == 2 and fake.most_in_flight == 1

    guarded = await aiohttp_client(create_app(make_config(
        database_url, security={"data_source_proxy_whitelist": ("example.com:3100",)})))
    response = await post(guarded, {"queries": [_loki_query("A", "{a}")]})
    assert response.status == 400
    result = (await response.json())["results"]["A"]
    assert result["status"] == 403 and result["errorSource"] == "plugin" and len(fake.requests) == 2


@pytest.mark.parametrize(("body", "error", "source"), [
    (b"<html>busy</html>", "response from prometheus couldn't be parsed. it is non-json: ", "downstream"),
    (b'{"status":"error","errorType":"bad_data","error":"no"}', "bad_data: no", "plugin"),
    (b'{"status":"success","data":{"result":[]}}', "no resultType found", "downstream"),
    (b'{"status":"success","data":{"resultType":"table","result":[]}}', "unknown result type: table", "plugin"),
    (b'{"status":"success","data":{"resultType":"matrix","result":[{"values":[[1,"many"]]}]}}', "could not convert",
     "downstream"),
    (b'{"status":"success","data":{"resultType":"matrix","result":[{"values":[[1e300,"1"]]}]}}', "sample time",
     "downstream"),
    (b'{"status":"success","data":{"resultType":"scalar","result":[1,"x"]}}', "could not convert", "downstream"),
    (b'{"status":"success","data":{"resultType":"vector","result":[{"value":"7"}]}}', "Expected `array | null`",
     "downstream"),
    (b'{"status":"success","data":{"resultType":"streams","result":[{"values":[["12ab","l"]]}]}}',
     "unexpected time format '12ab' in response", "downstream"),
])
def test_odd_answers_are_errors_of_their_refid_never_a_crash(body, error, source):
    response = read_loki_result(body)
    assert response.frames is None and response.error is not None
    assert error in response.error and response.error_source == source and response.status == 500


def test_long_and_odd_timestamps_take_grafanas_slow_path():
    body = (b'{"status":"success","data":{"resultType":"streams","result":[{"values":['
            b'["16450302440000000001","a"],["1645030244810757120","b"],["17","c"]]}]}}')
    response = read_loki_result(body)
    assert response.frames is not None
    # 20 digits: 10 of seconds, then the rest as nanoseconds
    assert response.frames[0].fields[1].values == [1645030244000, 1645030244810, 0]
    assert response.frames[0].fields[1].nanos == [1, 757120, 17]


async def test_loki_errors_bodies_are_bounded_and_read_as_go_reads_them():
    from gateway.backends.loki import _error_text

    assert _error_text(b'{"Message": "quoted"}') == "quoted"
    assert _error_text(b'{"message": 3}') == '{"message": 3}'
    assert _error_text(b'{"message": ""}') == '{"message": ""}'
    assert _error_text(b"\xff" + b"x" * 10_000) == "\ufffd" + "x" * 4095 + "…"


async def test_an_answer_longer_than_the_response_limit_is_a_502_of_its_refid(aiohttp_client, aiohttp_server,
                                                                              database_url):
    from gateway.app import create_app
    from tests.conftest import make_config

    small = await aiohttp_client(create_app(make_config(database_url, dataproxy={"response_limit": 4096})))
    await _serve(small, aiohttp_server)
    body = {"from": str(FROM_MS), "to": str(TO_MS), "queries": [_loki_query("A", "{many}"), _loki_query("B", "{a}")]}
    response = await post(small, body)
    assert response.status == 400
    results = (await response.json())["results"]
    assert results["A"]["status"] == 502 and results["A"]["errorSource"] == "downstream"
    assert results["B"]["status"] == 200
