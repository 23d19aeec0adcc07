"""The data source proxy against real upstream servers on loopback that record what they receive."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from yarl import URL

from gateway.api.proxy import climbs_above_base, sanitize_uri
from gateway.app import create_app
from gateway.http.client import clean_path, join_path
from tests.conftest import ADMIN, make_config
from tests.tls import TestCA, make_tls

SECRET = "upstream-pass-9f3"


class Recorder:
    """An upstream that records every request and answers per path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.started: asyncio.Event = asyncio.Event()
        self.cancelled: asyncio.Event = asyncio.Event()
        self.stream_cut: asyncio.Event = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read() if request.path != "/upload" else b""
        record = {"method": request.method, "raw_path": request.raw_path, "headers": request.headers.copy(),
                  "body": body, "peer": request.remote}
        self.requests.append(record)
        path = request.path
        if path == "/status/401":
            return web.Response(status=401, text="nope", headers={"WWW-Authenticate": "Basic"})
        if path == "/cookies":
            response = web.json_response({"ok": True})
            response.set_cookie("upstream", "x")
            response.headers["Content-Security-Policy"] = "default-src *"
            response.headers["ETag"] = '"v1"'
            return response
        if path == "/slow-headers":
            self.started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return web.Response(text="late")
        if path == "/upload":
            total = 0
            async for chunk in request.content.iter_any():
                total += len(chunk)
            record["uploaded"] = total
            return web.json_response({"received": total})
        if path == "/stream":
            response = web.StreamResponse()
            response.content_type = "application/octet-stream"
            await response.prepare(request)
            size = int(request.query.get("mib", "1"))
            chunk = os.urandom(1 << 16)
            try:
                for _ in range(size * 16):
                    await response.write(chunk)
            except ConnectionResetError:
                self.stream_cut.set()
                return response  # quietly: the test looks for error logs of the gateway
            except asyncio.CancelledError:
                self.stream_cut.set()
                raise
            await response.write_eof()
            return response
        if path == "/gib":
            response = web.StreamResponse()
            response.content_length = 1 << 30
            await response.prepare(request)
            block = bytes(1 << 20)
            for _ in range(1024):
                await response.write(block)
            await response.write_eof()
            return response
        if path == "/stall":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"partial")
            await asyncio.sleep(30)
            return response
        if path == "/cached":
            return web.Response(text="c", headers={"Cache-Control": "max-age=60", "Expires": "Thu, 01 Jan 2099"})
        if path == "/gzip":
            return web.Response(body=b"\x1f\x8bcompressed", headers={"Content-Encoding": "gzip"})
        return web.json_response({"path": request.path}, headers={"X-Upstream": "1"})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Recorder, str]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = await aiohttp_server(app)
    return recorder, f"http://127.0.0.1:{server.port}"


async def add(client: Any, url: str, **body: Any) -> dict[str, Any]:
    payload = {"name": body.pop("name", "up"), "type": body.pop("type", "generic-http"), "access": "proxy",
               "url": url, "uid": body.pop("uid", "up"), **body}
    response = await client.post("/api/datasources", json=payload, headers=ADMIN)
    assert response.status == 200, await response.text()
    return (await response.json())["datasource"]


# -- pure functions ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("base", "suffix", "joined"),
    [("/root/", "path/to/folder/", "/root/path/to/folder/"), ("", "/double", "/double"),
     ("/base/", "/double", "/base/double"), ("", "//double", "//double"), ("/prefix", "", "/prefix"), ("", "", "/"),
     ("", "api/v1/query", "/api/v1/query")],
)
def test_join_url_fragments(base, suffix, joined):
    assert join_path(base, suffix) == joined


def test_route_matching_uses_normalised_decoded_paths():
    assert clean_path(unquote("/api/v1//status/flags")) == "api/v1/status/flags"
    assert clean_path(unquote("api/v1/status/%66lags")) == "api/v1/status/flags"
    assert clean_path(unquote("x/../api/v1/query")) == "api/v1/query"
    assert clean_path("") == ""
    assert climbs_above_base("../admin") and climbs_above_base("a/../../b") and climbs_above_base("%2e%2E/x")
    assert not climbs_above_base("a/../b") and not climbs_above_base("a/./b/")


def test_encoded_slashes_cannot_hide_dot_segments():
    assert climbs_above_base("..%2f..%2fetc") and climbs_above_base("%2e%2e%2f%2e%2e%2fetc%2fpasswd")
    assert climbs_above_base("a%2F..%2F..%2Fb") and not climbs_above_base("a%2F..%2Fb")


# -- routing, paths, queries ---------------------------------------------------------------------

