"""The data source proxy: /api/datasources/proxy/(:id|uid/:uid)/*, streamed both ways (spec-proxy §2)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import unquote, unquote_plus

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import Identity, authorize, queryable
from gateway.backends.base import Context
from gateway.config import Config
from gateway.errors import (
    NotFound,
    ProxyDataSourceNotFound,
    ProxyPathClimbs,
    UpstreamNoHost,
    UpstreamTooLarge,
    UpstreamUnavailable,
    go_quote,
)
from gateway.http.client import DataSourceClient
from gateway.http.headers import HOP_BY_HOP, connection_tokens, relayable_headers
from gateway.http.pool import UpstreamError, UpstreamPoolClosed, UpstreamResponse
from gateway.keys import config_key

log = logging.getLogger("gateway.proxy")

PROXY_PATH = re.compile(r"^/api/datasources/proxy/(uid/[^/]*|[^/]+)/?")

# removed from what the client sent; the pool adds Host and Content-Length itself. TE goes too: trailers
# are not relayed back (aiohttp writes none), so they are not advertised upstream.
_REQUEST_DROP = HOP_BY_HOP | {
    "host", "content-length", "authorization", "x-grafana-device-id", "x-grafana-user", "cookie", "user-agent",
    "origin", "referer", "x-forwarded-host", "x-forwarded-port", "x-forwarded-proto", "x-forwarded-for",
    "x-ds-authorization", "x-grafana-id",  # Grafana sets X-Grafana-Id from its own ID token; we have none
}
AUTH_FAILED = b"Authentication to data source failed"
SMALL_BODY = 64 << 10
LOGIN_COOKIE = "grafana_session"


_HIDDEN_QUERY_KEYS = frozenset({"auth_token", "x-amz-signature", "x-goog-signature"})


def sanitize_uri(raw_path: str, raw_query: str) -> str:
    """Grafana's SanitizeURI, for logs: the values of token and signature query parameters become `hidden`
    (`sig` only beside `sv`, as in an Azure SAS). Keys match case-insensitively; the rest stays as sent.
    """
    if not raw_query:
        return raw_path
    pairs = [(unquote_plus(pair.partition("=")[0]).lower(), pair) for pair in raw_query.split("&")]
    hidden = _HIDDEN_QUERY_KEYS | ({"sig"} if any(key == "sv" for key, _ in pairs) else set())
    query = "&".join(f"{pair.partition('=')[0]}=hidden" if key in hidden else pair for key, pair in pairs)
    return f"{raw_path}?{query}"


def _log_request(request: web.Request, identity: Identity, ds_type: str, raw_path: str, raw_query: str) -> None:
    """[dataproxy] logging: Grafana's "Proxying incoming request" line, without the body (never buffered)."""
    log.info(
        "Proxying incoming request userid=%d orgid=%d username=%s datasource=%s uri=%s method=%s panelPluginId=%s",
        identity.id, identity.org_id, go_quote(identity.login), go_quote(ds_type),
        go_quote(sanitize_uri(raw_path, raw_query)), request.method,
        go_quote(request.headers.get("X-Panel-Plugin-Id", "")),
    )


def climbs_above_base(proxy_path: str) -> bool:
    """True when dot-segments, plain or percent-encoded (slashes included), would leave the data source's
    base path: the path is decoded before it is split, as the upstream will decode it."""
    if "." not in proxy_path and "%" not in proxy_path:
        return False
    depth = 0
    for segment in unquote(proxy_path).split("/"):
        if segment == "..":
            depth -= 1
            if depth < 0:
                return True
        elif segment not in ("", "."):
            depth += 1
    return False


