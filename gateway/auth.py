"""Who is calling (basic auth admin, service account tokens), in which org, and what they may do:
`authorize(request, action, scope)` is the one check every path asks, with id and name scopes resolved to
the data source's uid as Grafana resolves them."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType

import msgspec
from aiohttp import web

from gateway.accounts import AccountStore, TokenGrant, is_well_formed_token, token_hash
from gateway.backends.base import Context
from gateway.config import Config
from gateway.errors import (
    AccessDenied,
    DataSourceAccessDenied,
    DataSourceNotFound,
    GatewayError,
    OriginNotAllowed,
    Unauthorized,
    api_key_other_org,
    bad_credentials,
    expired_api_key,
    invalid_api_key,
    revoked_api_key,
)
from gateway.keys import authenticator_key, cache_key, identity_key, store_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Permissions = Mapping[str, frozenset[str]]

# Grafana OSS fixed roles as granted to basic roles (spec-crud §3.4); "" is the scope of an action
# that takes none (datasources:create).
_VIEWER = {
    "datasources:read": {"datasources:*"},
    "datasources:query": {"datasources:*"},
    "datasources.id:read": {"datasources:*"},
}
_EDITOR = {**_VIEWER, "datasources:explore": {""}}
_ADMIN = {
    **_EDITOR,
    "datasources:create": {""},
    "datasources:write": {"datasources:*"},
    "datasources:delete": {"datasources:*"},
    "datasources.permissions:read": {"datasources:*"},
    "datasources.permissions:write": {"datasources:*"},
    "datasources.caching:read": {"datasources:*"},
    "datasources.caching:write": {"datasources:*"},
    "serviceaccounts:read": {"serviceaccounts:*"},
    "serviceaccounts:create": {""},
    "serviceaccounts:write": {"serviceaccounts:*"},
    "serviceaccounts:delete": {"serviceaccounts:*"},
}
# provisioning touches every org: Grafana grants fixed:provisioning:writer to the server admin only
_SERVER_ADMIN = {"orgs:read": {"*"}, "orgs:create": {""}, "provisioning:reload": {"provisioners:*"}}


@functools.lru_cache(maxsize=1024)
def role_permissions(role: str, extra: tuple[tuple[str, str], ...] = (), server_admin: bool = False) -> Permissions:
    """The permissions a basic role grants, plus any fine-grained (action, scope) grants (memoised)."""
    base = {"Admin": _ADMIN, "Editor": _EDITOR, "Viewer": _VIEWER}.get(role, {})
    merged: dict[str, set[str]] = {action: set(scopes) for action, scopes in base.items()}
    if server_admin:
        for action, scopes in _SERVER_ADMIN.items():
            merged.setdefault(action, set()).update(scopes)
    for action, scope in extra:
        merged.setdefault(action, set()).add(scope)
    return MappingProxyType({action: frozenset(scopes) for action, scopes in merged.items()})


def scope_matches(granted: str, target: str) -> bool:
    """Grafana's scope match: equal, or a `*` right after ':' or '/' as a prefix wildcard."""
    if granted == target:
        return True
    if not granted.endswith("*"):
        return False
    prefix = granted[:-1]
    if "*" in prefix or "?" in granted or (prefix and prefix[-1] not in ":/"):
        return False
    return target.startswith(prefix)


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """The caller: a user or service account acting in one org with a role and permissions."""

    kind: str  # "user" | "service-account"
    id: int
    login: str
    org_id: int
    role: str
    permissions: Permissions

    def can(self, action: str, scope: str | None = None) -> bool:
        """True when the caller holds `action` on `scope` (on any scope when None)."""
        scopes = self.permissions.get(action)
        if not scopes:
            return False
        if scope is None or scope in scopes:
            return True
        return any(scope_matches(granted, scope) for granted in scopes)

    def access_control(self, uid: str) -> dict[str, bool]:
        """The accessControl map of one data source: every action held on a scope covering its uid."""
        covering = {"*", "datasources:*", "datasources:uid:*", f"datasources:uid:{uid}"}
        return {action: True for action, scopes in sorted(self.permissions.items()) if scopes & covering}