async def test_proxies_by_uid_and_id_keeping_encoding_and_query_byte_for_byte(client, upstream):
    recorder, url = upstream
    ds = await add(client, url + "/root/?dropped=1")
    raw = URL("/api/datasources/proxy/uid/up/path/%2Ftest%2Ftest%2F?query=%2Ftest&b=%20", encoded=True)
    response = await client.get(raw, headers=ADMIN)
    assert response.status == 200
    assert recorder.requests[-1]["raw_path"] == "/root/path/%2Ftest%2Ftest%2F?query=%2Ftest&b=%20"
    response = await client.get(f"/api/datasources/proxy/{ds['id']}/api/v1/labels", headers=ADMIN)
    assert response.status == 200
    assert recorder.requests[-1]["raw_path"] == "/root/api/v1/labels"
    await client.get("/api/datasources/proxy/uid/up", headers=ADMIN)
    assert recorder.requests[-1]["raw_path"] == "/root/"
    await client.get("/api/datasources/proxy/uid/up/trailing/", headers=ADMIN)
    assert recorder.requests[-1]["raw_path"] == "/root/trailing/"


async def test_dot_segments_climbing_above_the_base_path_are_refused(client, upstream):
    recorder, url = upstream
    await add(client, url + "/base")
    for path in ["../admin", "a/../../admin", "%2e%2e/admin", ".%2E/admin"]:
        response = await client.get(URL(f"/api/datasources/proxy/uid/up/{path}", encoded=True), headers=ADMIN)
        assert response.status in (400, 404), path  # 404 when the router itself resolved the dots
        assert "message" in await response.json()
    assert recorder.requests == []
    response = await client.get(URL("/api/datasources/proxy/uid/up/a/../b", encoded=True), headers=ADMIN)
    assert response.status == 200


async def test_lookup_errors(client, upstream, make_token):
    _, url = upstream
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/nope/x", headers=ADMIN)
    assert response.status == 404
    assert await response.json() == {"message": "Unable to find datasource", "traceID": ""}
    response = await client.get("/api/datasources/proxy/abc/x", headers=ADMIN)
    assert response.status == 400 and await response.json() == {"message": "id is invalid", "traceID": ""}
    response = await client.get("/api/datasources/proxy/uid/b%20d/x", headers=ADMIN)
    assert response.status == 400 and await response.json() == {"message": "UID is invalid"}
    assert (await client.get("/api/datasources/proxy/uid/up/x")).status == 401
    nobody = await make_token("None")
    response = await client.get("/api/datasources/proxy/uid/up/x", headers=nobody)
    assert response.status == 403
    assert (await response.json())["message"].endswith("Permissions needed: datasources:query")
    other = await make_token("None", (("datasources:query", "datasources:uid:other"),))
    response = await client.get("/api/datasources/proxy/uid/up/x", headers=other)
    assert response.status == 403
    assert await response.json() == {"message": "Access denied to datasource", "traceID": ""}


# -- headers -------------------------------------------------------------------------------------

