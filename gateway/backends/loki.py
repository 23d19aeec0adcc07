"""Loki: proxied without writes, health asks for its labels, read-only resources pass through, and queries.

A query (spec-query §14) is read as Grafana's pkg/tsdb/loki reads it (step, variables, range or instant),
sent as one GET through the data source's client, and its answer decoded into typed Structs, turned into the
converter's frames (Grafana's converter.ReadPrometheusStyleResult, checked against its golden files) and then
into Grafana's Loki frames (frame.go: legend, step, query string, stats, log ids).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from itertools import repeat
from operator import attrgetter, floordiv, mod
from typing import Any

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
from gateway.errors import GatewayError, MethodNotAllowed, go_quote, translate
from gateway.frames import DataResponse, Field, Frame, Notice, meta
from gateway.gtime import format_interval, go_duration_string, parse_interval_string
from gateway.http.client import Answer
from gateway.http.form import encode_form
from gateway.http.pool import UpstreamError

_OK = "Data source successfully connected."
_FAILED = "Unable to connect with Loki. Please check the server logs for more details."
# the read endpoints Grafana's Loki backend forwards (pkg/tsdb/loki callResource), under loki/api/v1/
_ENDPOINTS = frozenset({"labels", "series", "index/stats", "index/volume", "patterns", "detected_labels",
                        "detected_fields"})
_ENDPOINT_PREFIXES = ("label/", "detected_field/")


class Loki(Backend):
    plugin = core_plugin("loki", "Loki", "loki_icon.svg")
    served = True

    def check_route(self, role: str | None, method: str, path: str) -> None:
        """No push or delete through gateway."""
        if role is not None:
            refuse_unlisted_writes("loki", method)

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """GET loki/api/v1/labels must answer status success."""
        try:
            answer = await ctx.http.fetch("GET", "loki/api/v1/labels", limit=4 << 20)
            body: Any = msgspec.json.decode(answer.body)
        except (UpstreamError, msgspec.DecodeError, RecursionError):
            return HealthResult(status="ERROR", message=_FAILED)
        if answer.status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            return HealthResult(status="ERROR", message=_FAILED)
        return HealthResult(message=_OK, status="OK")

    async def call_resource(self, ctx: Context, request: ResourceRequest) -> Answer:
        """GET labels, label/<name>/values, series, ... (also as api/v1/... or loki/api/v1/...) go to
        loki/api/v1/<endpoint>; other methods and paths never reach Loki (no push, no delete).
        """
        if request.method != "GET":
            raise MethodNotAllowed("GET")
        endpoint = request.path
        for prefix in ("loki/api/v1/", "api/v1/"):
            if endpoint.startswith(prefix):
                endpoint = endpoint[len(prefix):]
                break
        if endpoint not in _ENDPOINTS and not endpoint.startswith(_ENDPOINT_PREFIXES):
            raise NotImplementedByBackend
        return await pass_through(ctx, request, "loki/api/v1/" + endpoint)

    async def query(self, ctx: Context, queries: list[DataQuery]) -> dict[str, DataResponse]:
        """Every query of the call at once, each under ctx.slot(); a model Grafana refuses fails the whole
        call with a 400 (Grafana fails the call too), before anything is sent."""
        parsed = [parse_query(query) for query in queries]
        answers = await asyncio.gather(*(run_query(ctx, query) for query in parsed))
        return {query.ref_id: answer for query, answer in zip(parsed, answers, strict=True)}


# -- queries (POST /api/ds/query) ------------------------------------------------------------------------

_BODY_LIMIT = 128 << 20  # a bound no sane Loki answer reaches ([dataproxy] response_limit, when set, wins)
_ERROR_TEXT_LIMIT = 4096  # characters of an error body kept in the per-refId error
_SUPPORTING = {"logsVolume": "logvolhist", "logsSample": "logsample", "dataSample": "datasample",
               "infiniteScroll": "infinitescroll"}
# statuses the SDK's ErrorSourceFromHTTPStatus blames on the plugin; every other failing status is downstream
_PLUGIN_STATUSES = frozenset({405, 406, 412, 413, 431, 414, 417, 426, 416, 501})
_LEGEND = re.compile(r"\{\{\s*(.+?)\s*\}\}")
_NS_PER_MS = 1_000_000
_BIG_FRAMES = 2048  # rows above which frames are adjusted in a worker thread


class LokiQueryModel(msgspec.Struct, rename="camel"):
    """The query JSON fields Grafana's Loki backend reads (pkg/tsdb/loki QueryJSONModel); null is absent."""

    expr: str | None = None
    query_type: str | None = None
    max_lines: int | None = None
    legend_format: str | None = None
    step: str | None = None
    resolution: int | None = None
    direction: str | None = None
    supporting_query_type: str | None = None


