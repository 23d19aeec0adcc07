"""Data source types gateway knows: Grafana's plugin ids, aliases, names, logos, and their backends.

A backend answers health and resource calls for one type (and, later, queries). It gets the
data source, its opened secrets and its transport; it never sees a web.Request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from gateway.models import DataSource
from gateway.transport import Transport


class HealthResult(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Grafana's CheckHealthResult as JSON (keys sorted): details only when set."""

    details: dict[str, Any] | None = None
    message: str
    status: str


class ResourceRequest(msgspec.Struct, frozen=True):
    """A resource call as a plugin receives it: decoded, cleaned path without a leading slash, raw query."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class ResourceResponse(msgspec.Struct):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class NotImplementedByBackend(Exception):
    """The backend has no handler for this call (Grafana: plugin.notImplemented)."""


class Backend(Protocol):
    async def check_health(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                           is_admin: bool) -> HealthResult: ...

    async def call_resource(self, ds: DataSource, secrets: Mapping[str, str], transport: Transport,
                            request: ResourceRequest) -> ResourceResponse: ...


class Plugin(msgspec.Struct, frozen=True):
    """A data source plugin as Grafana's plugin store describes it."""

    id: str
    name: str
    logo: str
    aliases: tuple[str, ...] = ()


def _core(plugin_id: str, name: str, logo: str, *aliases: str) -> Plugin:
    return Plugin(plugin_id, name, f"public/app/plugins/datasource/{plugin_id}/img/{logo}", aliases)


PLUGINS: tuple[Plugin, ...] = (
    _core("prometheus", "Prometheus", "prometheus_logo.svg"),
    _core("loki", "Loki", "loki_icon.svg"),
    _core("grafana-testdata-datasource", "TestData", "testdata.svg", "testdata"),
    _core("grafana-postgresql-datasource", "PostgreSQL", "postgresql_logo.svg", "postgres"),
    _core("mysql", "MySQL", "mysql_logo.svg"),
    _core("graphite", "Graphite", "graphite_logo.png"),
    _core("elasticsearch", "Elasticsearch", "elasticsearch.svg"),
    _core("influxdb", "InfluxDB", "influxdb_logo.svg"),
    _core("tempo", "Tempo", "tempo_logo.svg"),
    _core("jaeger", "Jaeger", "jaeger_logo.svg"),
    _core("zipkin", "Zipkin", "zipkin_logo.svg"),
    _core("alertmanager", "Alertmanager", "logo.svg"),
    _core("mssql", "Microsoft SQL Server", "sql_server_logo.svg"),
    _core("opentsdb", "OpenTSDB", "opentsdb_logo.png"),
)

UNKNOWN_LOGO = "public/img/icn-datasource.svg"

_BY_TYPE = {alias: plugin for plugin in PLUGINS for alias in (plugin.id, *plugin.aliases)}


def plugin_for(ds_type: str) -> Plugin | None:
    """The plugin serving a type id or alias, or None for a type gateway does not know."""
    return _BY_TYPE.get(ds_type)


# the modules import the types above, so they load last
from gateway.backends import http, loki, postgres, prometheus, testdata  # noqa: E402

_BACKENDS: Mapping[str, Backend] = {
    "prometheus": prometheus.Prometheus(),
    "loki": loki.Loki(),
    "grafana-testdata-datasource": testdata.TestData(),
    "grafana-postgresql-datasource": postgres.Postgres(),
    "graphite": http.HttpPing("metrics/find", "query=*"),
    "elasticsearch": http.HttpPing("_cluster/health"),
    "influxdb": http.HttpPing("ping"),
    "mysql": http.NoBackend(),
}


def backend_for(ds_type: str) -> Backend | None:
    """The backend for a type id or alias; None when the type is not a plugin gateway knows."""
    plugin = plugin_for(ds_type)
    return _BACKENDS.get(plugin.id) if plugin else None
