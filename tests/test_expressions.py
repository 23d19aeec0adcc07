"""Server-side expressions on POST /api/ds/query: TestData's csv_metric_values feeds every command, so each
answer is exact; label joins and frame conversion are checked on the pipeline itself with real frames."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from gateway.backends.base import DataQuery
from gateway.expressions import BuildError, Query, build, convert, data_query, parse_math
from gateway.frames import DataResponse, Field, Frame, encode_json, meta
from gateway.gtime import TimeRange
from tests.conftest import ADMIN
from tests.test_query import FROM, TO, add, csv, post

T0 = int(FROM)
TIMES = [T0 + step * 10_000 for step in range(6)]
VALUES = "1,20,90,30,5,0"
QUERY_DATA_ERROR = {"message": "Query data error", "traceID": ""}
SERIES_META = {"type": "timeseries-multi", "typeVersion": [0, 1]}


def expr(ref_id: str, kind: str, **model: Any) -> dict[str, Any]:
    return {"refId": ref_id, "datasource": {"type": "__expr__", "uid": "__expr__"}, "type": kind, **model}


async def ask(client: Any, *queries: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await post(client, {"queries": list(queries), "from": FROM, "to": TO})
    return response.status, await response.json()


def values(result: dict[str, Any], frame: int = 0) -> list[Any]:
    """The last field's values, NaN and ±Inf put back from entities."""
    data = result["frames"][frame]["data"]
    column = list(data["values"][-1])
    for key, number in (("NaN", math.nan), ("Inf", math.inf), ("NegInf", -math.inf)):
        for row in ((data.get("entities") or [None])[-1] or {}).get(key, []):
            column[row] = number
    return column


def same(got: list[Any], want: list[Any]) -> bool:
    return len(got) == len(want) and all(
        (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b
        for a, b in zip(got, want, strict=True))


@pytest.fixture
async def td(client):
    await add(client, "td")
    return client


# -- the shape of the answer ----------------------------------------------------------------------------------

async def test_math_on_a_series_answers_grafanas_frames_for_the_query_and_the_expression(td):
    status, body = await ask(td, csv("A", VALUES), expr("B", "math", expression="$A * 2 + 1"))
    assert status == 200
    assert body == {"results": {
        "A": {"status": 200, "frames": [{"schema": {"refId": "A", "meta": SERIES_META, "fields": [
            {"name": "time", "type": "time", "typeInfo": {"frame": "time.Time"}},
            {"name": "A-series", "type": "number", "typeInfo": {"frame": "float64", "nullable": True},
             "labels": {"__name__": "A-series"}}]},
            "data": {"values": [TIMES, [1, 20, 90, 30, 5, 0]]}}]},
        "B": {"status": 200, "frames": [{"schema": {"refId": "B", "meta": SERIES_META, "fields": [
            {"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time"}},
            {"name": "B", "type": "number", "typeInfo": {"frame": "float64", "nullable": True},
             "labels": {"__name__": "A-series"}}]},
            "data": {"values": [TIMES, [3, 41, 181, 61, 11, 1]]}}]}}}


async def test_a_reduced_number_is_one_labelled_row_named_after_the_expression(td):
    status, body = await ask(td, csv("A", VALUES), expr("B", "reduce", expression="A", reducer="sum"))
    assert status == 200
    assert body["results"]["B"] == {"status": 200, "frames": [{"schema": {"refId": "B", "fields": [
        {"name": "B", "type": "number", "typeInfo": {"frame": "float64", "nullable": True},
         "labels": {"__name__": "A-series"}}]}, "data": {"values": [[146]]}}]}


async def test_the_expression_data_source_is_recognised_by_every_spelling(td):
    for reference in ({"datasource": "__expr__"}, {"datasource": {"uid": "-100"}}, {"datasource": "-100"}):
        query = {"refId": "B", "type": "math", "expression": "$A + 1", **reference}
        status, body = await ask(td, csv("A", "4"), query)
        assert status == 200 and values(body["results"]["B"]) == [5], reference


