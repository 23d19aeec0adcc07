"""Grafana's data source JSON: commands in, views out, the stored record, and their validation rules."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from gateway.errors import BadRequestData, DataSourceUidInvalid, InvalidURL

T = TypeVar("T")


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


# -- binding ------------------------------------------------------------------------------------

_field_names: dict[type, dict[str, str]] = {}


def _wire_names(cls: type) -> dict[str, str]:
    names = _field_names.get(cls)
    if names is None:
        names = {f.encode_name.lower(): f.encode_name for f in msgspec.structs.fields(cls)}
        _field_names[cls] = names
    return names


def bind(body: bytes, content_type: str | None, cls: type[T]) -> T:
    """Decode a request body into `cls` as Grafana's web.Bind does, or raise BadRequestData.

    Keys match case-insensitively, the last duplicate wins, `null` means the zero value, unknown
    keys are ignored, and an empty body is an empty object. Types are strict: "3" is not an int.
    """
    if not body.strip():
        raw: Any = {}
    else:
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise BadRequestData()
        try:
            raw = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise BadRequestData() from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequestData()
    names = _wire_names(cls)
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        name = names.get(key.lower())
        if name is None:
            continue
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    try:
        return msgspec.convert(fields, cls, strict=True)
    except msgspec.ValidationError:
        raise BadRequestData() from None


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
_node = secrets.randbelow(1024)
_sequence = secrets.randbelow(4096)


def new_uid() -> str:
    """A ~14 character uid like Grafana's newest: letter a-f, base-36 snowflake id, letter a-f."""
    global _sequence
    _sequence = (_sequence + 1) % 4096
    snowflake = ((int(time.time() * 1000) - 1288834974657) << 22) | (_node << 12) | _sequence
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
    if " " in parts.netloc or re.search(r"%(?![0-9A-Fa-f]{2})", target):
        raise InvalidURL()
    return target
