"""Configuration in Grafana's form: INI defaults, an optional custom INI file, GF_* overrides."""

from __future__ import annotations

import configparser
import importlib.resources
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import msgspec


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key."""


class Server(msgspec.Struct, frozen=True, kw_only=True):
    http_addr: str = ""
    http_port: int = 3000
    workers: int = 0
    shutdown_timeout: float = 30.0
    router_logging: bool = True


class Database(msgspec.Struct, frozen=True, kw_only=True):
    url: str = ""
    max_open_conn: int = 10
    query_timeout: float = 10.0
    wait_timeout: float = 30.0


class Security(msgspec.Struct, frozen=True, kw_only=True):
    admin_user: str = "admin"
    admin_password: str = "admin"
    secret_key: str = "SW2YcwTIb9zpOOhoPsMm"
    data_source_proxy_whitelist: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Security(admin_user={self.admin_user!r}, admin_password=..., secret_key=...)"


class DataSources(msgspec.Struct, frozen=True, kw_only=True):
    datasource_limit: int = 5000


class Paths(msgspec.Struct, frozen=True, kw_only=True):
    data: str = "data"
    provisioning: str = "conf/provisioning"


class DataProxy(msgspec.Struct, frozen=True, kw_only=True):
    logging: bool = False
    timeout: float = 30.0
    dial_timeout: float = msgspec.field(default=10.0, name="dialTimeout")
    keep_alive_seconds: float = 30.0
    tls_handshake_timeout_seconds: float = 10.0
    max_conns_per_host: int = 0
    max_idle_connections: int = 100
    idle_conn_timeout_seconds: float = 90.0
    send_user_header: bool = False
    response_limit: int = 0
    user_agent: str = ""
    row_limit: int = 1_000_000


class Query(msgspec.Struct, frozen=True, kw_only=True):
    concurrent_query_limit: int = 256
    max_queries: int = 1000


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = True
    basic_auth_username: str = ""
    basic_auth_password: str = ""

    def __repr__(self) -> str:
        return f"Metrics(enabled={self.enabled!r}, basic_auth_username={self.basic_auth_username!r}, ...)"


class Log(msgspec.Struct, frozen=True, kw_only=True):
    mode: str = "console"
    level: str = "info"


class LogConsole(msgspec.Struct, frozen=True, kw_only=True):
    format: str = "console"


class FeatureToggles(msgspec.Struct, frozen=True, kw_only=True):
    enable: tuple[str, ...] = ()


class Gateway(msgspec.Struct, frozen=True, kw_only=True):
    grafana_version: str = "12.4.0"
    max_body_bytes: int = 1 << 20
    token_cache_seconds: float = 10.0
    proxy_pass_through_401: bool = False
    proxy_idle_read_timeout: float = 60.0
    proxy_idle_write_timeout: float = 60.0


class Caching(msgspec.Struct, frozen=True, kw_only=True):
    """[caching]: the query and resource cache (Grafana Enterprise's section, plus gateway's delta fetches)."""

    backend: str = "memory"
    enabled_by_default: bool = False
    ttl: float = 60.0
    max_ttl: float = 0.0
    max_value_mb: float = 1.0
    timeout: float = 0.25
    coalesce_timeout: float = 5.0
    delta: bool = True
    backfill_tolerance: float = 30.0


class CachingMemory(msgspec.Struct, frozen=True, kw_only=True):
    max_size_mb: float = 25.0


class CachingRedis(msgspec.Struct, frozen=True, kw_only=True):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "gateway:"

    def __repr__(self) -> str:
        return f"CachingRedis(url=..., prefix={self.prefix!r})"


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The whole configuration; every section is a frozen Struct with Grafana's key names."""

    server: Server = Server()
    database: Database = Database()
    security: Security = Security()
    datasources: DataSources = DataSources()
    paths: Paths = Paths()
    dataproxy: DataProxy = DataProxy()
    query: Query = Query()
    feature_toggles: FeatureToggles = FeatureToggles()
    gateway: Gateway = Gateway()
    caching: Caching = Caching()
    caching_memory: CachingMemory = CachingMemory()
    caching_redis: CachingRedis = CachingRedis()
    metrics: Metrics = Metrics()
    log: Log = Log()
    log_console: LogConsole = LogConsole()

    # INI section names, in field order ([log.console] is the field log_console)
    SECTIONS: ClassVar[tuple[str, ...]] = (
        "server", "database", "security", "datasources", "paths", "dataproxy", "query", "feature_toggles",
        "gateway", "caching", "caching.memory", "caching.redis", "metrics", "log", "log.console",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], config_file: str | os.PathLike[str] | None = None) -> Config:
        """Read the embedded defaults, then `config_file`, then GF_<SECTION>_<KEY> variables."""
        parser = _parser()
        parser.read_string(importlib.resources.files("gateway").joinpath("conf/defaults.ini").read_text())
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
            parser.read_string(path.read_text())
        sections: dict[str, Any] = {}
        for section, section_field in zip(cls.SECTIONS, msgspec.structs.fields(cls), strict=True):
            struct_type = section_field.type
            values: dict[str, Any] = {}
            for field in msgspec.structs.fields(struct_type):
                key = field.encode_name
                raw = parser.get(section, key, fallback=None)
                env_name = _env_name(section, key)
                if env_name in environ:
                    raw = environ[env_name]
                if raw is None:
                    continue
                values[key] = _parse_value(section, key, raw.strip(), field.type)
            sections[section_field.name] = msgspec.convert(values, struct_type)
        config = cls(**sections)
        config.validate()
        return config

    def validate(self) -> None:
        """Reject values that parse but cannot work, naming the key."""
        if not 0 <= self.server.http_port <= 65535:
            raise ConfigError(f"invalid value for [server] http_port: {self.server.http_port} is not a port")
        if self.server.workers < 0:
            raise ConfigError("invalid value for [server] workers: must be 0 (one per core) or more")
        if self.database.url and not re.match(r"^postgres(ql)?://", self.database.url):
            raise ConfigError("invalid value for [database] url: must start with postgres:// or postgresql://")
        if self.database.max_open_conn < 1:
            raise ConfigError("invalid value for [database] max_open_conn: must be at least 1")
        if self.database.wait_timeout < 0:
            raise ConfigError("invalid value for [database] wait_timeout: must be 0 or more")
        if not self.security.secret_key:
            raise ConfigError("invalid value for [security] secret_key: must not be empty")
        if self.gateway.max_body_bytes < 1024:
            raise ConfigError("invalid value for [gateway] max_body_bytes: must be at least 1024")
        for name in ("timeout", "dial_timeout", "idle_conn_timeout_seconds"):
            if getattr(self.dataproxy, name) <= 0:
                raise ConfigError(f"invalid value for [dataproxy] {name}: must be more than 0")
        for name in ("proxy_idle_read_timeout", "proxy_idle_write_timeout"):
            if getattr(self.gateway, name) <= 0:
                raise ConfigError(f"invalid value for [gateway] {name}: must be more than 0")
        if self.dataproxy.row_limit < 1:
            raise ConfigError("invalid value for [dataproxy] row_limit: must be at least 1")
        if self.query.concurrent_query_limit < 1:
            raise ConfigError("invalid value for [query] concurrent_query_limit: must be at least 1")
        if self.query.max_queries < 1:
            raise ConfigError("invalid value for [query] max_queries: must be at least 1")
        if self.caching.backend not in ("memory", "redis"):
            raise ConfigError("invalid value for [caching] backend: must be memory or redis")
        for name in ("ttl", "timeout", "coalesce_timeout", "max_value_mb"):
            if getattr(self.caching, name) <= 0:
                raise ConfigError(f"invalid value for [caching] {name}: must be more than 0")
        if self.caching.backend == "redis" and not re.match(r"^(rediss?|unix)://", self.caching_redis.url):
            raise ConfigError("invalid value for [caching.redis] url: must start with redis://, rediss:// or unix://")
        if self.caching.max_ttl < 0 or self.caching.backfill_tolerance < 0:
            raise ConfigError("invalid value for [caching] max_ttl, backfill_tolerance: must be 0 or more")
        if self.caching_memory.max_size_mb <= 0:
            raise ConfigError("invalid value for [caching.memory] max_size_mb: must be more than 0")
        if self.log.level.lower() not in LOG_LEVELS:
            raise ConfigError(f"invalid value for [log] level: must be one of {', '.join(LOG_LEVELS)}")
        if not set(self.log.mode.replace(",", " ").split()) <= {"console", "file"}:
            raise ConfigError("invalid value for [log] mode: must be console (file is accepted and ignored)")
        if self.log_console.format not in ("console", "text", "json"):
            raise ConfigError("invalid value for [log.console] format: must be console, text or json")
        if self.server.shutdown_timeout < 0:
            raise ConfigError("invalid value for [server] shutdown_timeout: must be 0 or more")

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """Every GF_<SECTION>_<KEY> variable gateway reads."""
        names: set[str] = set()
        for section, field in zip(cls.SECTIONS, msgspec.structs.fields(cls), strict=True):
            names.update(_env_name(section, f.encode_name) for f in msgspec.structs.fields(field.type))
        return frozenset(names)

    @property
    def worker_count(self) -> int:
        """Worker processes to start: [server] workers, or one per core when 0."""
        return self.server.workers or (os.cpu_count() or 1)


# Grafana's [log] level names
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def _parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep Grafana's key case (dialTimeout)
    return parser


def _env_name(section: str, key: str) -> str:
    return "GF_" + re.sub(r"[.\-]", "_", f"{section}_{key}").upper()


_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off", ""}


def _parse_value(section: str, key: str, raw: str, kind: Any) -> Any:
    where = f"[{section}] {key}"
    try:
        if kind is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError("not a boolean (true/false)")
        if kind is int:
            return int(raw or "0")
        if kind is float:
            value = float(raw or "0")
            if value != value:  # NaN
                raise ValueError("not a number")
            return value
        if kind == tuple[str, ...]:
            return tuple(part for part in re.split(r"[,\s]+", raw) if part)
        return raw
    except ValueError as error:
        raise ConfigError(f"invalid value for {where}: {raw!r} ({error})") from None
