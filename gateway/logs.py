"""Logging as Grafana's [log] and [log.console] configure it, and the request context every log line carries.

The request context (request id and W3C trace context) lives in a ContextVar that the request middleware
sets for the duration of one request, so the data source client sends its `traceparent` upstream and every
record logged meanwhile names the request, without passing either through every call.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import msgspec

from gateway.config import Config

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# a client's X-Request-Id is kept when it is this sane: printable, no spaces, bounded
_REQUEST_ID = re.compile(r"[!-~]{1,128}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class RequestContext(msgspec.Struct, frozen=True):
    """One request's id and trace context: `traceparent` is what goes upstream (our span in the trace)."""

    request_id: str
    trace_id: str
    traceparent: str


# set by the request middleware for one request (tasks it starts inherit it), None outside requests
current: ContextVar[RequestContext | None] = ContextVar("gateway_request", default=None)


def request_context(request_id: str | None, traceparent: str | None) -> RequestContext:
    """The context of a new request: its X-Request-Id if sane, else a new one; the trace of a valid incoming
    `traceparent` continued with a span of our own, else a new trace."""
    # ids need to be unique, not secret: the PRNG costs a fraction of os.urandom's system call per request
    bits = random.getrandbits
    rid = request_id if request_id is not None and _REQUEST_ID.fullmatch(request_id) else f"{bits(128):032x}"
    match = _TRACEPARENT.fullmatch(traceparent.strip().lower()) if traceparent else None
    if match is not None and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        trace_id, flags = match.group(1), match.group(3)
    else:
        trace_id, flags = f"{bits(128) or 1:032x}", "01"
    return RequestContext(rid, trace_id, f"00-{trace_id}-{bits(64) or 1:016x}-{flags}")


class _Context(logging.Filter):
    """Adds the current request's id and trace id to every record logged while it runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current.get()
        if context is not None and not hasattr(record, "request_id"):
            record.request_id = context.request_id
            record.trace_id = context.trace_id
        return True


def _fields(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The structured fields of a record: `fields` passed as extra, then the request context."""
    fields: list[tuple[str, Any]] = list(getattr(record, "fields", {}).items())
    if hasattr(record, "request_id"):
        fields.append(("requestID", record.request_id))
        fields.append(("traceID", getattr(record, "trace_id", "")))
    return fields


_BARE = re.compile(r'[^\s"=\\]+')
# what would end or forge a console line: C0 and C1 controls, DEL, and the Unicode line and paragraph separators
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _logfmt(value: Any) -> str:
    """A logfmt value: bare when it can be, else quoted and escaped as JSON (control characters included)."""
    if type(value) is int or type(value) is float:
        return str(value)
    text = str(value)
    if _BARE.fullmatch(text) and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """`time LEVEL logger message key=value…`: the line gateway always wrote, with the fields appended."""

    def __init__(self) -> None:
        super().__init__(CONSOLE_FORMAT)
        self._second: tuple[int, str] = (-1, "")  # the last second formatted: a busy server logs many per second

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging's default `2026-12-06 03:31:05,123`, the seconds part formatted once per second."""
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second)))
        return f"{self._second[1]},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line before the fields, with control characters escaped: a message can quote a data source's error
        text, and a newline there would start a line of the upstream's choosing."""
        return _CONTROL.sub(lambda match: json.dumps(match.group())[1:-1], super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return head + "".join(f" {key}={_logfmt(value)}" for key, value in fields) + newline + rest


class TextFormatter(logging.Formatter):
    """Grafana's `text` format: logfmt, `t=… level=… logger=… msg=…` then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = [("t", _time(record)), ("level", _level(record)), ("logger", record.name),
                                        ("msg", record.getMessage()), *_fields(record)]
        if record.exc_info:
            pairs.append(("error", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_logfmt(value)}" for key, value in pairs)


class JsonFormatter(logging.Formatter):
    """Grafana's `json` format: one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"t": _time(record), "level": _level(record), "logger": record.name,
                               "msg": record.getMessage()}
        out.update(_fields(record))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _time(record: logging.LogRecord) -> str:
    millis = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{millis:03d}Z"


def _level(record: logging.LogRecord) -> str:
    return {"WARNING": "warn", "CRITICAL": "crit"}.get(record.levelname, record.levelname.lower())


FORMATTERS: dict[str, type[logging.Formatter]] = {"console": ConsoleFormatter, "text": TextFormatter,
                                                  "json": JsonFormatter}


def configure(config: Config) -> None:
    """Log to standard error at [log] level in [log.console] format (replacing any handler set before)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[config.log_console.format]())
    handler.addFilter(_Context())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[config.log.level.lower()])


def context_filter() -> logging.Filter:
    """The filter that adds the request context to records (for handlers set up elsewhere, as in tests)."""
    return _Context()