async def test_request_headers_follow_grafanas_rules(client, upstream):
    recorder, url = upstream
    await add(client, url, basicAuth=True, basicAuthUser="bob",
              jsonData={"httpHeaderName1": "X-Api-Key", "httpHeaderName2": "X-Tenant",
                        "keepCookies": ["keep", "pre[]"]},
              secureJsonData={"basicAuthPassword": SECRET, "httpHeaderValue1": "key-1", "httpHeaderValue2": "t-2"})
    headers = {
        **ADMIN, "Cookie": "keep=1; grafana_session=s; drop=2; prefix_a=3", "Origin": "http://evil",
        "Referer": "http://grafana/d/x", "X-Forwarded-For": "10.0.0.1", "X-Forwarded-Host": "h",
        "Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Custom": "kept", "Accept-Encoding": "br",
        "X-Api-Key": "client-value", "User-Agent": "curl/8", "X-Grafana-User": "spoof", "Proxy-Authorization": "p",
    }
    await client.get("/api/datasources/proxy/uid/up/x", headers=headers)
    sent = recorder.requests[-1]["headers"]
    assert sent["Authorization"] == "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert sent.getall("X-Api-Key") == ["key-1"] and sent["X-Tenant"] == "t-2"
    assert sent["Cookie"] == "keep=1; prefix_a=3"
    assert "Origin" not in sent and "Referer" not in sent and "X-Forwarded-Host" not in sent
    assert sent["X-Grafana-Referer"] == "http://grafana/d/x"
    assert sent["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert "X-Hop" not in sent and "Proxy-Authorization" not in sent and "X-Grafana-User" not in sent
    assert sent["X-Custom"] == "kept" and sent["Accept-Encoding"] == "br"
    assert sent["User-Agent"] == "Grafana/12.4.0"
    assert sent["Host"] == url.removeprefix("http://")


async def test_callers_credentials_never_reach_the_upstream_and_x_ds_authorization_does(client, upstream):
    recorder, url = upstream
    await add(client, url)
    await client.get("/api/datasources/proxy/uid/up/x", headers={**ADMIN, "Cookie": "grafana_session=abc"})
    sent = recorder.requests[-1]["headers"]
    assert "Authorization" not in sent and "Cookie" not in sent
    await client.get("/api/datasources/proxy/uid/up/x", headers={**ADMIN, "X-DS-Authorization": "Bearer ds"})
    sent = recorder.requests[-1]["headers"]
    assert sent["Authorization"] == "Bearer ds" and "X-DS-Authorization" not in sent


async def test_legacy_user_and_password_become_basic_auth(client, upstream):
    recorder, url = upstream
    await add(client, url, user="legacy", secureJsonData={"password": SECRET})
    await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
    assert recorder.requests[-1]["headers"]["Authorization"] == "Basic " + base64.b64encode(
        f"legacy:{SECRET}".encode()).decode()


async def test_user_header_when_configured(aiohttp_client, database_url, upstream):
    recorder, url = upstream
    client = await aiohttp_client(create_app(make_config(database_url, dataproxy={"send_user_header": True})))
    await add(client, url)
    await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
    assert recorder.requests[-1]["headers"]["X-Grafana-User"] == "admin"


async def test_response_headers_drop_set_cookie_and_add_sandbox_csp(client, upstream):
    _, url = upstream
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/cookies", headers=ADMIN)
    assert response.status == 200
    assert "Set-Cookie" not in response.headers
    assert response.headers["Content-Security-Policy"] == "sandbox"
    assert response.headers["ETag"] == '"v1"'
    assert await response.json() == {"ok": True}


async def test_compressed_bodies_pass_through_untouched(client, upstream):
    _, url = upstream
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/gzip", headers={**ADMIN, "Accept-Encoding": "gzip"},
                                auto_decompress=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert await response.read() == b"\x1f\x8bcompressed"


async def test_upstream_401_becomes_400_unless_configured(client, aiohttp_client, database_url, upstream):
    _, url = upstream
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/status/401", headers=ADMIN)
    assert response.status == 400
    assert await response.text() == "Authentication to data source failed"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "WWW-Authenticate" not in response.headers
    passing = await aiohttp_client(create_app(make_config(database_url, gateway={"proxy_pass_through_401": True})))
    response = await passing.get("/api/datasources/proxy/uid/up/status/401", headers=ADMIN)
    assert response.status == 401 and await response.text() == "nope"


# -- per-type rules ------------------------------------------------------------------------------

async def test_prometheus_write_protection_and_allow_listed_posts(client, upstream, make_token):
    recorder, url = upstream
    await add(client, url, type="prometheus")
    response = await client.post("/api/datasources/proxy/uid/up/api/v1/query", data={"query": "1+1"}, headers=ADMIN)
    assert response.status == 200
    assert recorder.requests[-1]["body"] == b"query=1%2B1"
    for path in ["api/v1/admin/tsdb/delete_series", "api//v1/admin/x"]:
        response = await client.post(f"/api/datasources/proxy/uid/up/{path}", headers=ADMIN)
        assert response.status == 403
        assert await response.json() == {
            "message": "non allow-listed POSTs not allowed on proxied prometheus datasource"}
    assert (await client.put("/api/datasources/proxy/uid/up/api/v1/query", headers=ADMIN)).status == 403
    viewer = await make_token("Viewer")
    for path in ["api/v1/status/flags", "api//v1/status/flags", "api/v1/status/%66lags", "x/../api/v1/status/flags"]:
        response = await client.get(URL(f"/api/datasources/proxy/uid/up/{path}", encoded=True), headers=viewer)
        assert response.status == 403, path  # Admin-only route, however the path is spelled (CVE-2025-3454)
        assert await response.json() == {"message": "plugin proxy route access denied"}
    assert (await client.get("/api/datasources/proxy/uid/up/api/v1/status/flags", headers=ADMIN)).status == 200


async def test_loki_refuses_writes_and_elasticsearch_allows_only_msearch(client, upstream):
    _, url = upstream
    await add(client, url, type="loki", name="loki", uid="loki")
    response = await client.post("/api/datasources/proxy/uid/loki/loki/api/v1/push", headers=ADMIN)
    assert await response.json() == {"message": "non allow-listed POSTs not allowed on proxied loki datasource"}
    await add(client, url, type="elasticsearch", name="es", uid="es")
    assert (await client.post("/api/datasources/proxy/uid/es/_msearch", data=b"{}", headers=ADMIN)).status == 200
    response = await client.post("/api/datasources/proxy/uid/es/_bulk", headers=ADMIN)
    assert await response.json() == {
        "message": "posts not allowed on proxied Elasticsearch datasource except on /_msearch"}
    for path in ("_msearch/", "%5Fmsearch"):  # Grafana compares the path exactly
        response = await client.post(URL(f"/api/datasources/proxy/uid/es/{path}", encoded=True), data=b"{}",
                                     headers=ADMIN)
        assert response.status == 403, path
    response = await client.delete("/api/datasources/proxy/uid/es/idx", headers=ADMIN)
    assert await response.json() == {"message": "deletes not allowed on proxied Elasticsearch datasource"}


async def test_whitelist(aiohttp_client, database_url, upstream):
    recorder, url = upstream
    client = await aiohttp_client(create_app(make_config(
        database_url, security={"data_source_proxy_whitelist": ("allowed:9090",)})))
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
    assert response.status == 403
    assert await response.json() == {"message": "Data proxy hostname and ip are not included in whitelist"}
    assert recorder.requests == []
    allowed = await aiohttp_client(create_app(make_config(
        database_url, security={"data_source_proxy_whitelist": (url.removeprefix("http://"),)})))
    assert (await allowed.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)).status == 200


