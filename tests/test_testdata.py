"""TestData's scenarios through POST /api/ds/query: Grafana's frames exactly where they are deterministic (and
against Grafana's own golden files), their shape, bounds and repeatability where they are random, and
per-refId errors with Grafana's messages."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.backends.testdata import SCENARIOS, SERVER_NAMES, _fnv32
from tests.conftest import ADMIN
from tests.test_query import add, post

GOLDEN = Path(__file__).resolve().parent.parent.parent / "shared" / "golden" / "testdata"
FROM, TO = 1700000000000, 1700000050000
GOLDEN_FROM = 1578697200000  # 2020-01-10 23:00:00 UTC, the start of Grafana's usa tests


def golden(name: str) -> Any:
    text = (GOLDEN / name).read_text()
    return json.loads("\n".join(line for line in text.splitlines() if not line.startswith("//")))


def q(scenario: str, ref_id: str = "A", **model: Any) -> dict[str, Any]:
    return {"refId": ref_id, "datasource": {"uid": "td"}, "scenarioId": scenario, **model}


@pytest.fixture
async def td(client: Any) -> Any:
    await add(client, "td")
    return client


async def run(client: Any, *queries: dict[str, Any], start: int = FROM, end: int = TO) -> tuple[int, dict[str, Any]]:
    response = await post(client, {"queries": list(queries), "from": str(start), "to": str(end)})
    return response.status, (await response.json())["results"]


def without_ref_ids(result: dict[str, Any]) -> dict[str, Any]:
    """A result as Grafana's golden files hold it: the frames without the refId the response adds."""
    for frame in result.get("frames", []):
        frame["schema"].pop("refId")
    return result


def columns(frame: dict[str, Any]) -> list[list[Any]]:
    values: list[list[Any]] = frame["data"]["values"]
    return values


# -- USA generated data: Grafana's golden files ---------------------------------------------------------

@pytest.mark.parametrize("mode", ["values-as-rows", "values-as-fields", "values-as-labeled-fields", "timeseries"])
async def test_usa_modes_answer_grafanas_golden_frames(td, mode):
    usa: dict[str, Any] = {"mode": mode}
    if mode != "values-as-rows":
        usa |= {"fields": ["foo", "bar"], "states": ["CA", "OR", "NV"]}
    query = q("usa", mode, usa=usa, intervalMs=1000, maxDataPoints=10)
    status, results = await run(td, query, start=GOLDEN_FROM, end=GOLDEN_FROM + 10_000)
    assert status == 200
    assert without_ref_ids(results[mode]) == golden(f"usa-{mode}.jsonc")


async def test_usa_timeseries_wide_is_the_timeseries_frames_side_by_side(td):
    usa = {"mode": "timeseries-wide", "fields": ["foo", "bar"], "states": ["CA", "OR", "NV"]}
    _, results = await run(td, q("usa", usa=usa, intervalMs=1000, maxDataPoints=10),
                           start=GOLDEN_FROM, end=GOLDEN_FROM + 10_000)
    series = golden("usa-timeseries.jsonc")["frames"]
    time_field = series[0]["schema"]["fields"][0]
    value_fields = [{**frame["schema"]["fields"][1], "name": frame["schema"]["name"]} for frame in series]
    assert without_ref_ids(results["A"]) == {"status": 200, "frames": [{
        "schema": {"fields": [time_field, *value_fields]},
        "data": {"values": [columns(series[0])[0], *(columns(frame)[1] for frame in series)]}}]}


async def test_usa_defaults_to_every_state_and_foo_bar_baz_as_rows(td):
    _, results = await run(td, q("usa"))
    frame = results["A"]["frames"][0]
    assert [field["name"] for field in frame["schema"]["fields"]] == ["state", "foo", "bar", "baz"]
    assert len(columns(frame)[0]) == 51 and columns(frame)[0][:3] == ["AL", "AK", "AZ"]
    assert all(abs(value) <= 1 for value in columns(frame)[1] + columns(frame)[2])


