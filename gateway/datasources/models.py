"""Grafana's data source JSON: commands in, views out, the stored record, and their validation rules."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.errors import DataSourceUidInvalid, InvalidHeaderSetting, InvalidTextSetting, InvalidURL


class AddDataSourceCommand(msgspec.Struct, kw_only=True, rename="camel"):
    """Body of POST /api/datasources; `type` and `access` are required, the rest optional."""

    name: str = ""
    type: str = ""
    access: str = ""
    url: str = ""
    database: str = ""
    user: str = ""
    basic_auth: bool = False
    basic_auth_user: str = ""
    with_credentials: bool = False
    is_default: bool = False
    json_data: Any = None
    secure_json_data: dict[str, str] | None = None
    uid: str = ""
    api_version: str = ""


class UpdateDataSourceCommand(AddDataSourceCommand, kw_only=True, rename="camel"):
    """Body of PUT /api/datasources/...; `name` is required too, `version` drives the concurrency check."""

    version: int = 0


class DataSource(msgspec.Struct, kw_only=True):
    """A stored data source; `secure_json_data` holds sealed values only."""

    id: int
    org_id: int
    version: int
    type: str
    name: str
    access: str
    url: str
    user: str
    database: str
    basic_auth: bool
    basic_auth_user: str
    with_credentials: bool
    is_default: bool
    json_data: Any
    secure_json_data: dict[str, str]
    read_only: bool
    uid: str
    api_version: str
    updated: datetime

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DataSource:
        """Build from an asyncpg row of the data_source columns."""
        return cls(**{name: record[name] for name in cls.__struct_fields__})

    @property
    def options(self) -> dict[str, Any]:
        """jsonData when it is an object (any JSON value may be stored), else empty."""
        return self.json_data if isinstance(self.json_data, dict) else {}


class DataSourceView(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """Grafana's dtos.DataSource, keys in Grafana's order."""

    id: int
    uid: str
    org_id: int
    name: str
    type: str
    type_logo_url: str
    access: str
    url: str
    user: str
    database: str
    basic_auth: bool
    basic_auth_user: str
    with_credentials: bool
    is_default: bool
    json_data: Any
    secure_json_fields: dict[str, bool]
    version: int
    read_only: bool
    access_control: dict[str, bool] | None = None
    api_version: str = ""


class DataSourceListItem(msgspec.Struct, kw_only=True, rename="camel"):
    """Grafana's dtos.DataSourceListItemDTO, keys in Grafana's order."""

    id: int
    uid: str
    org_id: int
    name: str
    type: str
    type_name: str
    type_logo_url: str
    access: str
    url: str
    user: str
    database: str
    basic_auth: bool
    is_default: bool
    json_data: Any
    read_only: bool


class DataSourceSaved(msgspec.Struct, kw_only=True):
    """The body of a successful add or update; Grafana writes it as a map, so keys are sorted."""

    datasource: DataSourceView
    id: int
    message: str
    name: str


# -- validation ---------------------------------------------------------------------------------

MAX_NAME_BYTES = 190
MAX_URL_BYTES = 255
MAX_FIELD_BYTES = 255  # type, access, user, database, basicAuthUser: Grafana's varchar(255) columns

_UID = re.compile(r"^[a-zA-Z0-9\-_]*$")
_HAS_SCHEME = re.compile(r"^[^:]*://")
_MSSQL = re.compile(r"^[^\\:]+(?:\\[^:]+)?(?::\d+)?(?:;.+)?$")

URL_REQUIRED_TYPES = frozenset({
    "graphite", "influxdb", "influxdb_08", "elasticsearch", "prometheus",
    "grafana-amazonprometheus-datasource", "grafana-azureprometheus-datasource",
    "alertmanager", "jaeger", "loki", "opentsdb", "tempo", "zipkin",
    "mysql", "grafana-postgresql-datasource", "mssql",
})


def is_valid_uid_chars(uid: str) -> bool:
    """The character rule alone (IsValidShortUID), used on path uids."""
    return _UID.match(uid) is not None


def validate_uid(uid: str) -> None:
    """Grafana's ValidateUID: non-empty, at most 40 bytes, letters, digits, '-' and '_'."""
    if not uid or len(uid.encode()) > 40 or not is_valid_uid_chars(uid):
        raise DataSourceUidInvalid()


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class UidGenerator:
    """~14 character uids like Grafana's newest: letter a-f, base-36 snowflake id, letter a-f."""

    def __init__(self) -> None:
        self._node = secrets.randbelow(1024)
        self._sequence = secrets.randbelow(4096)

    def new(self) -> str:
        """The next uid (a millisecond clock, this generator's node and a 12-bit sequence)."""
        self._sequence = (self._sequence + 1) % 4096
        snowflake = ((int(time.time() * 1000) - 1288834974657) << 22) | (self._node << 12) | self._sequence
        digits = []
        while snowflake:
            snowflake, rest = divmod(snowflake, 36)
            digits.append(_B36[rest])
        return secrets.choice("abcdef") + "".join(reversed(digits)) + secrets.choice("abcdef")


