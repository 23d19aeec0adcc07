"""Elasticsearch: proxied for reads and _msearch only; health is a cluster health GET."""

from __future__ import annotations

from gateway.backends.base import HttpPing, core_plugin
from gateway.errors import elasticsearch_refused


class Elasticsearch(HttpPing):
    def __init__(self) -> None:
        super().__init__(core_plugin("elasticsearch", "Elasticsearch", "elasticsearch.svg"), "_cluster/health")

    def check_route(self, role: str | None, method: str, path: str) -> None:
        """No DELETE or PUT; POST only to _msearch, compared exactly as sent, as Grafana does."""
        if role is None:
            return
        if method in ("DELETE", "PUT") or (method == "POST" and path != "_msearch"):
            raise elasticsearch_refused(method)
