"""Loki: proxied without writes, health asks for its labels, read-only resources pass through."""

from __future__ import annotations

from typing import Any

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
from gateway.errors import MethodNotAllowed
from gateway.http.client import Answer
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