async def test_usa_caps_the_points_of_a_query_at_ten_thousand(td):
    usa = {"mode": "timeseries", "fields": ["foo", "bar"], "states": ["CA", "OR", "NV"]}
    _, results = await run(td, q("usa", usa=usa, intervalMs=1, maxDataPoints=999_999_999),
                           start=GOLDEN_FROM, end=GOLDEN_FROM + 3_600_000)
    assert [len(columns(frame)[0]) for frame in results["A"]["frames"]] == [10_000 // 6] * 6


async def test_usa_model_errors_are_grafanas_and_only_for_their_refid(td):
    status, results = await run(td, q("usa", "A", usa={"mode": 5}), q("usa", "B", usa={"period": "5x"}),
                                q("usa", "C", usa={"states": ["CA", 1]}), q("usa", "D", usa={"states": ["CA"]}))
    assert status == 400
    prefix = "failed to parse query json: "
    assert results["A"] == {"error": prefix + "json: cannot unmarshal number into Go struct field "
                            "usaQueryWrapper.usa.mode of type string", "errorSource": "plugin", "status": 500}
    assert results["B"]["error"] == prefix + 'time: unknown unit "x" in duration "5x"'
    assert results["C"]["error"] == prefix + ("json: cannot unmarshal number into Go struct field "
                                              "usaQueryWrapper.usa.states of type string")
    assert results["D"]["status"] == 200


# -- CSV content: Grafana's golden files ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["simple", "labels"])
async def test_csv_content_answers_grafanas_golden_frames(td, name):
    content = (GOLDEN / f"{name}.csv").read_text()
    status, results = await run(td, q("csv_content", csvContent=content, alias=name))
    assert status == 200 and without_ref_ids(results["A"]) == golden(f"{name}.golden.jsonc")


async def test_csv_content_infers_each_column_as_grafana_does(td):
    content = "Field1,Field2,Field3,123\ntrue,Hello,6,\nfalse,6,World,6\n"
    _, results = await run(td, q("csv_content", csvContent=content, alias="mixed"))
    assert without_ref_ids(results["A"]) == golden("mixed.golden.jsonc")


async def test_csv_content_reads_rfc3339_times_and_keeps_unreadable_time_columns(td):
    content = ('when_time,Timeout,label,empty\n'
               '2021-05-25T23:56:40.123456Z,ab,"quoted, with comma",\n'
               '2021-05-26T02:13:20+02:00,cd,"say ""hi""",null\n')
    _, results = await run(td, q("csv_content", csvContent=content))
    frame = results["A"]["frames"][0]
    assert [(f["name"], f["type"], f["typeInfo"]) for f in frame["schema"]["fields"]] == [
        ("when_time", "time", {"frame": "time.Time", "nullable": True}),
        ("Timeout", "string", {"frame": "string", "nullable": True}),
        ("label", "string", {"frame": "string", "nullable": True}),
        ("empty", "string", {"frame": "string", "nullable": True}),
    ]
    assert "name" not in frame["schema"]  # no alias, no name
    assert frame["data"] == {"values": [[1621987000123, 1621988000000], ["ab", "cd"],
                                        ["quoted, with comma", 'say "hi"'], [None, None]],
                             "nanos": [[456000, 0], None, None, None]}


async def test_csv_content_errors_are_gos_csv_errors_for_their_refid(td):
    status, results = await run(
        td, q("csv_content", "A", csvContent="a,b\n1,2,3\n"), q("csv_content", "B", csvContent='a,b\n1,"x"y\n'),
        q("csv_content", "C", csvContent='a,b"c\n1,2\n'), q("csv_content", "D", csvContent="\n\n"),
        q("csv_content", "E", csvContent="a\n1\n"))
    assert status == 400
    assert {ref: result.get("error") for ref, result in results.items()} == {
        "A": "failed to read line: record on line 2: wrong number of fields",
        "B": 'failed to read line: parse error on line 2, column 5: extraneous or missing " in quoted-field',
        "C": 'failed to read header line: parse error on line 1, column 4: bare " in non-quoted field',
        "D": "failed to read header line: EOF",
        "E": None,
    }
    assert results["A"]["errorSource"] == "plugin" and results["A"]["status"] == 500


async def test_empty_csv_content_answers_nothing(td):
    status, results = await run(td, q("csv_content", "A", csvContent=""), q("csv_content", "B", csvContent="x\n1"))
    assert status == 200 and list(results) == ["B"]


async def test_csv_content_drop_percent_drops_rows_the_same_way_each_time(td):
    content = "n\n" + "\n".join(str(n) for n in range(200))
    query = q("csv_content", csvContent=content, dropPercent=50)
    first = (await run(td, query))[1]["A"]["frames"][0]
    second = (await run(td, query))[1]["A"]["frames"][0]
    kept = columns(first)[0]
    assert first == second and 50 < len(kept) < 150 and kept == sorted(kept) and set(kept) <= set(range(200))
    everything = (await run(td, q("csv_content", csvContent=content, dropPercent=100)))[1]["A"]["frames"][0]
    assert columns(everything)[0] == list(range(200))  # Grafana drops nothing at 100 or more


# -- CSV metric values and the conditional error --------------------------------------------------------

async def test_csv_metric_values_types_and_names(td):
    status, results = await run(
        td, q("csv_metric_values", "A", stringInput="t, F,null,TRUE"),
        q("csv_metric_values", "B", stringInput="1.5,2,"),
        q("csv_metric_values", "C", stringInput=",null"), q("csv_metric_values", "D", stringInput=",true"),
        q("csv_metric_values", "E", stringInput="1,2", alias="__server_names"))
    assert status == 200

    def field(ref: str) -> tuple[Any, Any]:
        frame = results[ref]["frames"][0]
        return frame["schema"]["fields"][1], columns(frame)[1]

    assert field("A") == ({"name": "A-series", "type": "boolean", "typeInfo": {"frame": "bool", "nullable": True}},
                          [True, False, None, True])
    assert field("B")[0]["typeInfo"] == {"frame": "float64", "nullable": True} and field("B")[1] == [1.5, 2, None]
    assert field("C")[0]["typeInfo"] == {"frame": "string", "nullable": True} and field("C")[1] == [None, None]
    assert field("D")[0]["typeInfo"]["frame"] == "string"  # only the first token decides for booleans
    assert field("E")[0]["name"] == "Backend-ops-01"
    assert columns(results["E"]["frames"][0])[0] == [FROM, TO]


async def test_blank_csv_metric_values_answer_nothing(td):
    status, results = await run(td, q("csv_metric_values", "A", stringInput="  "), q("csv_metric_values", "B"),
                                q("csv_metric_values", "C", stringInput="4"))
    assert status == 200 and list(results) == ["C"]


async def test_server_error_500_fails_its_refid_only_when_the_input_is_empty(td):
    status, results = await run(td, q("server_error_500", "A"), q("server_error_500", "B", stringInput="1,2"),
                                q("random_walk", "C"))
    assert status == 400
    assert results["A"] == {"error": "Test Data Panic!", "errorSource": "plugin", "status": 500}
    assert columns(results["B"]["frames"][0]) == [[FROM, TO], [1, 2]]
    assert results["C"]["status"] == 200


# -- deterministic time series --------------------------------------------------------------------------

PULSE_FROM = 1700000040000  # a multiple of 60 s


async def test_predictable_pulse_is_grafanas_pulse(td):
    query = q("predictable_pulse", labels='{host="a$seriesIndex"}',
              pulseWave={"timeStep": 60, "onCount": 3, "offCount": 2, "onValue": 1, "offValue": 0.5})
    status, results = await run(td, query, start=PULSE_FROM + 1000, end=PULSE_FROM + 600_000)
    assert status == 200 and results["A"] == {"status": 200, "frames": [{
        "schema": {"name": "A-series", "refId": "A", "meta": {"type": "timeseries-multi", "typeVersion": [0, 0]},
                   "fields": [{"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time"}},
                              {"name": "Value", "type": "number", "typeInfo": {"frame": "float64", "nullable": True},
                               "labels": {"host": "a0"}}]},
        "data": {"values": [[PULSE_FROM + 60_000 * n for n in range(10)],
                            [0.5, 1, 1, 1, 0.5, 0.5, 1, 1, 1, 0.5]]}}]}


