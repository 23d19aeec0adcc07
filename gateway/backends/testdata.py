"""TestData: always healthy; its resources list the scenarios."""

from __future__ import annotations

import msgspec

from gateway.backends.base import Backend, Context, HealthResult, ResourceRequest, core_plugin
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