# -- math ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expression", "expected"), [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("2 ** 3 ** 2", 64), ("-2 ** 2", 4), ("7 % 3", 1), ("-7 % 3", -1),
    ("10 / 4", 2.5), ("1 / 0", math.inf), ("-1 / 0", -math.inf), ("0 / 0", math.nan), ("5 % 0", math.nan),
    ("3 == 3", 1), ("3 != 3", 0), ("2 > 1", 1), ("2 >= 2", 1), ("1 < 1", 0), ("1 <= 1", 1),
    ("1 < 2 && 2 > 3", 0), ("0 || 2", 1), ("!0", 1), ("!5", 0), ("- -3", 3), ("0x10 + 010 + 1.5e1", 39),
    ("abs(-2.5)", 2.5), ("log(1)", 0), ("log(0)", -math.inf), ("log(-1)", math.nan), ("ceil(1.2)", 2),
    ("floor(-1.2)", -2), ("round(2.5)", 3), ("round(-2.5)", -3), ("round(2.4999)", 2),
    ("is_nan(nan())", 1), ("is_nan(1)", 0), ("is_inf(infn())", 1), ("is_inf(inf() - inf())", 0),
    ("is_null(null())", 1), ("is_null(0)", 0), ("is_number(inf())", 0), ("is_number(-3)", 1),
    ("null() + 1", None), ("abs(null())", math.nan), ("nan() || 1", 1), ("nan() && 1", math.nan), ("0 && nan()", 0),
    ("(-8) ** (1 / 3)", math.nan), ("0 ** -1", math.inf), ("10 ** 400", math.inf),
])
async def test_scalar_math_follows_grafanas_float_rules(td, expression, expected):
    status, body = await ask(td, expr("B", "math", expression=expression))
    assert status == 200
    frame = body["results"]["B"]["frames"][0]
    assert frame["schema"]["fields"] == [{"name": "B", "type": "number",
                                          "typeInfo": {"frame": "float64", "nullable": True}}]
    assert same(values(body["results"]["B"]), [expected]), values(body["results"]["B"])


async def test_variables_in_braces_functions_and_nulls_on_series(td):
    status, body = await ask(td, csv("A", "1,null,-3"), expr("B", "math", expression="abs(${A}) + is_null($A)"),
                             expr("C", "math", expression="-$A"), expr("D", "math", expression="is_number($A)"))
    assert status == 200
    results = body["results"]
    assert same(values(results["B"]), [1.0, math.nan, 3.0])  # abs(null) is NaN, NaN + 1 is NaN
    assert values(results["C"]) == [-1, None, 3]
    assert values(results["D"]) == [1, 0, 1]


async def test_two_unlabelled_series_of_two_data_sources_join_on_time(td):
    await add(td, "td2")
    status, body = await ask(td, csv("A", VALUES), csv("B", "1,2,3,4,5,6", uid="td2"),
                             expr("C", "math", expression="$A - $B"))
    assert status == 200
    assert sorted(body["results"]) == ["A", "B", "C"]
    result = body["results"]["C"]
    assert values(result) == [0, 18, 87, 26, 0, -6]
    # different __name__ labels do not match; one series on each side is joined anyway, without labels, and
    # Grafana still reports both as dropped
    assert "labels" not in result["frames"][0]["schema"]["fields"][1]
    assert result["frames"][0]["schema"]["meta"]["notices"] == [{"severity": "warning", "text": (
        '2 items dropped from union(s): ["$A - $B": ($A: {__name__=A-series}) ($B: {__name__=B-series})] ')}]


async def test_series_with_different_times_keep_only_the_common_times(td):
    # two points (from, to) against six: only from and to are common
    status, body = await ask(td, csv("A", VALUES), csv("B", "100,200"), expr("C", "math", expression="$A + $B"))
    assert status == 200
    assert body["results"]["C"]["frames"][0]["data"]["values"] == [[TIMES[0], TIMES[5]], [101, 200]]


# -- label joins on the pipeline -----------------------------------------------------------------------------

def _labelled(*series: tuple[dict[str, str], list[float]]) -> DataResponse:
    frames = [Frame([Field("time", "time.Time", [1000, 2000]), Field("v", "float64", points, labels=labels)])
              for labels, points in series]
    return DataResponse(frames)


def _run(answers: dict[str, DataResponse], expression: str) -> list[tuple[dict[str, str] | None, list[Any]]]:
    pipeline = build([Query("A", {}, "prometheus"), Query("B", {}, "prometheus"),
                      Query("C", {"type": "math", "expression": expression}, None)], TimeRange(0, 10_000))
    frames = pipeline.evaluate(answers)["C"].frames or []
    return [(frame.fields[1].labels, frame.fields[1].values) for frame in frames]


