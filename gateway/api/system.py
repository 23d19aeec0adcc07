"""/api/health (the readiness and liveness probe) and /api/frontend/settings."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import config_key, db_key, draining_key
from gateway.responses import json_response

COMMIT = "gateway"


async def get_health(request: web.Request) -> web.Response:
    """Grafana's health body; 503 while Postgres does not answer ("database": "failing") or the worker drains."""
    version = request.app[config_key].gateway.grafana_version
    ok = await request.app[db_key].ping()
    body = {"commit": COMMIT, "database": "ok" if ok else "failing", "version": version}
    # from SIGTERM on, a readiness probe takes the pod out of rotation while it still serves
    ready = ok and not request.app[draining_key].is_set()
    return json_response(body, status=200 if ready else 503)


async def get_frontend_settings(request: web.Request) -> web.Response:
    """The part of Grafana's frontend settings API clients read: buildInfo.version gates their features."""
    version = request.app[config_key].gateway.grafana_version
    return json_response({
        "appSubUrl": "",
        "buildInfo": {
            "buildstamp": 0, "commit": COMMIT, "edition": "Open Source", "env": "production",
            "hideVersion": False, "latestVersion": "", "version": version,
            "versionString": f"gateway (Grafana {version})",
        },
        "featureToggles": {},
    })


def add_routes(app: web.Application) -> None:
    """Register the health and settings routes."""
    app.router.add_get("/api/health", get_health)
    app.router.add_get("/api/frontend/settings", get_frontend_settings)
