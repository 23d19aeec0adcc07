"""Data source types gateway knows: Grafana's plugin ids, aliases, display names and logos."""

from __future__ import annotations

import msgspec


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
