"""GET /metrics: every worker's Prometheus samples in one scrape, behind optional basic auth ([metrics])."""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web

from gateway.errors import MetricsUnauthorized, NotFound
from gateway.keys import config_key, metrics_key, store_key
from gateway.metrics import stat_totals

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _authorized(header: str, user: str, password: str) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given_user, _, given_password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user_ok = hmac.compare_digest(given_user.encode(), user.encode())
    return hmac.compare_digest(given_password.encode(), password.encode()) and user_ok


async def get_metrics(request: web.Request) -> web.Response:
    """Grafana's metrics endpoint: 404 when [metrics] enabled is false, 401 without the configured basic auth."""
    settings = request.app[config_key].metrics
    if not settings.enabled:
        raise NotFound()
    if settings.basic_auth_username and settings.basic_auth_password and not _authorized(
            request.headers.get("Authorization", ""), settings.basic_auth_username, settings.basic_auth_password):
        raise MetricsUnauthorized()
    totals = stat_totals(await request.app[store_key].count_data_sources_by_type())
    body = await request.app[metrics_key].exposition([totals])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def add_routes(app: web.Application) -> None:
    """Register /metrics."""
    app.router.add_get("/metrics", get_metrics)
