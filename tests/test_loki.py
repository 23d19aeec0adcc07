"""Loki queries through POST /api/ds/query: the converter against Grafana's golden files, the request Loki
receives (a loopback server speaking Loki's query API), Grafana's Loki frames, and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.backends.base import DataQuery
from gateway.backends.loki import (
    calculate_step_ns,
    interpolate,
    parse_query,
    parse_stats,
    read_loki_result,
    series_name,
)
from gateway.errors import GatewayError
from gateway.frames import encode_json
from gateway.gtime import TimeRange
from tests.test_frames import load

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
    return DataQuery(ref_id, str(model.get("queryType") or ""), 100, interval_ms, TimeRange(from_ms, to_ms), model)


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


def test_stats_become_grafanas_named_query_stats():
    stats = parse_stats({"stats": {"summary": {"execTime": 0.5, "totalBytesProcessed": "x"}, "other": {}}})
    assert stats is not None and len(stats) == 5
    assert stats[0] == {"displayName": "Summary: bytes processed per second", "unit": "Bps", "value": 0.0}
    assert stats[2] == {"displayName": "Summary: total bytes processed", "unit": "decbytes", "value": 0.0}
    assert stats[4] == {"displayName": "Summary: exec time", "unit": "s", "value": 0.5}
    assert parse_stats(None) is None and parse_stats({"stats": []}) is None