async def test_predictable_pulse_without_a_time_step_fails_as_grafana_panics(td):
    status, results = await run(td, q("predictable_pulse", "A", pulseWave={"onCount": 1}), q("predictable_pulse", "B"))
    assert status == 400
    assert results["A"]["error"] == "runtime error: integer divide by zero"
    assert results["B"]["error"] == "runtime error: invalid memory address or nil pointer dereference"


async def test_predictable_csv_wave_answers_a_frame_per_wave(td):
    waves = [{"timeStep": 60, "valuesCSV": "1, null,nan,", "labels": "a=b", "name": "first"},
             {"timeStep": 120, "valuesCSV": "7"}]
    status, results = await run(td, q("predictable_csv_wave", csvWave=waves, alias="wave"),
                                start=PULSE_FROM, end=PULSE_FROM + 240_000)
    assert status == 200
    first, second = results["A"]["frames"]
    assert first["schema"]["name"] == "first" and second["schema"]["name"] == "wave"
    assert first["schema"]["meta"] == {"type": "timeseries-multi", "typeVersion": [0, 0]}
    assert first["schema"]["fields"][1]["labels"] == {"a": "b"} and second["schema"]["fields"][1]["labels"] == {}
    # PULSE_FROM is 2 minutes into a 3-minute period: nan, 1, null, nan
    assert first["data"] == {"values": [[PULSE_FROM + 60_000 * n for n in range(4)], [None, 1, None, None]],
                             "entities": [None, {"NaN": [0, 3]}]}
    assert columns(second) == [[PULSE_FROM, PULSE_FROM + 120_000], [7, 7]]


