"""Where cached values live: a memory LRU bounded by bytes, or Redis shared by every replica (values
sealed with AES-GCM, every call under a short timeout), and the counters the cache keeps (CacheStats)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import Config
from gateway.crypto import derive_key

log = logging.getLogger("gateway.cache")

ENTRY_OVERHEAD = 96  # bytes counted per memory entry beyond key and value (dict slot, tuple, ints)
RETRY_AFTER = 2.0  # seconds a failed Redis is left alone before it is tried again
SLOW = 0.5  # a Redis call slower than this share of [caching] timeout counts as an outage (a miss waits on ~4)
MAX_CONNECTIONS = 64  # Redis connections per worker


class CacheStats(msgspec.Struct, kw_only=True):
    """What the cache counted since the worker started (exported as gateway_cache_* metrics)."""

    hit: int = 0
    miss: int = 0
    bypass: int = 0
    error: int = 0
    disabled: int = 0
    bytes: int = 0  # bytes held by the memory store now
    evictions: int = 0  # memory entries dropped to stay under max_size_mb
    coalesced_waits: int = 0  # queries answered by an identical one in flight instead of a backend call
    delta_saved_points: int = 0  # samples taken from cached extents instead of the backend
    delta_fetched_points: int = 0  # samples fetched from the backend by delta queries
    store_outages: int = 0  # times Redis turned unavailable or full (each also logged once)

    def count(self, result: str) -> None:
        """Count one query answered with X-Cache `result` (HIT, MISS, BYPASS, ERROR, DISABLED)."""
        name = result.lower()
        setattr(self, name, getattr(self, name) + 1)


class StoreError(Exception):
    """The cache backend failed, timed out or is down; the caller goes to the data source instead."""


class MemoryStore:
    """This worker's values, least recently used dropped first once max_size_mb is reached."""

    shared = False

    def __init__(self, max_bytes: int, stats: CacheStats) -> None:
        self._max_bytes = max_bytes
        self._stats = stats
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._size = 0

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The live values of `keys` (None where missing or expired)."""
        now = time.monotonic()
        found: list[bytes | None] = []
        for key in keys:
            item = self._items.get(key)
            if item is None:
                found.append(None)
            elif item[0] <= now:
                self._drop(key)
                found.append(None)
            else:
                self._items.move_to_end(key)
                found.append(item[1])
        return found

    async def get(self, key: str) -> bytes | None:
        """The live value of `key`, or None."""
        return (await self.get_many([key]))[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Keep `value` for `ttl` seconds, evicting the least recently used entries to make room."""
        cost = len(key) + len(value) + ENTRY_OVERHEAD
        if cost > self._max_bytes:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (time.monotonic() + ttl, value)
        self._size += cost
        while self._size > self._max_bytes:
            oldest = next(iter(self._items))
            self._drop(oldest)
            self._stats.evictions += 1
        self._stats.bytes = self._size

    async def lock(self, key: str, ttl: float) -> bool:
        """Always granted: within one worker the in-process coalescing already serialises identical calls."""
        return True

    async def unlock(self, key: str) -> None:
        """Nothing to release."""

    async def close(self) -> None:
        """Nothing to close."""

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self._size -= len(key) + len(value) + ENTRY_OVERHEAD


