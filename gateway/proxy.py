"""The data source proxy: /api/datasources/proxy/(:id|uid/:uid)/*, streamed both ways (spec-proxy §2)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote_plus, unquote, unquote_plus, urlencode

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.api.datasources import authorize, query_entry
from gateway.auth import Identity
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.keys import client_key, config_key
from gateway.models import DataSource
from gateway.transport import Transport, clean_path, join_path
from gateway.upstream import UpstreamError, UpstreamPoolClosed, UpstreamResponse, UpstreamTimeout

log = logging.getLogger("gateway.proxy")

PROXY_PATH = re.compile(r"^/api/datasources/proxy/(uid/[^/]*|[^/]+)/?")

HOP_BY_HOP = frozenset({
    "connection", "proxy-connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade",
})
# removed from what the client sent; the transport adds Host and Content-Length itself
_REQUEST_DROP = HOP_BY_HOP | {
    "host", "content-length", "authorization", "x-grafana-device-id", "x-grafana-user", "cookie", "user-agent",
    "origin", "referer", "x-forwarded-host", "x-forwarded-port", "x-forwarded-proto", "x-forwarded-for",
    "x-ds-authorization", "x-grafana-id",  # Grafana sets X-Grafana-Id from its own ID token; we have none
}
_RESPONSE_DROP = HOP_BY_HOP | {"set-cookie", "content-length"}
_ROLE_RANK = {"None": 0, "Viewer": 1, "Editor": 2, "Admin": 3}
PROMETHEUS_LIKE = frozenset({
    "prometheus", "grafana-amazonprometheus-datasource", "grafana-azureprometheus-datasource", "loki",
})
# Prometheus plugin.json routes (spec-proxy §2.6.4): method, path, minimum role; first match wins.
PROMETHEUS_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "api/v1/status/flags", "Admin"),
    ("POST", "api/v1/query", "Viewer"),
    ("POST", "api/v1/query_range", "Viewer"),
    ("POST", "api/v1/series", "Viewer"),
    ("POST", "api/v1/labels", "Viewer"),
    ("POST", "api/v1/query_exemplars", "Viewer"),
    ("GET", "rules", "Viewer"),
    ("POST", "rules", "Editor"),
    ("DELETE", "rules", "Editor"),
)
AUTH_FAILED = b"Authentication to data source failed"
SMALL_BODY = 64 << 10
LOGIN_COOKIE = "grafana_session"


class ProxyError(GatewayError):
    """A proxy-level refusal: `{"message"}` with the status Grafana uses."""


class UpstreamUnavailable(GatewayError):
    status, message = 502, "Bad Gateway: the data source could not be reached"


class UpstreamTimedOut(GatewayError):
    status, message = 504, "Gateway Timeout: the data source did not answer in time"


class UpstreamTooLarge(GatewayError):
    status, message = 502, "Bad Gateway: the data source's response exceeds [dataproxy] response_limit"


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


def _log_request(request: web.Request, identity: Identity, ds: DataSource, raw_path: str, raw_query: str) -> None:
    """[dataproxy] logging: Grafana's "Proxying incoming request" line, without the body (never buffered)."""
    log.info(
        "Proxying incoming request userid=%d orgid=%d username=%s datasource=%s uri=%s method=%s panelPluginId=%s",
        identity.id, identity.org_id, _quoted(identity.login), _quoted(ds.type),
        _quoted(sanitize_uri(raw_path, raw_query)), request.method,
        _quoted(request.headers.get("X-Panel-Plugin-Id", "")),
    )


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def clean_relative_path(path: str) -> str:
    """Grafana's CleanRelativePath on the percent-decoded proxy path (safer than Grafana: decoded first)."""
    return clean_path(unquote(path))


def climbs_above_base(proxy_path: str) -> bool:
    """True when dot-segments (plain or percent-encoded) would leave the data source's base path."""
    if "." not in proxy_path and "%" not in proxy_path:
        return False
    depth = 0
    for segment in proxy_path.split("/"):
        decoded = unquote(segment)
        if decoded == "..":
            depth -= 1
            if depth < 0:
                return True
        elif decoded not in ("", "."):
            depth += 1
    return False