def test_series_join_on_equal_labels_and_on_label_subsets():
    a = _labelled(({"host": "a"}, [1, 2]), ({"host": "b"}, [10, 20]))
    b = _labelled(({"host": "b"}, [100, 200]), ({"host": "a"}, [1000, 2000]))
    assert _run({"A": a, "B": b}, "$A + $B") == [({"host": "a"}, [1001, 2002]), ({"host": "b"}, [110, 220])]
    subset = _labelled(({"host": "a", "dc": "x"}, [5, 5]), ({"host": "c", "dc": "x"}, [7, 7]))
    assert _run({"A": a, "B": subset}, "$A * $B") == [({"dc": "x", "host": "a"}, [5, 10])]
    unmatched = _labelled(({"host": "z"}, [1, 1]), ({"host": "y"}, [1, 1]))
    assert _run({"A": a, "B": unmatched}, "$A + $B") == []


def test_a_union_that_drops_series_says_so_on_the_first_result():
    a = _labelled(({"host": "a"}, [1, 2]), ({"host": "b"}, [10, 20]), ({"host": "c"}, [0, 0]))
    b = _labelled(({"host": "a"}, [5, 5]), ({"host": "b", "dc": "x"}, [1, 1]), ({"host": "d"}, [0, 0]))
    pipeline = build([Query("A", {}, "prometheus"), Query("B", {}, "prometheus"),
                      Query("C", {"type": "math", "expression": "($A + $B) * 2"}, None)], TimeRange(0, 10_000))
    frames = pipeline.evaluate({"A": a, "B": b})["C"].frames or []
    assert [frame.fields[1].values for frame in frames] == [[12, 14], [22, 42]]
    assert frames[0].meta is not None and frames[0].meta.notices is not None
    assert [notice.text for notice in frames[0].meta.notices] == [
        # the trailing space is Grafana's (it counts the sides where it means the binary nodes)
        '2 items dropped from union(s): ["$A + $B": ($A: {host=c}) ($B: {host=d})] ']
    assert frames[1].meta is not None and not frames[1].meta.notices


def test_numbers_broadcast_over_series_and_keep_the_series_labels():
    a = _labelled(({"host": "a"}, [1, 2]), ({"host": "b"}, [10, 20]))
    number = DataResponse([Frame([Field("n", "float64", [3.0], labels={})], meta=meta("numeric-multi", (0, 1)))])
    assert _run({"A": a, "B": number}, "$A * $B") == [({"host": "a"}, [3, 6]), ({"host": "b"}, [30, 60])]


def test_a_number_table_becomes_labelled_numbers():
    table = DataResponse([Frame([Field("host", "string", ["a", "b"]), Field("value", "int64", [4, 6])])])
    a = _labelled(({"host": "a"}, [1, 2]), ({"host": "b"}, [10, 20]))
    assert _run({"A": a, "B": table}, "$A - $B") == [({"host": "a"}, [-3, -2]), ({"host": "b"}, [4, 14])]


def test_converted_frames_keep_sub_millisecond_times():
    answer = DataResponse([Frame([Field("t", "time.Time", [1, 2], nanos=[5, 0]), Field("v", "int64", [1, 2])])])
    pipeline = build([Query("A", {}, "loki"), Query("B", {"type": "math", "expression": "$A * 10"}, None)],
                     TimeRange(0, 10))
    out = pipeline.evaluate({"A": answer})
    body = encode_json(out)
    assert b'"nanos":[[5,0],null]' in body and b'"values":[[1,2],[10.0,20.0]]' in body


def test_frames_convert_as_grafanas_converter_reads_them():
    wide = Frame([Field("t", "time.Time", [1, 2]), Field("a", "float64", [1.0, 2.0], labels={"x": "1"}),
                  Field("b", "bool", [True, None], nullable=True)], name="named")
    series = convert("prometheus", [wide])
    assert [(s.name, s.labels, s.values) for s in series] == [
        ("named", {"x": "1"}, [1.0, 2.0]), ("named", None, [1.0, None])]
    multi = Frame([Field("t", "time.Time", [1]), Field("v", "int64", [7], labels={"a": "b"})], name="n",
                  meta=meta("timeseries-multi", (0, 1)))
    assert [(s.name, s.labels) for s in convert("prometheus", [multi])] == [("v", {"a": "b"})]
    numbers = Frame([Field("v", "float64", [1.5, 2.5], labels={"k": "v"})], meta=meta("numeric-wide", (0, 1)))
    assert [(n.labels, n.value) for n in convert("prometheus", [numbers])] == [
        ({"k": "v"}, 1.5), ({"k": "v"}, 2.5)]
    long = Frame([Field("t", "time.Time", [1]), Field("host", "string", ["a"]), Field("v", "int64", [1])])
    with pytest.raises(ValueError, match="must be a wide series but got type long"):
        convert("postgres", [long, long])
    holes = Frame([Field("t", "time.Time", [1, None], nullable=True), Field("v", "int64", [1, 2])])
    with pytest.raises(ValueError, match="null time stamps"):
        convert("postgres", [holes])
    with pytest.raises(ValueError, match="no numeric field"):
        convert("x", [Frame([Field("host", "string", ["a"])], meta=meta("numeric-long", (0, 1)))])
    # TestData's unlabelled series are named by their fields (displayNameFromDS first), not by their frames
    named = [Frame([Field("t", "time.Time", [1]), Field(f"f{n}", "int64", [n], config={"displayNameFromDS": f"d{n}"})],
                   name="same") for n in (1, 2)]
    assert [s.labels for s in convert("grafana-testdata-datasource", named)] == [
        {"__name__": "d1"}, {"__name__": "d2"}]
    assert [s.labels for s in convert("prometheus", named)] == [None, None]
    with pytest.raises(ValueError, match="kind logs not supported"):
        convert("loki", [Frame([Field("t", "time.Time", [1])], meta=meta("logs", (0, 1)))])