async def test_predictable_csv_wave_values_that_are_not_numbers_fail_the_refid(td):
    status, results = await run(td, q("predictable_csv_wave", "A", csvWave=[{"timeStep": 1, "valuesCSV": "1,x"}]),
                                q("predictable_csv_wave", "B", csvWave=[]))
    assert status == 400 and results["A"] == {
        "error": "failed to parse value 'x' into nullable float: strconv.ParseFloat: parsing \"x\": invalid syntax",
        "errorSource": "plugin", "status": 500}
    assert results["B"] == {"status": 200}  # no waves, no frames


async def test_datapoints_outside_range_is_one_point_an_hour_early(td):
    _, results = await run(td, q("datapoints_outside_range", alias="__house_locations"))
    assert results["A"] == {"status": 200, "frames": [{
        "schema": {"name": "Cellar", "refId": "A", "fields": [
            {"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time"}},
            {"name": "Value", "type": "number", "typeInfo": {"frame": "float64"}}]},
        "data": {"values": [[FROM - 3_600_000], [10]]}}]}


async def test_table_static_is_ten_rows_at_most(td):
    _, results = await run(td, q("table_static", "A", intervalMs=2000), q("table_static", "B", intervalMs=10_000))
    assert results["A"]["frames"][0]["schema"] == {"name": "A", "refId": "A", "fields": [
        {"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time"}},
        {"name": "Message", "type": "string", "typeInfo": {"frame": "string"}},
        {"name": "Description", "type": "string", "typeInfo": {"frame": "string"}},
        {"name": "Value", "type": "number", "typeInfo": {"frame": "float64"}}]}
    assert columns(results["A"]["frames"][0]) == [[FROM + 2000 * n for n in range(10)], ["This is a message"] * 10,
                                                  ["Description"] * 10, [23.1] * 10]
    assert columns(results["B"]["frames"][0])[0] == [FROM + 10_000 * n for n in range(5)]


# -- random walks ---------------------------------------------------------------------------------------

RANDOM_WALK_META = {"type": "timeseries-multi", "typeVersion": [0, 0], "custom": {"customStat": 10}}


