"""Prometheus and its hosted variants: proxy routes, health (`1+1` through the data source's client),
api/v1 resources passed through, and queries (spec-query §12): the query model and step, the HTTP calls,
and Prometheus' answers decoded straight into typed Structs and turned into Grafana's frames."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import re
from collections.abc import Sequence
from operator import itemgetter
from typing import Annotated, Any, cast
from urllib.parse import unquote

import msgspec

from gateway.backends.base import (
    Backend,
    Context,
    DataQuery,
    HealthResult,
    NotImplementedByBackend,
    ResourceRequest,
    core_plugin,
    pass_through,
    refuse_unlisted_writes,
)
from gateway.errors import GatewayError, MethodNotAllowed, UpstreamUnavailable, go_quote, route_denied, translate
from gateway.frames import DataResponse, Field, Frame, Notice, meta
from gateway.gtime import format_interval, go_duration_string, parse_interval_string, round_interval
from gateway.http.client import Answer, clean_path
from gateway.http.form import encode_form
from gateway.http.pool import UpstreamError

log = logging.getLogger("gateway.prometheus")

_FAILED = " - There was an error returned querying the Prometheus API."
_ROLE_RANK = {"None": 0, "Viewer": 1, "Editor": 2, "Admin": 3}
# Prometheus plugin.json routes (spec-proxy §2.6.4): method, path, minimum role; first match wins.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "api/v1/status/flags", "Admin"),
    ("POST", "api/v1/query", "Viewer"),
    ("POST", "api/v1/query_range", "Viewer"),
    ("POST", "api/v1/series", "Viewer"),
    ("POST", "api/v1/labels", "Viewer"),
    ("POST", "api/v1/query_exemplars", "Viewer"),
    ("GET", "rules", "Viewer"),
    ("POST", "rules", "Editor"),
    ("DELETE", "rules", "Editor"),
)


class Prometheus(Backend):
    plugin = core_plugin("prometheus", "Prometheus", "prometheus_logo.svg")
    served = True

    def check_route(self, role: str | None, method: str, path: str) -> None:
        """The plugin's routes on the decoded, cleaned path; writes no route lists are refused."""
        if role is None:
            return
        cleaned = clean_path(unquote(path))
        for route_method, route_path, minimum in ROUTES:
            if route_method in ("", "*", method) and cleaned.startswith(route_path):
                if _ROLE_RANK.get(role, 0) < _ROLE_RANK[minimum]:
                    raise route_denied()
                return
        refuse_unlisted_writes("prometheus", method)

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """An instant query `1+1` at t=4s with the configured method, as Grafana's promlib does."""
        form = "query=1%2B1&time=4"
        try:
            if str(ctx.ds.options.get("httpMethod", "POST")).upper() == "GET":
                answer = await ctx.http.fetch("GET", "api/v1/query", form, limit=1 << 20)
            else:
                answer = await ctx.http.fetch(
                    "POST", "api/v1/query", headers=[("Content-Type", "application/x-www-form-urlencoded")],
                    body=form.encode(), limit=1 << 20)
        except UpstreamError as error:
            return HealthResult(status="ERROR", message=f"{_describe(error)}{_FAILED}")
        try:
            body: Any = msgspec.json.decode(answer.body)
        except (msgspec.DecodeError, RecursionError):
            body = {}
        if answer.status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            error_text = body.get("error") if isinstance(body, dict) else None
            return HealthResult(status="ERROR", message=f"{error_text or f'HTTP {answer.status}'}{_FAILED}")
        return HealthResult(
            details={"application": "Prometheus", "features": {"rulerApiEnabled": False}},
            message="Successfully queried the Prometheus API.", status="OK",
        )

    def query_timeout(self, ctx: Context) -> float:
        """jsonData.queryTimeout (a duration, `60s` when unset), as promlib bounds its queries."""
        return Settings.of(ctx).timeout_seconds

    async def query(self, ctx: Context, queries: list[DataQuery]) -> dict[str, DataResponse]:
        """Every query at once (each HTTP call under ctx.slot()); each refId gets frames or its own error."""
        settings = Settings.of(ctx)
        if len(queries) == 1:  # the common case: no task of its own
            return {queries[0].ref_id: await _run_query(ctx, settings, queries[0])}
        answers = await asyncio.gather(*(_run_query(ctx, settings, query) for query in queries))
        return {query.ref_id: answer for query, answer in zip(queries, answers, strict=True)}

    async def call_resource(self, ctx: Context, request: ResourceRequest) -> Answer:
        """api/v1/... with the caller's method, query and body; other paths are not handled.

        X-Grafana-Cache: <value> asks for the answer to carry `Cache-Control: <value>` (the cache level setting).
        """
        if not request.path.startswith("api/v1/"):
            raise NotImplementedByBackend
        if request.method not in ("GET", "POST"):
            raise MethodNotAllowed("GET, POST")  # Grafana's resource client takes no other method
        answer = await pass_through(ctx, request, request.path)
        cache = next((value for name, value in request.headers if name.lower() == "x-grafana-cache"), "")
        if cache:
            answer.headers = [(name, value) for name, value in answer.headers
                              if name.lower() not in ("cache-control", "x-grafana-cache")]
            answer.headers += [("X-Grafana-Cache", "y"), ("Cache-Control", cache)]
        return answer