# -- failures and streaming ----------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_upstream_is_502_and_slow_headers_504(aiohttp_client, database_url, upstream):
    _, url = upstream
    client = await aiohttp_client(create_app(make_config(database_url, dataproxy={"timeout": 0.3})))
    await add(client, f"http://127.0.0.1:{_closed_port()}", uid="down", name="down")
    response = await client.get("/api/datasources/proxy/uid/down/x", headers=ADMIN)
    assert response.status == 502 and "message" in await response.json()
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/slow-headers", headers=ADMIN)
    assert response.status == 504 and "message" in await response.json()


async def test_per_data_source_timeout_from_json_data(client, upstream):
    _, url = upstream
    await add(client, url, jsonData={"timeout": "0.2"})
    response = await client.get("/api/datasources/proxy/uid/up/slow-headers", headers=ADMIN)
    assert response.status == 504


async def test_client_disconnect_cancels_the_upstream_call_at_once(client, upstream):
    recorder, url = upstream
    await add(client, url)
    request = asyncio.ensure_future(client.get("/api/datasources/proxy/uid/up/slow-headers", headers=ADMIN))
    await asyncio.wait_for(recorder.started.wait(), 5)
    request.cancel()
    await asyncio.wait_for(recorder.cancelled.wait(), 5)


async def test_client_leaving_mid_body_ends_the_upstream_stream_quietly(client, upstream, caplog):
    recorder, url = upstream
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/stream?mib=1024", headers=ADMIN)
    assert response.status == 200 and await response.content.readany()
    response.close()  # drops the connection with most of the body unsent
    await asyncio.wait_for(recorder.stream_cut.wait(), 5)
    await asyncio.sleep(0.1)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_upload_is_streamed_up(client, upstream):
    _recorder, url = upstream
    await add(client, url)

    async def body():
        for _ in range(64):
            yield b"x" * (1 << 16)

    response = await client.post("/api/datasources/proxy/uid/up/upload", data=body(), headers=ADMIN)
    assert await response.json() == {"received": 64 << 16}


async def test_large_chunked_response_streams_through(client, upstream):
    _, url = upstream
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/stream?mib=32", headers=ADMIN)
    total = 0
    async for chunk in response.content.iter_any():
        total += len(chunk)
    assert response.status == 200 and total == 32 << 20


async def test_response_limit_ends_the_stream_with_an_error_not_a_short_200(aiohttp_client, database_url, upstream):
    _, url = upstream
    client = await aiohttp_client(create_app(make_config(database_url, dataproxy={"response_limit": 1 << 20})))
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/stream?mib=4", headers=ADMIN)
    with pytest.raises(Exception):  # noqa: B017 - any client-side error: the body is cut, not completed
        await response.read()


async def test_stalled_upstream_body_is_cut_by_the_idle_read_timeout(aiohttp_client, database_url, upstream):
    _, url = upstream
    client = await aiohttp_client(create_app(make_config(database_url, gateway={"proxy_idle_read_timeout": 0.3})))
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/stall", headers=ADMIN)
    assert response.status == 200
    with pytest.raises(Exception):  # noqa: B017
        await asyncio.wait_for(response.read(), 5)


async def test_an_upstream_that_stops_reading_the_upload_is_cut_by_the_idle_write_timeout(aiohttp_client,
                                                                                          database_url):
    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(10)  # takes no body bytes and never answers
        writer.close()

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    async with server:
        client = await aiohttp_client(create_app(make_config(
            database_url, gateway={"proxy_idle_write_timeout": 0.5}, dataproxy={"timeout": 30.0})))
        await add(client, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        started = asyncio.get_running_loop().time()
        response = await client.post("/api/datasources/proxy/uid/up/upload", data=os.urandom(32 << 20),
                                     headers=ADMIN)
        elapsed = asyncio.get_running_loop().time() - started
        assert response.status == 504 and elapsed < 10  # the write timeout, not the 30 s header timeout


async def test_changed_password_is_used_by_another_replica_within_a_second(aiohttp_client, config, upstream):
    recorder, url = upstream
    first = await aiohttp_client(create_app(config))
    second = await aiohttp_client(create_app(config))
    await add(first, url, basicAuth=True, basicAuthUser="u", secureJsonData={"basicAuthPassword": "old"})
    await second.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)  # cached in the second replica
    assert recorder.requests[-1]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"u:old").decode()
    response = await first.put("/api/datasources/uid/up", headers=ADMIN, json={
        "name": "up", "type": "generic-http", "access": "proxy", "url": url, "basicAuth": True,
        "basicAuthUser": "u", "secureJsonData": {"basicAuthPassword": "new"}})
    assert response.status == 200
    expected = "Basic " + base64.b64encode(b"u:new").decode()
    deadline = asyncio.get_running_loop().time() + 1.0
    while True:
        await second.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
        if recorder.requests[-1]["headers"]["Authorization"] == expected:
            break
        assert asyncio.get_running_loop().time() < deadline, "the second replica kept the old password"
        await asyncio.sleep(0.05)