async def test_random_walk_frames_have_grafanas_shape(td):
    query = q("random_walk", seriesCount=3, labels="job=api, series=s$seriesIndex", intervalMs=5000)
    status, results = await run(td, query)
    assert status == 200
    frames = results["A"]["frames"]
    assert len(frames) == 3
    for index, frame in enumerate(frames):
        assert frame["schema"] == {"refId": "A", "meta": RANDOM_WALK_META, "fields": [
            {"name": "time", "type": "time", "typeInfo": {"frame": "time.Time"}, "config": {"interval": 5000}},
            {"name": "A-series" + (str(index) if index else ""), "type": "number",
             "typeInfo": {"frame": "float64", "nullable": True}, "labels": {"job": "api", "series": f"s{index}"}}]}
        times, values = columns(frame)
        assert times == list(range(FROM, TO, 5000))
        assert len(values) == 10 and all(isinstance(value, float) for value in values)
    assert columns(frames[0])[1] != columns(frames[1])[1]


async def test_random_walk_is_the_same_for_the_same_request_and_refid(td):
    body = (q("random_walk", "A", seriesCount=2), q("random_walk", "B", seriesCount=2))
    first = (await run(td, *body))[1]
    assert first == (await run(td, *body))[1]
    assert columns(first["A"]["frames"][0])[1] != columns(first["B"]["frames"][0])[1]
    moved = (await run(td, *body, start=FROM + 1000, end=TO + 1000))[1]
    assert columns(moved["A"]["frames"][0])[1] != columns(first["A"]["frames"][0])[1]


async def test_random_walk_starts_where_asked_and_keeps_within_min_and_max(td):
    _, results = await run(
        td, q("random_walk", "A", startValue=1.234, intervalMs=100),
        q("random_walk", "B", startValue=50, min=49.5, max=50.5, spread=10, noise=2, intervalMs=100),
        q("random_walk", "C", startValue=7, spread=0, noise=0))
    values_a = columns(results["A"]["frames"][0])[1]
    assert values_a[0] == 1.234 and len(values_a) == 500
    values_b = columns(results["B"]["frames"][0])[1]
    assert all(49.5 <= value <= 50.5 for value in values_b) and {49.5, 50.5} <= set(values_b)
    assert set(columns(results["C"]["frames"][0])[1]) == {7}


async def test_random_walk_drops_points_and_caps_them_at_ten_thousand(td):
    _, results = await run(td, q("random_walk", "A", dropPercent=50, intervalMs=100),
                           q("random_walk", "B", intervalMs=1), q("random_walk", "C", intervalMs=0))
    times_a, values_a = columns(results["A"]["frames"][0])
    assert 100 < len(times_a) < 400 and len(values_a) == len(times_a) and set(times_a) <= set(range(FROM, TO, 100))
    assert len(columns(results["B"]["frames"][0])[0]) == 10_000
    assert set(columns(results["C"]["frames"][0])[0]) == {FROM}  # Grafana's loop does not move on


async def test_random_walk_series_names(td):
    _, results = await run(td, q("random_walk", "A", alias="__server_names", seriesCount=30),
                           q("random_walk", "B", alias="cpu", seriesCount=2), q("random_walk", "C", seriesCount=0))
    names = [frame["schema"]["fields"][1]["name"] for frame in results["A"]["frames"]]
    assert names == [*SERVER_NAMES, "__server_names"]
    assert [frame["schema"]["fields"][1]["name"] for frame in results["B"]["frames"]] == ["cpu", "cpu"]
    assert "C" not in results  # no series, no result (as in Grafana)


async def test_random_walk_refuses_more_than_a_million_points_for_its_refid(td):
    status, results = await run(td, q("random_walk", "A", seriesCount=101, intervalMs=1),
                                q("random_walk", "B", seriesCount=100, intervalMs=1), end=FROM + 20_000)
    assert status == 400
    assert results["A"] == {"error": "seriesCount 101 makes 1010000 points; gateway answers at most 1000000 points "
                                     "per random walk query", "errorSource": "plugin", "status": 500}
    assert len(results["B"]["frames"]) == 100


