"""-- Grafana --, the data source every org has under uid `grafana` (G pkg/tsdb/grafanads): its random walk is
served; its public-file and dashboard-search queries are not."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.backends.base import Backend, Context, DataQuery
from gateway.backends.testdata import default_walk
from gateway.datasources.models import DataSource
from gateway.frames import DataResponse

UID = "grafana"
NAME = "-- Grafana --"
_UNSERVED = frozenset({"list", "read", "search", "searchNext"})


def built_in(org_id: int) -> DataSource:
    """The org's -- Grafana -- data source, as Grafana's DataSourceModel makes it (id -1, never stored)."""
    return DataSource(id=-1, org_id=org_id, version=0, type="grafana", name=NAME, access="proxy", url="", user="",
                      database="", basic_auth=False, basic_auth_user="", with_credentials=False, is_default=False,
                      json_data={}, secure_json_data={}, read_only=True, uid=UID, api_version="",
                      updated=datetime(1970, 1, 1, tzinfo=UTC))


class Grafana(Backend):
    """Queries by queryType: `randomWalk` is TestData's random walk with a default model (Grafana reads none of
    the query's fields); any other type is Grafana's "unknown query type"."""

    served = True

    async def query(self, ctx: Context, queries: list[DataQuery]) -> dict[str, DataResponse]:
        """Each query's answer by its queryType."""
        results: dict[str, DataResponse] = {}
        for query in queries:
            if query.query_type == "randomWalk":
                results[query.ref_id] = default_walk(query)
            elif query.query_type in _UNSERVED:
                results[query.ref_id] = DataResponse(
                    error=f"gateway does not serve {NAME} {query.query_type} queries", status=501,
                    error_source="plugin")
            else:
                results[query.ref_id] = DataResponse(error="unknown query type", status=500, error_source="plugin")
        return results
