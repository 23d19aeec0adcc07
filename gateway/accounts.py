"""Orgs, service accounts and their glsa_ tokens, in Postgres."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from gateway.db import Database
from gateway.errors import (
    OrganizationNameTaken,
    OrganizationNotFound,
    ServiceAccountExists,
    ServiceAccountNotFound,
    TokenNameExists,
    TokenNotFound,
)

ROLES = ("None", "Viewer", "Editor", "Admin")
_ALPHANUMERIC = string.ascii_letters + string.digits


class TokenGrant(msgspec.Struct, frozen=True):
    """What a token hash resolves to: its service account, grants and state."""

    service_account_id: int
    org_id: int
    login: str
    role: str
    disabled: bool
    expires: datetime | None
    revoked: bool
    permissions: tuple[tuple[str, str], ...]


def new_token() -> str:
    """A Grafana service account token: glsa_ + 32 alphanumerics + _ + CRC32 checksum (little-endian hex)."""
    secret = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(32))
    return f"glsa_{secret}_{_checksum(secret)}"


def _checksum(secret: str) -> str:
    return zlib.crc32(f"glsa_{secret}".encode()).to_bytes(4, "little").hex()


_TOKEN = re.compile(r"^gl([a-z]+)_([0-9A-Za-z]{32})_([0-9a-f]{8})$")


def is_well_formed_token(token: str) -> bool:
    """True when the token has Grafana's prefixed shape and its checksum matches."""
    match = _TOKEN.match(token)
    return match is not None and match.group(1) == "sa" and _checksum(match.group(2)) == match.group(3)


def token_hash(token: str) -> str:
    """The stored form of a token: tokens are high-entropy, so SHA-256 is enough and fast."""
    return hashlib.sha256(token.encode()).hexdigest()


class AccountStore:
    """Orgs, service accounts, their grants and tokens."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._q = db.queries

    async def list_orgs(self) -> list[dict[str, Any]]:
        """Every org as Grafana lists them: id and name."""
        async with self._db.connection() as conn:
            return [dict(row) for row in await conn.fetch(self._q["list_orgs"])]

    async def org_exists(self, org_id: int) -> bool:
        """True when the org exists."""
        async with self._db.connection() as conn:
            return await conn.fetchrow(self._q["org_exists"], org_id) is not None

    async def create_org(self, name: str) -> int:
        """A new org; a taken name is 409 as in Grafana."""
        async with self._db.connection() as conn:
            try:
                org_id: int = await conn.fetchval(self._q["insert_org"], name)
            except asyncpg.UniqueViolationError:
                raise OrganizationNameTaken() from None
        return org_id

    async def create_service_account(
        self, org_id: int, name: str, role: str, disabled: bool = False,
        permissions: tuple[tuple[str, str], ...] = (),
    ) -> dict[str, Any]:
        """A service account (login `sa-<org>-<name>` as Grafana) with optional fine-grained grants."""
        login = "sa-" + (f"{org_id}-" if org_id != 1 else "") + re.sub(r"[^a-z0-9\-_.]", "-", name.lower())
        async with self._db.connection() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(self._q["insert_service_account"], org_id, name, login, role, disabled)
            except asyncpg.UniqueViolationError:
                raise ServiceAccountExists() from None
            except asyncpg.ForeignKeyViolationError:
                raise OrganizationNotFound() from None
            for action, scope in permissions:
                await conn.execute(self._q["insert_service_account_permission"], row["id"], action, scope)
        return dict(row)

    async def get_service_account(self, org_id: int, sa_id: int) -> dict[str, Any]:
        """One service account of the org, or 404."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(self._q["get_service_account"], org_id, sa_id)
        if row is None:
            raise ServiceAccountNotFound()
        return dict(row)

    async def create_token(
        self, org_id: int, sa_id: int, name: str, seconds_to_live: int = 0,
    ) -> tuple[int, str, str]:
        """A new token for the service account: (id, name, the token itself, shown only now)."""
        await self.get_service_account(org_id, sa_id)
        token = new_token()
        expires = datetime.now(UTC) + timedelta(seconds=seconds_to_live) if seconds_to_live > 0 else None
        async with self._db.connection() as conn:
            try:
                row = await conn.fetchrow(self._q["insert_api_token"], org_id, sa_id, name, token_hash(token), expires)
            except asyncpg.UniqueViolationError:
                raise TokenNameExists() from None
        return row["id"], row["name"], token

    async def list_tokens(self, org_id: int, sa_id: int) -> list[dict[str, Any]]:
        """The service account's tokens (never their values)."""
        await self.get_service_account(org_id, sa_id)
        async with self._db.connection() as conn:
            return [dict(row) for row in await conn.fetch(self._q["list_api_tokens"], org_id, sa_id)]

    async def delete_token(self, org_id: int, sa_id: int, token_id: int) -> str:
        """Delete a token; returns its hash so caches can drop it."""
        async with self._db.connection() as conn:
            hashed: str | None = await conn.fetchval(self._q["delete_api_token"], org_id, sa_id, token_id)
        if hashed is None:
            raise TokenNotFound()
        return hashed

    async def token_grant(self, hashed: str) -> TokenGrant | None:
        """Resolve a token hash to its service account and grants, or None when unknown."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(self._q["get_token_identity"], hashed)
        if row is None:
            return None
        return TokenGrant(
            service_account_id=row["id"], org_id=row["org_id"], login=row["login"], role=row["role"],
            disabled=row["is_disabled"], expires=row["expires"], revoked=row["is_revoked"],
            permissions=tuple(zip(row["actions"], row["scopes"], strict=True)),
        )