async def test_labels_without_an_equals_sign_fail_as_grafana_panics(td):
    status, results = await run(td, q("random_walk", labels="{oops}"))
    assert status == 400 and results["A"]["error"] == "runtime error: slice bounds out of range [:-1]"


async def test_random_walk_with_error_answers_the_frame_and_the_error(td):
    status, results = await run(td, q("random_walk_with_error"))
    assert status == 400
    result = results["A"]
    assert result["error"] == "this is an error and it can include URLs http://grafana.com/"
    assert result["errorSource"] == "plugin" and result["status"] == 500
    assert result["frames"][0]["schema"]["meta"] == RANDOM_WALK_META


async def test_random_walk_table_has_grafanas_columns_and_bounds(td):
    status, results = await run(td, q("random_walk_table", maxDataPoints=20, intervalMs=1000))
    assert status == 200
    frame = results["A"]["frames"][0]
    nullable = {"nullable": True}
    assert frame["schema"] == {"name": "A", "refId": "A", "fields": [
        {"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time", **nullable}},
        {"name": "Value", "type": "number", "typeInfo": {"frame": "float64", **nullable}},
        {"name": "Min", "type": "number", "typeInfo": {"frame": "float64", **nullable}},
        {"name": "Max", "type": "number", "typeInfo": {"frame": "float64", **nullable}},
        {"name": "Info", "type": "string", "typeInfo": {"frame": "string", **nullable}},
        {"name": "State", "type": "enum", "typeInfo": {"frame": "enum"},
         "config": {"type": {"enum": {"text": ["Unknown", "Up", "Down"]}}}}]}
    times, values, lows, highs, infos, states = columns(frame)
    assert times == list(range(FROM, FROM + 20_000, 1000))  # maxDataPoints rows
    assert all(low < value < high for low, value, high in zip(lows, values, highs, strict=True))
    for previous, value, info, state in zip([None, *values], values, infos, states, strict=False):
        if previous is not None:
            assert info.startswith("up" if value > previous else "down")
            assert state == (1 if value > previous else 2)
            assert info.endswith(" fast") == (abs(value - previous) > 0.4)


async def test_random_walk_table_with_nil_nulls_values_and_unsets_the_state(td):
    query = q("random_walk_table", withNil=True, maxDataPoints=500, intervalMs=10)
    first = (await run(td, query))[1]
    assert first == (await run(td, query))[1]
    _, values, lows, highs, _, states = columns(first["A"]["frames"][0])
    assert None in values and None in lows and None in highs
    for row, state in enumerate(states):
        assert (state == 0) == (None in (values[row], lows[row], highs[row]))


@pytest.mark.parametrize(("scenario", "names"), [
    ("exponential_heatmap_bucket_data", ["1", "2", "4", "8", "16", "32", "64", "128", "256", "512"]),
    ("linear_heatmap_bucket_data", ["0", "10", "20", "30", "40", "50", "60", "70", "80", "90"]),
])
async def test_heatmap_bucket_data(td, scenario, names):
    _, results = await run(td, q(scenario, intervalMs=100))
    frame = results["A"]["frames"][0]
    assert frame["schema"]["name"] == "data"
    assert frame["schema"]["fields"] == [
        {"name": "time", "type": "time", "typeInfo": {"frame": "time.Time", "nullable": True}},
        *({"name": name, "type": "number", "typeInfo": {"frame": "float64", "nullable": True}} for name in names)]
    times, *buckets = columns(frame)
    assert times == list(range(FROM, TO, 5000))
    assert all(len(bucket) == 10 and all(v in range(100) for v in bucket) for bucket in buckets)