def upstream_headers(
    ctx: Context, config: Config, identity: Identity, headers: CIMultiDictProxy[str], client_ip: str,
) -> tuple[list[tuple[str, str]], str]:
    """The headers a proxied request goes upstream with (spec-proxy §2.7, §2.8), before the client adds the
    credentials, and the caller's X-DS-Authorization (sent instead of the data source's when not empty): the
    caller's credentials, cookies and hop-by-hop headers removed; kept cookies, user agent, referer and
    forwarding chain added. The client's encoding is kept."""
    listed = connection_tokens(headers.getall("Connection")) if "Connection" in headers else _NONE
    out: list[tuple[str, str]] = []
    ds_auth = ""
    referer = ""
    cookies: list[str] = []
    forwarded: list[str] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in _REQUEST_DROP:
            if lower == "x-ds-authorization":
                ds_auth = value  # the last one wins, as Go's Header.Get
            elif lower == "cookie":
                cookies.append(value)
            elif lower == "referer":
                referer = value
            elif lower == "x-forwarded-for":
                forwarded.append(value)
        elif lower not in listed:
            out.append((name, value))
    if config.dataproxy.send_user_header and identity.kind == "user":
        out.append(("X-Grafana-User", identity.login))
    if cookies and (cookie := _kept_cookies(cookies, ctx.ds.options.get("keepCookies"))):
        out.append(("Cookie", cookie))
    out.append(("User-Agent", config.dataproxy.user_agent or f"Grafana/{config.gateway.grafana_version}"))
    out.append(("X-Grafana-Referer", referer))
    out.append(("X-Forwarded-For", ", ".join([*forwarded, client_ip])))
    return out, ds_auth


_NONE: frozenset[str] = frozenset()


def _kept_cookies(values: Sequence[str], keep: object) -> str:
    """Cookies named in jsonData.keepCookies (`[]` all, `prefix[]` a prefix), never the login cookie.

    Parsed as Go's net/http reads a Cookie header: a malformed pair is skipped, not the whole header; a
    later duplicate wins; the kept cookies go out sorted by name, quoted again where Go would quote them.
    """
    if not values or not isinstance(keep, list) or not keep:
        return ""
    patterns = [pattern for pattern in keep if isinstance(pattern, str)]
    jar: dict[str, tuple[str, bool]] = {}
    for line in values:
        for part in line.split(";"):
            name, _, value = part.strip().partition("=")
            name = name.strip()
            quoted = len(value) > 1 and value[0] == value[-1] == '"'
            if quoted:
                value = value[1:-1]
            if _COOKIE_NAME.fullmatch(name) and _COOKIE_VALUE.fullmatch(value) and _kept(name, patterns):
                jar[name] = (value, quoted)
    jar.pop(LOGIN_COOKIE, None)
    return "; ".join(f'{name}="{value}"' if value and (quoted or " " in value or "," in value)
                     else f"{name}={value}" for name, (value, quoted) in sorted(jar.items()))


_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 7230 token
_COOKIE_VALUE = re.compile(r"[\x20\x21\x23-\x3a\x3c-\x5b\x5d-\x7e]*")  # Go: printable ASCII but " ; \\


def _kept(name: str, patterns: Sequence[str]) -> bool:
    return any(pattern == "[]" or pattern == name or (pattern.endswith("[]") and name.startswith(pattern[:-2]))
               for pattern in patterns)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def proxy_data_source_request(request: web.Request) -> web.StreamResponse:
    """ANY /api/datasources/proxy/(:id|uid/:uid)/*: stream the request to the data source and back."""
    identity = await authorize(request, "datasources:query")  # before anything about the path is said
    raw_path, _, raw_query = request.raw_path.partition("?")
    match = PROXY_PATH.match(raw_path)
    if match is None:
        raise NotFound()
    reference, proxy_path = match.group(1), raw_path[match.end():]
    if climbs_above_base(proxy_path):
        raise ProxyPathClimbs()
    config = request.app[config_key]
    body = _body(request) if request.body_exists else None
    for attempt in (1, 2):
        ctx = await queryable(request, identity, reference, ProxyDataSourceNotFound)
        client = ctx.http
        if client.pool is None:
            raise UpstreamNoHost()
        if config.dataproxy.logging and attempt == 1:
            _log_request(request, identity, ctx.ds.type, raw_path, raw_query)
        path, query = ctx.backend.proxy_target(ctx, proxy_path, raw_query)
        headers, ds_auth = upstream_headers(ctx, config, identity, request.headers, request.remote or "")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _websocket(request, ctx, path, query, headers, identity.role, ds_auth)
        try:
            upstream = await client.open(request.method, path, query, headers, body, role=identity.role,
                                         content_length=request.content_length, authorization=ds_auth)
            break
        except UpstreamPoolClosed:
            if attempt == 1:
                continue  # the data source changed as this request started; nothing was sent: use the new one
            raise UpstreamUnavailable() from None
    return await _relay(request, upstream, config, client)


