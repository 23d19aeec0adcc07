"""/api/datasources CRUD: one handler per Grafana operation id (spec-crud §6)."""

from __future__ import annotations

import re

from aiohttp import web

from gateway.auth import Identity
from gateway.backends import UNKNOWN_LOGO, plugin_for
from gateway.cache import Entry
from gateway.errors import (
    AccessDenied,
    BadRequestData,
    DataSourceNameInvalid,
    DataSourceNotFound,
    DataSourceUrlInvalid,
    GatewayError,
    IdInvalid,
    UidInvalidPath,
)
from gateway.keys import box_key, cache_key, config_key, identity_key, store_key
from gateway.models import (
    MAX_FIELD_BYTES,
    MAX_NAME_BYTES,
    MAX_URL_BYTES,
    AddDataSourceCommand,
    DataSource,
    DataSourceListItem,
    DataSourceSaved,
    DataSourceView,
    UpdateDataSourceCommand,
    bind,
    is_valid_uid_chars,
    validate_url,
)
from gateway.wire import json_response

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
MAX_PAGE_SIZE = 1000


def view(ds: DataSource, access_control: dict[str, bool] | None = None) -> DataSourceView:
    """Grafana's full DTO: secret names as secureJsonFields, never their values."""
    plugin = plugin_for(ds.type)
    return DataSourceView(
        id=ds.id, uid=ds.uid, org_id=ds.org_id, name=ds.name, type=plugin.id if plugin else ds.type,
        type_logo_url=plugin.logo if plugin else UNKNOWN_LOGO, access=ds.access, url=ds.url, user=ds.user,
        database=ds.database, basic_auth=ds.basic_auth, basic_auth_user=ds.basic_auth_user,
        with_credentials=ds.with_credentials, is_default=ds.is_default,
        json_data=ds.json_data if ds.json_data is not None else {},
        secure_json_fields=dict.fromkeys(ds.secure_json_data, True), version=ds.version,
        read_only=ds.read_only, access_control=access_control or None, api_version=ds.api_version,
    )


def list_item(ds: DataSource) -> DataSourceListItem:
    """Grafana's list DTO."""
    plugin = plugin_for(ds.type)
    return DataSourceListItem(
        id=ds.id, uid=ds.uid, org_id=ds.org_id, name=ds.name, type=plugin.id if plugin else ds.type,
        type_name=plugin.name if plugin else ds.type, type_logo_url=plugin.logo if plugin else UNKNOWN_LOGO,
        access=ds.access, url=ds.url, user=ds.user, database=ds.database, basic_auth=ds.basic_auth,
        is_default=ds.is_default, json_data=ds.json_data if ds.json_data is not None else {},
        read_only=ds.read_only,
    )


def parse_id(raw: str, *, trace: bool) -> int:
    """A path id as Grafana parses it (base-10 int64), or 400 "id is invalid"."""
    if not _GO_INT.fullmatch(raw) or not -(2**63) <= (value := int(raw)) < 2**63:
        raise IdInvalid(trace=trace)  # Go's ParseInt takes no spaces, underscores or non-ASCII digits
    return value


_GO_INT = re.compile(r"[+-]?[0-9]+")


async def authorize(request: web.Request, action: str, scope: str | None = None) -> Identity:
    """RBAC as Grafana evaluates it: the scope as given, then id/name scopes resolved to the uid."""
    identity = request[identity_key]
    if identity.can(action, scope):
        return identity
    if scope is not None and scope.startswith(("datasources:id:", "datasources:name:")):
        kind, _, value = scope.removeprefix("datasources:").partition(":")
        store = request.app[store_key]
        try:
            if kind == "id":
                ds = await store.get_data_source(identity.org_id, id=int(value))
            else:
                ds = await store.get_data_source(identity.org_id, name=value)
        except (ValueError, DataSourceNotFound):
            raise AccessDenied(action) from None
        if identity.can(action, f"datasources:uid:{ds.uid}"):
            return identity
    raise AccessDenied(action)


async def query_entry(request: web.Request, identity: Identity, reference: str, *, not_found: str) -> Entry:
    """The cached data source named by `<id>` or `uid/<uid>`, if the caller may query it."""
    cache = request.app[cache_key]
    try:
        if reference.startswith("uid/"):
            uid = reference[4:]
            if not is_valid_uid_chars(uid):
                raise UidInvalidPath()
            entry = await cache.get(identity.org_id, uid=uid)
        else:
            entry = await cache.get(identity.org_id, id=parse_id(reference, trace=True))
    except DataSourceNotFound:
        raise GatewayError(not_found, status=404, trace=True) from None
    if not identity.can("datasources:query", f"datasources:uid:{entry.ds.uid}"):
        raise GatewayError("Access denied to datasource", status=403, trace=True)
    return entry


def _check_lengths(cmd: AddDataSourceCommand) -> None:
    if len(cmd.name.encode()) > MAX_NAME_BYTES:
        raise DataSourceNameInvalid()
    if len(cmd.url.encode()) > MAX_URL_BYTES:
        raise DataSourceUrlInvalid()
    for value in (cmd.type, cmd.access, cmd.user, cmd.database, cmd.basic_auth_user, cmd.api_version):
        if len(value.encode()) > MAX_FIELD_BYTES:
            raise BadRequestData()


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
        raise GatewayError("limit and page must be positive integers", status=400) from None
    if value < 1:
        raise GatewayError("limit and page must be positive integers", status=400)
    return value


def _readable(identity: Identity, ds: DataSource) -> bool:
    return identity.can("datasources:read", f"datasources:uid:{ds.uid}")


async def get_data_source_by_id(request: web.Request) -> web.Response:
    """GET /api/datasources/:id (deprecated in Grafana, still served)."""
    raw = request.match_info["id"]
    identity = await authorize(request, "datasources:read", f"datasources:id:{raw}")
    ds_id = parse_id(raw, trace=False)
    if ds_id == 0:
        raise GatewayError("Datasource id is missing", status=400)
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
    """POST /api/datasources, in Grafana's validation order (spec-crud §6.2)."""
    identity = await authorize(request, "datasources:create")
    cmd = bind(await request.read(), request.content_type, AddDataSourceCommand)
    if not cmd.type or not cmd.access:
        raise BadRequestData()
    if cmd.url:
        validate_url(cmd.type, cmd.url)
    if isinstance(cmd.json_data, dict) and "teamHttpHeaders" in cmd.json_data:
        raise GatewayError(
            "Cannot create datasource with team HTTP headers, need to use updateDatasourceLBACRules API",
            status=403,
        )
    _check_lengths(cmd)
    sealed = request.app[box_key].seal_all(cmd.secure_json_data or {})
    ds = await request.app[store_key].add_data_source(identity.org_id, cmd, sealed)
    return json_response(DataSourceSaved(datasource=view(ds), id=ds.id, message="Datasource added", name=ds.name))


async def _update(request: web.Request, identity: Identity, cmd: UpdateDataSourceCommand,
                  *, id: int | None = None, uid: str | None = None) -> web.Response:
    validate_url(cmd.type, cmd.url)
    _check_lengths(cmd)
    secrets = cmd.secure_json_data or {}
    sealed = request.app[box_key].seal_all(secrets)
    dropped = [field for field, value in secrets.items() if not value]
    ds = await request.app[store_key].update_data_source(identity.org_id, cmd, sealed, dropped, id=id, uid=uid)
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
        raise GatewayError("Missing valid datasource id", status=400)
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