@pytest.mark.parametrize("level_column", [False, True])
async def test_logs_are_a_dataplane_logs_frame(td, level_column):
    status, results = await run(td, q("logs", lines=12, levelColumn=level_column, intervalMs=3000))
    assert status == 200
    frame = results["A"]["frames"][0]
    assert frame["schema"] == {"name": "A", "refId": "A",
                               "meta": {"type": "log-lines", "typeVersion": [0, 0],
                                        "preferredVisualisationType": "logs"},
                               "fields": [
        {"name": "labels", "type": "other", "typeInfo": {"frame": "json.RawMessage"}, "labels": {}},
        {"name": "timestamp", "type": "time", "typeInfo": {"frame": "time.Time"}},
        {"name": "body", "type": "string", "typeInfo": {"frame": "string"}},
        {"name": "id", "type": "string", "typeInfo": {"frame": "string"}},
        {"name": "labelTypes", "type": "other", "typeInfo": {"frame": "json.RawMessage"},
         "config": {"custom": {"hidden": True}}}]}
    labels, times, bodies, ids, label_types = columns(frame)
    assert times == [TO - 3000 * n for n in range(12)]
    keys = ["container_id", "hostname", *(["level"] if level_column else [])]
    assert all(list(row) == keys for row in labels) and all(list(row) == keys for row in label_types)
    assert {row["hostname"] for row in labels} <= {"srv-001", "srv-002"}
    assert bodies[1].startswith("t=2023-11-14T22:14:07Z " + ("msg=" if level_column else "lvl="))
    assert 'msg="Request Completed"' in bodies[0] and "%22Prometheus%202.x%22" in bodies[0]
    for label, body, row_id in zip(labels, bodies, ids, strict=True):
        raw = json.dumps(label, separators=(",", ":")).encode()
        assert row_id.split("_")[:2] == [str(TO * 1_000_000), f"{_fnv32(body.encode() + b'_' + raw):x}"]
    assert len(set(ids)) == len(ids)
    assert results == (await run(td, q("logs", lines=12, levelColumn=level_column, intervalMs=3000)))[1]


async def test_logs_stop_at_from_and_at_ten_thousand_lines(td):
    _, results = await run(td, q("logs", "A", lines=100, intervalMs=10_000), q("logs", "B", lines=20_000, intervalMs=1),
                           q("logs", "C", lines=0))
    assert len(columns(results["A"]["frames"][0])[1]) == 5
    assert len(columns(results["B"]["frames"][0])[1]) == 10_000
    assert columns(results["C"]["frames"][0]) == [[], [], [], [], []]


# -- errors, slow queries, dispatch ---------------------------------------------------------------------

async def test_error_with_source(td):
    status, results = await run(td, q("error_with_source", "A"), q("error_with_source", "B", errorSource="downstream"))
    assert status == 400
    assert results == {"A": {"error": "error", "errorSource": "plugin", "status": 500},
                       "B": {"error": "error", "errorSource": "downstream", "status": 500}}


async def test_slow_query_sleeps_without_holding_up_other_requests(td):
    slow = asyncio.ensure_future(run(td, q("slow_query", stringInput="600ms")))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    status, results = await run(td, q("csv_metric_values", stringInput="1"))
    assert status == 200 and time.monotonic() - began < 0.4 and not slow.done()
    status, results = await slow
    assert status == 200 and results["A"]["frames"][0]["schema"]["meta"] == RANDOM_WALK_META


async def test_slow_query_is_bounded_by_the_data_sources_timeout(client):
    await add(client, "td", jsonData={"timeout": 0.3})
    began = time.monotonic()
    status, results = await run(client, q("slow_query", stringInput="10s"), q("slow_query", "B", stringInput="bad"))
    assert time.monotonic() - began < 3
    assert status == 400 and results["A"] == {"error": "the data source did not answer within 0.3s",
                                              "errorSource": "downstream", "status": 504}


async def test_unknown_and_client_side_scenarios_answer_nothing(td):
    queries = [q(scenario, ref) for ref, scenario in zip("ABCDE", ("no_data_points", "nope", "", "live", "steps"),
                                                          strict=True)]
    response = await post(td, {"queries": queries, "from": str(FROM), "to": str(TO)})
    assert response.status == 200 and await response.json() == {"results": {}}