async def _relay(request: web.Request, upstream: UpstreamResponse, config: Config,
                 client: DataSourceClient) -> web.StreamResponse:
    if upstream.status == 401 and not config.gateway.proxy_pass_through_401:
        # Grafana hides upstream 401s: a 401 would sign the browser user out (spec-proxy §2.11.1)
        upstream.abort()
        refused = web.Response(status=400, body=AUTH_FAILED, content_type="text/plain", charset="utf-8")
        refused.headers["Content-Security-Policy"] = "sandbox"  # the rest: wire.default_headers
        return refused
    limit = config.dataproxy.response_limit
    if limit and upstream.content_length is not None and upstream.content_length > limit:
        upstream.abort()
        raise UpstreamTooLarge()
    headers = CIMultiDict(relayable_headers(upstream.headers))
    headers["Content-Security-Policy"] = "sandbox"
    length = upstream.content_length
    if length is not None and length <= SMALL_BODY and request.method != "HEAD":
        # a small sized body goes out with the headers in one write; bounded, so no whole-body risk
        try:
            body = await upstream.read(SMALL_BODY)
        except UpstreamError:
            upstream.abort()
            raise UpstreamUnavailable() from None
        upstream.release()
        client.relayed(len(body))
        small = web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
        if "Content-Type" not in headers:
            small.headers.popall("Content-Type", None)  # aiohttp adds none for bytes; relay exactly what came
        return small
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        response.content_length = length
    sent = 0
    try:
        await response.prepare(request)
        async for chunk in upstream.chunks():
            sent += len(chunk)
            if limit and sent > limit:
                raise UpstreamTooLarge()
            await response.write(chunk)
        await response.write_eof()
    except (UpstreamError, UpstreamTooLarge) as error:
        # headers are out: end the connection so the client sees a broken response, not a short 200
        log.warning("proxy response stream ended early: %s", type(error).__name__)
        client.relayed(sent)
        upstream.abort()
        if request.transport is not None:
            request.transport.abort()
        return response
    except ConnectionResetError:
        client.relayed(sent)
        upstream.abort()  # the client went away mid-body: nothing left to tell it
        return response
    except asyncio.CancelledError:
        client.relayed(sent)
        upstream.abort()
        raise
    upstream.release()
    client.relayed(sent)
    return response


async def _websocket(request: web.Request, ctx: Context, path: str, query: str,
                     headers: list[tuple[str, str]], role: str, authorization: str) -> web.StreamResponse:
    """Bridge a WebSocket upgrade to the data source, message for message, until either side closes."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    upstream = await ctx.http.websocket(path, query, headers, protocols, role, authorization)
    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
    await client.prepare(request)

    async def pump(source: Any, sink: Any) -> None:
        # when one side closes, close the other: its pump then ends by itself
        async for message in source:
            if message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
        await sink.close()

    try:
        await asyncio.gather(pump(client, upstream), pump(upstream, client))
    finally:
        await upstream.close()
        await client.close()
    return client


def add_routes(app: web.Application) -> None:
    """Register the proxy routes for every method."""
    for path in ("/api/datasources/proxy/uid/{uid}", "/api/datasources/proxy/uid/{uid}/{rest:.*}",
                 "/api/datasources/proxy/{id}", "/api/datasources/proxy/{id}/{rest:.*}"):
        app.router.add_route("*", path, proxy_data_source_request)
