"""The data source types gateway knows, by Grafana's plugin id and aliases, and the backend of each."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.backends.base import Backend, HttpPing, Plugin, core_plugin
from gateway.backends.elasticsearch import Elasticsearch
from gateway.backends.influxdb import InfluxDB, InfluxDB08
from gateway.backends.loki import Loki
from gateway.backends.mysql import MySQL
from gateway.backends.postgres import Postgres
from gateway.backends.prometheus import HostedPrometheus, Prometheus
from gateway.backends.testdata import TestData

UNKNOWN_LOGO = "public/img/icn-datasource.svg"


class Listed(Backend):
    """A core plugin gateway proxies and lists, without a backend of its own (Plugin not registered)."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin


_GENERIC = Backend()

_BACKENDS: tuple[tuple[str, Backend], ...] = (
    ("prometheus", Prometheus()),
    ("grafana-amazonprometheus-datasource", HostedPrometheus("grafana-amazonprometheus-datasource")),
    ("grafana-azureprometheus-datasource", HostedPrometheus("grafana-azureprometheus-datasource")),
    ("loki", Loki()),
    ("grafana-testdata-datasource", TestData()),
    ("grafana-postgresql-datasource", Postgres()),
    ("mysql", MySQL()),
    ("graphite", HttpPing(core_plugin("graphite", "Graphite", "graphite_logo.png"), "metrics/find", "query=*")),
    ("elasticsearch", Elasticsearch()),
    ("influxdb", InfluxDB()),
    ("influxdb_08", InfluxDB08()),
    ("tempo", Listed(core_plugin("tempo", "Tempo", "tempo_logo.svg"))),
    ("jaeger", Listed(core_plugin("jaeger", "Jaeger", "jaeger_logo.svg"))),
    ("zipkin", Listed(core_plugin("zipkin", "Zipkin", "zipkin_logo.svg"))),
    ("alertmanager", Listed(core_plugin("alertmanager", "Alertmanager", "logo.svg"))),
    ("mssql", Listed(core_plugin("mssql", "Microsoft SQL Server", "sql_server_logo.svg"))),
    ("opentsdb", Listed(core_plugin("opentsdb", "OpenTSDB", "opentsdb_logo.png"))),
)

# a constant table: backends hold no state of their own (a data source's state lives in its Context)
_BY_TYPE: Mapping[str, Backend] = MappingProxyType({
    name: backend for ds_type, backend in _BACKENDS
    for name in (ds_type, *(backend.plugin.aliases if backend.plugin else ()))
})


def backend_for(ds_type: str) -> Backend:
    """The backend of a type id or alias; a type gateway does not know is proxied with no rules."""
    return _BY_TYPE.get(ds_type, _GENERIC)


def plugin_for(ds_type: str) -> Plugin | None:
    """The plugin serving a type id or alias, or None for a type gateway does not list."""
    return backend_for(ds_type).plugin