class LokiQuery(msgspec.Struct, frozen=True):
    """One query ready to send: interpolated expression, range or instant, step in nanoseconds."""

    ref_id: str
    expr: str
    instant: bool
    direction: str
    step_ns: int
    max_lines: int
    legend_format: str
    start_ns: int
    end_ns: int
    source: str  # the X-Query-Tags Source value, or ""

    @property
    def step_ms(self) -> int:
        """The step as Go's Duration.Milliseconds() (truncated)."""
        return _go_div(self.step_ns, _NS_PER_MS)

    def path_and_query(self) -> tuple[str, str]:
        """The Loki API path and query string, keys sorted as Go's url.Values.Encode writes them."""
        params: dict[str, str] = {"query": self.expr, "direction": self.direction}
        if self.max_lines > 0:
            params["limit"] = str(self.max_lines)
        if self.instant:
            params["time"] = str(self.end_ns)
            path = "loki/api/v1/query"
        else:
            params.update(start=str(self.start_ns), end=str(self.end_ns), step=f"{self.step_ms}ms")
            path = "loki/api/v1/query_range"
        return path, encode_form(params.items())


def _go_div(numerator: int, denominator: int) -> int:
    """Go's integer division (truncates toward zero)."""
    quotient = abs(numerator) // denominator
    return quotient if numerator >= 0 else -quotient


def calculate_step_ns(interval_ms: int, range_ms: int, resolution: int, step: str | None) -> int:
    """The query step (pkg/tsdb/loki step.go): the step string times resolution, else
    max(interval * resolution, range / 11000) rounded up to whole milliseconds."""
    if not step:
        chosen = max(interval_ms * _NS_PER_MS * resolution, _go_div(range_ms * _NS_PER_MS, 11000))
        return math.ceil(chosen / _NS_PER_MS) * _NS_PER_MS
    try:
        return round(parse_interval_string(step) * _NS_PER_MS) * resolution
    except (ValueError, OverflowError):
        raise GatewayError(f"time: invalid duration {go_quote(step)}", status=400) from None


def _round_half_away(value: float) -> int:
    """Go's math.Round."""
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


def interpolate(expr: str, interval_ms: int, range_ms: int, instant: bool, step_ns: int) -> str:
    """$__interval, $__interval_ms, $__range, $__range_s, $__range_ms (also as ${...}) and $__auto, in
    Grafana's order (the _ms forms first, so that $__interval does not eat $__interval_ms)."""
    interval_text = format_interval(interval_ms)
    range_s = str(_round_half_away(range_ms / 1000.0))
    pairs = [("$__interval_ms", str(interval_ms)), ("$__interval", interval_text), ("$__range_ms", str(range_ms)),
             ("$__range_s", range_s), ("$__range", range_s + "s"),
             ("$__auto", range_s + "s" if instant else format_interval(step_ns / _NS_PER_MS)),
             ("${__interval_ms}", str(interval_ms)), ("${__interval}", interval_text),
             ("${__range_ms}", str(range_ms)), ("${__range_s}", range_s), ("${__range}", range_s + "s")]
    for name, value in pairs:
        if name in expr:
            expr = expr.replace(name, value)
    return expr


