"""TestData: always healthy; its resources list the scenarios."""

from __future__ import annotations

import msgspec

from gateway.backends.base import Backend, Context, DataQuery, HealthResult, ResourceRequest, core_plugin
from gateway.frames import DataResponse, Field, Frame, meta
from gateway.http.client import Answer

SCENARIOS: tuple[tuple[str, str], ...] = (
    ("random_walk", "Random Walk"),
    ("random_walk_table", "Random Walk Table"),
    ("csv_metric_values", "CSV Metric Values"),
    ("csv_content", "CSV Content"),
    ("predictable_pulse", "Predictable Pulse"),
    ("predictable_csv_wave", "Predictable CSV Wave"),
    ("no_data_points", "No Data Points"),
    ("datapoints_outside_range", "Datapoints Outside Range"),
    ("table_static", "Table Static"),
    ("usa", "USA generated data"),
    ("slow_query", "Slow Query"),
    ("server_error_500", "Server Error (500)"),
    ("error_with_source", "Error with source"),
    ("exponential_heatmap_bucket_data", "Exponential heatmap bucket data"),
    ("linear_heatmap_bucket_data", "Linear heatmap bucket data"),
    ("logs", "Logs"),
)


class TestData(Backend):
    __test__ = False  # not a pytest class
    plugin = core_plugin("grafana-testdata-datasource", "TestData", "testdata.svg", "testdata")
    served = True

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """Always OK, as Grafana's TestData."""
        return HealthResult(message="Data source is working", status="OK")

    async def call_resource(self, ctx: Context, request: ResourceRequest) -> Answer:
        """`scenarios` lists them; every other path says hello (GET) or answers empty."""
        if request.path.strip("/") == "scenarios":
            body = msgspec.json.encode([
                {"id": sid, "name": name, "description": "", "stringInput": ""} for sid, name in SCENARIOS
            ])
            return Answer(200, [("Content-Type", "application/json")], body)
        if request.method == "GET":
            return Answer(200, [("Content-Type", "text/plain; charset=utf-8")], b"Hello world from test datasource!")
        return Answer(200, [], b"")

    async def query(self, ctx: Context, queries: list[DataQuery]) -> dict[str, DataResponse]:
        """Each query's scenario, by scenarioId (queryType when it names one); unknown scenarios answer nothing."""
        results: dict[str, DataResponse] = {}
        for query in queries:
            scenario = query.query_type if query.query_type in _SCENARIOS else query.model.get("scenarioId")
            handler = _SCENARIOS.get(scenario if isinstance(scenario, str) else "random_walk")
            if handler is not None:
                results[query.ref_id] = handler(query)
        return results


def series_name(query: DataQuery, index: int) -> str:
    """frameNameForQuery: the alias, else `<refId>-series` with the index after the first."""
    alias = query.model.get("alias")
    if isinstance(alias, str) and alias:
        return alias
    return f"{query.ref_id}-series" + (str(index) if index else "")


def _csv_values(tokens: list[str]) -> tuple[str, list[object]]:
    """Grafana's inference for CSV metric values: bools, else ints, else floats, else strings (all nullable)."""
    present = [token for token in tokens if token not in ("", "null")]
    if present and present[0].upper() in ("T", "F", "TRUE", "FALSE"):
        return "bool", [None if token in ("", "null") else token.upper() in ("T", "TRUE") for token in tokens]
    for item_type, convert in (("int64", int), ("float64", float)):
        try:
            return item_type, [None if token in ("", "null") else convert(token) for token in tokens]
        except ValueError:
            continue
    return "string", [None if token in ("", "null") else token for token in tokens]


def csv_metric_values(query: DataQuery) -> DataResponse:
    """`stringInput` values spread evenly over the time range; no input is one frame without fields."""
    text = query.model.get("stringInput")
    text = text.replace(" ", "") if isinstance(text, str) else ""
    if not text:
        return DataResponse([Frame(meta=meta(executed_query_string=""))])
    tokens = text.split(",")
    item_type, values = _csv_values(tokens)
    start, end = query.time_range.from_ms, query.time_range.to_ms
    step = (end - start) // (len(tokens) - 1) if len(tokens) > 1 else 0
    times = [start + index * step for index in range(len(tokens))]
    return DataResponse([Frame([Field("time", "time.Time", times),
                               Field(series_name(query, 0), item_type, values, nullable=True)])])


_SCENARIOS = {"csv_metric_values": csv_metric_values}
