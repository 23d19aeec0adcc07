"""Run by tests/test_clients.py in its own virtualenv: grafana-client, unchanged, against gateway."""

from __future__ import annotations

import sys

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

url = sys.argv[1]
api = GrafanaApi.from_url(url)
assert api.version == "12.4.0", api.version

created = api.datasource.create_datasource({
    "name": "prom", "type": "prometheus", "access": "proxy", "url": "http://prom:9090", "uid": "h8KkCLt7z",
    "isDefault": True, "secureJsonData": {"basicAuthPassword": "pw"},
    # what backup tools send back: list items with read-only fields
    "id": 123, "orgId": 1, "typeName": "Prometheus", "typeLogoUrl": "x", "readOnly": False,
})
assert created["message"] == "Datasource added", created
ds_id, uid = created["datasource"]["id"], created["datasource"]["uid"]
assert uid == "h8KkCLt7z"
api.datasource.create_datasource({"name": "td", "type": "testdata", "access": "proxy"})

assert api.datasource.get_datasource_by_uid(uid)["id"] == ds_id
assert api.datasource.get_datasource_by_id(ds_id)["uid"] == uid
assert api.datasource.get_datasource_by_name("prom")["uid"] == uid
assert api.datasource.get_datasource_id_by_name("prom") == {"id": ds_id}
assert [d["name"] for d in api.datasource.list_datasources()] == ["prom", "td"]

updated = api.datasource.update_datasource_by_uid(uid, {
    "name": "prom", "type": "prometheus", "access": "proxy", "url": "http://prom2:9090", "jsonData": {"a": 1},
})
assert updated["datasource"]["url"] == "http://prom2:9090", updated
assert updated["datasource"]["secureJsonFields"] == {"basicAuthPassword": True}
assert api.datasource.update_datasource(ds_id, {"name": "prom", "type": "prometheus", "access": "proxy",
                                               "url": "http://prom3:9090"})["datasource"]["type"] == "prometheus"

try:
    api.datasource.create_datasource({"name": "prom", "type": "prometheus", "access": "proxy"})
    raise AssertionError("duplicate accepted")
except GrafanaClientError as error:
    assert error.status_code == 409, error

assert api.datasource.delete_datasource_by_name("td")["message"] == "Data source deleted"
assert api.datasource.delete_datasource_by_uid(uid) == {"id": ds_id, "message": "Data source deleted"}
try:
    api.datasource.get_datasource_by_uid(uid)
    raise AssertionError("deleted data source still readable")
except GrafanaClientError as error:
    assert error.status_code == 404 and "Data source not found" in str(error), error
assert api.datasource.list_datasources() == []
print("grafana-client round trip ok")