class _TtlCache:
    """A small bounded map whose entries expire; enough for token and org lookups."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self._ttl = ttl
        self._size = size
        self._items: OrderedDict[object, tuple[float, object]] = OrderedDict()

    def get(self, key: object) -> object | None:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: object, value: object) -> None:
        self._items[key] = (time.monotonic() + self._ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def drop(self, key: object) -> None:
        self._items.pop(key, None)


class Authenticator:
    """Turns a request's credentials into an Identity; caches verified tokens briefly."""

    def __init__(self, config: Config, accounts: AccountStore) -> None:
        self._admin_user = config.security.admin_user.encode()
        self._admin_password = config.security.admin_password.encode()
        self._accounts = accounts
        self._tokens = _TtlCache(config.gateway.token_cache_seconds)
        self._orgs = _TtlCache(60.0, 1000)
        # verified admin credentials (the header value) per requested org; only successes are kept
        self._verified = _TtlCache(60.0, 1000)

    def forget_token(self, hashed: str) -> None:
        """Drop a deleted token from this process's cache at once."""
        self._tokens.drop(hashed)

    async def identify(self, request: web.Request) -> Identity:
        """The caller of `request`, or Unauthorized with Grafana's body."""
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        requested_org = _requested_org(request)
        if scheme == "bearer" and credentials.strip():
            return await self._from_token(credentials.strip(), requested_org)
        if scheme == "basic" and credentials:
            cached = self._verified.get((header, requested_org))
            if isinstance(cached, Identity):
                return cached
            try:
                user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthorized() from None
            if user == "api_key":
                return await self._from_token(password, requested_org)
            identity = await self._from_password(user, password, requested_org)
            self._verified.put((header, requested_org), identity)
            return identity
        raise Unauthorized()

    async def _from_password(self, user: str, password: str, requested_org: int) -> Identity:
        user_ok = hmac.compare_digest(user.encode(), self._admin_user)
        password_ok = hmac.compare_digest(password.encode(), self._admin_password)
        if not (user_ok and password_ok):
            raise bad_credentials()
        org_id = requested_org or 1
        # the admin is Admin of every org that exists; elsewhere it has no role (spec-crud §2)
        role = "Admin" if await self._org_exists(org_id) else "None"
        return Identity(
            kind="user", id=1, login=user, org_id=org_id, role=role,
            permissions=role_permissions(role, server_admin=True),
        )

    async def _org_exists(self, org_id: int) -> bool:
        if self._orgs.get(org_id):
            return True
        exists = await self._accounts.org_exists(org_id)
        if exists:
            self._orgs.put(org_id, True)
        return exists

    async def _from_token(self, token: str, requested_org: int) -> Identity:
        if not is_well_formed_token(token):
            raise invalid_api_key()
        hashed = token_hash(token)
        grant = self._tokens.get(hashed)
        if grant is None:
            grant = await self._accounts.token_grant(hashed)
            if grant is None:
                raise invalid_api_key()
            self._tokens.put(hashed, grant)
        assert isinstance(grant, TokenGrant)
        if grant.revoked:
            raise revoked_api_key()
        if grant.expires is not None and grant.expires <= datetime.now(UTC):
            raise expired_api_key()
        if grant.disabled:
            raise invalid_api_key()
        if requested_org and requested_org != grant.org_id:
            raise api_key_other_org()
        return Identity(
            kind="service-account", id=grant.service_account_id, login=grant.login, org_id=grant.org_id,
            role=grant.role, permissions=role_permissions(grant.role, grant.permissions),
        )


def _requested_org(request: web.Request) -> int:
    """targetOrgId, then X-Grafana-Org-Id; unparsable or absent is 0 (the principal's default)."""
    for raw in (request.query.get("targetOrgId"), request.headers.get("X-Grafana-Org-Id")):
        if raw:
            try:
                return max(int(raw), 0)
            except ValueError:
                continue
    return 0


def require(identity: Identity, action: str, scope: str | None = None) -> None:
    """Raise Grafana's 403 unless the caller holds `action` (on `scope`, when given)."""
    if not identity.can(action, scope):
        raise AccessDenied(action)


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


async def queryable(request: web.Request, identity: Identity, reference: str,
                    not_found: type[GatewayError]) -> Context:
    """The data source named by `<id>` or `uid/<uid>`, if the caller (authorized for datasources:query) may
    query it; a missing one raises `not_found` (each path has Grafana's own message for it)."""
    try:
        context = await request.app[cache_key].resolve(identity.org_id, reference)
    except DataSourceNotFound:
        raise not_found() from None
    if not identity.can("datasources:query", f"datasources:uid:{context.ds.uid}"):
        raise DataSourceAccessDenied()
    return context


_PUBLIC = frozenset({"/api/health"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(request: web.Request) -> bool:
    """A browser's Origin, when it sends one, names this host (a form posted from elsewhere does not)."""
    origin = request.headers.get("Origin")
    return origin is None or origin.partition("://")[2].lower() == request.host.lower()  # host names ignore case


_BROWSER_PROMPT = {"WWW-Authenticate": 'Basic realm="gateway", charset="UTF-8"'}


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a signed-in caller on every /api route but the health probe, and on the admin page (where a
    401 asks the browser for a user and password)."""
    path = request.path
    # a cross-site page can make a browser post (or open a WebSocket) with the Basic credentials it keeps for
    # this host once /admin asked for them: nothing that acts may come from another origin
    acts = request.method not in _SAFE_METHODS or request.headers.get("Upgrade", "").lower() == "websocket"
    if acts and not same_origin(request):
        raise OriginNotAllowed()
    if path.startswith("/api/") and path not in _PUBLIC:
        request[identity_key] = await request.app[authenticator_key].identify(request)
    elif path == "/admin" or path.startswith("/admin/"):
        try:
            request[identity_key] = await request.app[authenticator_key].identify(request)
        except Unauthorized as error:
            error.headers = {**(error.headers or {}), **_BROWSER_PROMPT}
            raise
    return await handler(request)