def _rss() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def test_a_1_gib_body_streams_through_with_bounded_memory(client, upstream):
    """Upstream, gateway and client share this process: its RSS bounds the gateway's growth."""
    _, url = upstream
    await add(client, url)
    before = peak = _rss()
    response = await client.get("/api/datasources/proxy/uid/up/gib", headers=ADMIN)
    assert response.headers["Content-Length"] == str(1 << 30)
    total = 0
    async for chunk in response.content.iter_chunked(1 << 20):
        total += len(chunk)
        if total % (64 << 20) < len(chunk):
            peak = max(peak, _rss())
    assert total == 1 << 30
    assert peak - before < 64 << 20, f"RSS grew by {(peak - before) >> 20} MiB"


async def test_websocket_upgrade_is_bridged_when_the_upstream_accepts_it(client, aiohttp_server):
    seen: dict[str, str] = {}

    async def echo(request: web.Request) -> web.WebSocketResponse:
        seen["authorization"] = request.headers.get("Authorization", "")
        ws = web.WebSocketResponse(protocols=("v1",))
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str("echo:" + message.data)
        return ws

    app = web.Application()
    app.router.add_get("/tail", echo)
    server = await aiohttp_server(app)
    await add(client, f"http://127.0.0.1:{server.port}", basicAuth=True, basicAuthUser="u",
              secureJsonData={"basicAuthPassword": SECRET})
    async with client.ws_connect("/api/datasources/proxy/uid/up/tail", headers=ADMIN, protocols=("v1",)) as ws:
        assert ws.protocol == "v1"
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=5)) == "echo:hello"
    assert seen["authorization"] == "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode()


async def test_tls_options_from_json_data_and_secure_json_data(client, aiohttp_server, tmp_path):
    server_tls, ca_pem = make_tls(tmp_path)
    app = web.Application()
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"tls": True})

    app.router.add_get("/x", answer)
    server = await aiohttp_server(app, ssl=server_tls)
    url = f"https://127.0.0.1:{server.port}"
    await add(client, url, name="trusted", uid="trusted",
              jsonData={"tlsAuthWithCACert": True}, secureJsonData={"tlsCACert": ca_pem.decode()})
    response = await client.get("/api/datasources/proxy/uid/trusted/x", headers=ADMIN)
    assert response.status == 200 and await response.json() == {"tls": True}
    await add(client, url, name="named", uid="named",
              jsonData={"tlsAuthWithCACert": True, "serverName": "upstream.test"},
              secureJsonData={"tlsCACert": ca_pem.decode()})
    assert (await client.get("/api/datasources/proxy/uid/named/x", headers=ADMIN)).status == 200
    await add(client, url, name="untrusted", uid="untrusted")
    assert (await client.get("/api/datasources/proxy/uid/untrusted/x", headers=ADMIN)).status == 502
    await add(client, url, name="skip", uid="skip", jsonData={"tlsSkipVerify": True})
    assert (await client.get("/api/datasources/proxy/uid/skip/x", headers=ADMIN)).status == 200
    await add(client, url, name="bad", uid="bad", jsonData={"tlsAuthWithCACert": True},
              secureJsonData={"tlsCACert": "-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n"})
    response = await client.get("/api/datasources/proxy/uid/bad/x", headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {"message": "Unable to load TLS certificate", "traceID": ""}


async def test_client_certificate_from_secure_json_data(client, aiohttp_server, tmp_path):
    ca = TestCA()
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        subject = dict(pair[0] for pair in request.transport.get_extra_info("peercert")["subject"])
        return web.json_response({"client": subject["commonName"]})

    app.router.add_get("/x", answer)
    server = await aiohttp_server(app, ssl=ca.server_context(tmp_path, require_client_cert=True))
    url = f"https://127.0.0.1:{server.port}"
    cert, key = ca.issue("gateway-client", client=True)
    await add(client, url, name="mtls", uid="mtls", jsonData={"tlsAuth": True, "tlsAuthWithCACert": True},
              secureJsonData={"tlsCACert": ca.pem, "tlsClientCert": cert, "tlsClientKey": key})
    response = await client.get("/api/datasources/proxy/uid/mtls/x", headers=ADMIN)
    assert response.status == 200 and await response.json() == {"client": "gateway-client"}
    listed = await (await client.get("/api/datasources/uid/mtls", headers=ADMIN)).json()
    assert key not in str(listed) and listed["secureJsonFields"]["tlsClientKey"] is True
    # the server refuses the handshake without a client certificate; a key of another CA does not help
    await add(client, url, name="nocert", uid="nocert", jsonData={"tlsAuthWithCACert": True},
              secureJsonData={"tlsCACert": ca.pem})
    assert (await client.get("/api/datasources/proxy/uid/nocert/x", headers=ADMIN)).status == 502
    other_cert, other_key = TestCA("another CA").issue("gateway-client", client=True)
    await add(client, url, name="other", uid="other", jsonData={"tlsAuth": True, "tlsAuthWithCACert": True},
              secureJsonData={"tlsCACert": ca.pem, "tlsClientCert": other_cert, "tlsClientKey": other_key})
    assert (await client.get("/api/datasources/proxy/uid/other/x", headers=ADMIN)).status == 502
    await add(client, url, name="badkey", uid="badkey", jsonData={"tlsAuth": True, "tlsAuthWithCACert": True},
              secureJsonData={"tlsCACert": ca.pem, "tlsClientCert": cert, "tlsClientKey": other_key})
    response = await client.get("/api/datasources/proxy/uid/badkey/x", headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {"message": "Unable to load TLS certificate", "traceID": ""}


async def test_upstream_sockets_use_tcp_keep_alive(client, upstream):
    import socket as socket_module

    from gateway.keys import cache_key

    _, url = upstream
    await add(client, url)
    assert (await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)).status == 200
    entry = await client.app[cache_key].get(1, uid="up")
    conn = entry.http.pool._idle[0]
    sock = conn.transport.get_extra_info("socket")
    assert sock.getsockopt(socket_module.SOL_SOCKET, socket_module.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_KEEPIDLE) == 30


async def test_dataproxy_pool_settings_and_user_agent_reach_the_upstream(aiohttp_client, database_url,
                                                                         aiohttp_server):
    seen: dict[str, Any] = {"peers": set(), "busy": 0, "most": 0, "agents": set()}

    async def slow(request: web.Request) -> web.Response:
        seen["peers"].add(request.transport.get_extra_info("peername"))
        seen["agents"].add(request.headers.get("User-Agent"))
        seen["busy"] += 1
        seen["most"] = max(seen["most"], seen["busy"])
        await asyncio.sleep(0.05)
        seen["busy"] -= 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = await aiohttp_server(app)
    client = await aiohttp_client(create_app(make_config(database_url, dataproxy={
        "max_conns_per_host": 2, "idle_conn_timeout_seconds": 0.3, "user_agent": "gw-test/1"})))
    await add(client, f"http://127.0.0.1:{server.port}")
    responses = await asyncio.gather(*(client.get("/api/datasources/proxy/uid/up/slow", headers=ADMIN)
                                       for _ in range(8)))
    assert [response.status for response in responses] == [200] * 8
    assert seen["most"] == 2 and len(seen["peers"]) == 2 and seen["agents"] == {"gw-test/1"}
    # idle connections are reused within idle_conn_timeout_seconds and closed after it
    assert (await client.get("/api/datasources/proxy/uid/up/slow", headers=ADMIN)).status == 200
    assert len(seen["peers"]) == 2
    await asyncio.sleep(0.5)
    assert (await client.get("/api/datasources/proxy/uid/up/slow", headers=ADMIN)).status == 200
    assert len(seen["peers"]) == 3


async def test_a_closed_pool_is_a_502_not_a_500(client, upstream):
    from gateway.keys import cache_key

    _, url = upstream
    await add(client, url)
    assert (await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)).status == 200
    entry = await client.app[cache_key].get(1, uid="up")
    await entry.http.close()  # as a replaced client is, once its grace period is over
    response = await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
    assert response.status == 502 and "message" in await response.json()