def _sent(model: dict[str, Any], query_type: str = "") -> DataQuery:
    return data_query(model, msgspec.Raw(msgspec.json.encode(model)), "A", query_type, TimeRange(0, 1))


def test_data_source_queries_get_the_expression_engines_defaults():
    sent = _sent({"refId": "A"})
    assert (sent.interval_ms, sent.max_data_points) == (64, 5000)
    assert msgspec.json.decode(sent.model) == {"refId": "A"}  # the model goes to the backend as it came
    sent = _sent({"intervalMs": 1500.7, "maxDataPoints": 10}, "range")
    assert (sent.interval_ms, sent.max_data_points, sent.query_type) == (1500, 10, "range")
    for bad in ("10", True, None):
        with pytest.raises(BuildError, match="expected intervalMs to be an float64"):
            _sent({"intervalMs": bad})


# -- reduce --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("reducer", "expected"), [
    ("sum", 146), ("mean", 146 / 6), ("min", 0), ("max", 90), ("count", 6), ("last", 0), ("median", 12.5),
    ("MEAN", 146 / 6),
])
async def test_every_reducer(td, reducer, expected):
    status, body = await ask(td, csv("A", VALUES), expr("B", "reduce", expression="$A", reducer=reducer))
    assert status == 200 and values(body["results"]["B"]) == [expected]


@pytest.mark.parametrize(("data", "reducer", "settings", "expected"), [
    ("1,null,3", "sum", None, math.nan), ("1,null,3", "max", None, math.nan), ("1,null,3", "count", None, 3),
    ("1,2,null", "last", None, None), ("1,null,3", "median", None, math.nan),
    ("1,null,3", "sum", {"mode": "dropNN"}, 4), ("1,null,3", "mean", {"mode": "dropNN"}, 2),
    ("1,null,3", "count", {"mode": "dropNN"}, 2),
    ("1,null,3", "sum", {"mode": "replaceNN", "replaceWithValue": 10}, 14),
    ("1,null,3", "sum", {"mode": ""}, math.nan),
])
async def test_reduce_modes_for_null_and_nan(td, data, reducer, settings, expected):
    model: dict[str, Any] = {"expression": "A", "reducer": reducer}
    if settings is not None:
        model["settings"] = settings
    status, body = await ask(td, csv("A", data), expr("B", "reduce", **model))
    assert status == 200 and same(values(body["results"]["B"]), [expected]), values(body["results"]["B"])


async def test_reducing_a_number_again_is_a_no_op_with_grafanas_notice(td):
    status, body = await ask(td, csv("A", VALUES), expr("B", "reduce", expression="A", reducer="max"),
                             expr("C", "reduce", expression="B", reducer="min"),
                             expr("D", "reduce", expression="B", reducer="min", settings={"mode": "dropNN"}))
    assert status == 200
    frame = body["results"]["C"]["frames"][0]
    assert frame["schema"]["meta"] == {"typeVersion": [0, 0], "notices": [{
        "severity": "warning",
        "text": "Reduce operation is not needed. Input query or expression B is already reduced data."}]}
    assert values(body["results"]["C"]) == [90]
    assert "meta" not in body["results"]["D"]["frames"][0]["schema"]  # with settings: no notice


async def test_reducing_a_scalar_is_an_error_of_that_expression(td):
    status, body = await ask(td, expr("A", "math", expression="1"), expr("B", "reduce", expression="A", reducer="sum"))
    assert status == 400
    assert body["results"]["B"] == {"error": "can only reduce type series, got type scalar", "errorSource": "",
                                    "status": 500, "frames": []}
    assert values(body["results"]["A"]) == [1]


