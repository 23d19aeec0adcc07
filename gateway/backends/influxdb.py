"""InfluxDB: the proxy re-encodes the query as Go does; the 0.8 API also takes the database in the path and
the credentials in the query. Health pings."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

from gateway.backends.base import Backend, Context, HttpPing, core_plugin


def go_encode(pairs: Sequence[tuple[str, str]]) -> str:
    """Go's url.Values.Encode: keys sorted, values in order, query-escaped."""
    ordered = sorted(pairs, key=lambda pair: pair[0])
    return urlencode(ordered, quote_via=quote_plus)


class InfluxDB(HttpPing):
    def __init__(self) -> None:
        super().__init__(core_plugin("influxdb", "InfluxDB", "influxdb_logo.svg"), "ping")

    def proxy_target(self, ctx: Context, path: str, query: str) -> tuple[str, str]:
        """The query re-encoded as Go's url.Values does (Grafana parses and re-encodes it)."""
        return path, go_encode(parse_qsl(query, keep_blank_values=True))


class InfluxDB08(Backend):
    """The InfluxDB 0.8 API (no backend plugin in gateway)."""

    def proxy_target(self, ctx: Context, path: str, query: str) -> tuple[str, str]:
        """db/<database>/<path>, with u and p (the data source's user and password) appended to the query."""
        pairs = [*parse_qsl(query, keep_blank_values=True), ("u", ctx.ds.user), ("p", ctx.secrets.get("password", ""))]
        return f"db/{quote(ctx.ds.database, safe='')}/{path}", go_encode(pairs)
