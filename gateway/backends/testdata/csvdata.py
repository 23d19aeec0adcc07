"""The CSV scenarios (metric values, content, the conditional error) and error_with_source."""

from __future__ import annotations

from gateway.backends.base import DataQuery
from gateway.backends.testdata.csvframes import csv_frame
from gateway.backends.testdata.csvframes import values_field as csv_values_field
from gateway.backends.testdata.model import Model
from gateway.backends.testdata.scenario import ScenarioFailure, go_div, seeded, series_name
from gateway.frames import DataResponse, Field, Frame


async def csv_metric_values(query: DataQuery, model: Model) -> DataResponse | None:
    """`stringInput` values spread evenly over the time range. A blank input answers nothing (Grafana builds
    an empty frame there but never stores it in the response)."""
    if not model.string_input.strip():
        return None
    field = csv_values_field(model.string_input.replace(" ", "").split(","))
    field.name = series_name(query, model, 0)
    start, end = query.time_range.from_ms, query.time_range.to_ms
    count = len(field)
    step = go_div(end - start, count - 1) if count > 1 else 0
    return DataResponse([Frame([Field("time", "time.Time", [start + row * step for row in range(count)]), field])])


async def server_error_500(query: DataQuery, model: Model) -> DataResponse | None:
    """CSV Metric Values, except that an empty `stringInput` is an error (Grafana panics with this text)."""
    if model.string_input == "":
        raise ScenarioFailure("Test Data Panic!")
    return await csv_metric_values(query, model)


async def csv_content(query: DataQuery, model: Model) -> DataResponse | None:
    """`csvContent` as one frame named by the alias; `dropPercent` drops rows at random."""
    if not model.csv_content:
        return None
    frame = csv_frame(model.csv_content, model.alias)
    if 0 < model.drop_percent < 100:
        rng = seeded(query, "csv_content")
        keep = [row for row in range(frame.rows) if not rng.random() < model.drop_percent / 100]
        for field in frame.fields:
            field.values = [field.values[row] for row in keep]
            if field.nanos is not None:
                field.nanos = [field.nanos[row] for row in keep]
    return DataResponse([frame])


async def error_with_source(query: DataQuery, model: Model) -> DataResponse:
    """No frames; the error `error`, from downstream when the query says so, else from the plugin."""
    return DataResponse(error="error", error_source="downstream" if model.error_source == "downstream" else "plugin")
