"""The /api/datasources CRUD routes against Grafana's exact JSON (spec-crud §4, §6, §7, §8)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.conftest import ADMIN, prom

JSON = {**ADMIN, "Content-Type": "application/json"}

E2_BAD = {"message": "bad request data", "traceID": ""}
NOT_FOUND = {"message": "Data source not found"}


async def create(client: Any, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/datasources", json=prom(**body), headers=ADMIN)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_create_returns_grafana_envelope_and_full_dto_in_grafana_key_order(client):
    response = await client.post("/api/datasources", json=prom(uid="h8KkCLt7z", jsonData={"b": 1, "a": 2},
                                                              secureJsonData={"basicAuthPassword": "pw"}),
                                 headers=ADMIN)
    assert response.status == 200
    assert response.content_type == "application/json"
    text = await response.text()
    body = json.loads(text)
    assert list(body) == ["datasource", "id", "message", "name"]
    assert body["message"] == "Datasource added" and body["name"] == "prom"
    ds = body["datasource"]
    assert list(ds) == ["id", "uid", "orgId", "name", "type", "typeLogoUrl", "access", "url", "user", "database",
                        "basicAuth", "basicAuthUser", "withCredentials", "isDefault", "jsonData",
                        "secureJsonFields", "version", "readOnly"]
    assert ds["uid"] == "h8KkCLt7z" and ds["id"] == body["id"] and ds["orgId"] == 1
    assert ds["version"] == 1 and ds["readOnly"] is False
    assert ds["isDefault"] is True  # first in org
    assert ds["secureJsonFields"] == {"basicAuthPassword": True}
    assert '"jsonData":{"a":2,"b":1}' in text  # Go marshals maps sorted
    assert "pw" not in text


async def test_create_ignores_fields_clients_send_back_from_list_items(client):
    body = prom(id=99, orgId=5, typeName="Prometheus", typeLogoUrl="x", readOnly=True, password="p",
                basicAuthPassword="p", secureJsonFields={"a": True}, version=7)
    response = await client.post("/api/datasources", json=body, headers=ADMIN)
    ds = (await response.json())["datasource"]
    assert ds["id"] != 99 and ds["orgId"] == 1 and ds["readOnly"] is False and ds["version"] == 1
    assert ds["secureJsonFields"] == {}


async def test_keys_bind_case_insensitively_and_last_duplicate_wins(client):
    raw = b'{"NAME":"first","Type":"loki","ACCESS":"proxy","url":"http://l","name":"second"}'
    response = await client.post("/api/datasources", data=raw, headers=JSON)
    assert response.status == 200
    assert (await response.json())["name"] == "second"


async def test_generated_uid_is_grafana_shaped_and_valid(client):
    ds = (await create(client))["datasource"]
    assert re.fullmatch(r"[a-f][0-9a-z]{10,14}[a-f]", ds["uid"])


@pytest.mark.parametrize(
    ("raw", "headers"),
    [
        (b"{not json", JSON),
        (b'{"type":"prometheus","access":"proxy"}', {**ADMIN, "Content-Type": "text/plain"}),
        (b'{"type":"prometheus","access":"proxy"}', ADMIN),  # no content type with a body
        (b'{"type":"prometheus"}', JSON),  # access required
        (b'{"access":"proxy"}', JSON),  # type required
        (b'{"type":"prometheus","access":"proxy","isDefault":"true"}', JSON),
        (b'{"type":"prometheus","access":"proxy","secureJsonData":{"a":1}}', JSON),
        (b'[{"type":"prometheus","access":"proxy"}]', JSON),
        (b'"string"', JSON),
        (b"", JSON),
    ],
)
async def test_create_with_bad_body_is_400_bad_request_data_and_writes_nothing(client, db, raw, headers):
    response = await client.post("/api/datasources", data=raw, headers=headers)
    assert response.status == 400
    assert await response.json() == E2_BAD
    assert await db.fetchval("SELECT count(*) FROM data_source") == 0


async def test_create_with_nul_character_is_a_client_error_not_a_500(client, db):
    response = await client.post("/api/datasources", json=prom(name="a\u0000b"), headers=ADMIN)
    assert response.status == 400
    response = await client.post("/api/datasources", json=prom(jsonData={"k": "\u0000"}), headers=ADMIN)
    assert response.status == 400
    assert await db.fetchval("SELECT count(*) FROM data_source") == 0


async def test_create_auto_names_type_then_type_1_case_insensitively(client):
    await create(client, name="TESTDATA", type="testdata", url="")
    first = await create(client, name="", type="testdata", url="")
    second = await create(client, name="", type="testdata", url="")
    assert first["name"] == "testdata-1" and second["name"] == "testdata-2"
    assert first["datasource"]["type"] == "grafana-testdata-datasource"  # alias shown as the plugin id


async def test_create_validates_url_only_when_present(client):
    response = await client.post("/api/datasources", json=prom(url="http://h:port"), headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {"message": "Validation error, invalid URL", "traceID": ""}
    assert (await create(client, url=""))["datasource"]["url"] == ""  # empty passes on create


async def test_mssql_urls_follow_the_odbc_pattern(client):
    assert (await create(client, name="ms", type="mssql", url="host\\inst:1433;a=b"))["name"] == "ms"
    response = await client.post("/api/datasources", json=prom(name="ms2", type="mssql", url="http://x"),
                                 headers=ADMIN)
    assert response.status == 400


async def test_create_with_team_http_headers_is_403(client):
    response = await client.post("/api/datasources", json=prom(jsonData={"teamHttpHeaders": {}}), headers=ADMIN)
    assert response.status == 403
    assert await response.json() == {
        "message": "Cannot create datasource with team HTTP headers, need to use updateDatasourceLBACRules API"
    }


async def test_length_limits_are_grafana_errutil_bodies(client):
    response = await client.post("/api/datasources", json=prom(name="n" * 191), headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {"message": "Invalid datasource name.", "messageId": "datasource.nameInvalid",
                                     "statusCode": 400, "traceID": ""}
    response = await client.post("/api/datasources", json=prom(url="http://h/" + "u" * 250), headers=ADMIN)
    assert await response.json() == {"message": "Invalid datasource url.", "messageId": "datasource.urlInvalid",
                                     "statusCode": 400, "traceID": ""}
    response = await client.post("/api/datasources", json=prom(user="u" * 300), headers=ADMIN)
    assert response.status == 400


@pytest.mark.parametrize("uid", ["has space", "x" * 41, "bad/slash", "ü"])
async def test_invalid_uid_on_create_is_400_uid_invalid(client, uid):
    response = await client.post("/api/datasources", json=prom(uid=uid), headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {"message": "Invalid datasource UID.", "messageId": "datasource.uidInvalid",
                                     "statusCode": 400, "traceID": ""}


async def test_duplicate_name_and_uid_are_409(client):
    await create(client, uid="abc")
    response = await client.post("/api/datasources", json=prom(), headers=ADMIN)
    assert response.status == 409
    assert await response.json() == {"message": "data source with the same name already exists", "traceID": ""}
    response = await client.post("/api/datasources", json=prom(name="other", uid="abc"), headers=ADMIN)
    assert response.status == 409
    assert await response.json() == {"message": "data source with the same uid already exists", "traceID": ""}
    # names are unique exactly, so a different case is another data source
    assert (await create(client, name="PROM"))["name"] == "PROM"


async def test_one_default_per_org(client):
    first = await create(client, name="a")
    second = await create(client, name="b", isDefault=True)
    assert second["datasource"]["isDefault"] is True
    listed = await (await client.get("/api/datasources", headers=ADMIN)).json()
    assert [(d["name"], d["isDefault"]) for d in listed] == [("a", False), ("b", True)]
    assert first["datasource"]["isDefault"] is True


async def test_list_is_sorted_by_lower_case_name_with_list_item_shape(client):
    for name in ["mmm", "ZZZ", "aaa", "BBB"]:
        await create(client, name=name)
    response = await client.get("/api/datasources", headers=ADMIN)
    listed = await response.json()
    assert [d["name"] for d in listed] == ["aaa", "BBB", "mmm", "ZZZ"]
    assert list(listed[0]) == ["id", "uid", "orgId", "name", "type", "typeName", "typeLogoUrl", "access", "url",
                               "user", "database", "basicAuth", "isDefault", "jsonData", "readOnly"]
    assert listed[0]["typeName"] == "Prometheus"
    assert (await (await client.get("/api/datasources/", headers=ADMIN)).json()) == listed


async def test_list_is_capped_by_datasource_limit(aiohttp_client, database_url):
    from gateway.app import create_app
    from tests.conftest import make_config

    client = await aiohttp_client(create_app(make_config(database_url, datasources={"datasource_limit": 2})))
    for name in ["c", "a", "b"]:
        await create(client, name=name)
    listed = await (await client.get("/api/datasources", headers=ADMIN)).json()
    assert [d["name"] for d in listed] == ["a", "b"]


async def test_empty_list_is_an_empty_array(client):
    response = await client.get("/api/datasources", headers=ADMIN)
    assert await response.text() == "[]"


async def test_list_filters_by_type_and_name_and_pages_when_asked(client):
    for name in ["prom-a", "prom-b", "prom-c"]:
        await create(client, name=name)
    await create(client, name="logs", type="loki", url="http://loki")
    await create(client, name="td", type="testdata", url="")
    response = await client.get("/api/datasources?type=prometheus&limit=2&page=2", headers=ADMIN)
    assert [d["name"] for d in await response.json()] == ["prom-c"]
    assert response.headers["X-Total-Count"] == "3"
    response = await client.get("/api/datasources?query=PROM-B", headers=ADMIN)
    assert [d["name"] for d in await response.json()] == ["prom-b"]
    response = await client.get("/api/datasources?type=grafana-testdata-datasource", headers=ADMIN)
    assert [d["name"] for d in await response.json()] == ["td"]  # stored as the alias
    response = await client.get("/api/datasources?limit=0", headers=ADMIN)
    assert response.status == 400 and "message" in await response.json()


async def test_get_by_id_uid_and_name(client):
    created = (await create(client, uid="u1"))["datasource"]
    for path in [f"/api/datasources/{created['id']}", "/api/datasources/uid/u1", "/api/datasources/name/prom"]:
        response = await client.get(path, headers=ADMIN)
        assert response.status == 200
        assert await response.json() == created
    response = await client.get("/api/datasources/id/prom", headers=ADMIN)
    assert await response.json() == {"id": created["id"]}


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/api/datasources/abc", 400, {"message": "id is invalid"}),
        ("/api/datasources/99999999999999999999", 400, {"message": "id is invalid"}),
        ("/api/datasources/0", 400, {"message": "Datasource id is missing"}),
        ("/api/datasources/-5", 404, NOT_FOUND),
        ("/api/datasources/12345", 404, NOT_FOUND),
        ("/api/datasources/uid/nope", 404, NOT_FOUND),
        ("/api/datasources/uid/in%20valid", 404, NOT_FOUND),
        ("/api/datasources/name/nope", 404, NOT_FOUND),
        ("/api/datasources/id/nope", 404, NOT_FOUND),
    ],
)
async def test_get_errors(client, path, status, body):
    response = await client.get(path, headers=ADMIN)
    assert response.status == status
    assert await response.json() == body


async def test_access_control_metadata_only_when_asked_and_only_on_id_and_uid_routes(client):
    created = (await create(client, uid="u1"))["datasource"]
    plain = await (await client.get("/api/datasources/uid/u1", headers=ADMIN)).json()
    assert "accessControl" not in plain
    for path in [f"/api/datasources/{created['id']}?accesscontrol=true", "/api/datasources/uid/u1?accesscontrol=1"]:
        body = await (await client.get(path, headers=ADMIN)).json()
        assert body["accessControl"]["datasources:write"] is True
        assert body["accessControl"]["datasources:read"] is True
        assert list(body)[-1] == "accessControl"
    body = await (await client.get("/api/datasources/name/prom?accesscontrol=true", headers=ADMIN)).json()
    assert "accessControl" not in body


async def test_update_is_a_full_replacement_except_url_basic_auth_user_and_uid(client):
    created = (await create(client, uid="u1", user="u", database="d", basicAuth=True, basicAuthUser="bu",
                            withCredentials=True, jsonData={"keep": False, "old": 1}))["datasource"]
    body = {"name": "prom2", "type": "prometheus", "access": "direct", "url": "", "jsonData": {"new": 2}}
    # url is required for prometheus on update
    response = await client.put(f"/api/datasources/{created['id']}", json=body, headers=ADMIN)
    assert response.status == 400
    body["type"] = "custom-plugin"
    response = await client.put(f"/api/datasources/{created['id']}", json=body, headers=ADMIN)
    assert response.status == 200, await response.text()
    result = await response.json()
    assert list(result) == ["datasource", "id", "message", "name"]
    assert result["message"] == "Datasource updated" and result["name"] == "prom2" and result["id"] == created["id"]
    ds = result["datasource"]
    assert ds["url"] == "http://prom:9090" and ds["basicAuthUser"] == "bu" and ds["uid"] == "u1"
    assert ds["user"] == "" and ds["database"] == "" and ds["basicAuth"] is False
    assert ds["withCredentials"] is False and ds["isDefault"] is False
    assert ds["jsonData"] == {"new": 2} and ds["access"] == "direct" and ds["type"] == "custom-plugin"
    assert ds["typeLogoUrl"] == "public/img/icn-datasource.svg"
    assert ds["version"] == 1  # no version sent: Grafana resets it to 1


async def test_update_null_json_data_becomes_empty_object(client):
    await create(client, uid="u1", jsonData={"a": 1})
    response = await client.put("/api/datasources/uid/u1", json=prom(jsonData=None), headers=ADMIN)
    assert (await response.json())["datasource"]["jsonData"] == {}


async def test_update_version_semantics(client):
    await create(client, uid="u1")
    ok = await client.put("/api/datasources/uid/u1", json=prom(version=1), headers=ADMIN)
    assert (await ok.json())["datasource"]["version"] == 2
    stale = await client.put("/api/datasources/uid/u1", json=prom(version=1), headers=ADMIN)
    assert stale.status == 409
    assert await stale.json() == {
        "message": "Datasource has already been updated by someone else. Please reload and try again",
        "traceID": "",
    }
    jump = await client.put("/api/datasources/uid/u1", json=prom(version=10), headers=ADMIN)
    assert (await jump.json())["datasource"]["version"] == 11
    negative = await client.put("/api/datasources/uid/u1", json=prom(version=-1), headers=ADMIN)
    assert negative.status == 409


async def test_concurrent_updates_at_one_version_exactly_one_wins(client):
    await create(client, uid="u1")
    responses = await asyncio.gather(*[
        client.put("/api/datasources/uid/u1", json=prom(version=1, jsonData={"writer": i}), headers=ADMIN)
        for i in range(20)
    ])
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) == 1 and statuses.count(409) == 19
    winner = next(r for r in responses if r.status == 200)
    stored = await (await client.get("/api/datasources/uid/u1", headers=ADMIN)).json()
    assert stored["jsonData"] == (await winner.json())["datasource"]["jsonData"]
    assert stored["version"] == 2


async def test_secure_json_data_is_merged_and_empty_string_removes(client):
    await create(client, uid="u1", secureJsonData={"password": "p", "basicAuthPassword": "b", "tlsCACert": "c"})
    response = await client.put("/api/datasources/uid/u1", json=prom(secureJsonData={"password": "", "new": "n"}),
                                headers=ADMIN)
    assert (await response.json())["datasource"]["secureJsonFields"] == {
        "basicAuthPassword": True, "new": True, "tlsCACert": True,
    }
    response = await client.put("/api/datasources/uid/u1", json=prom(), headers=ADMIN)
    assert (await response.json())["datasource"]["secureJsonFields"] == {
        "basicAuthPassword": True, "new": True, "tlsCACert": True,
    }


async def test_update_name_conflict_is_409_with_update_message(client):
    await create(client, name="a", uid="ua")
    await create(client, name="b", uid="ub")
    response = await client.put("/api/datasources/uid/ub", json=prom(name="a"), headers=ADMIN)
    assert response.status == 409
    assert await response.json() == {
        "message": "Failed to update datasource: data source with the same name already exists", "traceID": "",
    }


async def test_update_body_uid_cannot_change_the_uid(client, db):
    created = (await create(client, uid="u1"))["datasource"]
    for path in ["/api/datasources/uid/u1", f"/api/datasources/{created['id']}"]:
        response = await client.put(path, json=prom(uid="other"), headers=ADMIN)
        assert response.status == 400
        assert "message" in await response.json()
    response = await client.put("/api/datasources/uid/u1", json=prom(uid="bad uid"), headers=ADMIN)
    assert (await response.json())["messageId"] == "datasource.uidInvalid"
    same = await client.put("/api/datasources/uid/u1", json=prom(uid="u1", name="renamed"), headers=ADMIN)
    assert same.status == 200
    assert await db.fetchval("SELECT uid FROM data_source") == "u1"


async def test_update_keeps_team_http_headers_from_storage(client, db):
    created = (await create(client, uid="u1"))["datasource"]
    await db.execute("UPDATE data_source SET json_data = '{\"teamHttpHeaders\": {\"t\": 1}}' WHERE id = $1",
                     created["id"])
    response = await client.put("/api/datasources/uid/u1",
                                json=prom(jsonData={"teamHttpHeaders": {"evil": 1}, "x": 1}), headers=ADMIN)
    assert (await response.json())["datasource"]["jsonData"] == {"teamHttpHeaders": {"t": 1}, "x": 1}


@pytest.mark.parametrize(
    ("path", "raw", "status", "body"),
    [
        ("/api/datasources/uid/u1", b'{"type":"prometheus","access":"proxy","url":"http://x"}', 400, E2_BAD),
        ("/api/datasources/abc", b"{bad", 400, E2_BAD),  # a bad body wins over a bad id
        ("/api/datasources/abc", json.dumps(prom()).encode(), 400, {"message": "id is invalid", "traceID": ""}),
        ("/api/datasources/777", json.dumps(prom()).encode(), 404, NOT_FOUND),
        ("/api/datasources/uid/nope", json.dumps(prom()).encode(), 404, NOT_FOUND),
    ],
)
async def test_update_errors(client, path, raw, status, body):
    await create(client, uid="u1")
    response = await client.put(path, data=raw, headers=JSON)
    assert response.status == status
    assert await response.json() == body


async def test_read_only_data_sources_refuse_update_and_delete(client, db):
    created = (await create(client, uid="u1"))["datasource"]
    await db.execute("UPDATE data_source SET read_only = true")
    response = await client.put("/api/datasources/uid/u1", json=prom(), headers=ADMIN)
    assert response.status == 403
    assert await response.json() == {"message": "Cannot update read-only data source"}
    for path in [f"/api/datasources/{created['id']}", "/api/datasources/uid/u1", "/api/datasources/name/prom"]:
        response = await client.delete(path, headers=ADMIN)
        assert response.status == 403
        assert await response.json() == {"message": "Cannot delete read-only data source"}
    assert await db.fetchval("SELECT count(*) FROM data_source") == 1


async def test_delete_bodies_differ_by_route(client, db):
    a = (await create(client, name="a", uid="ua"))["datasource"]
    b = (await create(client, name="b", uid="ub"))["datasource"]
    c = (await create(client, name="c", uid="uc"))["datasource"]
    response = await client.delete(f"/api/datasources/{a['id']}", headers=ADMIN)
    assert await response.json() == {"message": "Data source deleted"}
    response = await client.delete("/api/datasources/uid/ub", headers=ADMIN)
    assert await response.json() == {"id": b["id"], "message": "Data source deleted"}
    response = await client.delete("/api/datasources/name/c", headers=ADMIN)
    assert await response.json() == {"id": c["id"], "message": "Data source deleted"}
    assert await db.fetchval("SELECT count(*) FROM data_source") == 0


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/api/datasources/abc", 400, {"message": "id is invalid", "traceID": ""}),
        ("/api/datasources/0", 400, {"message": "Missing valid datasource id"}),
        ("/api/datasources/-1", 400, {"message": "Missing valid datasource id"}),
        ("/api/datasources/424242", 404, NOT_FOUND),
        ("/api/datasources/uid/nope", 404, NOT_FOUND),
        ("/api/datasources/name/nope", 404, NOT_FOUND),
    ],
)
async def test_delete_errors(client, path, status, body):
    response = await client.delete(path, headers=ADMIN)
    assert response.status == status
    assert await response.json() == body


async def test_unknown_api_route_and_wrong_method_are_json(client):
    response = await client.get("/api/nothing-here", headers=ADMIN)
    assert response.status == 404 and await response.json() == {"message": "Not found"}
    response = await client.patch("/api/datasources", headers=ADMIN)
    assert response.status == 405 and "message" in await response.json()


async def test_oversized_body_is_413_json(client, db):
    response = await client.post("/api/datasources", json=prom(jsonData={"x": "y" * (2 << 20)}), headers=ADMIN)
    assert response.status == 413
    assert await response.json() == {"message": "Request body too large"}
    assert await db.fetchval("SELECT count(*) FROM data_source") == 0


async def test_health_and_frontend_settings(client):
    response = await client.get("/api/health")
    assert response.status == 200
    assert await response.json() == {"commit": "gateway", "database": "ok", "version": "12.4.0"}
    response = await client.get("/api/frontend/settings", headers=ADMIN)
    assert (await response.json())["buildInfo"]["version"] == "12.4.0"
    assert (await client.get("/api/frontend/settings")).status == 401


# -- settings that no request could carry are refused at write time ----------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ({"jsonData": {"httpHeaderName1": "X-H1\rX"}, "secureJsonData": {"httpHeaderValue1": "v"}},
     "Validation error, invalid HTTP header in jsonData.httpHeaderName1"),
    ({"jsonData": {"httpHeaderName1": "Bad Name"}},
     "Validation error, invalid HTTP header in jsonData.httpHeaderName1"),
    ({"jsonData": {"httpHeaderName1": "X-H1", "httpHeaderName2": "X-Ü"}},
     "Validation error, invalid HTTP header in jsonData.httpHeaderName2"),
    ({"jsonData": {"httpHeaderName1": "X-H1"}, "secureJsonData": {"httpHeaderValue1": "evil\r\nX: 1"}},
     "Validation error, invalid HTTP header in secureJsonData.httpHeaderValue1"),
    ({"url": "http://127.0.0.1:1/c d"}, "Validation error, invalid URL"),
    ({"type": "influxdb_08", "database": "db\r\nX: 1"}, "Validation error, control characters in database"),
    ({"user": "u\nx"}, "Validation error, control characters in user"),
])
async def test_settings_that_cannot_be_sent_are_refused_on_create_and_update(client, db, extra, message):
    response = await client.post("/api/datasources", json=prom(**extra), headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {"message": message, "traceID": ""}
    assert await db.fetchval("SELECT count(*) FROM data_source") == 0
    created = await (await client.post("/api/datasources", json=prom(), headers=ADMIN)).json()
    response = await client.put(f"/api/datasources/uid/{created['datasource']['uid']}",
                                json=prom(**extra), headers=ADMIN)
    assert response.status == 400 and (await response.json())["message"] == message
    assert await db.fetchval("SELECT url FROM data_source") == "http://prom:9090"


async def test_a_header_value_in_the_message_is_never_echoed(client):
    response = await client.post("/api/datasources", headers=ADMIN, json=prom(
        jsonData={"httpHeaderName1": "X-Key"}, secureJsonData={"httpHeaderValue1": "s3cr3t\n"}))
    assert response.status == 400 and "s3cr3t" not in await response.text()


@pytest.mark.parametrize("depth", [101, 990, 5000])
async def test_deeply_nested_json_is_bad_request_data(client, db, depth):
    body = '{"name":"x","type":"prometheus","access":"proxy","jsonData":' + "[" * depth + "]" * depth + "}"
    for method, path in (("POST", "/api/datasources"), ("PUT", "/api/datasources/uid/none")):
        response = await client.request(method, path, data=body,
                                        headers={**ADMIN, "Content-Type": "application/json"})
        assert response.status == 400 and await response.json() == {"message": "bad request data", "traceID": ""}
    assert await db.fetchval("SELECT count(*) FROM data_source") == 0


async def test_nesting_up_to_the_bound_is_accepted(client):
    body = '{"name":"x","type":"prometheus","access":"proxy","jsonData":{"a":' + "[" * 98 + "]" * 98 + "}}"
    response = await client.post("/api/datasources", data=body, headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status == 200


@pytest.mark.parametrize("path", ["/api/orgs", "/api/serviceaccounts", "/api/serviceaccounts/1/tokens"])
async def test_names_too_long_for_the_database_are_bad_request_data(client, path):
    if path.endswith("tokens"):
        created = await client.post("/api/serviceaccounts", json={"name": "sa"}, headers=ADMIN)
        path = f"/api/serviceaccounts/{(await created.json())['id']}/tokens"
    response = await client.post(path, json={"name": "x" * 2800}, headers=ADMIN)
    assert response.status == 400 and (await response.json())["message"] == "bad request data"
