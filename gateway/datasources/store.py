"""DataSourceStore: one method per data source operation, each one transaction, rows -> DataSource."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from gateway.datasources.models import (
    AddDataSourceCommand,
    DataSource,
    ProvisionedDataSource,
    ProvisionedDelete,
    UidGenerator,
    UpdateDataSourceCommand,
    validate_uid,
)
from gateway.db import Database
from gateway.errors import (
    DataSourceAddFailed,
    DataSourceNameExists,
    DataSourceNotFound,
    DataSourceReadOnlyDelete,
    DataSourceReadOnlyUpdate,
    DataSourceUidExists,
    DataSourceUidMismatch,
    DataSourceUpdateNameExists,
    DataSourceVersionConflict,
    ProvisioningFailed,
)

log = logging.getLogger("gateway.provisioning")

# Called with (org_id, data source id, uid) after every committed write; the cache listens here.
ChangeListener = Callable[[int, int, str], Any]


class DataSourceStore:
    """Data sources of every org, in Postgres; writes to one org are serialised by an advisory lock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._q = db.queries
        self.listeners: list[ChangeListener] = []
        self._uids = UidGenerator()

    async def list_data_sources(self, org_id: int, limit: int) -> list[DataSource]:
        """Up to `limit` data sources of the org (chosen by name; limit <= 0 means all)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(self._q["list_data_sources"], org_id, limit if limit > 0 else None)
        return [DataSource.from_record(row) for row in rows]

    async def search_data_sources(
        self, org_id: int, types: Sequence[str] | None, query: str | None, limit: int, offset: int,
    ) -> tuple[list[DataSource], int]:
        """One page of the org's data sources filtered by type and name substring, with the total."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                self._q["search_data_sources"], org_id, list(types) if types else None, query, limit, offset,
            )
        total = rows[0]["total"] if rows else 0
        return [DataSource.from_record(row) for row in rows], total

    async def get_data_source(
        self, org_id: int, *, id: int | None = None, uid: str | None = None, name: str | None = None,
    ) -> DataSource:
        """The org's data source with this id, uid or name, or DataSourceNotFound."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(self._q["get_data_source"], org_id, id, uid, name)
        if row is None:
            raise DataSourceNotFound()
        return DataSource.from_record(row)

    async def get_default_data_source(self, org_id: int) -> DataSource:
        """The org's default data source, or DataSourceNotFound."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(self._q["get_default_data_source"], org_id)
        if row is None:
            raise DataSourceNotFound()
        return DataSource.from_record(row)

    async def get_data_sources_by_uid(self, org_id: int, uids: Sequence[str]) -> list[DataSource]:
        """The org's data sources among `uids` (missing ones are left out)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(self._q["get_data_sources_by_uid"], org_id, list(uids))
        return [DataSource.from_record(row) for row in rows]

    async def count_data_sources_by_type(self) -> dict[str, int]:
        """How many data sources each type has, over every org."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(self._q["count_data_sources_by_type"])
        return {row["type"]: row["count"] for row in rows}

    async def add_data_source(
        self, org_id: int, cmd: AddDataSourceCommand, sealed: dict[str, str], *, read_only: bool = False,
    ) -> DataSource:
        """Insert as Grafana's AddDataSource: auto-name, first-in-org default, uid checks, one default."""
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute(self._q["lock_org_data_sources"], org_id)
            names = [row["name"] for row in await conn.fetch(self._q["list_data_source_names"], org_id)]
            is_default = cmd.is_default or not names
            name = cmd.name or _free_name(cmd.type, names)
            if name in names:
                raise DataSourceNameExists()
            uid = cmd.uid
            if uid:
                validate_uid(uid)
            else:
                for _ in range(3):
                    uid = self._uids.new()
                    if await conn.fetchrow(self._q["data_source_uid_taken"], org_id, uid) is None:
                        break
                else:
                    raise DataSourceAddFailed()
            json_data = cmd.json_data if cmd.json_data is not None else {}
            try:
                row = await conn.fetchrow(
                    self._q["insert_data_source"], org_id, cmd.type, name, cmd.access, cmd.url, cmd.user,
                    cmd.database, cmd.basic_auth, cmd.basic_auth_user, cmd.with_credentials, is_default,
                    json_data, sealed, uid, read_only, cmd.api_version,
                )
            except asyncpg.UniqueViolationError as error:
                if error.constraint_name == "data_source_org_id_uid_key":
                    raise DataSourceUidExists() from None
                raise DataSourceNameExists() from None
            if is_default:
                await conn.execute(self._q["clear_default_data_source"], org_id, row["id"])
            await self._notify(conn, row)
        ds = DataSource.from_record(row)
        self._changed(ds)
        return ds

    async def update_data_source(
        self, org_id: int, cmd: UpdateDataSourceCommand, sealed: dict[str, str], dropped: Sequence[str],
        *, id: int | None = None, uid: str | None = None,
    ) -> DataSource:
        """Update as Grafana's UpdateDataSource (spec §6.9, §7): full replacement but for url,
        basicAuthUser and uid when empty, secrets merged, optimistic `version` check, atomically.
        """
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute(self._q["lock_org_data_sources"], org_id)
            current_row = await conn.fetchrow(self._q["lock_data_source"], org_id, id, uid, None)
            if current_row is None:
                raise DataSourceNotFound()
            current = DataSource.from_record(current_row)
            if current.read_only:
                raise DataSourceReadOnlyUpdate()
            if cmd.uid:
                validate_uid(cmd.uid)
                if cmd.uid != current.uid:
                    raise DataSourceUidMismatch()
            if await conn.fetchrow(self._q["data_source_name_taken"], org_id, cmd.name, current.id):
                raise DataSourceUpdateNameExists()
            try:
                row = await conn.fetchrow(
                    self._q["update_data_source"], org_id, current.id, cmd.version, cmd.type, cmd.name,
                    cmd.access, cmd.url, cmd.user, cmd.database, cmd.basic_auth, cmd.basic_auth_user,
                    cmd.with_credentials, cmd.is_default, _keep_team_headers(cmd.json_data, current),
                    cmd.api_version, list(dropped), sealed,
                )
            except asyncpg.UniqueViolationError:
                raise DataSourceUpdateNameExists() from None
            if row is None:
                raise DataSourceVersionConflict()
            if cmd.is_default:
                await conn.execute(self._q["clear_default_data_source"], org_id, current.id)
            await self._notify(conn, row)
        ds = DataSource.from_record(row)
        self._changed(ds)
        return ds

    async def delete_data_source(
        self, org_id: int, *, id: int | None = None, uid: str | None = None, name: str | None = None,
    ) -> DataSource:
        """Delete one data source unless it is read-only; returns what was deleted."""
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute(self._q["lock_org_data_sources"], org_id)
            row = await conn.fetchrow(self._q["lock_data_source"], org_id, id, uid, name)
            if row is None:
                raise DataSourceNotFound()
            if row["read_only"]:
                raise DataSourceReadOnlyDelete()
            await conn.execute(self._q["delete_data_source"], org_id, row["id"])
            await self._notify(conn, row)
        ds = DataSource.from_record(row)
        self._changed(ds)
        return ds

    async def provision(
        self, steps: Sequence[ProvisionedDelete | ProvisionedDataSource], lock_key: int, *, conn: Any = None,
        digest: str = "",
    ) -> int:
        """Apply one provisioning run in one transaction, as Grafana orders it: prune the prunable data sources
        no file names any more, then each file's deletes and upserts; returns how many rows changed.

        A failure names the entry (ProvisioningFailed) and rolls everything back. `conn` is the session that
        already holds `lock_key` at start; `digest` is recorded so other replicas skip the same files.
        """
        if conn is None:
            async with self._db.connection() as own:
                return await self.provision(steps, lock_key, conn=own, digest=digest)
        changed: list[Any] = []
        async with conn.transaction():
            await conn.execute(self._q["lock_provisioning"], lock_key)
            named = {(step.org_id, step.name if isinstance(step, ProvisionedDelete) else step.cmd.name)
                     for step in steps}
            stale = [ProvisionedDelete(where="prune", org_id=row["org_id"], name=row["name"])
                     for row in await conn.fetch(self._q["list_prunable_data_sources"])
                     if (row["org_id"], row["name"]) not in named]
            orgs = sorted({step.org_id for step in [*stale, *steps]})
            for org_id in orgs:  # in one order, so two runs (or a run and an API write) cannot deadlock
                await conn.execute(self._q["lock_org_data_sources"], org_id)
            for step in [*stale, *steps]:
                if isinstance(step, ProvisionedDataSource) and not await conn.fetchrow(
                        self._q["org_exists"], step.org_id):
                    raise ProvisioningFailed(f"{step.where}: orgId: organization {step.org_id} does not exist")
                if isinstance(step, ProvisionedDelete):  # in an org that does not exist: nothing to delete
                    row = await conn.fetchrow(self._q["lock_data_source"], step.org_id, None, None, step.name)
                    if row is not None:
                        await conn.execute(self._q["delete_data_source"], step.org_id, row["id"])
                        log.info("provisioning deleted data source %r (org %d, %s)", step.name, step.org_id,
                                 step.where)
                        changed.append(row)
                    continue
                row = await self._upsert(conn, step)
                if row is not None:
                    changed.append(row)
            for row in changed:
                await self._notify(conn, row)
            if digest:
                await conn.execute(self._q["set_provisioning_digest"], "datasources", digest)
        for row in changed:
            self._changed(DataSource.from_record(row))
        return len(changed)

    async def provisioned_digest(self, conn: Any) -> str:
        """The digest of the files the last start applied ('' when none was)."""
        return await conn.fetchval(self._q["get_provisioning_digest"], "datasources") or ""

    async def _upsert(self, conn: Any, step: ProvisionedDataSource) -> Any:
        """Insert or update one provisioned data source by org and name; None when its stored version is newer."""
        cmd, org_id = step.cmd, step.org_id
        current = await conn.fetchrow(self._q["lock_data_source"], org_id, None, None, cmd.name)
        json_data = cmd.json_data if cmd.json_data is not None else {}
        try:
            if current is None:
                is_default = cmd.is_default or not await conn.fetch(self._q["list_data_source_names"], org_id)
                row = await conn.fetchrow(
                    self._q["insert_provisioned_data_source"], org_id, cmd.type, cmd.name, cmd.access, cmd.url,
                    cmd.user, cmd.database, cmd.basic_auth, cmd.basic_auth_user, cmd.with_credentials, is_default,
                    json_data, step.sealed, cmd.uid, step.read_only, cmd.api_version, step.prunable,
                )
            else:
                row = await conn.fetchrow(
                    self._q["update_provisioned_data_source"], org_id, current["id"], step.version, cmd.type,
                    cmd.name, cmd.access, cmd.url, cmd.user, cmd.database, cmd.basic_auth, cmd.basic_auth_user,
                    cmd.with_credentials, cmd.is_default, json_data, step.sealed, cmd.uid, step.read_only,
                    step.prunable,
                )
        except asyncpg.UniqueViolationError:
            raise ProvisioningFailed(f"{step.where}: uid: another data source of org {org_id} has this uid") from None
        if row is None:
            log.info("provisioning kept data source %r (org %d): its stored version %d is newer than %s's %d",
                     cmd.name, org_id, current["version"], step.where, step.version)
            return None
        if row["is_default"]:
            await conn.execute(self._q["clear_default_data_source"], org_id, row["id"])
        log.info("provisioning %s data source %r (org %d, uid %s)", "added" if current is None else "updated",
                 cmd.name, org_id, row["uid"])
        return row

    async def _notify(self, conn: Any, row: Any) -> None:
        """Tell every replica, on commit, that this data source changed."""
        await conn.execute(self._q["notify_data_source_changed"], f"{row['org_id']}:{row['id']}:{row['uid']}")

    def _changed(self, ds: DataSource) -> None:
        for listener in self.listeners:
            listener(ds.org_id, ds.id, ds.uid)


def _free_name(ds_type: str, names: Sequence[str]) -> str:
    """Grafana's auto-name: `type`, `type-1`, `type-2`, ... compared case-insensitively."""
    taken = {name.lower() for name in names}
    candidate, n = ds_type, 0
    while candidate.lower() in taken:
        n += 1
        candidate = f"{ds_type}-{n}"
    return candidate


def _keep_team_headers(json_data: Any, current: DataSource) -> Any:
    """jsonData as sent, except teamHttpHeaders, which only the LBAC API may change (spec §6.9 c)."""
    if json_data is None:
        json_data = {}
    if not isinstance(json_data, dict):
        return json_data
    json_data = {key: value for key, value in json_data.items() if key != "teamHttpHeaders"}
    if "teamHttpHeaders" in current.options:
        json_data["teamHttpHeaders"] = current.options["teamHttpHeaders"]
    return json_data
