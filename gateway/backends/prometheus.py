"""Prometheus and its hosted variants: proxy routes, health (`1+1` through the data source's client) and
api/v1 resources passed through."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import msgspec

from gateway.backends.base import (
    Backend,
    Context,
    HealthResult,
    NotImplementedByBackend,
    ResourceRequest,
    core_plugin,
    pass_through,
    refuse_unlisted_writes,
)
from gateway.errors import MethodNotAllowed, route_denied
from gateway.http.client import Answer, clean_path
from gateway.http.pool import UpstreamError

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