class HostedPrometheus(Backend):
    """Amazon and Azure managed Prometheus: proxied with Prometheus' write refusal; no backend in gateway."""

    def __init__(self, ds_type: str) -> None:
        self.type = ds_type

    def check_route(self, role: str | None, method: str, path: str) -> None:
        """Writes are refused."""
        if role is not None:
            refuse_unlisted_writes(self.type, method)


def _describe(error: UpstreamError) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# -- the query model and the data source's settings (spec-query §12.1) -----------------------------------

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # Go's int64: a larger number is refused


class PromQuery(msgspec.Struct, rename="camel", kw_only=True):
    """The part of a Prometheus query model the backend reads; the rest (format, editorMode, ...) is the
    frontend's."""

    expr: str = ""
    range: bool = False
    instant: bool = False
    exemplar: bool = False
    legend_format: str = ""
    interval: str = ""
    interval_factor: Int64 = 1
    utc_offset_sec: Int64 = 0


_decode_query = msgspec.json.Decoder(PromQuery).decode
DEFAULT_SCRAPE_MS = 15_000.0


class Settings(msgspec.Struct, frozen=True):
    """jsonData as the query path reads it: method, scrape interval (and in ms, or why it cannot be read),
    query timeout, extra URL parameters, and whether to ask for query statistics. Made by from_options, which
    derives the scrape fields."""

    method: str
    time_interval: str
    query_timeout: str
    timeout_seconds: float
    custom_parameters: str
    stats: bool = False
    scrape_ms: float = DEFAULT_SCRAPE_MS
    scrape_error: str = ""

    @classmethod
    def of(cls, ctx: Context) -> Settings:
        """The settings of the context's data source, read once per data source version."""
        return ctx.settings(cls._read)

    @classmethod
    def _read(cls, ctx: Context) -> Settings:
        return cls.from_options(ctx.ds.options)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Settings:
        """jsonData read; odd values fall back to Grafana's defaults, an unreadable scrape interval fails each
        query (as in promlib)."""
        method = options.get("httpMethod")
        method = "GET" if isinstance(method, str) and method.upper() == "GET" else "POST"
        time_interval = options.get("timeInterval")
        time_interval = time_interval if isinstance(time_interval, str) else ""
        scrape_ms, scrape_error = DEFAULT_SCRAPE_MS, ""
        if time_interval:
            try:
                scrape_ms = parse_interval_string(time_interval)
            except ValueError as error:
                scrape_error = str(error)
        query_timeout = options.get("queryTimeout")
        query_timeout = query_timeout if isinstance(query_timeout, str) else ""
        try:
            seconds = parse_interval_string(query_timeout) / 1000 if query_timeout else 60.0
        except ValueError:
            seconds = 60.0
        custom = options.get("customQueryParameters")
        return cls(method, time_interval, query_timeout, seconds if seconds > 0 else 60.0,
                   custom.lstrip("?&") if isinstance(custom, str) else "", options.get("queryStatsEnabled") is True,
                   scrape_ms, scrape_error)


# -- step and variables (spec-query §12.2) ----------------------------------------------------------------

_INTERVAL_VARIABLES = frozenset({"$__interval", "${__interval}", "$__interval_ms", "${__interval_ms}",
                                 "$__rate_interval", "${__rate_interval}", "$__rate_interval_ms",
                                 "${__rate_interval_ms}"})
_RATE_VARIABLES = frozenset({"$__rate_interval", "${__rate_interval}"})
DEFAULT_RESOLUTION = 1500
SAFE_RESOLUTION = 11_000


