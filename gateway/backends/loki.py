"""Loki: health asks for its labels through the data source's transport; resources pass through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.backends import HealthResult, ResourceRequest, ResourceResponse
from gateway.backends.prometheus import pass_through
from gateway.models import DataSource
from gateway.transport import Transport
from gateway.upstream import UpstreamError

_OK = "Data source successfully connected."
_FAILED = "Unable to connect with Loki. Please check the server logs for more details."


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
        """labels, label/<name>/values, series, ... go to loki/api/v1/<path>."""
        path = request.path if request.path.startswith("loki/api/v1/") else "loki/api/v1/" + request.path.removeprefix(
            "api/v1/")
        return await pass_through(transport, request, path)
