"""Loki: health asks for its labels through the data source's transport; read-only resources pass through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.backends import HealthResult, NotImplementedByBackend, ResourceRequest, ResourceResponse
from gateway.backends.prometheus import pass_through
from gateway.errors import GatewayError
from gateway.models import DataSource
from gateway.transport import Transport
from gateway.upstream import UpstreamError

_OK = "Data source successfully connected."
_FAILED = "Unable to connect with Loki. Please check the server logs for more details."
# the read endpoints Grafana's Loki backend forwards (pkg/tsdb/loki callResource), under loki/api/v1/
_ENDPOINTS = frozenset({"labels", "series", "index/stats", "index/volume", "patterns", "detected_labels",
                        "detected_fields"})
_ENDPOINT_PREFIXES = ("label/", "detected_field/")


class Loki:
    async def check_health(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                           is_admin: bool) -> HealthResult:
        """GET loki/api/v1/labels must answer status success."""
        try:
            status, _, body = await transport.fetch("GET", "loki/api/v1/labels", limit=4 << 20)
            answer: Any = msgspec.json.decode(body)
        except (UpstreamError, msgspec.DecodeError):
            return HealthResult(status="ERROR", message=_FAILED)
        if status != 200 or not isinstance(answer, dict) or answer.get("status") != "success":
            return HealthResult(status="ERROR", message=_FAILED)
        return HealthResult(message=_OK, status="OK")

    async def call_resource(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                            request: ResourceRequest) -> ResourceResponse:
        """GET labels, label/<name>/values, series, ... (also as api/v1/... or loki/api/v1/...) go to
        loki/api/v1/<endpoint>; other methods and paths never reach Loki (no push, no delete).
        """
        if request.method != "GET":
            raise GatewayError("Method not allowed", status=405, headers={"Allow": "GET"})
        endpoint = request.path
        for prefix in ("loki/api/v1/", "api/v1/"):
            if endpoint.startswith(prefix):
                endpoint = endpoint[len(prefix):]
                break
        if endpoint not in _ENDPOINTS and not endpoint.startswith(_ENDPOINT_PREFIXES):
            raise NotImplementedByBackend
        return await pass_through(transport, request, "loki/api/v1/" + endpoint)