def test_sanitize_uri_hides_tokens_and_signatures():
    assert sanitize_uri("/p", "") == "/p"
    assert sanitize_uri("/p", "q=up&auth_token=t1&X-Amz-Signature=s2&x-goog-signature=s3") == (
        "/p?q=up&auth_token=hidden&X-Amz-Signature=hidden&x-goog-signature=hidden")
    assert sanitize_uri("/p", "sig=s4") == "/p?sig=s4"  # only an Azure SAS (sv beside it) is a signature
    assert sanitize_uri("/p", "sv=2020&sig=s4&a%5Fb=1") == "/p?sv=2020&sig=hidden&a%5Fb=1"
    assert sanitize_uri("/p", "auth%5Ftoken=t5&flag") == "/p?auth%5Ftoken=hidden&flag"


async def test_dataproxy_logging_logs_each_request_without_secrets(aiohttp_client, database_url, upstream, caplog):
    _, url = upstream
    caplog.set_level(logging.INFO, logger="gateway.proxy")
    quiet = await aiohttp_client(create_app(make_config(database_url)))
    await add(quiet, url, basicAuth=True, basicAuthUser="u", secureJsonData={"basicAuthPassword": SECRET})
    assert (await quiet.get("/api/datasources/proxy/uid/up/q?auth_token=t1", headers=ADMIN)).status == 200
    assert not [r for r in caplog.records if "Proxying incoming request" in r.getMessage()]
    logging_client = await aiohttp_client(create_app(make_config(database_url, dataproxy={"logging": True})))
    response = await logging_client.get("/api/datasources/proxy/uid/up/q?query=up&auth_token=t1&sv=1&sig=s2",
                                        headers={**ADMIN, "X-Panel-Plugin-Id": "timeseries"})
    assert response.status == 200
    [line] = [r.getMessage() for r in caplog.records if "Proxying incoming request" in r.getMessage()]
    assert line == ('Proxying incoming request userid=1 orgid=1 username="admin" datasource="generic-http"'
                    ' uri="/api/datasources/proxy/uid/up/q?query=up&auth_token=hidden&sv=1&sig=hidden" method=GET'
                    ' panelPluginId="timeseries"')
    assert not any(secret in record.getMessage() for record in caplog.records for secret in ("t1", "s2", SECRET))