# -- resample ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("window", "downsampler", "upsampler", "expected"), [
    ("20s", "mean", "fillna", [1, 55, 17.5]), ("20s", "sum", "fillna", [1, 110, 35]),
    ("20s", "min", "fillna", [1, 20, 5]), ("20s", "max", "fillna", [1, 90, 30]), ("20s", "last", "fillna", [1, 90, 5]),
    ("5s", "mean", "pad", [1, 1, 20, 20, 90, 90, 30, 30, 5, 5, 0]),
    ("5s", "mean", "backfilling", [1, 20, 20, 90, 90, 30, 30, 5, 5, 0, 0]),
    ("5s", "mean", "fillna", [1, None, 20, None, 90, None, 30, None, 5, None, 0]),
])
async def test_resample_windows_downsamplers_and_upsamplers(td, window, downsampler, upsampler, expected):
    status, body = await ask(td, csv("A", VALUES), expr("B", "resample", expression="A", window=window,
                                                         downsampler=downsampler, upsampler=upsampler))
    assert status == 200
    frame = body["results"]["B"]["frames"][0]
    step = 20_000 if window == "20s" else 5_000
    assert frame["data"]["values"][0] == [T0 + n * step for n in range(len(expected))]
    assert values(body["results"]["B"]) == expected
    assert frame["schema"]["fields"][1]["name"] == "B"


async def test_a_window_longer_than_the_range_cannot_be_resampled(td):
    status, body = await ask(td, csv("A", VALUES), expr("B", "resample", expression="A", window="1m",
                                                         downsampler="mean", upsampler="fillna"),
                             expr("C", "math", expression="$B + 1"))
    assert status == 400
    assert body["results"]["B"] == {
        "error": "the series cannot be sampled further; the time range is shorter than the interval",
        "errorSource": "", "status": 500, "frames": []}
    assert body["results"]["C"]["error"] == ("[sse.dependencyError] did not execute expression [C] due to a failure "
                                             "to of the dependent expression or query [B]")
    assert body["results"]["A"]["status"] == 200



async def test_resamples_share_a_budget_of_a_million_points_per_request(td):
    hour = {"from": FROM, "to": str(T0 + 3_600_000)}
    query = {"queries": [csv("A", VALUES), expr("B", "resample", expression="A", window="1ms", downsampler="mean",
                                                 upsampler="fillna")], **hour}
    response = await post(td, query)
    body = await response.json()
    assert response.status == 400 and body["results"]["A"]["status"] == 200
    assert body["results"]["B"] == {
        "error": "resample would make 3600001 points; gateway answers at most 1000000 resampled points per request "
                 "(all resamples and series together)", "errorSource": "", "status": 500, "frames": []}
    fits = {"datasource": {"uid": "__expr__"}, "expression": "A", "downsampler": "mean", "upsampler": "pad"}
    response = await post(td, {"queries": [
        csv("A", VALUES), {**fits, "refId": "B", "type": "resample", "window": "4ms", "hide": True},
        {**fits, "refId": "C", "type": "resample", "window": "10ms"},
        {**fits, "refId": "D", "type": "resample", "window": "1m"}], **hour})
    body = await response.json()
    assert response.status == 400 and "B" not in body["results"]
    assert body["results"]["C"]["error"].startswith("resample would make 360001 points; gateway answers at most "
                                                    "1000000 resampled points per request")
    assert body["results"]["D"]["status"] == 200 and len(values(body["results"]["D"])) == 61  # 900001 + 61 fit

# -- threshold -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "params", "expected"), [
    ("gt", [20], [0, 0, 1, 1, 0, 0]), ("lt", [20], [1, 0, 0, 0, 1, 1]), ("eq", [20], [0, 1, 0, 0, 0, 0]),
    ("ne", [20], [1, 0, 1, 1, 1, 1]), ("gte", [20], [0, 1, 1, 1, 0, 0]), ("lte", [20], [1, 1, 0, 0, 1, 1]),
    ("within_range", [5, 30], [0, 1, 0, 0, 0, 0]), ("outside_range", [5, 30], [1, 0, 1, 0, 0, 1]),
    ("within_range_included", [5, 30], [0, 1, 0, 1, 1, 0]), ("outside_range_included", [5, 30], [1, 0, 1, 1, 1, 1]),
])
async def test_every_threshold(td, kind, params, expected):
    condition = {"evaluator": {"type": kind, "params": params}}
    status, body = await ask(td, csv("A", VALUES), expr("B", "threshold", expression="A", conditions=[condition]))
    assert status == 200 and values(body["results"]["B"]) == expected


