"""TestData: always healthy; its resources list the scenarios; its queries answer Grafana's scenarios.

The frames follow the newest Grafana (G pkg/tsdb/grafana-testdata-datasource, spec-query §11): names, field
types and nullability, labels and meta as Grafana builds them. Two things differ on purpose (README,
deliberate differences): every random scenario draws from a `random.Random` seeded by the time range and
the refId, so the same request answers the same frames; and where Grafana's handler fails as a whole
(a panic, a bad CSV, a bad `usa` model) only the refId at fault answers an error, the others their frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from gateway.backends.base import Backend, Context, DataQuery, HealthResult, ResourceRequest, core_plugin
from gateway.backends.testdata.csvdata import csv_content, csv_metric_values, error_with_source, server_error_500
from gateway.backends.testdata.csvframes import CsvError, LabelsPanic
from gateway.backends.testdata.loglines import _fnv32 as _fnv32  # re-exported: tests/test_testdata.py
from gateway.backends.testdata.loglines import logs
from gateway.backends.testdata.model import Model, go_decode
from gateway.backends.testdata.predictable import (
    datapoints_outside_range,
    predictable_csv_wave,
    predictable_pulse,
    table_static,
)
from gateway.backends.testdata.scenario import SERVER_NAMES as SERVER_NAMES  # re-exported: tests/test_testdata.py
from gateway.backends.testdata.scenario import ScenarioFailure, start_value
from gateway.backends.testdata.usadata import usa
from gateway.backends.testdata.walks import (
    _heatmap,
    _walk_budget,
    random_walk,
    random_walk_scenario,
    random_walk_table,
    random_walk_with_error,
    slow_query,
)
from gateway.frames import DataResponse
from gateway.http.client import Answer

# (id, name, stringInput) of the scenarios answered here, as Grafana registers them; the resource lists
# them sorted by id, as Grafana does
SCENARIOS: tuple[tuple[str, str, str], ...] = (
    ("annotations", "Annotations", ""),
    ("csv_content", "CSV Content", ""),
    ("csv_metric_values", "CSV Metric Values", "1,20,90,30,5,0"),
    ("datapoints_outside_range", "Datapoints Outside Range", ""),
    ("error_with_source", "Error with source", ""),
    ("exponential_heatmap_bucket_data", "Exponential heatmap bucket data", ""),
    ("grafana_api", "Grafana API", ""),
    ("linear_heatmap_bucket_data", "Linear heatmap bucket data", ""),
    ("live", "Grafana Live", ""),
    ("logs", "Logs", ""),
    ("no_data_points", "No Data Points", ""),
    ("predictable_csv_wave", "Predictable CSV Wave", ""),
    ("predictable_pulse", "Predictable Pulse", ""),
    ("random_walk", "Random Walk", ""),
    ("random_walk_table", "Random Walk Table", ""),
    ("random_walk_with_error", "Random Walk (with error)", ""),
    ("server_error_500", "Conditional Error", "1,20,90,30,5,0"),
    ("slow_query", "Slow Query", "5s"),
    ("steps", "Steps", ""),
    ("streaming_client", "Streaming Client", ""),
    ("table_static", "Table Static", ""),
    ("usa", "USA generated data", ""),
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
                {"description": "", "id": sid, "name": name, "stringInput": text} for sid, name, text in SCENARIOS
            ])
            return Answer(200, [("Content-Type", "application/json")], body)
        if request.method == "GET":
            return Answer(200, [("Content-Type", "text/plain; charset=utf-8")], b"Hello world from test datasource!")
        return Answer(200, [], b"")

    async def query(self, ctx: Context, queries: list[DataQuery]) -> dict[str, DataResponse]:
        """Each query's scenario, by `queryType` when it names one, else by `scenarioId`; one after the other,
        as Grafana runs them (a slow query delays the next); unknown scenarios answer nothing."""
        results: dict[str, DataResponse] = {}
        for query in queries:
            answer = await answer_query(query)
            if answer is not None:
                results[query.ref_id] = answer
            await asyncio.sleep(0)  # let other requests run between queries
        return results


async def answer_query(query: DataQuery) -> DataResponse | None:
    """One query's answer; None leaves its refId out of the results."""
    model = go_decode(Model, msgspec.json.decode(query.model))
    handler = _HANDLERS.get(query.query_type) or _HANDLERS.get(model.scenario_id)
    if handler is None:
        return None
    try:
        return await handler(query, model)
    except (ScenarioFailure, LabelsPanic, CsvError) as failure:
        return DataResponse(error=str(failure), status=500, error_source="plugin")


def default_walk(query: DataQuery) -> DataResponse:
    """One random walk from the default model (what -- Grafana -- answers to a randomWalk query)."""
    model = Model()
    try:
        _walk_budget(query, 1)
        return DataResponse([random_walk(query, model, 0, start_value(query, model))])
    except ScenarioFailure as failure:
        return DataResponse(error=str(failure), status=500, error_source="plugin")


async def client_side(query: DataQuery, model: Model) -> None:
    """Scenarios the browser answers: the backend has no result for them."""
    return None


Handler = Callable[[DataQuery, Model], Awaitable[DataResponse | None]]

_HANDLERS: dict[str, Handler] = {
    "random_walk": random_walk_scenario,
    "random_walk_with_error": random_walk_with_error,
    "slow_query": slow_query,
    "random_walk_table": random_walk_table,
    "exponential_heatmap_bucket_data": _heatmap(lambda index: 2**index),
    "linear_heatmap_bucket_data": _heatmap(lambda index: index * 10),
    "logs": logs,
    "predictable_pulse": predictable_pulse,
    "predictable_csv_wave": predictable_csv_wave,
    "datapoints_outside_range": datapoints_outside_range,
    "table_static": table_static,
    "csv_metric_values": csv_metric_values,
    "server_error_500": server_error_500,
    "csv_content": csv_content,
    "error_with_source": error_with_source,
    "usa": usa,
    **{sid: client_side for sid in ("no_data_points", "streaming_client", "live", "steps", "grafana_api",
                                    "annotations")},
}