async def test_cookies_are_parsed_as_go_reads_them(client, upstream):
    recorder, url = upstream
    await add(client, url, jsonData={"keepCookies": ["[]"]})

    async def sent_cookie(header: str) -> str | None:
        await client.get("/api/datasources/proxy/uid/up/x", headers={**ADMIN, "Cookie": header})
        return recorder.requests[-1]["headers"].get("Cookie")

    assert await sent_cookie('a=1; b={"x":1}; keep=2') == "a=1; keep=2"  # a malformed pair is skipped alone
    assert await sent_cookie("keep=2; x=a b") == 'keep=2; x="a b"'  # quoted again as Go does
    assert await sent_cookie('path=1; keep="q v"; grafana_session=s') == 'keep="q v"; path=1'
    assert await sent_cookie("z=1; a=1; a=2") == "a=2; z=1"  # sorted; a later duplicate wins
    assert await sent_cookie('e=""; f="x"') == 'e=; f="x"'  # Go quotes again what came quoted, unless empty
    assert await sent_cookie("bad name=1; =2; ok") == "ok="  # as Go: a bare name is a cookie with no value


async def test_forwarded_chain_and_identity_headers(client, upstream):
    recorder, url = upstream
    await add(client, url)
    await client.get("/api/datasources/proxy/uid/up/x", headers=[
        ("Authorization", ADMIN["Authorization"]), ("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2"),
        ("X-Grafana-Id", "forged.jwt.token")])
    sent = recorder.requests[-1]["headers"]
    assert sent.getall("X-Forwarded-For") == ["1.1.1.1, 2.2.2.2, 127.0.0.1"]
    assert "X-Grafana-Id" not in sent


async def test_header_bytes_pass_through_unchanged(client, upstream):
    recorder, url = upstream
    await add(client, url, jsonData={"httpHeaderName1": "X-Tenant"}, secureJsonData={"httpHeaderValue1": "Zoë ✓"})
    response = await client.get("/api/datasources/proxy/uid/up/x",
                                headers={**ADMIN, "X-Note": "café"})
    assert response.status == 200
    sent = recorder.requests[-1]["headers"]
    # the recorder (aiohttp) decodes header bytes as UTF-8: equal strings mean the same bytes arrived
    assert sent["X-Note"] == "café" and sent["X-Tenant"] == "Zoë ✓"


async def test_grafanas_default_headers_on_every_response_but_proxied_caching(client, upstream):
    _, url = upstream
    await add(client, url)
    answers = [await client.get("/api/datasources", headers=ADMIN), await client.get("/api/datasources/uid/nope",
               headers=ADMIN), await client.get("/api/datasources"), await client.get("/api/datasources/uid/up/health",
               headers=ADMIN)]
    assert [answer.status for answer in answers] == [200, 404, 401, 404]
    for answer in answers:
        assert answer.headers["Cache-Control"] == "no-store", answer.url
        assert answer.headers["X-Frame-Options"] == "deny" and answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-XSS-Protection"] == "1; mode=block"
    proxied = await client.get("/api/datasources/proxy/uid/up/cached", headers=ADMIN)
    assert proxied.headers["Cache-Control"] == "max-age=60" and proxied.headers["Expires"] == "Thu, 01 Jan 2099"
    refused = await client.get("/api/datasources/proxy/uid/nope/x", headers=ADMIN)  # the proxy's own answer
    assert refused.status == 404 and "Cache-Control" not in refused.headers
    for answer in (proxied, refused):
        assert answer.headers["X-Frame-Options"] == "deny" and answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-XSS-Protection"] == "1; mode=block"
    assert proxied.headers["Content-Security-Policy"] == "sandbox"


async def test_path_ids_are_parsed_as_go_parses_them(client, upstream):
    _, url = upstream
    await add(client, url)
    assert (await client.get("/api/datasources/proxy/1/x", headers=ADMIN)).status == 200
    assert (await client.get("/api/datasources/proxy/+1/x", headers=ADMIN)).status == 200
    for raw in ("1_0", "%201", "%D9%A1", "9223372036854775808", "0x1"):  # "%D9%A1" is an Arabic-Indic one
        for path in (f"/api/datasources/proxy/{raw}/x", f"/api/datasources/{raw}", f"/api/datasources/{raw}/health"):
            response = await client.get(URL(path, encoded=True), headers=ADMIN)
            assert response.status == 400, path
            assert (await response.json())["message"] == "id is invalid"


# -- found by probing the running service ---------------------------------------------------------------

async def test_websocket_handshakes_never_share_cookies_between_callers(client, aiohttp_server, make_token):
    seen: list[str | None] = []

    async def handshake(request: web.Request) -> web.WebSocketResponse:
        seen.append(request.headers.get("Cookie"))
        ws = web.WebSocketResponse()
        ws.set_cookie("tracker", f"set-for-call-{len(seen)}")
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handshake)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}"
    await add(client, url, name="a", uid="a")
    await add(client, url, name="b", uid="b")
    response = await client.post("/api/orgs", json={"name": "other"}, headers=ADMIN)
    other_org = await make_token("Viewer", org_id=(await response.json())["orgId"])
    org2 = {**ADMIN, "X-Grafana-Org-Id": str((await response.json())["orgId"])}
    await client.post("/api/datasources", json={"name": "c", "uid": "c", "type": "generic-http", "access": "proxy",
                                                "url": url}, headers=org2)
    for uid, headers in (("a", await make_token("Viewer")), ("b", await make_token("Viewer")), ("c", other_org)):
        async with client.ws_connect(f"/api/datasources/proxy/uid/{uid}/ws", headers=headers) as ws:
            await ws.receive(timeout=5)
    assert seen == [None, None, None]


