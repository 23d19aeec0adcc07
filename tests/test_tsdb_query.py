"""POST /api/tsdb/query: the legacy API on the shared query path, answered in Grafana's old shape."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest

from gateway import legacy
from gateway.frames import DataResponse, Field, Frame, meta
from tests.conftest import ADMIN
from tests.test_query import FROM, TO, add, csv

TIMES = [1700000000000, 1700000010000, 1700000020000, 1700000030000, 1700000040000, 1700000050000]


async def post(client: Any, body: Any, headers: Any = None) -> Any:
    return await client.post("/api/tsdb/query", json=body, headers=headers or ADMIN)


def by_id(ref_id: str, values: str, ds_id: int, **extra: Any) -> dict[str, Any]:
    """A query as the old API's clients wrote it: the data source by numeric id only."""
    query = csv(ref_id, values, **extra)
    del query["datasource"]
    return {**query, "datasourceId": ds_id}


# -- the old response shape, byte for byte -------------------------------------------------------------------

async def test_a_time_series_answers_series_of_value_time_points_in_gos_key_order(client):
    ds = await add(client, "td")
    response = await post(client, {"from": FROM, "to": TO, "queries": [by_id("A", "1,20,90,30,5,0", ds["id"])]})
    assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
    points = ",".join(f"[{value},{time}]" for value, time in zip((1, 20, 90, 30, 5, 0), TIMES, strict=True))
    assert await response.read() == (
        b'{"results":{"A":{"refId":"A","series":[{"name":"A-series","points":[' + points.encode()
        + b']}],"tables":null,"dataframes":null}}}')


async def test_queries_fan_out_to_several_data_sources_and_keep_their_refids(client):
    one = await add(client, "one")
    await add(client, "two")
    body = {"from": FROM, "to": TO, "queries": [
        by_id("B", "3,4", one["id"], alias="first"), csv("A", "5,null", uid="two"),
        by_id("C", "", one["id"])]}
    response = await post(client, body)
    assert response.status == 200
    assert await response.json() == {"results": {
        "A": {"refId": "A", "series": [{"name": "A-series", "points": [[5, TIMES[0]], [None, TIMES[-1]]]}],
              "tables": None, "dataframes": None},
        "B": {"refId": "B", "series": [{"name": "first", "points": [[3, TIMES[0]], [4, TIMES[-1]]]}],
              "tables": None, "dataframes": None},
    }}  # C, with no input, answers nothing, as Grafana's csv_metric_values


async def test_frames_that_are_not_numeric_time_series_answer_tables(client):
    ds = await add(client, "td")
    body = {"from": FROM, "to": "1700000010000", "queries": [
        by_id("A", "T,F", ds["id"]), by_id("B", "x,null", ds["id"])]}
    response = await post(client, body)
    assert response.status == 200
    assert await response.json() == {"results": {
        "A": {"refId": "A", "series": [], "dataframes": None, "tables": [
            {"columns": [{"text": "time"}, {"text": "A-series"}],
             "rows": [[1700000000000, True], [1700000010000, False]]}]},
        "B": {"refId": "B", "series": [], "dataframes": None, "tables": [
            {"columns": [{"text": "time"}, {"text": "B-series"}],
             "rows": [[1700000000000, "x"], [1700000010000, None]]}]},
    }}


# -- errors ---------------------------------------------------------------------------------------------------

async def test_a_failed_query_makes_the_answer_400_with_every_result_and_the_last_error(client):
    ds = await add(client, "td")
    await add(client, "prox", "generic-http", url="http://127.0.0.1:1")
    await add(client, "prox2", "generic-http", url="http://127.0.0.1:1")
    body = {"from": FROM, "to": TO, "queries": [
        by_id("A", "1", ds["id"]), {"refId": "B", "datasource": {"uid": "prox"}},
        {"refId": "C", "datasource": {"uid": "prox2"}}]}
    response = await post(client, body)
    assert response.status == 400
    assert await response.json() == {"message": "Plugin not registered", "results": {
        "A": {"refId": "A", "series": [{"name": "A-series", "points": [[1, TIMES[0]]]}], "tables": None,
              "dataframes": None},
        "B": {"error": "Plugin not registered", "refId": "B", "series": None, "tables": None, "dataframes": None},
        "C": {"error": "Plugin not registered", "refId": "C", "series": None, "tables": None, "dataframes": None},
    }}
    assert (await response.read()).startswith(b'{"results":{"A":')  # message after results, as Go writes it


async def test_an_unknown_datasource_id_is_404(client):
    ds = await add(client, "td")
    response = await post(client, {"queries": [by_id("A", "1", ds["id"]), by_id("B", "1", ds["id"] + 1000)]})
    assert response.status == 404 and await response.json() == {"message": "Data source not found", "traceID": ""}


