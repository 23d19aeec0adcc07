"""Backends for HTTP data sources gateway does not query itself: a reachability check at most."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.backends import HealthResult, NotImplementedByBackend, ResourceRequest, ResourceResponse
from gateway.models import DataSource
from gateway.transport import Transport
from gateway.upstream import UpstreamError


class HttpPing:
    """Health is a GET of one path through the data source's transport; no resources."""

    def __init__(self, path: str, query: str = "") -> None:
        self.path = path
        self.query = query

    async def check_health(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                           is_admin: bool) -> HealthResult:
        """OK when the data source answers the path with a status below 400."""
        try:
            status, _, _ = await transport.fetch("GET", self.path, self.query, limit=1 << 20)
        except UpstreamError as error:
            return HealthResult(status="ERROR", message=f"Data source is not reachable: {type(error).__name__}")
        if status >= 400:
            return HealthResult(status="ERROR", message=f"Data source answered HTTP {status}")
        return HealthResult(message="Data source is working", status="OK")

    async def call_resource(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                            request: ResourceRequest) -> ResourceResponse:
        """No resource handlers."""
        raise NotImplementedByBackend


class NoBackend:
    """A known type without health or resource support in gateway (as a core plugin without them)."""

    async def check_health(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                           is_admin: bool) -> HealthResult:
        """Not implemented."""
        raise NotImplementedByBackend

    async def call_resource(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                            request: ResourceRequest) -> ResourceResponse:
        """Not implemented."""
        raise NotImplementedByBackend
