"""Authentication, org selection and RBAC as Grafana evaluates them (spec-crud §2, §3, §10)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from gateway.accounts import _checksum, is_well_formed_token, new_token
from gateway.auth import scope_matches
from tests.conftest import ADMIN, prom

UNAUTHORIZED = {"extra": None, "message": "Unauthorized", "messageId": "auth.unauthorized", "statusCode": 401,
                "traceID": ""}
INVALID_KEY = {"extra": None, "message": "Invalid API key", "messageId": "api-key.invalid", "statusCode": 401,
               "traceID": ""}


def test_token_checksum_matches_grafanas_vector():
    assert _checksum("yscW25imSKJIuav8zF37RZmnbiDvB05G") == "fcaaf58a"
    assert is_well_formed_token("glsa_yscW25imSKJIuav8zF37RZmnbiDvB05G_fcaaf58a")
    assert not is_well_formed_token("glsa_yscW25imSKJIuav8zF37RZmnbiDvB05G_fcaaf58b")
    assert re.fullmatch(r"glsa_[0-9A-Za-z]{32}_[0-9a-f]{8}", new_token())


@pytest.mark.parametrize(
    ("granted", "target", "expected"),
    [
        ("datasources:*", "datasources:id:5", True),
        ("datasources:uid:*", "datasources:uid:abc", True),
        ("datasources:uid:*", "datasources:id:5", False),
        ("datasources:uid:abc", "datasources:uid:abc", True),
        ("datasources:uid:ab*", "datasources:uid:abc", False),  # * only right after ':' or '/'
        ("*", "datasources:uid:abc", True),
        ("datasources:uid:abc", "datasources:uid:abcd", False),
    ],
)
def test_scope_matching(granted, target, expected):
    assert scope_matches(granted, target) is expected


async def create(client: Any, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/datasources", json=prom(**body), headers=ADMIN)
    assert response.status == 200, await response.text()
    return (await response.json())["datasource"]


async def test_no_credentials_is_401_with_grafanas_body(client):
    response = await client.get("/api/datasources")
    assert response.status == 401
    assert await response.json() == UNAUTHORIZED


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-token", "Bearer glsa_yscW25imSKJIuav8zF37RZmnbiDvB05G_fcaaf58b",
     "Bearer glsa_yscW25imSKJIuav8zF37RZmnbiDvB05G_fcaaf58a",  # well formed, never issued
     "Basic " + base64.b64encode(b"api_key:glsa_nope").decode()],
)
async def test_bad_tokens_are_401_invalid_api_key(client, header):
    response = await client.get("/api/datasources", headers={"Authorization": header})
    assert response.status == 401
    assert await response.json() == INVALID_KEY


async def test_tokens_work_as_bearer_and_as_basic_api_key(client, make_token):
    headers = await make_token("Viewer")
    token = headers["Authorization"].removeprefix("Bearer ")
    assert (await client.get("/api/datasources", headers=headers)).status == 200
    basic = {"Authorization": "Basic " + base64.b64encode(f"api_key:{token}".encode()).decode()}
    assert (await client.get("/api/datasources", headers=basic)).status == 200


async def test_expired_token_is_401_expired(client, make_token, db):
    headers = await make_token("Viewer")
    await db.execute("UPDATE api_token SET expires = now() - interval '1 second'")
    response = await client.get("/api/datasources", headers=headers)
    assert response.status == 401
    assert (await response.json())["messageId"] == "api-key.expired"


async def test_token_in_another_org_is_401_org_mismatch(client, make_token):
    headers = await make_token("Admin")
    response = await client.get("/api/datasources", headers={**headers, "X-Grafana-Org-Id": "2"})
    assert response.status == 401
    assert await response.json() == {
        "extra": None, "message": "API key does not belong to the requested organization",
        "messageId": "api-key.organization-mismatch", "statusCode": 401, "traceID": "",
    }


# Grafana OSS: Viewer and Editor read and query, Admin writes (spec-crud §3.4).
MATRIX = [
    # role, list/get, id-by-name, create, update, delete
    ("Viewer", 200, 200, 403, 403, 403),
    ("Editor", 200, 200, 403, 403, 403),
    ("Admin", 200, 200, 200, 200, 200),
    ("None", 403, 403, 403, 403, 403),
]


@pytest.mark.parametrize(("role", "read", "id_read", "create_", "update", "delete"), MATRIX)
async def test_rbac_matrix_per_basic_role(client, make_token, role, read, id_read, create_, update, delete):
    await create(client, uid="u1")
    headers = await make_token(role)
    assert (await client.get("/api/datasources", headers=headers)).status == read
    assert (await client.get("/api/datasources/uid/u1", headers=headers)).status == read
    assert (await client.get("/api/datasources/name/prom", headers=headers)).status == read
    assert (await client.get("/api/datasources/id/prom", headers=headers)).status == id_read
    response = await client.post("/api/datasources", json=prom(name="new"), headers=headers)
    assert response.status == create_
    if create_ == 403:
        body = await response.json()
        assert set(body) == {"accessErrorId", "message", "title"}
        assert re.fullmatch(r"ACE\d{10}", body["accessErrorId"])
        assert body["message"] == ("You'll need additional permissions to perform this action. "
                                   "Permissions needed: datasources:create")
        assert body["title"] == "Access denied"
    assert (await client.put("/api/datasources/uid/u1", json=prom(), headers=headers)).status == update
    assert (await client.delete("/api/datasources/uid/u1", headers=headers)).status == delete


async def test_scoped_permission_on_one_uid(client, make_token):
    mine = await create(client, name="mine", uid="mine")
    await create(client, name="other", uid="other")
    headers = await make_token("None", (("datasources:read", "datasources:uid:mine"),
                                        ("datasources:write", "datasources:uid:mine")))
    listed = await (await client.get("/api/datasources", headers=headers)).json()
    assert [d["uid"] for d in listed] == ["mine"]  # the list keeps what the caller may read
    assert (await client.get("/api/datasources/uid/mine", headers=headers)).status == 200
    assert (await client.get(f"/api/datasources/{mine['id']}", headers=headers)).status == 200  # id resolved
    assert (await client.get("/api/datasources/name/mine", headers=headers)).status == 200  # name resolved
    assert (await client.get("/api/datasources/uid/other", headers=headers)).status == 403
    assert (await client.get("/api/datasources/name/other", headers=headers)).status == 403
    # unknown ids and names cannot be resolved, so a scoped caller sees 403 rather than 404
    assert (await client.get("/api/datasources/999", headers=headers)).status == 403
    assert (await client.get("/api/datasources/name/nope", headers=headers)).status == 403
    assert (await client.put("/api/datasources/uid/mine", json=prom(name="mine"), headers=headers)).status == 200
    assert (await client.put("/api/datasources/uid/other", json=prom(name="other"), headers=headers)).status == 403
    assert (await client.delete("/api/datasources/uid/mine", headers=headers)).status == 403
    meta = await (await client.get("/api/datasources/uid/mine?accesscontrol=true", headers=headers)).json()
    assert meta["accessControl"] == {"datasources:read": True, "datasources:write": True}


async def test_wildcard_scope_passes_before_lookup_so_unknown_id_is_404(client, make_token):
    headers = await make_token("None", (("datasources:read", "datasources:*"),))
    assert (await client.get("/api/datasources/999", headers=headers)).status == 404


async def test_org_isolation(client, make_token):
    response = await client.post("/api/orgs", json={"name": "second"}, headers=ADMIN)
    assert await response.json() == {"message": "Organization created", "orgId": 2}
    org2 = {**ADMIN, "X-Grafana-Org-Id": "2"}
    in_org1 = await create(client, name="shared", uid="same")
    response = await client.post("/api/datasources", json=prom(name="shared", uid="same"), headers=org2)
    assert response.status == 200  # names and uids are unique per org
    in_org2 = (await response.json())["datasource"]
    assert in_org2["orgId"] == 2 and in_org2["id"] != in_org1["id"]
    token1 = await make_token("Admin")
    token2 = await make_token("Admin", org_id=2)
    listed = await (await client.get("/api/datasources", headers=token2)).json()
    assert [d["id"] for d in listed] == [in_org2["id"]]
    assert (await client.get(f"/api/datasources/{in_org1['id']}", headers=token2)).status == 404
    assert (await client.delete(f"/api/datasources/{in_org1['id']}", headers=token2)).status == 404
    assert (await client.get(f"/api/datasources/{in_org2['id']}", headers=token1)).status == 404
    via_param = await (await client.get("/api/datasources?targetOrgId=2", headers=ADMIN)).json()
    assert [d["id"] for d in via_param] == [in_org2["id"]]
    # an org that does not exist gives the admin no role there
    assert (await client.get("/api/datasources", headers={**ADMIN, "X-Grafana-Org-Id": "77"})).status == 403


async def test_orgs_and_service_accounts_api_shapes(client):
    response = await client.get("/api/orgs", headers=ADMIN)
    assert await response.json() == [{"id": 1, "name": "Main Org."}]
    response = await client.post("/api/serviceaccounts", json={"name": "ci", "role": "Editor"}, headers=ADMIN)
    assert response.status == 201
    sa = await response.json()
    assert {k: sa[k] for k in ("id", "name", "login", "orgId", "isDisabled", "role")} == {
        "id": 2, "name": "ci", "login": "sa-ci", "orgId": 1, "isDisabled": False, "role": "Editor"}
    response = await client.post(f"/api/serviceaccounts/{sa['id']}/tokens", json={"name": "t1"}, headers=ADMIN)
    token = await response.json()
    assert list(token) == ["id", "key", "name"] and is_well_formed_token(token["key"])
    bearer = {"Authorization": f"Bearer {token['key']}"}
    assert (await client.get("/api/datasources", headers=bearer)).status == 200
    listed = await (await client.get(f"/api/serviceaccounts/{sa['id']}/tokens", headers=ADMIN)).json()
    assert [t["name"] for t in listed] == ["t1"] and "key" not in listed[0]
    response = await client.delete(f"/api/serviceaccounts/{sa['id']}/tokens/{token['id']}", headers=ADMIN)
    assert await response.json() == {"message": "API key deleted"}
    assert (await client.get("/api/datasources", headers=bearer)).status == 401  # cache dropped at once
    # only admins manage service accounts; bad bodies are 400
    assert (await client.post("/api/serviceaccounts", json={"name": "x"}, headers=bearer)).status == 401
    response = await client.post("/api/serviceaccounts", json={"name": "x", "role": "King"}, headers=ADMIN)
    assert response.status == 400
    response = await client.post(f"/api/serviceaccounts/{sa['id']}/tokens",
                                 json={"name": "forever", "secondsToLive": 10**20}, headers=ADMIN)
    assert response.status == 400  # out of range is a client mistake, not a 500
    response = await client.post("/api/serviceaccounts/424242/tokens", json={"name": "x"}, headers=ADMIN)
    assert response.status == 404
    viewer = await client.post(f"/api/serviceaccounts/{sa['id']}/tokens", json={"name": "t2"}, headers=ADMIN)
    viewer_headers = {"Authorization": f"Bearer {(await viewer.json())['key']}"}
    assert (await client.post("/api/orgs", json={"name": "x"}, headers=viewer_headers)).status == 403


async def test_tokens_are_stored_only_as_hashes(client, db):
    response = await client.post("/api/serviceaccounts", json={"name": "ci", "role": "Admin"}, headers=ADMIN)
    sa = await response.json()
    token = await (await client.post(f"/api/serviceaccounts/{sa['id']}/tokens", json={"name": "t"},
                                     headers=ADMIN)).json()
    rows = await db.fetch("SELECT * FROM api_token")
    assert token["key"] not in repr([dict(r) for r in rows])
    assert token["key"].split("_")[1] not in repr([dict(r) for r in rows])