async def test_threshold_keeps_null_and_works_on_numbers(td):
    status, body = await ask(td, csv("A", "1,null,30"),
                             expr("B", "threshold", expression="A", conditions=[{"evaluator": {"type": "gt",
                                                                                               "params": [2]}}]),
                             expr("C", "reduce", expression="A", reducer="max", settings={"mode": "dropNN"}),
                             expr("D", "threshold", expression="C", conditions=[{"evaluator": {"type": "gt",
                                                                                               "params": [29]}}]))
    assert status == 200
    assert values(body["results"]["B"]) == [0, None, 1]
    assert values(body["results"]["D"]) == [1]


# -- classic conditions -------------------------------------------------------------------------------------

def _condition(ref_id: str, reducer: str, kind: str, params: list[float], operator: str = "and") -> dict[str, Any]:
    return {"evaluator": {"params": params, "type": kind}, "operator": {"type": operator},
            "query": {"params": [ref_id]}, "reducer": {"type": reducer}}


async def test_a_classic_condition_answers_one_number_with_its_matches(td):
    status, body = await ask(td, csv("A", VALUES),
                             expr("B", "classic_conditions", conditions=[_condition("A", "avg", "gt", [20])]))
    assert status == 200
    assert body["results"]["B"] == {"status": 200, "frames": [{"schema": {
        "refId": "B", "meta": {"typeVersion": [0, 0], "custom": [
            {"value": "24.333333333333332", "metric": "A-series", "labels": {"__name__": "A-series"}}]},
        "fields": [{"type": "number", "typeInfo": {"frame": "float64", "nullable": True}}]},
        "data": {"values": [[1]]}}]}



async def test_a_classic_condition_holds_at_most_a_hundred_conditions(td):
    many = [_condition("A", "avg", "gt", [20], "or")] * 100
    status, body = await ask(td, csv("A", VALUES), expr("B", "classic_conditions", conditions=many))
    assert status == 200 and values(body["results"]["B"]) == [1]
    status, body = await ask(td, csv("A", VALUES), expr("B", "classic_conditions", conditions=[*many, many[0]]),
                             expr("C", "math", expression="$A + 1"))
    assert status == 400 and body["results"]["A"]["status"] == 200 and body["results"]["C"]["status"] == 200
    assert body["results"]["B"] == {
        "error": "classic_conditions has 101 conditions; gateway evaluates at most 100 conditions per "
                 "classic_conditions expression", "errorSource": "", "status": 500, "frames": []}

@pytest.mark.parametrize(("data", "conditions", "value", "matches"), [
    (VALUES, [("avg", "gt", [100], "and"), ("max", "gt", [50], "or")], 1, ["90"]),
    (VALUES, [("avg", "gt", [100], "and"), ("max", "gt", [50], "and")], 0, ["90"]),
    (VALUES, [("diff", "lt", [0], "and")], 1, ["-1"]), (VALUES, [("percent_diff", "eq", [-100], "and")], 1, ["-100"]),
    (VALUES, [("diff_abs", "within_range", [0, 2], "and")], 1, ["1"]),
    (VALUES, [("percent_diff_abs", "outside_range_included", [0, 100], "and")], 1, ["100"]),
    (VALUES, [("median", "eq", [12.5], "and")], 1, ["12.5"]), (VALUES, [("count", "gte", [6], "and")], 1, ["6"]),
    (VALUES, [("last", "ne", [0], "and")], 0, []),
    (VALUES, [("min", "within_range_included", [0, 0], "and")], 1, ["0"]),
    ("null,4,null", [("count_non_null", "eq", [1], "and")], 1, ["1"]),
    ("null,4,null", [("last", "eq", [4], "and")], 1, ["4"]),
    ("null,4,null", [("sum", "outside_range", [5, 10], "and")], 1, ["4"]),
])
async def test_classic_reducers_evaluators_and_operators(td, data, conditions, value, matches):
    model = [_condition("A", reducer, kind, params, operator) for reducer, kind, params, operator in conditions]
    status, body = await ask(td, csv("A", data), expr("B", "classic_conditions", conditions=model))
    assert status == 200
    assert values(body["results"]["B"]) == [value]
    custom = body["results"]["B"]["frames"][0]["schema"]["meta"]["custom"]
    assert [match["value"] for match in custom] == matches
    if value is None:
        assert custom == [{"value": "", "metric": "NoData", "labels": None}]


# -- hide, execution errors, no data ----------------------------------------------------------------------------

