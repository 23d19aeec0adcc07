"""Writes of data sources shared by the API and (next) provisioning: Grafana's validation, in Grafana's
order, the secrets sealed, one transaction in the store."""

from __future__ import annotations

from gateway.crypto import SecretBox
from gateway.datasources.models import (
    MAX_FIELD_BYTES,
    MAX_NAME_BYTES,
    MAX_URL_BYTES,
    AddDataSourceCommand,
    DataSource,
    UpdateDataSourceCommand,
    validate_request_settings,
    validate_url,
)
from gateway.datasources.store import DataSourceStore
from gateway.errors import BadRequestData, DataSourceNameInvalid, DataSourceUrlInvalid, TeamHeadersRefused


class DataSourceService:
    """Adds and updates data sources after the checks Grafana makes (and the few gateway adds)."""

    def __init__(self, store: DataSourceStore, box: SecretBox) -> None:
        self._store = store
        self._box = box

    async def add(self, org_id: int, cmd: AddDataSourceCommand, *, read_only: bool = False) -> DataSource:
        """POST /api/datasources after binding, in Grafana's validation order (spec-crud §6.2)."""
        if not cmd.type or not cmd.access:
            raise BadRequestData()
        if cmd.url:
            validate_url(cmd.type, cmd.url)
        if isinstance(cmd.json_data, dict) and "teamHttpHeaders" in cmd.json_data:
            raise TeamHeadersRefused()
        _check(cmd)
        sealed = self._box.seal_all(cmd.secure_json_data or {})
        return await self._store.add_data_source(org_id, cmd, sealed, read_only=read_only)

    async def update(self, org_id: int, cmd: UpdateDataSourceCommand, *, id: int | None = None,
                     uid: str | None = None) -> DataSource:
        """PUT /api/datasources/... after binding: secrets merged (an empty value removes one)."""
        validate_url(cmd.type, cmd.url)
        _check(cmd)
        secrets = cmd.secure_json_data or {}
        sealed = self._box.seal_all(secrets)
        dropped = [field for field, value in secrets.items() if not value]
        return await self._store.update_data_source(org_id, cmd, sealed, dropped, id=id, uid=uid)


def _check(cmd: AddDataSourceCommand) -> None:
    """Column lengths as Grafana's varchar columns bound them, then settings no request could carry."""
    if len(cmd.name.encode()) > MAX_NAME_BYTES:
        raise DataSourceNameInvalid()
    if len(cmd.url.encode()) > MAX_URL_BYTES:
        raise DataSourceUrlInvalid()
    for value in (cmd.type, cmd.access, cmd.user, cmd.database, cmd.basic_auth_user, cmd.api_version):
        if len(value.encode()) > MAX_FIELD_BYTES:
            raise BadRequestData()
    validate_request_settings(cmd)