def validate_request(ds: DataSource, identity: Identity, method: str, proxy_path: str,
                     transport: Transport, whitelist: Sequence[str]) -> None:
    """The per-type request rules of spec-proxy §2.5, on the normalised path; ProxyError 403 on refusal."""
    if whitelist and transport.netloc and transport.netloc not in whitelist:
        raise ProxyError("Data proxy hostname and ip are not included in whitelist", status=403)
    if ds.type == "elasticsearch":
        if method == "DELETE":
            raise ProxyError("deletes not allowed on proxied Elasticsearch datasource", status=403)
        if method == "PUT":
            raise ProxyError("puts not allowed on proxied Elasticsearch datasource", status=403)
        if method == "POST" and proxy_path != "_msearch":  # an exact compare, as Grafana
            raise ProxyError("posts not allowed on proxied Elasticsearch datasource except on /_msearch", status=403)
    if ds.type != "prometheus" and ds.type not in PROMETHEUS_LIKE:
        return
    path = clean_relative_path(proxy_path)
    for route_method, route_path, role in PROMETHEUS_ROUTES if ds.type == "prometheus" else ():
        if route_method not in ("", "*", method) or not path.startswith(route_path):
            continue
        if _ROLE_RANK.get(identity.role, 0) < _ROLE_RANK[role]:
            raise ProxyError("plugin proxy route access denied", status=403)
        return
    if ds.type in PROMETHEUS_LIKE and method in ("DELETE", "PUT", "POST"):
        raise ProxyError(f"non allow-listed {method}s not allowed on proxied {ds.type} datasource", status=403)


def upstream_request(
    ds: DataSource, secrets: Mapping[str, str], transport: Transport, config: Config, identity: Identity,
    proxy_path: str, raw_query: str, headers: CIMultiDictProxy[str], client_ip: str,
) -> tuple[str, list[tuple[str, str]]]:
    """The request-target and headers to send upstream (spec-proxy §2.7, §2.8): credentials injected,
    the caller's credentials, cookies and hop-by-hop headers removed. The client's encoding is kept.
    """
    path = join_path(transport.base_path, proxy_path)
    query = raw_query
    if ds.type == "influxdb":
        query = _go_encode(parse_qsl(raw_query, keep_blank_values=True))
    elif ds.type == "influxdb_08":
        path = join_path(transport.base_path, f"db/{ds.database}/{proxy_path}")
        pairs = [*parse_qsl(raw_query, keep_blank_values=True), ("u", ds.user), ("p", secrets.get("password", ""))]
        query = _go_encode(pairs)
    target = path + ("?" + query if query else "")

    # one pass over the caller's headers: drop, keep, or remember for the rules below
    listed = _connection_tokens(headers.getall("Connection")) if "Connection" in headers else _NONE
    custom = transport.custom_names
    out: list[tuple[str, str]] = []
    ds_auth = None
    referer = ""
    cookies: list[str] = []
    forwarded: list[str] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in _REQUEST_DROP:
            if lower == "x-ds-authorization":
                ds_auth = value
            elif lower == "cookie":
                cookies.append(value)
            elif lower == "referer":
                referer = value
            elif lower == "x-forwarded-for":
                forwarded.append(value)
            elif lower == "te" and value.strip().lower() == "trailers":
                out.append((name, value))
        elif lower not in listed and lower not in custom:
            out.append((name, value))
    added = []
    authorization = ds_auth or transport.authorization or transport.legacy_authorization
    if authorization is not None:
        added.append(("Authorization", authorization))
    if config.dataproxy.send_user_header and identity.kind == "user":
        added.append(("X-Grafana-User", identity.login))
    if cookies and (cookie := _kept_cookies(cookies, ds.options.get("keepCookies"))):
        added.append(("Cookie", cookie))
    added.append(("User-Agent", config.dataproxy.user_agent or f"Grafana/{config.gateway.grafana_version}"))
    added.append(("X-Grafana-Referer", referer))
    added.append(("X-Forwarded-For", ", ".join([*forwarded, client_ip])))
    if custom:  # configured headers replace everything of the same name, as Grafana's middleware
        added = [(name, value) for name, value in added if name.lower() not in custom]
        added.extend(transport.custom_headers)  # a custom "Host" replaces the upstream Host, as Grafana
    out.extend(added)
    return target, out


