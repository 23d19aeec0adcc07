"""The Grafana API subset that bootstraps access: orgs, service accounts and their tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from aiohttp import web

from gateway.accounts import ROLES
from gateway.auth import require
from gateway.binding import bind, parse_id
from gateway.errors import BadRequestData
from gateway.keys import accounts_key, authenticator_key, identity_key
from gateway.responses import json_response

MAX_SECONDS_TO_LIVE = 100 * 365 * 24 * 3600
MAX_NAME_BYTES = 190  # Grafana's varchar(190) names; longer ones would overflow the unique indexes


def _name_ok(name: str) -> bool:
    return bool(name.strip()) and len(name.encode()) <= MAX_NAME_BYTES


class CreateOrgCommand(msgspec.Struct, kw_only=True):
    name: str = ""


class CreateServiceAccountCommand(msgspec.Struct, kw_only=True, rename="camel"):
    name: str = ""
    role: str = "Viewer"
    is_disabled: bool = False


class AddTokenCommand(msgspec.Struct, kw_only=True, rename="camel"):
    name: str = ""
    seconds_to_live: int = 0


def _id(request: web.Request, name: str) -> int:
    return parse_id(request.match_info[name], trace=True)


async def get_orgs(request: web.Request) -> web.Response:
    """GET /api/orgs (server admin): [{"id", "name"}]."""
    require(request[identity_key], "orgs:read", "orgs:*")
    return json_response(await request.app[accounts_key].list_orgs())


async def create_org(request: web.Request) -> web.Response:
    """POST /api/orgs (server admin) -> {"message": "Organization created", "orgId": N}."""
    require(request[identity_key], "orgs:create")
    cmd = bind(await request.read(), request.content_type, CreateOrgCommand)
    if not _name_ok(cmd.name):
        raise BadRequestData()
    org_id = await request.app[accounts_key].create_org(cmd.name)
    return json_response({"message": "Organization created", "orgId": org_id})


def _service_account_view(row: dict[str, object], tokens: int = 0) -> dict[str, object]:
    return {
        "id": row["id"], "name": row["name"], "login": row["login"], "orgId": row["org_id"],
        "isDisabled": row["is_disabled"], "role": row["role"], "tokens": tokens,
        "avatarUrl": "/public/img/user_profile.png", "teams": [],
        "createdAt": _time(row["created"]), "updatedAt": _time(row["updated"]),
    }


def _time(value: object) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, datetime) else None


async def create_service_account(request: web.Request) -> web.Response:
    """POST /api/serviceaccounts -> 201 with the account."""
    identity = request[identity_key]
    require(identity, "serviceaccounts:create")
    cmd = bind(await request.read(), request.content_type, CreateServiceAccountCommand)
    if not _name_ok(cmd.name) or cmd.role not in ROLES:
        raise BadRequestData()
    row = await request.app[accounts_key].create_service_account(identity.org_id, cmd.name, cmd.role, cmd.is_disabled)
    return json_response(_service_account_view(row), status=201)


async def get_service_account(request: web.Request) -> web.Response:
    """GET /api/serviceaccounts/:id."""
    identity = request[identity_key]
    sa_id = _id(request, "id")
    require(identity, "serviceaccounts:read", f"serviceaccounts:id:{sa_id}")
    row = await request.app[accounts_key].get_service_account(identity.org_id, sa_id)
    return json_response(_service_account_view(row))


async def create_token(request: web.Request) -> web.Response:
    """POST /api/serviceaccounts/:id/tokens -> {"id", "name", "key"}; the key is shown only here."""
    identity = request[identity_key]
    sa_id = _id(request, "id")
    require(identity, "serviceaccounts:write", f"serviceaccounts:id:{sa_id}")
    cmd = bind(await request.read(), request.content_type, AddTokenCommand)
    if not _name_ok(cmd.name) or not 0 <= cmd.seconds_to_live <= MAX_SECONDS_TO_LIVE:
        raise BadRequestData()
    token_id, name, key = await request.app[accounts_key].create_token(
        identity.org_id, sa_id, cmd.name, cmd.seconds_to_live,
    )
    return json_response({"id": token_id, "key": key, "name": name})


async def list_tokens(request: web.Request) -> web.Response:
    """GET /api/serviceaccounts/:id/tokens (never the keys)."""
    identity = request[identity_key]
    sa_id = _id(request, "id")
    require(identity, "serviceaccounts:read", f"serviceaccounts:id:{sa_id}")
    now = datetime.now(UTC)
    tokens = await request.app[accounts_key].list_tokens(identity.org_id, sa_id)
    return json_response([
        {
            "id": t["id"], "name": t["name"], "role": t["role"], "created": _time(t["created"]),
            "expiration": _time(t["expires"]),
            "secondsUntilExpiration": max(0, int((t["expires"] - now).total_seconds())) if t["expires"] else 0,
            "hasExpired": bool(t["expires"] and t["expires"] <= now), "isRevoked": t["is_revoked"],
            "lastUsedAt": _time(t["last_used_at"]),
        }
        for t in tokens
    ])


async def delete_token(request: web.Request) -> web.Response:
    """DELETE /api/serviceaccounts/:id/tokens/:tokenId -> {"message": "API key deleted"}."""
    identity = request[identity_key]
    sa_id = _id(request, "id")
    require(identity, "serviceaccounts:write", f"serviceaccounts:id:{sa_id}")
    hashed = await request.app[accounts_key].delete_token(identity.org_id, sa_id, _id(request, "tokenId"))
    request.app[authenticator_key].forget_token(hashed)
    return json_response({"message": "API key deleted"})


def add_routes(app: web.Application) -> None:
    """Register the org and service account routes."""
    app.router.add_get("/api/orgs", get_orgs)
    app.router.add_post("/api/orgs", create_org)
    app.router.add_post("/api/serviceaccounts", create_service_account)
    app.router.add_get("/api/serviceaccounts/{id}", get_service_account)
    app.router.add_get("/api/serviceaccounts/{id}/tokens", list_tokens)
    app.router.add_post("/api/serviceaccounts/{id}/tokens", create_token)
    app.router.add_delete("/api/serviceaccounts/{id}/tokens/{tokenId}", delete_token)