def parse_query(query: DataQuery) -> LokiQuery:
    """One DataQuery as Grafana's parseQuery reads it; a model Grafana refuses raises a 400 GatewayError."""
    try:
        model = msgspec.json.decode(query.model, type=LokiQueryModel)
    except msgspec.ValidationError as error:
        raise GatewayError(f"failed to parse query model: {error}", status=400) from None
    resolution = model.resolution if model.resolution is not None and (
        1 <= model.resolution <= 5 or model.resolution == 10) else 1
    time_range = query.time_range
    range_ms = time_range.duration_ms
    step_ns = calculate_step_ns(query.interval_ms, range_ms, resolution, model.step)
    # "stream" (live tailing) has no one-shot call in Loki's HTTP API; it is answered as the range it covers
    if model.query_type is None or model.query_type in ("range", "stream"):
        instant = False
    elif model.query_type == "instant":
        instant = True
    else:
        raise GatewayError(f"invalid queryType: {model.query_type}", status=400)
    if model.direction is None or model.direction in ("backward", "scan"):
        direction = "backward"
    elif model.direction == "forward":
        direction = "forward"
    else:
        raise GatewayError(f"invalid queryDirection: {model.direction}", status=400)
    supporting = model.supporting_query_type or ""
    return LokiQuery(
        ref_id=query.ref_id,
        expr=interpolate(model.expr or "", query.interval_ms, range_ms, instant, step_ns),
        instant=instant, direction=direction, step_ns=step_ns, max_lines=model.max_lines or 0,
        legend_format=model.legend_format or "", start_ns=time_range.from_ms * _NS_PER_MS,
        end_ns=time_range.to_ms * _NS_PER_MS, source=_SUPPORTING.get(supporting, supporting),
    )


# -- Loki's answer ---------------------------------------------------------------------------------------

class _Entry(msgspec.Struct, array_like=True):
    """[timestamp in ns as a string, line] (a third element, structured metadata, is ignored)."""

    ts: str
    line: str


class _Stream(msgspec.Struct):
    stream: dict[str, str] = msgspec.field(default_factory=dict)
    values: list[_Entry] = msgspec.field(default_factory=list)


class _Series(msgspec.Struct):
    metric: dict[str, str] = msgspec.field(default_factory=dict)
    values: list[tuple[float, str]] = msgspec.field(default_factory=list)
    value: tuple[float, str] | None = None


class _Data(msgspec.Struct, rename="camel"):
    result_type: str | None = None
    result: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    stats: Any = msgspec.UNSET
    encoding_flags: list[str] = msgspec.field(default_factory=list)


class _Body(msgspec.Struct, rename="camel"):
    status: str = ""
    data: _Data | None = None
    error: str = ""
    error_type: str = ""
    warnings: Any = None
    infos: Any = None


class ConversionError(Exception):
    """Loki's answer could not be read; `source` is the errorSource Grafana gives it."""

    def __init__(self, message: str, source: str = "downstream") -> None:
        super().__init__(message)
        self.source = source


_body_decoder = msgspec.json.Decoder(_Body)
_streams_decoder = msgspec.json.Decoder(list[_Stream])
_series_decoder = msgspec.json.Decoder(list[_Series])
_scalar_decoder = msgspec.json.Decoder(tuple[float, str])


