"""/api/datasources CRUD: one handler per Grafana operation id (spec-crud §6)."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import Identity, authorize
from gateway.backends.registry import UNKNOWN_LOGO, plugin_for
from gateway.binding import bind, parse_id
from gateway.datasources.models import (
    AddDataSourceCommand,
    DataSource,
    DataSourceListItem,
    DataSourceSaved,
    DataSourceView,
    UpdateDataSourceCommand,
)
from gateway.errors import BadRequestData, DataSourceIdInvalidForDelete, DataSourceIdMissing, PageInvalid
from gateway.keys import config_key, service_key, store_key
from gateway.responses import json_response

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
MAX_PAGE_SIZE = 1000


def _plugin(ds: DataSource) -> tuple[str, str, str]:
    """(type, typeName, typeLogoUrl) as Grafana lists them: the plugin's, or the stored type as it is."""
    plugin = plugin_for(ds.type)
    return (plugin.id, plugin.name, plugin.logo) if plugin else (ds.type, ds.type, UNKNOWN_LOGO)


def view(ds: DataSource, access_control: dict[str, bool] | None = None) -> DataSourceView:
    """Grafana's full DTO: secret names as secureJsonFields, never their values."""
    ds_type, _, logo = _plugin(ds)
    return DataSourceView(
        id=ds.id, uid=ds.uid, org_id=ds.org_id, name=ds.name, type=ds_type, type_logo_url=logo, access=ds.access,
        url=ds.url, user=ds.user, database=ds.database, basic_auth=ds.basic_auth, basic_auth_user=ds.basic_auth_user,
        with_credentials=ds.with_credentials, is_default=ds.is_default,
        json_data=ds.json_data if ds.json_data is not None else {},
        secure_json_fields=dict.fromkeys(ds.secure_json_data, True), version=ds.version,
        read_only=ds.read_only, access_control=access_control or None, api_version=ds.api_version,
    )


def list_item(ds: DataSource) -> DataSourceListItem:
    """Grafana's list DTO."""
    ds_type, type_name, logo = _plugin(ds)
    return DataSourceListItem(
        id=ds.id, uid=ds.uid, org_id=ds.org_id, name=ds.name, type=ds_type, type_name=type_name,
        type_logo_url=logo, access=ds.access, url=ds.url, user=ds.user, database=ds.database,
        basic_auth=ds.basic_auth, is_default=ds.is_default,
        json_data=ds.json_data if ds.json_data is not None else {}, read_only=ds.read_only,
    )


def _wants_access_control(request: web.Request) -> bool:
    return request.query.get("accesscontrol", "") in _TRUE


async def get_data_sources(request: web.Request) -> web.Response:
    """GET /api/datasources: the org's data sources by lower-cased name; filters and pages when asked."""
    identity = await authorize(request, "datasources:read")
    store = request.app[store_key]
    limit = request.app[config_key].datasources.datasource_limit
    query = request.query
    if any(key in query for key in ("type", "query", "limit", "page")):
        types = [t for value in query.getall("type", []) for t in value.split(",") if t]
        aliases = [alias for t in types for alias in _aliases(t)]
        page_size = _positive(query.get("limit"), MAX_PAGE_SIZE if limit <= 0 else min(limit, MAX_PAGE_SIZE))
        page = _positive(query.get("page"), 1)
        rows, total = await store.search_data_sources(
            identity.org_id, aliases or None, query.get("query") or None,
            min(page_size, MAX_PAGE_SIZE), (page - 1) * page_size,
        )
        response = json_response([list_item(ds) for ds in rows if _readable(identity, ds)])
        response.headers["X-Total-Count"] = str(total)
        return response
    rows = await store.list_data_sources(identity.org_id, limit)
    rows.sort(key=lambda ds: ds.name.lower().encode())
    return json_response([list_item(ds) for ds in rows if _readable(identity, ds)])


def _aliases(ds_type: str) -> list[str]:
    plugin = plugin_for(ds_type)
    return [plugin.id, *plugin.aliases] if plugin else [ds_type]