class Plan(msgspec.Struct, frozen=True):
    """One query made ready to send: the interpolated expression, the step and the aligned range (ms)."""

    ref_id: str
    query: PromQuery
    expr: str
    step_ms: float
    start_ms: float
    end_ms: float
    to_ms: int


def plan(query: DataQuery, settings: Settings) -> Plan:
    """Step, rate interval and variables as promlib's models.Parse computes them; ValueError for a bad model
    or interval."""
    try:
        prom = _decode_query(query.model)
    except msgspec.ValidationError:  # nulls stand for defaults: read again without them (as Go's decoder does)
        model = {key: value for key, value in msgspec.json.decode(query.model).items() if value is not None}
        try:
            prom = msgspec.convert(model, PromQuery)
        except msgspec.ValidationError as error:
            raise ValueError(f"error unmarshaling query: {error}") from None
    if len(prom.legend_format) > MAX_LEGEND_FORMAT:
        raise ValueError(f"legendFormat is longer than {MAX_LEGEND_FORMAT} characters")
    if not prom.range and not prom.instant:
        prom.range = True
    interval = "" if prom.interval in ("0s", "") or prom.interval in _INTERVAL_VARIABLES else prom.interval
    if settings.scrape_error:
        raise ValueError(settings.scrape_error)
    scrape_ms = settings.scrape_ms
    if not interval and query.interval_ms != 0:
        min_ms = float(query.interval_ms)
    elif interval:
        min_ms = parse_interval_string(interval)
    else:
        min_ms = scrape_ms
    range_ms = query.time_range.duration_ms
    resolution = query.max_data_points or DEFAULT_RESOLUTION
    calculated_ns = range_ms * 1_000_000 // resolution  # Go divides integer nanoseconds
    calculated = min_ms if calculated_ns / 1e6 < min_ms else round_interval(calculated_ns / 1e6)
    adjusted = max(calculated, round_interval(range_ms * 1_000_000 // SAFE_RESOLUTION / 1e6))
    if prom.interval in _RATE_VARIABLES:
        step = max(adjusted + scrape_ms, 4 * scrape_ms)
        rate_ms = step
    else:
        step = float(round(adjusted * (prom.interval_factor or 1)))
        min_step = prom.interval
        if min_step in ("$__interval", "${__interval}"):
            min_step = go_duration_string(step)
        usable = min_step not in ("", "0s") and min_step not in _INTERVAL_VARIABLES
        min_step_ms = parse_interval_string(min_step) if usable else scrape_ms
        rate_ms = max(query.interval_ms + min_step_ms, 4 * min_step_ms)
    if step <= 0:
        raise ValueError("the step must be positive")
    expr = prom.expr
    if "$" in expr:
        range_s = round(range_ms / 1000)
        values = {
            "interval_ms": str(int(step)), "interval": format_interval(step), "range_ms": str(range_ms),
            "range_s": str(range_s), "range": f"{range_s}s", "rate_interval_ms": str(int(rate_ms)),
            "rate_interval": go_duration_string(rate_ms),
        }
        for name, value in values.items():  # the _ms and _s variants before their prefixes
            expr = expr.replace(f"$__{name}", value).replace(f"${{__{name}}}", value)
    offset = prom.utc_offset_sec * 1000
    start = math.floor((query.time_range.from_ms + offset) / step) * step - offset
    end = math.floor((query.time_range.to_ms + offset) / step) * step - offset
    return Plan(query.ref_id, prom, expr, step, start, end, query.time_range.to_ms)


def _seconds(ms: float) -> str:
    """Epoch or step seconds as Go's FormatFloat(x, 'f', -1) writes them: `1700000000`, `0.5`."""
    if ms == int(ms) and int(ms) % 1000 == 0:
        return str(int(ms) // 1000)
    return f"{ms / 1000:.9f}".rstrip("0").rstrip(".")


# -- HTTP calls (spec-query §12.3) ------------------------------------------------------------------------

_FORM = (("Content-Type", "application/x-www-form-urlencoded"),)
_NOT_DOWNSTREAM = frozenset({405, 406, 412, 413, 414, 416, 417, 426, 431, 501})
_BODY_LIMIT = 256 << 20


def _error_source(status: int) -> str:
    return "downstream" if 400 <= status < 600 and status not in _NOT_DOWNSTREAM else "plugin"


async def _call(ctx: Context, settings: Settings, path: str, params: list[tuple[str, str]]) -> Answer:
    """One call with the configured method; form parameters sorted as Go's url.Values encodes them."""
    if settings.query_timeout:
        params.append(("timeout", settings.query_timeout))
    if settings.stats and not path.endswith("exemplars"):
        params.append(("stats", "all"))
    form = encode_form(params)
    limit = ctx.config.dataproxy.response_limit or _BODY_LIMIT
    async with ctx.slot():
        if settings.method == "GET":
            query = form + ("&" + settings.custom_parameters if settings.custom_parameters else "")
            return await ctx.http.fetch("GET", path, query, limit=limit)
        return await ctx.http.fetch("POST", path, settings.custom_parameters, _FORM, form.encode(), limit=limit)


async def _run_query(ctx: Context, settings: Settings, query: DataQuery) -> DataResponse:
    """One refId: instant, range and exemplar calls at once; frames concatenated in that order; an exemplar
    failure is only logged, as promlib does."""
    try:
        prepared = plan(query, settings)
    except (ValueError, OverflowError) as invalid:
        text = str(invalid)
        if not text.startswith("error unmarshaling query"):
            text = f"invalid query: {text}"
        return DataResponse(error=text, status=400, error_source="downstream")
    kinds = [kind for kind, wanted in (("instant", prepared.query.instant), ("range", prepared.query.range),
                                       ("exemplar", prepared.query.exemplar)) if wanted]
    if len(kinds) == 1:
        results = [await _sub(ctx, settings, prepared, kinds[0])]
    else:
        results = await asyncio.gather(*(_sub(ctx, settings, prepared, kind) for kind in kinds))
    frames: list[Frame] = []
    error: DataResponse | None = None
    for kind, result in zip(kinds, results, strict=True):
        if result.error is not None:
            if kind == "exemplar":
                log.warning("exemplar query of data source %s failed: %s", ctx.ds.uid, result.error)
                continue
            if error is None:
                error = result
            else:  # Go joins the errors and keeps the last status
                error = DataResponse(error=f"{error.error} {result.error}", status=result.status,
                                     error_source=result.error_source)
        frames.extend(result.frames or ())
    if error is not None:
        return DataResponse(frames or None, error=error.error, status=error.status, error_source=error.error_source)
    return DataResponse(frames)


async def _sub(ctx: Context, settings: Settings, prepared: Plan, kind: str) -> DataResponse:
    """One HTTP call of a query and its frames; transport failures become this refId's 502/504."""
    answer = await _fetch(ctx, settings, prepared, kind)
    return answer if isinstance(answer, DataResponse) else respond(answer.status, answer.body, prepared)


async def fetch_range(ctx: Context, settings: Settings, prepared: Plan) -> tuple[DataResponse, int]:
    """The range call of a prepared query (its start and end as given), read by the converter but not yet
    finished for the query (`finish`), and the size of the answer's body; errors answered as `_sub` does."""
    answer = await _fetch(ctx, settings, prepared, "range")
    if isinstance(answer, DataResponse):
        return answer, 0
    if not 200 <= answer.status < 300:
        return _status_error(answer.status, answer.body), len(answer.body)
    return read_result(answer.body), len(answer.body)


async def _fetch(ctx: Context, settings: Settings, prepared: Plan, kind: str) -> Answer | DataResponse:
    step = _seconds(prepared.step_ms)
    if kind == "instant":
        path, params = "api/v1/query", [("query", prepared.expr), ("time", _seconds(prepared.to_ms))]
    else:
        path = "api/v1/query_range" if kind == "range" else "api/v1/query_exemplars"
        params = [("query", prepared.expr), ("start", _seconds(prepared.start_ms)), ("end", _seconds(prepared.end_ms))]
        if kind == "range":
            params.append(("step", step))
    try:
        return await _call(ctx, settings, path, params)
    except (UpstreamError, GatewayError) as failure:
        known = failure if isinstance(failure, GatewayError) else translate(failure) or UpstreamUnavailable()
        return DataResponse(error=known.message, status=known.status,
                            error_source="downstream" if known.status in (502, 504) else "")


def respond(status: int, body: bytes, prepared: Plan) -> DataResponse:
    """promlib's parseResponse: the converter's frames named, configured and described for the query, and
    exemplar frames (whichever call brought them) sampled into one."""
    if not 200 <= status < 300:
        return _status_error(status, body)
    return finish(read_result(body), prepared)


def finish(result: DataResponse, prepared: Plan) -> DataResponse:
    """The second half of `respond`: the converter's result made the query's answer."""
    if result.error is not None:
        return result
    frames = result.frames or []
    if not frames and not prepared.query.exemplar:
        frames = [Frame(meta=meta())]  # a frame without fields, to carry the meta
    step_ms = _number(prepared.step_ms)
    template = legend_parts(prepared.query.legend_format)  # read once; each series only fills it in
    for index, frame in enumerate(frames):
        if frame.meta is None:
            frame.meta = meta()
        if len(frame.fields) >= 2:
            time_field, value_field = frame.fields[0], frame.fields[1]
            time_field.config = {"interval": step_ms}
            name = legend(template, value_field.labels or {}, prepared.expr)
            if name:
                value_field.config = {"displayNameFromDS": name}
            if value_field.labels and "__name__" in value_field.labels:
                value_field.name = value_field.labels["__name__"]
        if index == 0:
            frame.meta.executed_query_string = f"Expr: {prepared.expr}\nStep: {go_duration_string(prepared.step_ms)}"
            custom = frame.meta.custom if isinstance(frame.meta.custom, dict) else {}
            frame.meta.custom = {"calculatedMinStep": step_ms, **custom}
    if any(_is_exemplar(frame) for frame in frames):
        frames = sample_exemplars(frames, prepared.step_ms)
    return DataResponse(frames)


def _is_exemplar(frame: Frame) -> bool:
    custom = frame.meta.custom if frame.meta is not None else None
    return isinstance(custom, dict) and custom.get("resultType") == "exemplar"


def _number(ms: float) -> float | int:
    return int(ms) if ms == int(ms) else ms


class _ErrorBody(msgspec.Struct):
    status: str = ""
    error_type: str = msgspec.field(default="", name="errorType")
    error: str = ""


def _status_error(status: int, body: bytes) -> DataResponse:
    """A non-2xx answer: Prometheus' own error body as `<errorType>: <error>`, anything else quoted."""
    try:
        parsed = msgspec.json.decode(body, type=_ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        parsed = _ErrorBody()
    if parsed.status == "error":
        text = f"{parsed.error_type}: {parsed.error}"
    else:
        text = f"unexpected response with status code {status}: {body[:1024].decode(errors='replace')}"
    return DataResponse(error=text, status=status, error_source=_error_source(status))


_LEGEND = re.compile(r"\{\{\s*(.+?)\s*\}\}")
# the template is matched once per query, and the regex backtracks: its length is bounded (Grafana's is not)
MAX_LEGEND_FORMAT = 4096


def legend_parts(template: str) -> list[str] | str:
    """A legendFormat read once: `__auto` and `""` as they are, else literal text and label names alternating."""
    if template in ("__auto", ""):
        return template
    return _LEGEND.split(template)


def legend(template: list[str] | str, labels: dict[str, str], expr: str) -> str:
    """promlib's getName: `__auto` leaves labelled series to the frontend, a template fills `{{label}}`, no
    template writes `name{k="v", ...}`; `{}` becomes the expression."""
    if template == "__auto":
        name = "" if labels else "{}"
    elif isinstance(template, list):
        name = "".join(part if index % 2 == 0 else labels.get(part, "") for index, part in enumerate(template))
    else:
        name = _series_name(labels)
    return expr if name == "{}" else name


def _series_name(labels: dict[str, str]) -> str:
    metric = labels.get("__name__", "")
    pairs = sorted(f"{key}={go_quote(value)}" for key, value in labels.items() if key != "__name__")
    if not pairs:
        return metric or "{}"
    return f"{metric}{{{', '.join(pairs)}}}"


# -- Prometheus answers -> frames (converter/prom.go) ------------------------------------------------------

class _Histogram(msgspec.Struct):
    buckets: list[tuple[int, float, float, float]] = []


class _Series(msgspec.Struct):
    metric: dict[str, str] | None = None
    values: list[tuple[int | float, float]] | None = None  # whole-second times stay ints (see _times)
    value: tuple[int | float, float] | None = None
    histograms: list[tuple[float, _Histogram]] | None = None
    histogram: tuple[float, _Histogram] | None = None


class _Matrix(msgspec.Struct, tag_field="resultType", tag="matrix"):
    result: list[_Series] = []
    stats: Any = None


class _Vector(msgspec.Struct, tag_field="resultType", tag="vector"):
    result: list[_Series] = []
    stats: Any = None


class _Scalar(msgspec.Struct, tag_field="resultType", tag="scalar"):
    result: tuple[float, float]
    stats: Any = None


class _String(msgspec.Struct, tag_field="resultType", tag="string"):
    result: tuple[float, str]
    stats: Any = None


class _Exemplar(msgspec.Struct):
    value: float
    timestamp: float
    labels: dict[str, str] = {}


class _ExemplarSeries(msgspec.Struct, rename="camel"):
    exemplars: list[_Exemplar]  # required: a /api/v1/series item has none and reads as label sets
    series_labels: dict[str, str] = {}


_Data = _Matrix | _Vector | _Scalar | _String


class _Body(msgspec.Struct, rename="camel"):
    status: str = "unknown"
    data: _Data | list[_ExemplarSeries] | None = None
    error_type: str = ""
    error: str = ""
    warnings: list[str] | None = None
    infos: list[str] | None = None


_decode_body = msgspec.json.Decoder(_Body, strict=False).decode
_THOUSAND = 1000.0
_PAUSE_GC_AFTER = 1 << 20
_MAX_MS = 2**63  # epoch milliseconds are an int64 in a frame (as Loki's converter checks)
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


def _times(seconds: list[int | float]) -> list[int]:
    """Prometheus' seconds as epoch milliseconds (rounded); OverflowError past an int64 (MessagePack cannot
    write such a number, and JSON would carry a time no client reads). Whole seconds, as step-aligned samples
    mostly are, are decoded as ints and multiplied exactly, at a third of the cost of rounding floats."""
    if type(sum(seconds)) is int:  # every one an int (a float anywhere makes the sum a float)
        times = cast(list[int], [second * 1000 for second in seconds])
    else:
        times = list(map(round, map(_THOUSAND.__mul__, seconds)))
    if times and (max(times) >= _MAX_MS or min(times) < -_MAX_MS):
        raise OverflowError("sample time outside the range of a time.Time")
    return times


def read_result(body: bytes) -> DataResponse:
    """converter.ReadPrometheusStyleResult: a Prometheus API body as frames, an error body as an error.

    A large answer is read with the cyclic GC paused: decoding makes a tuple per sample, and collections
    that scan the young tuples again and again, to find nothing to free, cost about a sixth of a 1e6-sample
    conversion. The pause is the process's (the GC has no other switch): it lasts this synchronous read only."""
    if len(body) < _PAUSE_GC_AFTER or not gc.isenabled():
        return _read_result(body)
    gc.disable()
    try:
        return _read_result(body)
    finally:
        gc.enable()


def _read_result(body: bytes) -> DataResponse:
    """read_result itself: the fast path decodes straight into typed Structs (msgspec turns sample strings
    into floats in C; it only refuses `"+Inf"`, so that exact sample form is rewritten first, label values
    never match it). A body the fast path refuses is read exactly, value by value.
    """
    try:
        parsed: _Body | list[Frame] = _decode_body(body.replace(b',"+Inf"]', b',"Inf"]') if b'"+Inf"' in body
                                                   else body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        try:
            parsed = _exact(body)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, OverflowError, RecursionError) as error:
            return DataResponse(error=f"response from prometheus couldn't be parsed: {error}", status=502,
                                error_source="downstream")
    if isinstance(parsed, list):
        return DataResponse(parsed)
    if parsed.status == "error":
        return DataResponse(error=f"{parsed.error_type}: {parsed.error}", status=400, error_source="downstream")
    try:
        frames = _frames(parsed.data)
    except (OverflowError, ValueError) as error:  # a sample time past an int64 of ms, or NaN or ±Inf
        return DataResponse(error=f"response from prometheus couldn't be parsed: {error}", status=502,
                            error_source="downstream")
    notices = [Notice("warning", text) for text in parsed.warnings or ()]
    notices += [Notice("info", text) for text in parsed.infos or ()]
    if notices:
        if not frames:
            frames.append(Frame(name="Warnings"))
        for frame in frames:
            if frame.meta is None:
                frame.meta = meta()
            frame.meta.notices = list(notices)
    return DataResponse(frames)


def _frames(data: _Data | list[_ExemplarSeries] | None) -> list[Frame]:
    if data is None:
        return []
    if isinstance(data, list):
        return [_exemplar_frame(series) for series in data]
    if isinstance(data, _Scalar | _String):
        time, value = data.result
        item_type = "float64" if isinstance(data, _Scalar) else "string"
        frame_meta = meta("numeric-multi", (0, 1), custom={"resultType": "scalar"}) if isinstance(data, _Scalar) \
            else meta("timeseries-multi", custom={"resultType": "string"})
        frames = [Frame([Field("Time", "time.Time", _times([time])), Field("Value", item_type, [value], labels={})],
                        meta=frame_meta)]
    else:
        result_type = "matrix" if isinstance(data, _Matrix) else "vector"
        frames = [_series_frame(series, result_type) for series in data.result]
    if data.stats is not None:
        _attach_stats(frames, data.stats)
    return frames


def _series_frame(series: _Series, result_type: str) -> Frame:
    if series.histograms is not None or series.histogram is not None:
        return _heatmap(series)
    pairs: Sequence[tuple[int | float, float]] = series.values if series.values is not None else \
        [series.value] if series.value is not None else ()
    # itemgetter over the pairs, in C; zip(*pairs) would pass a million arguments
    times, values = list(map(_FIRST, pairs)), list(map(_SECOND, pairs))
    return series_frame(series.metric, _times(times), values, result_type)


def series_frame(labels: dict[str, str] | None, times: list[int], values: list[float],
                 result_type: str = "matrix") -> Frame:
    """One matrix or vector series as the converter frames it (times in epoch ms)."""
    frame_type = "timeseries-multi" if result_type == "matrix" else "numeric-multi"
    return Frame([Field("Time", "time.Time", times), Field("Value", "float64", values, labels=labels)],
                 meta=meta(frame_type, (0, 1), custom={"resultType": result_type}))


def _heatmap(series: _Series) -> Frame:
    """A native histogram series as heatmap cells: one row per bucket of each sample."""
    samples = series.histograms or []
    if series.histogram is not None:
        samples = [*samples, series.histogram]
    times: list[int] = []
    layouts: list[int] = []
    lows: list[float] = []
    highs: list[float] = []
    counts: list[float] = []
    for time, histogram in samples:
        if not histogram.buckets:
            continue
        layout, low, high, count = zip(*histogram.buckets, strict=True)
        times.extend(_times([time]) * len(layout))
        layouts.extend(layout)
        lows.extend(low)
        highs.extend(high)
        counts.extend(count)
    labels = series.metric
    return Frame([Field("xMax", "time.Time", times, labels=labels), Field("yMin", "float64", lows, labels=labels),
                  Field("yMax", "float64", highs, labels=labels), Field("count", "float64", counts, labels=labels),
                  Field("yLayout", "int8", layouts, labels=labels)], meta=meta("heatmap-cells"))


def _exemplar_frame(series: _ExemplarSeries) -> Frame:
    """One series' exemplars: Time, Value (series labels), then a string field per exemplar label name."""
    columns: dict[str, list[str]] = {}
    for row, item in enumerate(series.exemplars):
        for name, value in item.labels.items():
            column = columns.get(name)
            if column is None:
                column = columns[name] = [""] * row
            column.append(value)
        for column in columns.values():
            if len(column) <= row:
                column.append("")
    exemplars = series.exemplars
    fields = [Field("Time", "time.Time", _times([item.timestamp for item in exemplars])),
              Field("Value", "float64", [item.value for item in exemplars], labels=series.series_labels)]
    fields += [Field(name, "string", column) for name, column in columns.items()]
    return Frame(fields, meta=meta(custom={"resultType": "exemplar"}))


def _attach_stats(frames: list[Frame], stats: Any) -> None:
    """data.stats on the first frame: whole under meta.custom.stats, the queryable samples as a stat."""
    if not frames:
        frames.append(Frame(name="Query statistics"))
    frame = frames[0]
    if frame.meta is None:
        frame.meta = meta()
    custom = frame.meta.custom if isinstance(frame.meta.custom, dict) else {}
    frame.meta.custom = {**custom, "stats": stats}
    samples = stats.get("samples") if isinstance(stats, dict) else None
    total = samples.get("totalQueryableSamples") if isinstance(samples, dict) else None
    if isinstance(total, int | float) and not isinstance(total, bool):
        frame.meta.stats = [*(frame.meta.stats or ()), {"displayName": "Total queryable samples", "value": total}]


def _float(value: Any) -> float:
    """strconv.ParseFloat for a sample string (Python's float takes `+Inf`, `NaN`; hex floats too)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return float.fromhex(value)
    raise TypeError("a sample value must be a string")


def _exact(body: bytes) -> _Body | list[Frame]:
    """The slow, exact reading: the body as plain JSON, sample strings parsed one by one, then typed."""
    document = msgspec.json.decode(body)
    if not isinstance(document, dict):
        raise ValueError("the body is not a JSON object")
    data = document.get("data")
    if isinstance(data, list) and data and all(isinstance(item, str) for item in data):
        return [Frame([Field("Value", "string", list(data))])]
    if isinstance(data, list) and data and not any(isinstance(item, dict) and "exemplars" in item for item in data):
        return [_label_sets(data)]
    if isinstance(data, list):
        for series in data:
            for item in series.get("exemplars") or ():
                item["value"] = _float(item["value"])
    elif isinstance(data, dict):
        result = data.get("result")
        if data.get("resultType") in ("matrix", "vector") and isinstance(result, list):
            for series in result:
                if series.get("values") is not None:
                    series["values"] = [(time, _float(value)) for time, value in series["values"]]
                if series.get("value") is not None:
                    series["value"] = (series["value"][0], _float(series["value"][1]))
                for sample in [*(series.get("histograms") or ()), *([series["histogram"]] if series.get(
                        "histogram") else [])]:
                    sample[1]["buckets"] = [(layout, _float(low), _float(high), _float(count))
                                            for layout, low, high, count in sample[1].get("buckets") or ()]
        elif data.get("resultType") == "scalar" and isinstance(result, list) and len(result) == 2:
            data["result"] = (result[0], _float(result[1]))
        elif data.get("resultType") not in ("matrix", "vector", "scalar", "string"):
            raise ValueError(f"unknown result type: {data.get('resultType')}")
    return msgspec.convert(document, _Body, strict=False)


def _label_sets(data: list[Any]) -> Frame:
    """/api/v1/series: one string field per label name, in the order names first appear."""
    columns: dict[str, list[str]] = {}
    for row, item in enumerate(data):
        for name, value in (item.items() if isinstance(item, dict) else ()):
            column = columns.get(name)
            if column is None:
                column = columns[name] = [""] * row
            column.append(value if isinstance(value, str) else msgspec.json.encode(value).decode())
        for column in columns.values():
            column.extend([""] * (row + 1 - len(column)))
    return Frame([Field(name, "string", column) for name, column in columns.items()])


# -- exemplars (querydata/exemplar) --------------------------------------------------------------------------

def sample_exemplars(frames: list[Frame], step_ms: float) -> list[Frame]:
    """The standard-deviation sampler over the exemplar frames, merged into one `exemplar` frame after the
    other frames: per step bucket the highest value, then each value more than two standard deviations (of
    all values) below the last kept one. The merged frame takes the meta of the last exemplar frame."""
    rows: list[tuple[int, float, dict[str, str]]] = []
    names: set[str] = set()
    kept_frames: list[Frame] = []
    last_meta = None
    for frame in frames:
        if not _is_exemplar(frame) or len(frame.fields) < 2:
            kept_frames.append(frame)
            continue
        last_meta = frame.meta
        series = frame.fields[1].labels or {}
        names.update(series)
        extra = frame.fields[2:]
        names.update(field.name for field in extra)
        for row, (time, value) in enumerate(zip(frame.fields[0].values, frame.fields[1].values, strict=True)):
            labels = dict(series)
            labels.update((field.name, field.values[row]) for field in extra)
            rows.append((time, value, labels))
    if not rows:
        return kept_frames
    deviation = _stddev([value for _, value, _ in rows])
    buckets: dict[int, list[tuple[int, float, dict[str, str]]]] = {}
    step = step_ms or 1
    for item in rows:
        buckets.setdefault(math.floor(item[0] / step), []).append(item)
    kept: list[tuple[int, float, dict[str, str]]] = []
    for bucket in buckets.values():
        bucket.sort(key=lambda item: -item[1])  # stable: equal values keep their order
        sampled = [bucket[0]]
        for item in bucket[1:]:
            if deviation != 0.0 and sampled[-1][1] - item[1] > deviation * 2.0:
                sampled.append(item)
        kept.extend(sampled)
    kept.sort(key=lambda item: item[0])
    fields = [Field("Time", "time.Time", [time for time, _, _ in kept]),
              Field("Value", "float64", [value for _, value, _ in kept])]
    fields += [Field(name, "string", [labels.get(name, "") for _, _, labels in kept]) for name in sorted(names)]
    return [*kept_frames, Frame(fields, name="exemplar", meta=last_meta)]


def _stddev(values: list[float]) -> float:
    """Welford's running sample standard deviation, as the Go sampler accumulates it."""
    count, mean, m2 = 0, 0.0, 0.0
    for value in values:
        count += 1
        delta = value - mean
        mean += delta / count
        m2 += delta * (value - mean)
    return math.sqrt(m2 / (count - 1)) if count >= 2 else 0.0