def go_labels_json(labels: dict[str, str]) -> bytes:
    """Labels as Go's jsoniter writes data.Labels: keys sorted, <, > and & (and U+2028/9) escaped."""
    raw = msgspec.json.encode(dict(sorted(labels.items())))
    if b"<" in raw or b">" in raw or b"&" in raw or b"\xe2\x80\xa8" in raw or b"\xe2\x80\xa9" in raw:
        raw = (raw.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
               .replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029"))
    return raw


def _time_from_loki(ts: str) -> int:
    """timeFromLokiString as nanoseconds: a plain integer, else 10 digits of seconds and the rest as ns."""
    if len(ts) < 19 or (len(ts) == 19 and ts[0] == "1"):
        try:
            return _go_int(ts)
        except ValueError:
            pass
    if len(ts) < 10:
        raise ConversionError(f"unexpected time format '{ts}' in response. response may have been truncated")
    try:
        seconds = _go_int(ts[:10])
    except ValueError:
        seconds = 0
    try:
        nanos = _go_int(ts[10:])
    except ValueError:
        nanos = 0
    return seconds * 1_000_000_000 + nanos


def _go_int(text: str) -> int:
    """strconv.ParseInt(text, 10, 64): an optional sign and digits only."""
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(text)
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(text)
    return value


def _stream_frame(streams: list[_Stream]) -> Frame:
    """All streams as one frame: __labels (JSON), Time, Line, TS (the ns timestamp as text)."""
    labels: list[Any] = []
    stamps: list[str] = []
    lines: list[str] = []
    for stream in streams:
        entries = stream.values
        if not entries:
            continue
        labels += [msgspec.Raw(go_labels_json(stream.stream))] * len(entries)
        stamps += map(_TS, entries)
        lines += map(_LINE, entries)
    try:
        nanos = list(map(_go_int, stamps))
        if nanos and (max(nanos) >= 2 * 10**18 or min(nanos) < 0 or max(map(len, stamps)) > 19):
            raise ValueError("outside the fast path")
    except ValueError:  # rare shapes: Grafana's slow path, value by value
        nanos = list(map(_time_from_loki, stamps))
    times = list(map(floordiv, nanos, repeat(_NS_PER_MS)))
    remainders = list(map(mod, nanos, repeat(_NS_PER_MS)))
    return Frame([Field("__labels", "json.RawMessage", labels), Field("Time", "time.Time", times, nanos=remainders),
                  Field("Line", "string", lines), Field("TS", "string", stamps)], meta=meta())


_TS = attrgetter("ts")
_LINE = attrgetter("line")


def _series_frames(series: list[_Series], result_type: str) -> list[Frame]:
    """One frame per series: Time and Value (the labels on Value), typed as the dataplane contract says."""
    frame_type = "numeric-multi" if result_type == "vector" else "timeseries-multi"
    frames = []
    for one in series:
        pairs = list(one.values)
        if one.value is not None:
            pairs.append(one.value)
        stamps, samples = zip(*pairs, strict=True) if pairs else ((), ())
        try:
            values = list(map(float, samples))
        except ValueError as error:
            raise ConversionError(str(error)) from None
        # Go's timeFromFloat: int64(seconds * 1000.0), truncated toward zero
        times = list(map(int, map(1000.0.__mul__, stamps)))
        if times and (max(times) >= 2**63 or min(times) < -(2**63)):
            raise ConversionError("sample time outside the range of a time.Time")
        frames.append(Frame([Field("Time", "time.Time", times), Field("Value", "float64", values, labels=one.metric)],
                            meta=meta(frame_type, (0, 1), custom={"resultType": result_type})))
    return frames


def _notices(value: Any, severity: str) -> list[Notice]:
    if not isinstance(value, list):
        return []
    return [Notice(severity, text) for text in value if isinstance(text, str)]


def read_loki_result(body: bytes) -> DataResponse:
    """A Loki (Prometheus-style) query answer as Grafana's converter.ReadPrometheusStyleResult reads it."""
    try:
        answer = _body_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as error:
        return DataResponse(error=f"response from prometheus couldn't be parsed. it is non-json: {error}",
                            error_source="downstream")
    if answer.status == "error":
        return DataResponse(error=f"{answer.error_type}: {answer.error}", error_source="plugin")
    frames: list[Frame] = []
    try:
        if answer.data is not None:
            frames = _read_data(answer.data)
    except ConversionError as error:
        return DataResponse(error=str(error), error_source=error.source)
    except (msgspec.DecodeError, RecursionError, ValueError, OverflowError) as error:  # an odd shape or number
        return DataResponse(error=str(error), error_source="downstream")
    warnings = _notices(answer.warnings, "warning") + _notices(answer.infos, "info")
    if warnings:
        if not frames:
            frames.append(Frame(name="Warnings"))
        for frame in frames:
            if frame.meta is None:
                frame.meta = meta()
            frame.meta.notices = warnings
    return DataResponse(frames or None)


def _read_data(data: _Data) -> list[Frame]:
    if data.result_type is None:
        raise ConversionError("no resultType found")
    result_type = data.result_type
    if result_type in ("matrix", "vector"):
        frames = _series_frames(_series_decoder.decode(data.result), result_type)
    elif result_type == "streams":
        if "categorize-labels" in data.encoding_flags:
            raise ConversionError("categorize-labels encoding is not supported", "plugin")
        frames = [_stream_frame(_streams_decoder.decode(data.result))]
    elif result_type == "scalar":
        stamp, sample = _scalar_decoder.decode(data.result)
        frames = [Frame([Field("Time", "time.Time", [int(stamp * 1000.0)]),
                         Field("Value", "float64", [float(sample)], labels={})],
                        meta=meta("numeric-multi", (0, 1), custom={"resultType": "scalar"}))]
    elif result_type == "string":
        stamp, text = _scalar_decoder.decode(data.result)
        frames = [Frame([Field("Time", "time.Time", [int(stamp * 1000.0)]),
                         Field("Value", "string", [text], labels={})],
                        meta=meta("timeseries-multi", custom={"resultType": "string"}))]
    else:
        raise ConversionError(f"unknown result type: {result_type}", "plugin")
    if data.stats is not msgspec.UNSET and frames:
        assert frames[0].meta is not None
        frames[0].meta.custom = {"stats": data.stats}
    return frames


# -- Grafana's Loki frames (pkg/tsdb/loki frame.go) ------------------------------------------------------

_STATS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("summary", "Summary", (
        ("bytesProcessedPerSecond", "bytes processed per second", "Bps"),
        ("linesProcessedPerSecond", "lines processed per second", ""),
        ("totalBytesProcessed", "total bytes processed", "decbytes"),
        ("totalLinesProcessed", "total lines processed", ""),
        ("execTime", "exec time", "s"))),
    ("store", "Store", (
        ("totalChunksRef", "total chunks ref", ""), ("totalChunksDownloaded", "total chunks downloaded", ""),
        ("chunksDownloadTime", "chunks download time", "s"), ("headChunkBytes", "head chunk bytes", "decbytes"),
        ("headChunkLines", "head chunk lines", ""), ("decompressedBytes", "decompressed bytes", "decbytes"),
        ("decompressedLines", "decompressed lines", ""), ("compressedBytes", "compressed bytes", "decbytes"),
        ("totalDuplicates", "total duplicates", ""))),
    ("ingester", "Ingester", (
        ("totalReached", "total reached", ""), ("totalChunksMatched", "total chunks matched", ""),
        ("totalBatches", "total batches", ""), ("totalLinesSent", "total lines sent", ""),
        ("headChunkBytes", "head chunk bytes", "decbytes"), ("headChunkLines", "head chunk lines", ""),
        ("decompressedBytes", "decompressed bytes", "decbytes"),
        ("decompressedLines", "decompressed lines", ""), ("compressedBytes", "compressed bytes", "decbytes"),
        ("totalDuplicates", "total duplicates", ""))),
)


