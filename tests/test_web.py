"""The admin page: rendered server-side, behind the API's auth, driven in a real headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.async_api import async_playwright

from tests.conftest import ADMIN
from tests.test_query import add

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


async def test_the_page_asks_the_browser_for_credentials(client):
    response = await client.get("/admin")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="gateway"')
    assert (await response.json())["message"] == "Unauthorized"


async def test_a_form_posted_without_the_pages_token_is_refused(client):
    await add(client, "td")
    response = await client.post("/admin/query", data={"uid": "td", "query": "random_walk"}, headers=ADMIN)
    assert response.status == 403
    assert "CSRF" in (await response.json())["message"]


async def test_names_are_escaped_and_no_secret_reaches_the_page(client):
    await add(client, "esc", name="<script>alert(1)</script>", ds_type="prometheus", url="http://127.0.0.1:1",
              basicAuth=True, basicAuthUser="u", secureJsonData={"basicAuthPassword": "page-secret-9137"})
    response = await client.get("/admin", headers=ADMIN)
    text = await response.text()
    assert response.status == 200
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "page-secret-9137" not in text


async def test_in_chromium_the_badges_show_health_and_the_query_form_draws_a_chart(client):
    await add(client, "td", name="TestData")
    await add(client, "dead", name="Dead Prometheus", ds_type="prometheus", url="http://127.0.0.1:1")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(http_credentials={"username": "admin", "password": "admin"},
                                                viewport={"width": 1200, "height": 900})
            page = await context.new_page()
            await page.goto(str(client.make_url("/admin")))
            assert await page.locator('tr[data-uid="td"] .badge').get_attribute("data-status") == "OK"
            assert await page.locator('tr[data-uid="dead"] .badge').get_attribute("data-status") == "ERROR"
            await page.select_option("#uid", "td")
            await page.fill("#text", "random_walk")
            await page.click("button[type=submit]")
            await page.wait_for_selector("svg.chart polyline.series")
            points = await page.locator("svg.chart polyline.series").first.get_attribute("points")
            assert points is not None and len(points.split()) > 10  # a drawn line, not a placeholder
            assert await page.locator("table.frame tr").count() > 1
            # the page after the query counts it in the data source's traffic (gateway's own metrics)
            assert int(await page.locator('tr[data-uid="td"] td.num').first.inner_text()) >= 1
            await page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
        finally:
            await browser.close()
    assert (ARTIFACTS / "admin.png").stat().st_size > 10_000



async def test_the_query_form_takes_text_fields_only(client):
    from aiohttp import FormData

    await add(client, "td")
    page = await (await client.get("/admin", headers=ADMIN)).text()
    form = FormData()
    form.add_field("csrf", page.split('name="csrf" value="', 1)[1].split('"', 1)[0])
    form.add_field("query", b"random_walk" * 1000, filename="query.txt")
    response = await client.post("/admin/query", data=form, headers=ADMIN)
    assert response.status == 400
    assert (await response.json())["message"] == "the form takes text fields only"


async def test_the_form_runs_a_data_source_past_the_listed_ones(client):
    from gateway.api.admin import MAX_LISTED

    for n in range(MAX_LISTED):
        await add(client, f"a{n:03}")
    await add(client, "zz", name="zz-last")
    page = await (await client.get("/admin", headers=ADMIN)).text()
    assert 'data-uid="zz"' not in page and f"The first {MAX_LISTED} data sources" in page
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    form = {"csrf": csrf, "uid": "zz", "query": "random_walk", "from": "now-1h", "to": "now"}
    response = await client.post("/admin/query", headers=ADMIN, data=form)
    assert response.status == 200 and "svg" in await response.text()


async def test_times_past_the_years_a_date_can_hold_are_shown_as_numbers_and_not_drawn(client):
    await add(client, "td")
    page = await (await client.get("/admin", headers=ADMIN)).text()
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    # past year 9999 either way, yet inside int64 milliseconds (TestData makes times past int64 null)
    model = '{"scenarioId": "csv_content", "csvContent": "time,value\\n1,1\\n1e18,2\\n-1e18,3"}'
    form = {"csrf": csrf, "uid": "td", "query": model, "from": "now-1h", "to": "now"}
    response = await client.post("/admin/query", headers=ADMIN, data=form)
    text = await response.text()
    assert response.status == 200, text
    assert "<td>1970-01-01 00:00:00.001</td>" in text and "<td>1000000000000000000</td>" in text
    assert "<td>-1000000000000000000</td>" in text
    assert 'class="chart"' in text


async def test_a_form_body_that_cannot_be_read_is_a_400(client):
    bodies = [
        ("application/x-www-form-urlencoded", b"csrf=%ff%fe&uid=\xff"),
        ("multipart/form-data; boundary=xx", b'--xx\r\nContent-Disposition: form-data\r\n\r\nv\r\n--xx--\r\n'),
        ("multipart/form-data", b"abc"),
    ]
    for content_type, body in bodies:
        response = await client.post("/admin/query", data=body, headers={**ADMIN, "Content-Type": content_type})
        assert response.status == 400, content_type
        assert await response.json() == {"message": "the form could not be read"}


async def test_a_caller_who_may_read_but_not_query_gets_no_health_check_run_for_them(client, aiohttp_server,
                                                                                     make_token):
    from aiohttp import web

    calls = []

    async def answer(request):
        calls.append(request.path)
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", answer)
    server = await aiohttp_server(upstream)
    await add(client, "prom", ds_type="prometheus", url=str(server.make_url("/")))
    reader = await make_token("None", (("datasources:read", "datasources:*"),))
    assert (await client.get("/api/datasources/uid/prom/health", headers=reader)).status == 403
    text = await (await client.get("/admin", headers=reader)).text()
    assert 'data-status="NONE" title="no permission to query this data source"' in text
    assert calls == []
    text = await (await client.get("/admin", headers=ADMIN)).text()
    assert 'data-status="OK"' in text and calls


async def test_nothing_that_acts_is_taken_from_another_origin(client, aiohttp_server):
    # once /admin asked for Basic credentials a browser sends them with any site's form post or WebSocket
    from aiohttp import web

    calls = []

    async def answer(request):
        calls.append(request.method)
        return web.json_response({"status": "success"})

    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", answer)
    server = await aiohttp_server(upstream)
    await add(client, "prom", ds_type="prometheus", url=str(server.make_url("/")))
    evil = {**ADMIN, "Origin": "http://evil.example"}
    form = {**evil, "Content-Type": "application/x-www-form-urlencoded"}
    refused = [
        await client.post("/api/admin/provisioning/datasources/reload", headers=form),
        await client.post("/api/datasources/proxy/uid/prom/api/v1/admin/tsdb/delete_series", data="match[]=up",
                          headers=form),
        await client.post("/admin/query", data={"uid": "prom", "query": "up"}, headers=evil),
        await client.get("/api/datasources/proxy/uid/prom/ws", headers={
            **evil, "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}),
        await client.post("/api/admin/provisioning/datasources/reload", headers={**ADMIN, "Origin": "null"}),
    ]
    for response in refused:
        assert response.status == 403, response.url
        assert await response.json() == {"message": "origin not allowed"}
    assert calls == []
    assert (await client.get("/api/datasources/proxy/uid/prom/x", headers=evil)).status == 200  # reads are not
    own = {**ADMIN, "Origin": f"http://{client.host}:{client.port}"}
    assert (await client.post("/api/admin/provisioning/datasources/reload", headers=own)).status == 200
    shouted = {**ADMIN, "Host": f"gateway.example:{client.port}",  # host names ignore case
               "Origin": f"https://GATEWAY.Example:{client.port}"}
    assert (await client.post("/api/admin/provisioning/datasources/reload", headers=shouted)).status == 200
    assert (await client.post("/api/admin/provisioning/datasources/reload", headers=ADMIN)).status == 200