def _positive(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PageInvalid() from None
    if value < 1:
        raise PageInvalid()
    return value


def _readable(identity: Identity, ds: DataSource) -> bool:
    return identity.can("datasources:read", f"datasources:uid:{ds.uid}")


async def get_data_source_by_id(request: web.Request) -> web.Response:
    """GET /api/datasources/:id (deprecated in Grafana, still served)."""
    raw = request.match_info["id"]
    identity = await authorize(request, "datasources:read", f"datasources:id:{raw}")
    ds_id = parse_id(raw, trace=False)
    if ds_id == 0:
        raise DataSourceIdMissing()
    ds = await request.app[store_key].get_data_source(identity.org_id, id=ds_id)
    return json_response(view(ds, identity.access_control(ds.uid) if _wants_access_control(request) else None))


async def get_data_source_by_uid(request: web.Request) -> web.Response:
    """GET /api/datasources/uid/:uid."""
    uid = request.match_info["uid"]
    identity = await authorize(request, "datasources:read", f"datasources:uid:{uid}")
    ds = await request.app[store_key].get_data_source(identity.org_id, uid=uid)
    return json_response(view(ds, identity.access_control(ds.uid) if _wants_access_control(request) else None))


async def get_data_source_by_name(request: web.Request) -> web.Response:
    """GET /api/datasources/name/:name (never with accessControl)."""
    name = request.match_info["name"]
    identity = await authorize(request, "datasources:read", f"datasources:name:{name}")
    ds = await request.app[store_key].get_data_source(identity.org_id, name=name)
    return json_response(view(ds))


async def get_data_source_id_by_name(request: web.Request) -> web.Response:
    """GET /api/datasources/id/:name -> {"id": N}."""
    name = request.match_info["name"]
    identity = await authorize(request, "datasources.id:read", f"datasources:name:{name}")
    ds = await request.app[store_key].get_data_source(identity.org_id, name=name)
    return json_response({"id": ds.id})


async def add_data_source(request: web.Request) -> web.Response:
    """POST /api/datasources."""
    identity = await authorize(request, "datasources:create")
    cmd = bind(await request.read(), request.content_type, AddDataSourceCommand)
    ds = await request.app[service_key].add(identity.org_id, cmd)
    return json_response(DataSourceSaved(datasource=view(ds), id=ds.id, message="Datasource added", name=ds.name))


async def _update(request: web.Request, identity: Identity, cmd: UpdateDataSourceCommand,
                  *, id: int | None = None, uid: str | None = None) -> web.Response:
    ds = await request.app[service_key].update(identity.org_id, cmd, id=id, uid=uid)
    return json_response(DataSourceSaved(datasource=view(ds), id=ds.id, message="Datasource updated", name=cmd.name))


def _bind_update(body: bytes, content_type: str) -> UpdateDataSourceCommand:
    cmd = bind(body, content_type, UpdateDataSourceCommand)
    if not cmd.name or not cmd.type or not cmd.access:
        raise BadRequestData()
    return cmd


async def update_data_source_by_id(request: web.Request) -> web.Response:
    """PUT /api/datasources/:id (deprecated in Grafana, still served); a bad body wins over a bad id."""
    raw = request.match_info["id"]
    identity = await authorize(request, "datasources:write", f"datasources:id:{raw}")
    cmd = _bind_update(await request.read(), request.content_type)
    return await _update(request, identity, cmd, id=parse_id(raw, trace=True))


async def update_data_source_by_uid(request: web.Request) -> web.Response:
    """PUT /api/datasources/uid/:uid."""
    uid = request.match_info["uid"]
    identity = await authorize(request, "datasources:write", f"datasources:uid:{uid}")
    cmd = _bind_update(await request.read(), request.content_type)
    return await _update(request, identity, cmd, uid=uid)


async def delete_data_source_by_id(request: web.Request) -> web.Response:
    """DELETE /api/datasources/:id -> {"message": "Data source deleted"} (no id, as Grafana)."""
    raw = request.match_info["id"]
    identity = await authorize(request, "datasources:delete", f"datasources:id:{raw}")
    ds_id = parse_id(raw, trace=True)
    if ds_id <= 0:
        raise DataSourceIdInvalidForDelete()
    await request.app[store_key].delete_data_source(identity.org_id, id=ds_id)
    return json_response({"message": "Data source deleted"})


async def delete_data_source_by_uid(request: web.Request) -> web.Response:
    """DELETE /api/datasources/uid/:uid."""
    uid = request.match_info["uid"]
    identity = await authorize(request, "datasources:delete", f"datasources:uid:{uid}")
    ds = await request.app[store_key].delete_data_source(identity.org_id, uid=uid)
    return json_response({"id": ds.id, "message": "Data source deleted"})


async def delete_data_source_by_name(request: web.Request) -> web.Response:
    """DELETE /api/datasources/name/:name."""
    name = request.match_info["name"]
    identity = await authorize(request, "datasources:delete", f"datasources:name:{name}")
    ds = await request.app[store_key].delete_data_source(identity.org_id, name=name)
    return json_response({"id": ds.id, "message": "Data source deleted"})


def add_routes(app: web.Application) -> None:
    """Register the CRUD routes; static segments before `{id}` so they win, as in Grafana."""
    app.router.add_get("/api/datasources", get_data_sources)
    app.router.add_get("/api/datasources/", get_data_sources)
    app.router.add_post("/api/datasources", add_data_source)
    app.router.add_post("/api/datasources/", add_data_source)
    app.router.add_get("/api/datasources/uid/{uid}", get_data_source_by_uid)
    app.router.add_put("/api/datasources/uid/{uid}", update_data_source_by_uid)
    app.router.add_delete("/api/datasources/uid/{uid}", delete_data_source_by_uid)
    app.router.add_get("/api/datasources/name/{name}", get_data_source_by_name)
    app.router.add_delete("/api/datasources/name/{name}", delete_data_source_by_name)
    app.router.add_get("/api/datasources/id/{name}", get_data_source_id_by_name)
    app.router.add_get("/api/datasources/{id}", get_data_source_by_id)
    app.router.add_put("/api/datasources/{id}", update_data_source_by_id)
    app.router.add_delete("/api/datasources/{id}", delete_data_source_by_id)