def parse_stats(custom: Any) -> list[dict[str, Any]] | None:
    """meta.stats from the converter's custom.stats: Loki's summary, store and ingester numbers, named and
    united as Grafana names them (a missing or non-numeric value is 0)."""
    if not isinstance(custom, dict) or not isinstance(custom.get("stats"), dict):
        return None
    raw = custom["stats"]
    stats: list[dict[str, Any]] = []
    for key, title, entries in _STATS:
        section = raw.get(key)
        if not isinstance(section, dict):
            continue
        for name, label, unit in entries:
            value = section.get(name)
            number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
            stat: dict[str, Any] = {"displayName": f"{title}: {label}"}
            if unit:
                stat["unit"] = unit
            stat["value"] = number
            stats.append(stat)
    return stats or None


def series_name(labels: Mapping[str, str], legend_format: str) -> str:
    """formatName: `{a="b", c="d"}` (parts sorted) without a legend format, else the template filled in."""
    if not legend_format:
        return "{" + ", ".join(sorted(f"{key}={go_quote(value)}" for key, value in labels.items())) + "}"
    return _LEGEND.sub(lambda match: labels.get(match.group(1).strip(), ""), legend_format)


def _fnv32(data: bytes) -> int:
    """FNV-1 (not 1a), 32 bits: Go's hash/fnv New32."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value * 0x01000193) & 0xFFFFFFFF) ^ byte
    return value


def _ids(stamps: list[str], lines: list[str], labels: list[Any]) -> list[str]:
    """`<tsNs>_<fnv32 of line_labels>` and `_<n>` for the n-th repeat of the same id."""
    seen: dict[str, int] = {}
    ids = []
    for stamp, line, raw in zip(stamps, lines, labels, strict=True):
        key = f"{stamp}_{_fnv32(line.encode() + b'_' + bytes(raw)):x}"
        count = seen.get(key, 0)
        seen[key] = count + 1
        ids.append(f"{key}_{count}" if count else key)
    return ids


def adjust_frame(frame: Frame, query: LokiQuery) -> None:
    """Turn a converter frame into Grafana's Loki frame: metric frames get the legend, step and query
    string; log frames get labels/tsNs names, the LabeledTimeValues frame type and the id field."""
    fields = frame.fields
    current = frame.meta or meta()
    frame.meta = current
    stats = parse_stats(current.custom)
    if fields[1].item_type == "float64":
        if len(fields) != 2 or fields[0].item_type != "time.Time":
            raise ConversionError(f"invalid field length in metric frame. expected 2, got {len(fields)}", "plugin")
        name = series_name(fields[1].labels or {}, query.legend_format)
        current.stats, current.custom = stats, None
        if query.instant:
            current.executed_query_string = f"Expr: {query.expr}"
        else:
            current.executed_query_string = f"Expr: {query.expr}\nStep: {go_duration_string(query.step_ns / 1e6)}"
            fields[0].config = {**(fields[0].config or {}), "interval": float(query.step_ms)}
        fields[1].config = {**(fields[1].config or {}), "displayNameFromDS": name}
        return
    if len(fields) != 4:
        raise ConversionError(f"invalid field length in logs frame. expected 4 or 5, got {len(fields)}", "plugin")
    labels, _, lines, stamps = fields
    labels.name, stamps.name = "labels", "tsNs"
    current.stats = stats
    current.custom = {"frameType": "LabeledTimeValues"}
    current.executed_query_string = f"Expr: {query.expr}"
    fields.append(Field("id", "string", _ids(stamps.values, lines.values, labels.values)))


def _error_text(body: bytes) -> str:
    """makeLokiError: the JSON body's `message` (keys matched case-insensitively, as Go), else the text."""
    text = body.decode("utf-8", "replace")
    try:
        decoded: Any = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        decoded = None
    message = ""
    if isinstance(decoded, dict):
        for key, value in decoded.items():
            if key.lower() == "message":
                if value is not None and not isinstance(value, str):
                    message = ""  # Go's Unmarshal fails: the whole text is the message
                    break
                message = value or message
    message = message or text
    return message if len(message) <= _ERROR_TEXT_LIMIT else message[:_ERROR_TEXT_LIMIT] + "…"