_NONE: frozenset[str] = frozenset()


def relayable_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """An upstream response's headers without hop-by-hop ones (also those listed in Connection),
    Set-Cookie and Content-Length (the response writer sets its own framing)."""
    kept: list[tuple[str, str]] = []
    listed: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == "connection":
                listed.append(value)
        else:
            kept.append((name, value))
    if listed and (tokens := _connection_tokens(listed) - HOP_BY_HOP):
        kept = [(name, value) for name, value in kept if name.lower() not in tokens]
    return kept


def _connection_tokens(values: Sequence[str]) -> frozenset[str]:
    """Header names listed in Connection (they are hop-by-hop too)."""
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def _go_encode(pairs: Sequence[tuple[str, str]]) -> str:
    """Go's url.Values.Encode: keys sorted, values in order, query-escaped."""
    ordered = sorted(pairs, key=lambda pair: pair[0])
    return urlencode(ordered, quote_via=quote_plus)


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
    identity = await authorize(request, "datasources:query")
    raw_path, _, raw_query = request.raw_path.partition("?")
    match = PROXY_PATH.match(raw_path)
    if match is None:
        raise GatewayError("Not found", status=404)
    reference, proxy_path = match.group(1), raw_path[match.end():]
    if climbs_above_base(proxy_path):
        raise ProxyError("Invalid proxy path: dot-segments may not climb above the data source URL", status=400)
    config = request.app[config_key]
    body = _body(request) if request.body_exists else None
    for attempt in (1, 2):
        entry = await query_entry(request, identity, reference, not_found="Unable to find datasource")
        ds, transport = entry.ds, entry.transport
        validate_request(ds, identity, request.method, proxy_path, transport,
                         config.security.data_source_proxy_whitelist)
        if transport.pool is None:
            raise UpstreamUnavailable("Bad Gateway: the data source has no host in its URL")
        if config.dataproxy.logging and attempt == 1:
            _log_request(request, identity, ds, raw_path, raw_query)
        target, headers = upstream_request(
            ds, entry.secrets, transport, config, identity, proxy_path, raw_query, request.headers,
            request.remote or "",
        )
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _websocket(request, transport, target, headers)
        try:
            upstream = await transport.pool.request(
                request.method, target, headers, body, content_length=request.content_length,
                header_timeout=transport.header_timeout, read_timeout=config.gateway.proxy_idle_read_timeout,
            )
            break
        except UpstreamPoolClosed:
            if attempt == 1:
                continue  # the data source changed as this request started; nothing was sent: use the new one
            raise UpstreamUnavailable() from None
        except UpstreamTimeout:
            raise UpstreamTimedOut() from None
        except UpstreamError as error:
            log.warning("proxy request to data source %s failed: %s", ds.uid, type(error).__name__)
            raise UpstreamUnavailable() from None
    return await _relay(request, upstream, config)


async def _relay(request: web.Request, upstream: UpstreamResponse, config: Config) -> web.StreamResponse:
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
        small = web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
        if "Content-Type" not in headers:
            del small.headers["Content-Type"]
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
        upstream.abort()
        if request.transport is not None:
            request.transport.abort()
        return response
    except ConnectionResetError:
        upstream.abort()  # the client went away mid-body: nothing left to tell it
        return response
    except asyncio.CancelledError:
        upstream.abort()
        raise
    upstream.release()
    return response


_WS_OWN = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                     "sec-websocket-protocol", "host"})


async def _websocket(request: web.Request, transport: Transport, target: str,
                     headers: list[tuple[str, str]]) -> web.StreamResponse:
    """Bridge a WebSocket upgrade to the data source, message for message, until either side closes."""
    session = request.app[client_key]
    scheme = "wss" if transport.scheme == "https" else "ws"
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    url = URL(f"{scheme}://{transport.netloc}{target}", encoded=True)
    try:
        upstream = await session.ws_connect(
            url, headers=[(n, v) for n, v in headers if n.lower() not in _WS_OWN], protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10), autoping=True,
            ssl=transport.tls if transport.tls is not None else True, server_hostname=transport.server_name,
        )
    except (TimeoutError, aiohttp.ClientError, OSError):
        raise UpstreamUnavailable() from None
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