def validate_url(ds_type: str, url: str) -> str:
    """Grafana's ValidateURL: the URL the data source will be reached at, or InvalidURL."""
    if ds_type in URL_REQUIRED_TYPES and not url.strip():
        raise InvalidURL()
    if ds_type.lower() == "mssql":
        if not _MSSQL.match(url):
            raise InvalidURL()
        return url
    target = url if _HAS_SCHEME.match(url) else "http://" + url
    try:
        parts = urlsplit(target)
        _ = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        raise InvalidURL() from None
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*$", parts.scheme) or any(ord(c) < 0x20 or c == "\x7f" for c in target):
        raise InvalidURL()
    if " " in target or re.search(r"%(?![0-9A-Fa-f]{2})", target):
        raise InvalidURL()  # Grafana takes a space in the path; no valid request line can carry it unescaped
    return target


# RFC 9110 token: what Go's transport accepts as a header name
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# field-value bytes Go accepts: anything but control characters other than horizontal tab
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def custom_header_names(options: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(N, name) for jsonData.httpHeaderNameN, N = 1, 2, ... up to the first gap (Grafana's loop)."""
    names = []
    n = 1
    while name := str(options.get(f"httpHeaderName{n}") or "").strip():
        names.append((n, name))
        n += 1
    return names


def is_valid_header_value(value: str) -> bool:
    """True when Go's transport would send `value` as a header field value."""
    return _BAD_HEADER_VALUE.search(value) is None


def validate_request_settings(cmd: AddDataSourceCommand) -> None:
    """Refuse settings that would make every later call to the data source fail: custom header names that
    are not RFC 9110 tokens, header values or request fields holding control characters."""
    options = cmd.json_data if isinstance(cmd.json_data, dict) else {}
    for n, name in custom_header_names(options):
        if not HEADER_NAME.fullmatch(name):
            raise InvalidHeaderSetting(f"jsonData.httpHeaderName{n}")
    for field, value in (cmd.secure_json_data or {}).items():
        if field.startswith("httpHeaderValue") and not is_valid_header_value(value):
            raise InvalidHeaderSetting(f"secureJsonData.{field}")
    for field, value in (("user", cmd.user), ("database", cmd.database), ("basicAuthUser", cmd.basic_auth_user)):
        if _CONTROL.search(value):
            raise InvalidTextSetting(field)


# -- provisioning ---------------------------------------------------------------------------------

class ProvisionedDelete(msgspec.Struct, frozen=True, kw_only=True):
    """A `deleteDatasources` entry (or a pruned data source); `where` names its file and entry."""

    where: str
    org_id: int
    name: str


class ProvisionedDataSource(msgspec.Struct, frozen=True, kw_only=True):
    """A validated `datasources` entry with its secrets sealed; `where` names its file and entry."""

    where: str
    org_id: int
    cmd: AddDataSourceCommand
    sealed: dict[str, str]
    version: int
    read_only: bool
    prunable: bool