@pytest.mark.parametrize(("status", "body"), [(200, b"ok"), (200, b""), (201, b""), (204, b"")])
async def test_an_upstream_answer_without_content_type_passes_through(client, status, body):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        length = b"" if status == 204 else b"Content-Length: %d\r\n" % len(body)
        writer.write(b"HTTP/1.1 %d X\r\n%s\r\n%s" % (status, length, body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        await add(client, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        response = await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
        assert response.status == status and await response.read() == body


async def test_rows_stored_before_the_write_checks_answer_502_not_500(client, db, upstream):
    recorder, url = upstream
    await add(client, url, name="a", uid="a", secureJsonData={"httpHeaderValue1": "v"})
    await add(client, url, name="b", uid="b", type="influxdb_08")
    await add(client, url, name="c", uid="c")
    # as rows written before the checks existed: straight into the table
    await db.execute("UPDATE data_source SET json_data = '{\"httpHeaderName1\": \"Bad Name\"}' WHERE uid = 'a'")
    await db.execute("UPDATE data_source SET database = E'db\\r\\nX: 1' WHERE uid = 'b'")
    await db.execute("UPDATE data_source SET url = $1 WHERE uid = 'c'", url + "/c d")
    before = len(recorder.requests)
    for uid in ("a", "c"):
        for path in (f"/api/datasources/proxy/uid/{uid}/x", f"/api/datasources/uid/{uid}/resources/x"):
            response = await client.get(path, headers=ADMIN)
            assert response.status in (400, 404, 502), (path, response.status)
    response = await client.get("/api/datasources/proxy/uid/a/x", headers=ADMIN)
    assert response.status == 502
    invalid = "Bad Gateway: the data source's settings do not form a valid HTTP request"
    assert await response.json() == {"message": invalid}
    response = await client.get("/api/datasources/proxy/uid/c/x", headers=ADMIN)
    assert response.status == 400
    assert await response.json() == {"message": f'Invalid data source URL: "{url}/c d"', "traceID": ""}
    assert len(recorder.requests) == before
    response = await client.get("/api/datasources/proxy/uid/b/query", headers=ADMIN)
    # the database goes into the path escaped, as Go writes it: the upstream's router itself answers
    assert (response.status, await response.text()) == (404, "404: Not Found")


def test_influxdb_08_escapes_the_database_into_its_path():
    from gateway.backends.influxdb import InfluxDB08

    class Stored:
        ds = type("DS", (), {"user": "u", "database": "db\r\nX: 1/.."})()
        secrets = {"password": "p w"}

    path, query = InfluxDB08().proxy_target(Stored(), "query", "q=select+1")  # type: ignore[arg-type]
    assert (path, query) == ("db/db%0D%0AX%3A%201%2F../query", "p=p+w&q=select+1&u=u")


@pytest.mark.parametrize("path", ["..%2f..%2fetc", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "a%2F..%2F..%2Fetc"])
async def test_encoded_slashes_cannot_climb_above_the_data_source_url(client, upstream, path):
    recorder, url = upstream
    await add(client, url + "/base/")
    response = await client.get(URL(f"/api/datasources/proxy/uid/up/{path}", encoded=True), headers=ADMIN)
    assert response.status == 400
    assert recorder.requests == []


async def test_te_trailers_is_not_advertised_upstream(client, upstream):
    recorder, url = upstream
    await add(client, url)
    response = await client.get("/api/datasources/proxy/uid/up/x", headers={**ADMIN, "TE": "trailers"})
    assert response.status == 200 and "TE" not in recorder.requests[-1]["headers"]


async def test_invalid_custom_header_names_never_reach_the_upstream(client, db, upstream):
    recorder, url = upstream
    await add(client, url, jsonData={"httpHeaderName1": "X-Good"}, secureJsonData={"httpHeaderValue1": "v"})
    response = await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
    assert response.status == 200 and recorder.requests[-1]["headers"]["X-Good"] == "v"
    for bad in ("Bad Name", "X-H1: evil\tX", "X-Ü"):
        await db.execute("UPDATE data_source SET json_data = jsonb_build_object('httpHeaderName1', $1::text),"
                         " version = version + 1", bad)
        await db.execute("SELECT pg_notify('gateway_datasource', '1:1:up')")
        await asyncio.sleep(0.2)
        count = len(recorder.requests)
        response = await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
        assert response.status == 502, bad
        assert len(recorder.requests) == count



async def test_compressed_request_bodies_pass_through_untouched(client):
    import gzip

    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
        received.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        await add(client, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        packed = gzip.compress(b'{"streams": []}')
        response = await client.post("/api/datasources/proxy/uid/up/loki/api/v1/push", data=packed,
                                     headers={**ADMIN, "Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert response.status == 204
        assert b"Content-Encoding: gzip\r\n" in received[0] and received[0].endswith(b"\r\n\r\n" + packed)