class RedisStore:
    """Values in Redis under `prefix`, sealed with AES-GCM (the key name is the associated data). Every call
    has `timeout`; after a failure, or a call slower than SLOW x timeout, Redis is skipped for RETRY_AFTER
    seconds, and each change of state is logged once."""

    shared = True

    def __init__(self, url: str, prefix: str, timeout: float, secret_key: str, stats: CacheStats) -> None:
        import redis.asyncio  # an optional extra: only needed with backend = redis

        # a bounded pool that waits (up to the timeout) for a free connection rather than opening more
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout)
        self._redis: Any = redis.asyncio.Redis.from_pool(pool)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)
        self._full_error: type[BaseException] = redis.exceptions.OutOfMemoryError
        self._prefix = prefix
        self._timeout = timeout
        self._cipher = AESGCM(derive_key(secret_key, "gateway query cache"))
        self._down_until = 0.0
        # None while Redis works, else why it is left alone: "unavailable", "slow", or "full" (Redis refusing
        # writes under OOM, which reads that work do not end)
        self._state: str | None = None
        self._stats = stats

    def _enter(self, state: str, reason: str) -> None:
        """Leave Redis alone for RETRY_AFTER; log (and count, when it was working) a change of state. A full
        Redis stays full while it is slow: only a write that succeeds ends that."""
        self._down_until = time.monotonic() + RETRY_AFTER
        if state == self._state or (state == "slow" and self._state == "full"):
            return
        if self._state is None:
            self._stats.store_outages += 1
        self._state = state
        log.warning("query cache: Redis %s (%s); queries go to the data sources", state, reason)

    async def _call(self, method: str, *args: Any, write: bool = False, **kwargs: Any) -> Any:
        if self._state is not None and time.monotonic() < self._down_until:
            raise StoreError("the cache is unavailable")
        started, busy = time.monotonic(), time.thread_time()
        try:
            async with asyncio.timeout(self._timeout):
                result = await getattr(self._redis, method)(*args, **kwargs)
        except self._errors as error:
            if isinstance(error, self._full_error):
                self._enter("full", "it refuses writes")
            else:
                self._enter("unavailable", type(error).__name__)
            raise StoreError(type(error).__name__) from None
        # the wait, less the time this worker's thread spent computing meanwhile (a large answer converted, a
        # collection): a loop kept busy is not a slow Redis
        waited = time.monotonic() - started - (time.thread_time() - busy)
        if waited > self._timeout * SLOW:  # answered, but at this pace each query would wait on it several times
            self._enter("slow", f"a call waited {waited:.2f} s")
        elif self._state is not None and started >= self._down_until and (write or self._state != "full"):
            self._state = None  # only a call begun after the pause ends it: not one in flight since before
            log.warning("query cache: Redis available again")
        return result

    def _seal(self, key: str, value: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._cipher.encrypt(nonce, value, key.encode())

    def _open(self, key: str, sealed: bytes) -> bytes | None:
        try:
            return self._cipher.decrypt(sealed[:12], sealed[12:], key.encode())
        except (InvalidTag, ValueError):  # written under another secret_key: a miss
            return None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of `keys` (None where missing), in one round trip."""
        names = [self._prefix + key for key in keys]
        values = await self._call("mget", names)
        return [None if value is None else self._open(name, value) for name, value in zip(names, values, strict=True)]

    async def get(self, key: str) -> bytes | None:
        """The value of `key`, or None."""
        return (await self.get_many([key]))[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Keep `value` for `ttl` seconds."""
        name = self._prefix + key
        await self._call("set", name, self._seal(name, value), write=True, px=max(int(ttl * 1000), 1))

    async def lock(self, key: str, ttl: float) -> bool:
        """Take a short-lived lock shared by every replica; False when another holds it."""
        return bool(await self._call("set", self._prefix + "lock:" + key, b"1", write=True, nx=True,
                                     px=max(int(ttl * 1000), 1)))

    async def poll(self, key: str) -> tuple[bytes | None, bool]:
        """The value of `key`, and whether its lock is still held (its leader still running), in one trip."""
        name = self._prefix + key
        value, lock = await self._call("mget", [name, self._prefix + "lock:" + key])
        return (None if value is None else self._open(name, value)), lock is not None

    async def unlock(self, key: str) -> None:
        """Release the lock of `key`."""
        await self._call("delete", self._prefix + "lock:" + key)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


Store = MemoryStore | RedisStore


def open_store(config: Config, stats: CacheStats) -> Store:
    """The store [caching] backend names."""
    if config.caching.backend == "redis":
        return RedisStore(config.caching_redis.url, config.caching_redis.prefix, config.caching.timeout,
                          config.security.secret_key, stats)
    return MemoryStore(int(config.caching_memory.max_size_mb * (1 << 20)), stats)
