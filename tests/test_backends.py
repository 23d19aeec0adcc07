"""Health and resources per data source type, against real servers on loopback and the real Postgres."""

from __future__ import annotations

import base64
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from tests.conftest import ADMIN


class FakePrometheus:
    """A loopback server speaking the part of Prometheus' and Loki's HTTP API the backends use."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, str, bytes]] = []
        self.healthy = True

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path, request.query_string,
                              request.headers.get("Authorization", ""), body))
        if not self.healthy:
            return web.json_response({"status": "error", "error": "bad things"}, status=422)
        if request.path == "/api/v1/query":
            form = parse_qs(body.decode()) if body else parse_qs(request.query_string)
            assert form["query"] == ["1+1"]
            return web.json_response({"status": "success", "data": {"resultType": "scalar", "result": [4, "2"]}})
        if request.path in ("/api/v1/labels", "/loki/api/v1/labels", "/loki/api/v1/label/job/values"):
            return web.json_response({"status": "success", "data": ["job", "instance"]})
        return web.json_response({"status": "error"}, status=404)


@pytest.fixture
async def prometheus(aiohttp_server: Any) -> tuple[FakePrometheus, str]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)
    return fake, f"http://127.0.0.1:{server.port}"


async def add(client: Any, **body: Any) -> dict[str, Any]:
    body = {"access": "proxy", **body}
    response = await client.post("/api/datasources", json=body, headers=ADMIN)
    assert response.status == 200, await response.text()
    return (await response.json())["datasource"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_prometheus_health_runs_one_plus_one_through_the_transport(client, prometheus):
    fake, url = prometheus
    ds = await add(client, name="p", uid="p", type="prometheus", url=url, basicAuth=True, basicAuthUser="u",
                   secureJsonData={"basicAuthPassword": "pw"})
    response = await client.get("/api/datasources/uid/p/health", headers=ADMIN)
    assert response.status == 200
    assert await response.json() == {
        "details": {"application": "Prometheus", "features": {"rulerApiEnabled": False}},
        "message": "Successfully queried the Prometheus API.", "status": "OK",
    }
    method, path, _, auth, body = fake.requests[-1]
    assert (method, path, body) == ("POST", "/api/v1/query", b"query=1%2B1&time=4")
    assert auth == "Basic " + base64.b64encode(b"u:pw").decode()
    by_id = await client.post(f"/api/datasources/{ds['id']}/health", headers=ADMIN)  # any method
    assert by_id.status == 200
    fake.healthy = False
    response = await client.get("/api/datasources/uid/p/health", headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {
        "message": "bad things - There was an error returned querying the Prometheus API.", "status": "ERROR"}


async def test_prometheus_health_with_get_method_and_unreachable_server(client, prometheus):
    fake, url = prometheus
    await add(client, name="p", uid="p", type="prometheus", url=url, jsonData={"httpMethod": "GET"})
    assert (await client.get("/api/datasources/uid/p/health", headers=ADMIN)).status == 200
    assert fake.requests[-1][:3] == ("GET", "/api/v1/query", "query=1%2B1&time=4")
    await add(client, name="down", uid="down", type="prometheus", url=f"http://127.0.0.1:{_closed_port()}")
    response = await client.get("/api/datasources/uid/down/health", headers=ADMIN)
    body = await response.json()
    assert response.status == 400 and body["status"] == "ERROR"
    assert body["message"].endswith("There was an error returned querying the Prometheus API.")


async def test_loki_health_asks_its_labels(client, prometheus):
    fake, url = prometheus
    await add(client, name="l", uid="l", type="loki", url=url)
    response = await client.get("/api/datasources/uid/l/health", headers=ADMIN)
    assert await response.json() == {"message": "Data source successfully connected.", "status": "OK"}
    assert fake.requests[-1][:2] == ("GET", "/loki/api/v1/labels")
    fake.healthy = False
    response = await client.get("/api/datasources/uid/l/health", headers=ADMIN)
    assert response.status == 400 and (await response.json())["status"] == "ERROR"


async def test_testdata_is_always_healthy_and_lists_scenarios(client):
    await add(client, name="td", uid="td", type="testdata")
    response = await client.get("/api/datasources/uid/td/health", headers=ADMIN)
    assert await response.json() == {"message": "Data source is working", "status": "OK"}
    scenarios = await (await client.get("/api/datasources/uid/td/resources/scenarios", headers=ADMIN)).json()
    assert {"random_walk", "csv_metric_values", "logs"} <= {s["id"] for s in scenarios}
    hello = await client.get("/api/datasources/uid/td/resources", headers=ADMIN)
    assert await hello.text() == "Hello world from test datasource!"
    assert hello.headers["Content-Security-Policy"] == "sandbox"


async def test_postgres_health_connects_for_real(client, database_url):
    parts = urlsplit(database_url)
    # the embedded server listens on a Unix socket only: its directory works as the url too
    url = f"{parts.hostname}:{parts.port or 5432}" if parts.hostname else parse_qs(parts.query)["host"][0]
    await add(client, name="pg", uid="pg", type="postgres", url=url, user=parts.username or "postgres",
              database=parts.path.lstrip("/"), jsonData={"sslmode": "disable"})
    response = await client.get("/api/datasources/uid/pg/health", headers=ADMIN)
    assert await response.json() == {"message": "Database Connection OK", "status": "OK"}
    await add(client, name="pg2", uid="pg2", type="grafana-postgresql-datasource",
              url=f"127.0.0.1:{_closed_port()}", user="x", jsonData={"sslmode": "disable"})
    response = await client.get("/api/datasources/uid/pg2/health", headers=ADMIN)
    body = await response.json()
    assert response.status == 400 and body["message"].startswith("Network error: Failed to connect to the server")


async def test_types_without_health_answer_as_grafana(client, make_token):
    await add(client, name="my", uid="my", type="mysql", url="db:3306")
    response = await client.get("/api/datasources/uid/my/health", headers=ADMIN)
    assert response.status == 404
    assert await response.json() == {"message": "Method not implemented", "messageId": "plugin.notImplemented",
                                     "statusCode": 404, "traceID": ""}
    await add(client, name="x", uid="x", type="some-external-plugin", url="http://x")
    response = await client.get("/api/datasources/uid/x/health", headers=ADMIN)
    assert (await response.json())["messageId"] == "plugin.notRegistered"
    response = await client.get("/api/datasources/uid/nope/health", headers=ADMIN)
    assert response.status == 404
    nobody = await make_token("None")
    assert (await client.get("/api/datasources/uid/my/health", headers=nobody)).status == 403


async def test_prometheus_and_loki_resources_pass_through(client, prometheus):
    fake, url = prometheus
    await add(client, name="p", uid="p", type="prometheus", url=url, basicAuth=True, basicAuthUser="u",
              secureJsonData={"basicAuthPassword": "pw"})
    response = await client.get("/api/datasources/uid/p/resources/api/v1/labels?start=1&end=2",
                                headers={**ADMIN, "Cookie": "grafana_session=s"})
    assert response.status == 200
    assert await response.json() == {"status": "success", "data": ["job", "instance"]}
    method, path, query, auth, _ = fake.requests[-1]
    assert (method, path, query) == ("GET", "/api/v1/labels", "start=1&end=2")
    assert auth == "Basic " + base64.b64encode(b"u:pw").decode()
    assert (await client.get("/api/datasources/uid/p/resources/other", headers=ADMIN)).status == 404
    response = await client.options("/api/datasources/uid/p/resources/api/v1/labels", headers=ADMIN)
    assert response.status == 405 and response.headers["Allow"] == "DELETE, GET, PATCH, POST, PUT"
    await add(client, name="l", uid="l", type="loki", url=url)
    response = await client.get("/api/datasources/uid/l/resources/label/job/values", headers=ADMIN)
    assert response.status == 200 and fake.requests[-1][1] == "/loki/api/v1/label/job/values"