async def run_query(ctx: Context, query: LokiQuery) -> DataResponse:
    """Send one query to Loki (under the data source's slot) and read its answer into Grafana's frames."""
    path, params = query.path_and_query()
    headers = [("X-Query-Tags", f"Source={query.source}")] if query.source else []
    limit = ctx.config.dataproxy.response_limit or _BODY_LIMIT
    try:
        async with ctx.slot():
            answer = await ctx.http.fetch("GET", path, params, headers, limit=limit)
    except (UpstreamError, GatewayError) as error:  # the latter: settings refused (whitelist, TLS files, URL)
        known = translate(error)
        assert known is not None  # both have a translation
        source = "downstream" if isinstance(error, UpstreamError) else "plugin"
        return DataResponse(error=known.message, status=known.status, error_source=source)
    if not 200 <= answer.status < 300:
        source = "plugin" if answer.status in _PLUGIN_STATUSES else "downstream"
        return DataResponse(error=_error_text(answer.body), error_source=source)
    response = read_loki_result(answer.body)
    if response.frames is None:
        return response
    try:
        if sum(frame.rows for frame in response.frames) > _BIG_FRAMES:
            # log ids hash every byte in Python: long answers are adjusted off the event loop
            await asyncio.to_thread(_adjust_all, response.frames, query)
        else:
            _adjust_all(response.frames, query)
    except ConversionError as error:
        return DataResponse(error=str(error), error_source=error.source)
    return response


def _adjust_all(frames: list[Frame], query: LokiQuery) -> None:
    for frame in frames:
        if len(frame.fields) >= 2:  # the frame made to carry warnings has none
            adjust_frame(frame, query)