async def test_hidden_queries_run_but_are_not_answered(td):
    status, body = await ask(td, csv("A", VALUES, hide=True), expr("B", "math", expression="$A / 10"),
                             expr("C", "math", expression="$B", hide=True))
    assert status == 200 and list(body["results"]) == ["B"]
    assert values(body["results"]["B"]) == [0.1, 2, 9, 3, 0.5, 0]


async def test_a_failed_data_source_fails_its_node_and_every_dependant(td):
    await add(td, "prox", "generic-http", url="http://127.0.0.1:1")
    status, body = await ask(td, csv("A", VALUES), {"refId": "B", "datasource": {"uid": "prox"}},
                             expr("C", "math", expression="$A + $B"),
                             expr("D", "reduce", expression="C", reducer="sum"),
                             expr("E", "math", expression="$A * 0"))
    assert status == 400
    results = body["results"]
    assert results["B"] == {"error": "[sse.dataQueryError] failed to execute query [B]: Plugin not registered",
                            "errorSource": "", "status": 500, "frames": []}
    assert results["C"]["error"] == ("[sse.dependencyError] did not execute expression [C] due to a failure to of "
                                     "the dependent expression or query [B]")
    assert results["D"]["error"].endswith("[D] due to a failure to of the dependent expression or query [C]")
    assert values(results["E"]) == [0] * 6 and results["A"]["status"] == 200


async def test_frames_that_are_not_series_are_a_read_error(td):
    status, body = await ask(td, csv("A", "a,b"), expr("B", "math", expression="$A + 1"))
    assert status == 400
    assert body["results"]["A"]["error"] == ("[sse.readDataError] [A] got error: input data must be a wide series "
                                             "but got type not (input refid)")
    assert body["results"]["B"]["error"].startswith("[sse.dependencyError]")


async def test_no_data_flows_through_as_no_data(td):
    status, body = await ask(td, csv("A", ""), expr("B", "math", expression="$A * 2"),
                             expr("C", "reduce", expression="A", reducer="sum"))
    assert status == 200  # a blank csv_metric_values answers nothing, as Grafana's: A is no data
    for ref_id in "ABC":
        (frame,) = body["results"][ref_id]["frames"]
        assert frame["schema"]["name"] == "no data" and frame["schema"]["fields"] == [], ref_id
        assert frame["data"] == {"values": []}


# -- build errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("queries", [
    [expr("B", "nope")],
    [{"refId": "B", "datasource": {"uid": "__expr__"}, "expression": "1"}],
    [{**expr("B", "math"), "type": 5}],
    [expr("B", "math", expression="$Z + 1")],
    [expr("B", "math", expression="$B + 1")],
    [expr("B", "math", expression="$C"), expr("C", "math", expression="$B")],
    [expr("B", "math", expression="$A +")],
    [expr("B", "math", expression="$A*-1")],
    [expr("B", "math", expression="frobnicate($A)")],
    [expr("B", "math", expression="abs($A, $A)")],
    [expr("B", "math", expression="abs()")],
    [expr("B", "math", expression='abs("x")')],
    [expr("B", "math", expression="1 ## 2")],
    [expr("B", "math", expression="(" * 100 + "1" + ")" * 100)],
    [expr("B", "math", expression="1" + " + 1" * 2000)],
    [expr("B", "math", expression="1" + " + 1" * 1000)],
    [expr("B", "math")],
    [expr("B", "math", expression=7)],
    [expr("B", "reduce", expression="A", reducer="avg")],
    [expr("B", "reduce", expression="A")],
    [expr("B", "reduce", expression="A", reducer="sum", settings={"mode": "zero"})],
    [expr("B", "reduce", expression="A", reducer="sum", settings={"mode": "replaceNN"})],
    [expr("B", "reduce", expression="A", reducer="sum", settings={"mode": "replaceNN", "replaceWithValue": "1"})],
    [expr("B", "resample", expression="A", window="soon", downsampler="mean", upsampler="pad")],
    [expr("B", "resample", expression="A", window="5s", downsampler="mean")],
    [expr("B", "threshold", expression="$A", conditions=[{"evaluator": {"type": "gt", "params": [1]}}])],
    [expr("B", "threshold", expression="A", conditions=[])],
    [expr("B", "threshold", expression="A", conditions=[{"evaluator": {"type": "above", "params": [1]}}])],
    [expr("B", "threshold", expression="A", conditions=[{"evaluator": {"type": "within_range", "params": [1]}}])],
    [expr("B", "sql", expression="SELECT 1")],
    [expr("B", "classic_conditions", conditions=[_condition("C", "avg", "gt", [1])]),
     expr("C", "math", expression="$A")],
    [expr("B", "classic_conditions", conditions=[_condition("A", "avg", "gt", [1])]),
     expr("C", "math", expression="$B")],
    [expr("B", "classic_conditions", conditions=[_condition("A", "mean", "gt", [1])])],
    [expr("B", "classic_conditions", conditions=[_condition("A", "avg", "above", [1])])],
    [expr("B", "classic_conditions", conditions=[_condition("A", "avg", "within_range", [1])])],
    [expr("B", "classic_conditions", conditions=[_condition("A", "avg", "gt", []), ])],
    [expr("B", "classic_conditions", conditions=[_condition("A", "avg", "gt", [1]),
                                                 _condition("A", "avg", "gt", [1], operator="xor")])],
    [expr("B", "classic_conditions", conditions="A")],
    [expr("B", "math", expression="$A", hide="yes")],
    [{**csv("A", "1"), "intervalMs": "10"}, expr("B", "math", expression="$A")],
])
async def test_a_pipeline_that_cannot_be_built_is_grafanas_query_data_error(td, queries):
    if not any(query.get("refId") == "A" for query in queries):
        queries = [csv("A", VALUES), *queries]
    status, body = await ask(td, *queries)
    assert (status, body) == (500, QUERY_DATA_ERROR)