async def test_no_queries_is_400(client):
    for body in ({}, {"queries": []}, {"from": FROM, "to": TO, "queries": None}):
        response = await post(client, body)
        assert response.status == 400
        assert await response.json() == {"message": "No queries found", "messageId": "query.noQueries",
                                          "statusCode": 400, "traceID": ""}


@pytest.mark.parametrize(("data", "content_type"), [
    (b"{", "application/json"), (b'{"from": 1, "queries": []}', "application/json"),
    (b'{"queries": [1]}', "application/json"), (b"[]", "application/json"),
    (b'{"queries": []}', "text/plain"),
])
async def test_a_bad_body_is_400_bad_request_data(client, data, content_type):
    response = await client.post("/api/tsdb/query", data=data, headers={**ADMIN, "Content-Type": content_type})
    assert response.status == 400 and await response.json() == {"message": "bad request data", "traceID": ""}


async def test_duplicate_refids_and_permissions_are_checked_as_on_ds_query(client, make_token):
    ds = await add(client, "td")
    response = await post(client, {"queries": [by_id("A", "1", ds["id"]), by_id("A", "2", ds["id"])]})
    assert response.status == 400 and (await response.json())["messageId"] == "query.duplicateRefId"
    response = await post(client, {"queries": [by_id("A", "1", ds["id"])]}, await make_token("None"))
    assert response.status == 403
    response = await client.post("/api/tsdb/query", json={"queries": [by_id("A", "1", ds["id"])]})
    assert response.status == 401


# -- the conversion, frame by frame ---------------------------------------------------------------------------

def convert(*frames: Frame, error: str | None = None) -> Any:
    body, status = legacy.convert({"Q": DataResponse(list(frames), error=error)})
    return json.loads(legacy.encode(body)), status


def test_series_are_named_as_grafanas_frame_to_series_slice_names_them():
    time = Field("Time", "time.Time", [1000, 2000])
    frame = Frame([time,
                   Field("Value", "float64", [1.5, math.nan], labels={"job": "api", "instance": "a:9"}),
                   Field("Value", "float64", [math.inf, None], nullable=True, labels={"job": "db"},
                         config={"displayNameFromDS": "db up"}),
                   Field("Value", "int64", [3, 4], config={"displayName": "three", "displayNameFromDS": "x"}),
                   Field("count", "uint32", [5, 6], labels={})])
    body, status = convert(frame)
    assert status == 200
    assert body["results"]["Q"]["series"] == [
        {"name": "Value {instance=a:9, job=api}", "points": [[1.5, 1000], [None, 2000]],
         "tags": {"instance": "a:9", "job": "api"}},
        {"name": "db up", "points": [[None, 1000], [None, 2000]], "tags": {"job": "db"}},
        {"name": "three", "points": [[3, 1000], [4, 2000]]},
        {"name": "count", "points": [[5, 1000], [6, 2000]]},
    ]


def test_meta_carries_the_executed_query_as_sql_and_the_row_count():
    rows = Frame([Field("time", "time.Time", [1000, 2000, 3000]), Field("v", "float64", [1.0, 2.0, 3.0])],
                 meta=meta(executed_query_string="SELECT 1"))
    body, _ = convert(rows, Frame([Field("a", "string", ["x"])]))
    result = body["results"]["Q"]
    assert result["meta"] == {"rowCount": 4, "sql": "SELECT 1"}
    assert result["tables"] == [{"columns": [{"text": "a"}], "rows": [["x"]]}]
    assert list(result) == ["refId", "meta", "series", "tables", "dataframes"]
    body, _ = convert(Frame(meta=meta(executed_query_string="SELECT nothing")))
    assert body["results"]["Q"] == {"refId": "Q", "meta": {"rowCount": 0, "sql": "SELECT nothing"}, "series": [],
                                    "tables": None, "dataframes": None}


def test_long_frames_json_values_and_empty_series_convert_without_loss():
    long = Frame([Field("time", "time.Time", [1000]), Field("host", "string", ["a"]), Field("v", "int64", [7])])
    raw = Frame([Field("doc", "json.RawMessage", [b'{"a":[1,2]}', msgspec.Raw(b"null")])])
    empty = Frame([Field("time", "time.Time", []), Field("v", "float64", [])])
    body, _ = convert(long, raw, empty)
    assert body["results"]["Q"]["tables"] == [
        {"columns": [{"text": "time"}, {"text": "host"}, {"text": "v"}], "rows": [[1000, "a", 7]]},
        {"columns": [{"text": "doc"}], "rows": [[{"a": [1, 2]}], [None]]}]
    assert body["results"]["Q"]["series"] == [{"name": "v", "points": []}]


def test_an_error_with_frames_keeps_both_and_the_status_is_400():
    body, status = convert(Frame([Field("time", "time.Time", [1]), Field("v", "int8", [2])]), error="partial")
    assert status == 400 and body["message"] == "partial"
    assert body["results"]["Q"]["error"] == "partial"
    assert body["results"]["Q"]["series"] == [{"name": "v", "points": [[2, 1]]}]
