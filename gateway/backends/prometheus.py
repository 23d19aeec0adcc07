"""Prometheus: health runs `1+1` through the data source's transport; api/v1 resources pass through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.backends import HealthResult, NotImplementedByBackend, ResourceRequest, ResourceResponse
from gateway.models import DataSource
from gateway.transport import Transport
from gateway.upstream import UpstreamError

_FAILED = " - There was an error returned querying the Prometheus API."
_PASSED_HEADERS = frozenset({"content-type", "accept"})
_PATH_SAFE = "$&+,/:;=@"  # with the unreserved characters, what Go's URL.EscapedPath leaves as is


class Prometheus:
    async def check_health(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                           is_admin: bool) -> HealthResult:
        """An instant query `1+1` at t=4s with the configured method, as Grafana's promlib does."""
        form = "query=1%2B1&time=4"
        try:
            if str(ds.options.get("httpMethod", "POST")).upper() == "GET":
                status, _, body = await transport.fetch("GET", "api/v1/query", form, limit=1 << 20)
            else:
                status, _, body = await transport.fetch(
                    "POST", "api/v1/query", headers=[("Content-Type", "application/x-www-form-urlencoded")],
                    body=form.encode(), limit=1 << 20)
        except UpstreamError as error:
            return HealthResult(status="ERROR", message=f"{_describe(error)}{_FAILED}")
        try:
            answer: Any = msgspec.json.decode(body)
        except msgspec.DecodeError:
            answer = {}
        if status != 200 or not isinstance(answer, dict) or answer.get("status") != "success":
            error_text = answer.get("error") if isinstance(answer, dict) else None
            return HealthResult(status="ERROR", message=f"{error_text or f'HTTP {status}'}{_FAILED}")
        return HealthResult(
            details={"application": "Prometheus", "features": {"rulerApiEnabled": False}},
            message="Successfully queried the Prometheus API.", status="OK",
        )

    async def call_resource(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                            request: ResourceRequest) -> ResourceResponse:
        """api/v1/... with the caller's method, query and body; other paths are not handled.

        X-Grafana-Cache: <value> asks for the answer to carry `Cache-Control: <value>` (the cache level setting).
        """
        if not request.path.startswith("api/v1/"):
            raise NotImplementedByBackend
        answer = await pass_through(transport, request, request.path)
        cache = next((value for name, value in request.headers if name.lower() == "x-grafana-cache"), "")
        if cache:
            answer.headers = [(name, value) for name, value in answer.headers
                              if name.lower() not in ("cache-control", "x-grafana-cache")]
            answer.headers += [("X-Grafana-Cache", "y"), ("Cache-Control", cache)]
        return answer


async def pass_through(transport: Transport, request: ResourceRequest, path: str) -> ResourceResponse:
    """Forward a resource call to the data source (buffered and bounded, as Grafana's plugins do).

    `path` is already clean (see ResourceRequest); it is escaped here as Go escapes a URL's path.
    """
    headers = [(name, value) for name, value in request.headers if name.lower() in _PASSED_HEADERS]
    status, upstream_headers, body = await transport.fetch(
        request.method, quote(path, safe=_PATH_SAFE), request.query, headers, request.body or None)
    return ResourceResponse(status=status, headers=upstream_headers, body=body)


def _describe(error: UpstreamError) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