async def test_expression_answers_travel_as_messagepack_too(td):
    queries = [csv("A", VALUES), expr("B", "reduce", expression="A", reducer="last"),
               expr("C", "classic_conditions", conditions=[_condition("A", "max", "gt", [50])])]
    body = {"queries": queries, "from": FROM, "to": TO}
    plain = await (await post(td, body)).json()
    response = await td.post("/api/ds/query", json=body, headers={**ADMIN, "Accept": "application/msgpack"})
    assert response.status == 200 and msgspec.msgpack.decode(await response.read()) == plain


async def test_request_errors_still_come_first(td):
    status, body = await ask(td, csv("A", "1"), expr("A", "math", expression="1"))
    assert status == 400 and body["messageId"] == "query.duplicateRefId"
    status, body = await ask(td, expr("B", "math", expression="1"), csv("A", "1", uid="missing"))
    assert (status, body) == (404, {"message": "Data source not found", "traceID": ""})


def test_the_parser_is_bounded_and_reports_its_reason():
    tree, names = parse_math("${A B} + $C_1 * -abs($A)")
    assert names == ["A B", "C_1", "A"]
    assert tree[0] == "binary" and tree[1] == "+"
    assert parse_math("(" * 60 + "1" + ")" * 60)[0] == ("num", 1.0, "1")
    assert parse_math(" + ".join(["1"] * 250))[0][0] == "binary"
    for text, reason in (("(" * 70 + "1" + ")" * 70, "nests deeper"), ("x" * 5000, "longer than"),
                         (" + ".join(["1"] * 300), "more than 256 levels"), ("- " * 80 + "1", "nests deeper"),
                         ("$", "incomplete variable"), ("${A", "unterminated variable"), ("1 $", "incomplete"),
                         ("nope(1)", "non existent function nope"), ("1 2", "unexpected")):
        with pytest.raises(BuildError, match=reason):
            parse_math(text)


@pytest.mark.parametrize(("reducer", "settings", "expected"), [
    ("mean", {"mode": "dropNN"}, None), ("mean", {"mode": "replaceNN", "replaceWithValue": -1}, -1),
    ("min", None, math.nan), ("count", None, 2),
])
def test_reducing_an_all_null_series(reducer, settings, expected):
    # TestData cannot make an all-null numeric series (Grafana reads "null,null" as strings): built directly
    from gateway.expressions import Series, command
    from gateway.gtime import TimeRange

    model = {"type": "reduce", "expression": "A", "reducer": reducer, **({"settings": settings} if settings else {})}
    (number,) = command("B", model).run({"A": [Series("A", {}, [1, 2], [None, None])]}, TimeRange(0, 1))
    if isinstance(expected, float) and math.isnan(expected):
        assert number.value is not None and math.isnan(number.value)
    else:
        assert number.value == expected


def test_an_expression_not_started_by_the_deadline_is_an_error_of_its_refid():
    model = {"refId": "B", "type": "math", "expression": "1 + 1", "datasource": {"uid": "__expr__"}}
    pipeline = build([Query("B", model, None)], TimeRange(0, 1))
    assert pipeline.evaluate({})["B"].error is None
    assert pipeline.evaluate({}, deadline=0.0)["B"].error == (
        "[sse.executionError] did not execute expression [B]: the expressions ran out of time")
