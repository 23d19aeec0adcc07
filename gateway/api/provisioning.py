"""POST /api/admin/provisioning/datasources/reload: apply the provisioning files again (Admin only)."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import authorize
from gateway.keys import provisioner_key
from gateway.responses import json_response


async def admin_provisioning_reload_datasources(request: web.Request) -> web.Response:
    """Grafana's adminProvisioningReloadDatasources: a file error names file, entry and field; nothing changes."""
    await authorize(request, "provisioning:reload", "provisioners:datasources")
    await request.app[provisioner_key].apply()
    return json_response({"message": "Datasources config reloaded"})


def add_routes(app: web.Application) -> None:
    """Register the provisioning reload route."""
    app.router.add_post("/api/admin/provisioning/datasources/reload", admin_provisioning_reload_datasources)
