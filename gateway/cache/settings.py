"""Per data source cache settings (Grafana Enterprise's `enabled`, `useDefaultTTL`, `ttlQueriesMs`,
`ttlResourcesMs`) and the org's cache generation, in Postgres, read through a one-second memory so that a
query costs no database round trip and every replica sees a change within a second."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime

import msgspec

from gateway.config import Config
from gateway.db import Database

FRESH_FOR = 1.0  # seconds a replica reuses settings it read (another replica's change shows within this)
# the longest any value is kept, also when max_ttl sets no bound: Redis refuses expiry times past 64 bits, and a
# refusal would read as Redis failing (the cache paused for every caller)
MAX_TTL = 365 * 86400
_SIZE = 10_000


class CacheSettings(msgspec.Struct, frozen=True, kw_only=True):
    """One data source's settings; `created` is None while nothing is stored (the defaults apply)."""

    enabled: bool
    use_default_ttl: bool = True
    ttl_queries_ms: int = 0
    ttl_resources_ms: int = 0
    generation: int = 0
    created: datetime | None = None
    updated: datetime | None = None

    def query_ttl(self, config: Config) -> float:
        """Seconds an answer lives: the data source's TTL unless it uses the default, capped by max_ttl."""
        return _capped(self.ttl_queries_ms, self.use_default_ttl, config)

    def resource_ttl(self, config: Config) -> float:
        """Seconds a resource answer lives."""
        return _capped(self.ttl_resources_ms, self.use_default_ttl, config)


def _capped(ttl_ms: int, use_default: bool, config: Config) -> float:
    return bounded(config.caching.ttl if use_default or ttl_ms <= 0 else min(ttl_ms, MAX_TTL * 1000) / 1000, config)


def bounded(ttl: float, config: Config) -> float:
    """`ttl` seconds, but never more than [caching] max_ttl (when set) nor MAX_TTL."""
    return min(ttl, config.caching.max_ttl if 0 < config.caching.max_ttl < MAX_TTL else MAX_TTL)


class SettingsStore:
    """Reads and writes cache settings; remembers what it read for FRESH_FOR seconds."""

    def __init__(self, db: Database, enabled_by_default: bool) -> None:
        self._db = db
        self._q = db.queries
        self._default = enabled_by_default
        self._seen: dict[tuple[int, str], tuple[float, CacheSettings]] = {}

    async def get(self, org_id: int, uid: str) -> CacheSettings:
        """The data source's settings (the defaults when none are stored)."""
        seen = self._seen.get((org_id, uid))
        if seen is not None and seen[0] > time.monotonic():
            return seen[1]
        async with self._db.connection() as conn:
            row = await conn.fetchrow(self._q["get_data_source_cache"], org_id, uid)
        settings = self._settings(row, row["generation"])
        self._remember(org_id, uid, settings)
        return settings

    async def load(self, org_id: int, uids: Iterable[str]) -> None:
        """Read the settings of those of `uids` not fresh in memory in one round trip (a request's data sources,
        before their queries ask one by one)."""
        now = time.monotonic()
        stale = sorted({uid for uid in uids if self._seen.get((org_id, uid), (0.0,))[0] <= now})
        if len(stale) < 2:
            return  # get() reads a single one as cheaply
        async with self._db.connection() as conn:
            rows = await conn.fetch(self._q["get_data_source_caches"], org_id, stale[:_SIZE])
        for row in rows:
            self._remember(org_id, row["uid"], self._settings(row, row["generation"]))

    async def put(self, org_id: int, uid: str, enabled: bool, use_default_ttl: bool, ttl_queries_ms: int,
                  ttl_resources_ms: int) -> CacheSettings:
        """Store the data source's settings."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(self._q["upsert_data_source_cache"], org_id, uid, enabled, use_default_ttl,
                                      ttl_queries_ms, ttl_resources_ms)
            generation = (await conn.fetchrow(self._q["get_data_source_cache"], org_id, uid))["generation"]
        settings = self._settings(row, generation)
        self._remember(org_id, uid, settings)
        return settings

    async def clean(self, org_id: int) -> None:
        """Start a new generation for the org: no cached value of it is read again."""
        async with self._db.connection() as conn:
            await conn.fetchval(self._q["bump_cache_generation"], org_id)
        self._seen = {key: value for key, value in self._seen.items() if key[0] != org_id}

    def _settings(self, row: dict[str, object] | None, generation: int) -> CacheSettings:
        if row is None or row["enabled"] is None:
            return CacheSettings(enabled=self._default, generation=generation)
        return CacheSettings(enabled=bool(row["enabled"]), use_default_ttl=bool(row["use_default_ttl"]),
                             ttl_queries_ms=int(row["ttl_queries_ms"]),  # type: ignore[call-overload]
                             ttl_resources_ms=int(row["ttl_resources_ms"]),  # type: ignore[call-overload]
                             generation=generation, created=row["created"],  # type: ignore[arg-type]
                             updated=row["updated"])  # type: ignore[arg-type]

    def _remember(self, org_id: int, uid: str, settings: CacheSettings) -> None:
        if len(self._seen) >= _SIZE:
            self._seen.clear()  # a crude bound: rebuilding costs one query per data source
        self._seen[(org_id, uid)] = (time.monotonic() + FRESH_FOR, settings)