async def test_query_type_names_the_scenario_before_scenario_id(td):
    _, results = await run(td, {**q("csv_metric_values", stringInput="1"), "queryType": "table_static"},
                           {**q("table_static", "B"), "queryType": "not-a-scenario"})
    assert results["A"]["frames"][0]["schema"]["name"] == "A"  # table_static
    assert results["B"]["frames"][0]["schema"]["name"] == "B"


async def test_the_model_decodes_as_gos_partial_decode(td):
    _, results = await run(
        td, {"refId": "A", "datasource": {"uid": "td"}, "seriesCount": "3", "alias": 5, "startValue": 2.5,
             "noise": 0, "spread": 0, "unknown": {"x": 1}, "min": "low"},
        {"refId": "B", "datasource": {"uid": "td"}, "ScenarioID": "table_static", "SERIESCOUNT": 2},
        {"refId": "C", "datasource": {"uid": "td"}, "scenarioId": 7, "seriesCount": 2.0, "StartValue": 1})
    assert len(results["A"]["frames"]) == 1  # "3" is not a number to Go: the default, 1
    assert results["A"]["frames"][0]["schema"]["fields"][1]["name"] == "A-series"
    assert set(columns(results["A"]["frames"][0])[1]) == {2.5}
    assert results["B"]["frames"][0]["schema"]["name"] == "B"  # keys match case-insensitively
    assert len(results["C"]["frames"]) == 1  # a mistyped scenarioId is the default, random_walk


async def test_the_scenarios_resource_lists_every_scenario_sorted(td):
    response = await td.get("/api/datasources/uid/td/resources/scenarios", headers=ADMIN)
    listed = await response.json()
    assert [entry["id"] for entry in listed] == sorted(sid for sid, _, _ in SCENARIOS)
    assert {"random_walk_with_error", "slow_query", "usa", "logs", "csv_content", "server_error_500",
            "error_with_source", "no_data_points"} <= {entry["id"] for entry in listed}
    assert {"description": "", "id": "slow_query", "name": "Slow Query", "stringInput": "5s"} in listed
    for entry in listed:  # every listed scenario is answered (or, like Grafana's client-side ones, not)
        text = "1ms" if entry["id"] == "slow_query" else "1"
        status, _ = await run(td, q(entry["id"], stringInput=text, csvContent="a\n1",
                                    pulseWave={"timeStep": 1}, csvWave=[{"timeStep": 1, "valuesCSV": "1"}]))
        assert status in (200, 400), entry


def test_fnv32_is_gos_fnv1():
    assert _fnv32(b"") == 0x811C9DC5 and _fnv32(b"a") == 0x050C5D7E


async def test_csv_wave_refuses_more_than_a_million_points_for_its_refid(td):
    waves = [{"timeStep": 1, "valuesCSV": "1,2"}] * 101  # 101 series of 10 000 points (a series's cap)
    status, results = await run(td, q("predictable_csv_wave", "A", csvWave=waves),
                                q("predictable_csv_wave", "B", csvWave=waves[:2]), end=FROM + 6 * 3_600_000)
    assert status == 400
    assert results["A"] == {"error": "csvWave makes more than 1000000 points; gateway answers at most 1000000 "
                                     "points per predictable_csv_wave query", "errorSource": "plugin", "status": 500}
    assert len(results["B"]["frames"]) == 2


async def test_csv_content_times_past_an_int64_are_null_in_json_and_msgpack(td):
    content = "time,v\n1700000000000,1\n99999999999999999999999,2\n"
    for accept in ("application/json", "application/msgpack"):
        response = await td.post("/api/ds/query", headers={**ADMIN, "Accept": accept}, json={
            "queries": [q("csv_content", csvContent=content)], "from": str(FROM), "to": str(TO)})
        assert response.status == 200, await response.text()
        body = await response.read()
        results = (msgspec.msgpack.decode(body) if accept == "application/msgpack" else json.loads(body))["results"]
        assert results["A"]["frames"][0]["data"]["values"][0] == [1700000000000, None]
