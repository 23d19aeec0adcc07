"""QueryCache: what the query path asks of the cache. One data source's queries go through `run`: answers
found are served, identical queries in flight (in this worker, or on another replica through a short Redis
lock) are awaited instead of sent again, Prometheus range queries fetch only what their extent lacks, and
what comes back without an error is kept. A cache that fails never fails a query: the query goes to the
data source and answers `X-Cache: ERROR`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec

from gateway.backends.base import Context, DataQuery, ResourceRequest
from gateway.cache import codec, delta
from gateway.cache.keys import query_key, resource_key
from gateway.cache.settings import MAX_TTL, CacheSettings, SettingsStore, bounded
from gateway.cache.store import CacheStats, RedisStore, Store, StoreError
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.frames import DataResponse
from gateway.http.client import Answer

log = logging.getLogger("gateway.cache")

Call = Callable[[Context, list[DataQuery]], Awaitable[dict[str, DataResponse]]]
HIT, MISS, BYPASS, ERROR, DISABLED = "HIT", "MISS", "BYPASS", "ERROR", "DISABLED"
POLL = 0.02  # seconds between looks for a value another replica is computing
# resource calls kept: the read endpoints of the types whose labels, series and metadata dashboards ask again
# and again (the variables of every panel); the headers the call sends on are part of the key
RESOURCE_TYPES = frozenset({"prometheus", "loki"})
RESOURCE_HEADERS = frozenset({"accept", "content-type", "x-grafana-cache"})
_encode_answer = msgspec.msgpack.Encoder().encode
_decode_answer = msgspec.msgpack.Decoder(Answer).decode
T = TypeVar("T")


class QueryCache:
    """The worker's cache: its store, the data sources' settings, the calls in flight, the counters."""

    def __init__(self, config: Config, store: Store, settings: SettingsStore, stats: CacheStats) -> None:
        self.config = config
        self.store = store
        self.settings = settings
        self.stats = stats
        self.max_value = int(config.caching.max_value_mb * (1 << 20))
        self.flights: dict[str, asyncio.Future[bytes | None]] = {}

    def answer(self, value: bytes) -> DataResponse:
        """A kept answer read back (ValueError when it cannot be)."""
        return codec.decode(value, self.max_value)

    def request(self, skip: bool) -> CacheRun:
        """The cache as one request uses it (`skip`: the caller sent X-Cache-Skip)."""
        return CacheRun(self, skip)

    async def clean(self, org_id: int) -> None:
        """Forget the org's cached answers on every replica (a new generation in their keys); the old values are
        never read again and age out, so other orgs' answers stay."""
        await self.settings.clean(org_id)

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()

    async def resource(self, ctx: Context, request: ResourceRequest, skip: bool,
                       call: Callable[[], Awaitable[Answer]]) -> tuple[Answer, str | None]:
        """A resource call of a Prometheus or Loki data source, kept for ttlResourcesMs when it answered 200;
        with its X-Cache (None for calls never cached). The caller's role is part of the key, because the
        type's routes answer some paths to some roles only."""
        if ctx.ds.type not in RESOURCE_TYPES or request.method not in ("GET", "POST"):
            return await call(), None
        try:
            settings = await self.settings.get(ctx.ds.org_id, ctx.ds.uid)
        except GatewayError:
            self.stats.count(ERROR)
            return await call(), ERROR
        if not settings.enabled or skip:
            result = BYPASS if settings.enabled else DISABLED
            self.stats.count(result)
            return await call(), result
        headers = sorted((name.lower(), value) for name, value in request.headers
                         if name.lower() in RESOURCE_HEADERS)
        key = resource_key(ctx.ds, settings.generation, request.method, request.path, request.query,
                           request.body, request.role, headers)
        try:
            value = await self.store.get(key)
        except StoreError:
            self.stats.count(ERROR)
            return await call(), ERROR
        kept = _readable(_decode_answer, value)
        if kept is not None:
            self.stats.count(HIT)
            return kept, HIT
        answer = await call()
        result = MISS
        if answer.status == 200:
            encoded = _encode_answer(answer)
            if len(encoded) <= self.max_value:
                try:
                    await self.store.set(key, encoded, settings.resource_ttl(self.config))
                except StoreError:
                    result = ERROR
        self.stats.count(result)
        return answer, result


class _PanelTTL(msgspec.Struct):
    queryCachingTTL: Any = None


_panel_ttl = msgspec.json.Decoder(_PanelTTL).decode  # only this field of the model is built


def query_ttl(query: DataQuery, settings: CacheSettings, config: Config) -> float:
    """Seconds one answer lives: the panel's `queryCachingTTL` (ms, Grafana's per-panel override) when set,
    else the data source's; never more than [caching] max_ttl, nor than MAX_TTL (a year)."""
    panel = _panel_ttl(query.model).queryCachingTTL
    if isinstance(panel, int) and not isinstance(panel, bool) and panel > 0:
        return bounded(min(panel, MAX_TTL * 1000) / 1000, config)  # a huge integer would not fit a float
    return settings.query_ttl(config)


def _readable(decode: Callable[[bytes], T], value: bytes | None) -> T | None:
    """A kept value decoded, or None (a miss) when it is not there or cannot be read: written in another
    version's layout, it is answered anew and replaced rather than failing the query."""
    if value is None:
        return None
    try:
        return decode(value)
    except (ValueError, TypeError):  # msgspec's DecodeError is a ValueError
        return None


def skipped(header: str | None) -> bool:
    """Whether an X-Cache-Skip request header bypasses the cache: present, and not empty or false."""
    return header is not None and header.strip().lower() not in ("", "false", "0")


def x_cache(results: list[str]) -> str | None:
    """The request's X-Cache from its queries': BYPASS when skipped, DISABLED when no data source caches,
    else over the caching ones ERROR if any cache call failed, MISS if any query went to its data source,
    HIT when every one was answered from the cache; none without data source queries."""
    if not results:
        return None
    if BYPASS in results:
        return BYPASS
    caching = [result for result in results if result != DISABLED]
    if not caching:
        return DISABLED
    for result in (ERROR, MISS):
        if result in caching:
            return result
    return HIT


class CacheRun:
    """One request's use of the cache; collects each query's X-Cache result."""

    def __init__(self, cache: QueryCache, skip: bool) -> None:
        self._cache = cache
        self._skip = skip
        self.results: list[str] = []

    @property
    def header(self) -> str | None:
        """The X-Cache value of the request (see x_cache)."""
        return x_cache(self.results)

    def _note(self, result: str, count: int = 1) -> None:
        self.results.extend([result] * count)
        for _ in range(count):
            self._cache.stats.count(result)

    async def load(self, org_id: int, uids: Iterable[str]) -> None:
        """Read the settings of the request's data sources at once (run() then finds them in memory); a failure
        is left for run() to meet and answer as a cache error."""
        with contextlib.suppress(GatewayError):
            await self._cache.settings.load(org_id, uids)

    async def run(self, ctx: Context, queries: list[DataQuery], call: Call) -> dict[str, DataResponse]:
        """The answers of one data source's queries (authorization was checked when the request was planned)."""
        cache = self._cache
        try:
            settings = await cache.settings.get(ctx.ds.org_id, ctx.ds.uid)
        except GatewayError:  # the settings cannot be read (Postgres down): no worse than no cache
            self._note(ERROR, len(queries))
            return await call(ctx, queries)
        if not settings.enabled:
            self._note(DISABLED, len(queries))
            return await call(ctx, queries)
        if self._skip:
            self._note(BYPASS, len(queries))
            return await call(ctx, queries)
        keys: dict[str, str] = {}
        deltas: dict[str, delta.Delta] = {}
        for query in queries:
            eligible = delta.eligible(ctx, query)
            if eligible is not None:
                deltas[query.ref_id] = eligible
            try:
                keys[query.ref_id] = query_key(ctx.ds, settings.generation, query,
                                               eligible.span if eligible is not None else None)
            except (TypeError, ValueError, OverflowError):  # a model MessagePack cannot hold: not cached
                pass
        answers: dict[str, DataResponse] = {}
        try:
            found = await cache.store.get_many(list(keys.values())) if keys else []
        except StoreError:
            self._note(ERROR, len(queries))
            return await call(ctx, queries)
        for (ref_id, _), value in zip(keys.items(), found, strict=True):
            answer = _readable(cache.answer, value)
            if answer is not None:
                answers[ref_id] = answer
        self._note(HIT, len(answers))
        missing = [query for query in queries if query.ref_id not in answers]
        if missing:
            answers.update(await self._fetch(ctx, settings, missing, keys, deltas, call))
        return answers

    async def _fetch(self, ctx: Context, settings: CacheSettings, queries: list[DataQuery], keys: dict[str, str],
                     deltas: dict[str, delta.Delta], call: Call) -> dict[str, DataResponse]:
        """Answers not in the cache: waited for when an identical query is in flight, else fetched and kept."""
        cache = self._cache
        followers: list[tuple[DataQuery, asyncio.Future[bytes | None]]] = []
        leaders: list[DataQuery] = []
        for query in queries:
            key = keys.get(query.ref_id)
            flight = cache.flights.get(key) if key is not None else None
            if flight is not None:
                followers.append((query, flight))
            else:
                leaders.append(query)
                if key is not None:
                    cache.flights[key] = asyncio.get_running_loop().create_future()
        errors: set[str] = set()
        locked: list[str] = []
        waiting: list[DataQuery] = []
        results: dict[str, DataResponse] = {}
        try:
            if cache.store.shared and leaders:
                running: list[DataQuery] = []
                for query, granted in zip(leaders, await asyncio.gather(
                        *(self._lock(query, keys.get(query.ref_id), errors) for query in leaders)), strict=True):
                    (running if granted else waiting).append(query)
                    if granted and keys.get(query.ref_id) and query.ref_id not in errors:
                        locked.append(keys[query.ref_id])
                leaders = running
            # every part runs to its end (each is bounded) before a failure is raised, so none is left behind
            parts = await asyncio.gather(
                self._lead(ctx, settings, leaders, keys, deltas, errors, call),
                *(self._follow(ctx, query, flight, call) for query, flight in followers),
                *(self._await_replica(ctx, query, keys[query.ref_id], call) for query in waiting),
                return_exceptions=True)
            for part in parts:
                if isinstance(part, BaseException):
                    raise part
                results.update(part)
        finally:
            for query in leaders + waiting:
                key = keys.get(query.ref_id)
                flight = cache.flights.pop(key, None) if key is not None else None
                if flight is not None and not flight.done():
                    flight.set_result(None)  # a failed or cancelled leader: followers run themselves
            for query in leaders:  # also when the call failed: it went to the data source
                self._note(ERROR if query.ref_id in errors else MISS)
            if locked:
                try:
                    await asyncio.gather(*(cache.store.unlock(key) for key in locked))
                except StoreError:
                    pass  # the lock expires by itself
        return results

    async def _lock(self, query: DataQuery, key: str | None, errors: set[str]) -> bool:
        """Lead the query across replicas (True) unless another replica already does."""
        if key is None:
            return True
        try:
            return await self._cache.store.lock(key, self._cache.config.caching.coalesce_timeout)
        except StoreError:
            errors.add(query.ref_id)
            return True

    async def _lead(self, ctx: Context, settings: CacheSettings, queries: list[DataQuery], keys: dict[str, str],
                    deltas: dict[str, delta.Delta], errors: set[str], call: Call) -> dict[str, DataResponse]:
        """Fetch the queries this request leads (Prometheus range queries by delta), keep and share the answers."""
        cache = self._cache
        plain: list[DataQuery] = []
        by_delta: list[tuple[DataQuery, delta.Delta]] = []
        for query in queries:
            eligible = deltas.get(query.ref_id) if cache.config.caching.delta else None
            if eligible is None:
                plain.append(query)
            else:
                by_delta.append((query, eligible))
        parts = await asyncio.gather(
            *([call(ctx, plain)] if plain else []),
            *(self._delta(ctx, settings, query, eligible, errors) for query, eligible in by_delta))
        answers: dict[str, DataResponse] = {}
        for part in parts:
            answers.update(part)
        kept: list[tuple[str, bytes, float]] = []
        for query in queries:
            key = keys.get(query.ref_id)
            answer = answers.get(query.ref_id)
            if key is None or answer is None or answer.error is not None:
                continue  # errors are never cached
            try:
                encoded = codec.encode(answer, query.ref_id, cache.max_value)
            except (TypeError, ValueError, OverflowError):
                continue
            flight = cache.flights.get(key)
            if flight is not None and not flight.done():
                flight.set_result(encoded.value)  # an answer too large to keep is still shared within the worker
            # its response writes the JSON just made, unless something reads its frames first
            answers[query.ref_id] = DataResponse(answer.frames, status=answer.status, encoded=encoded.text)
            if encoded.keep and encoded.value is not None:
                kept.append((key, encoded.value, query_ttl(query, settings, cache.config)))
        for (key, _, _), failed in zip(kept, await asyncio.gather(
                *(self._set(key, value, ttl) for key, value, ttl in kept)), strict=True):
            if failed:
                errors.update(query.ref_id for query in queries if keys.get(query.ref_id) == key)
        return answers

    async def _set(self, key: str, value: bytes, ttl: float) -> bool:
        """Keep a value; True when the store failed."""
        try:
            await self._cache.store.set(key, value, ttl)
        except StoreError:
            return True
        return False

    async def _delta(self, ctx: Context, settings: CacheSettings, query: DataQuery, eligible: delta.Delta,
                     errors: set[str]) -> dict[str, DataResponse]:
        cache = self._cache
        key = eligible.key(ctx, settings.generation)
        extent = None
        try:
            value = await cache.store.get(key)
            extent = delta.decode_extent(value) if value is not None else None
        except StoreError:
            errors.add(query.ref_id)
        except (ValueError, TypeError):  # an extent of an older layout: fetched anew
            extent = None
        answer, kept, _ = await delta.run(ctx, eligible, extent, int(time.time() * 1000),
                                          cache.config.caching.backfill_tolerance * 1000, cache.stats)
        if kept is not None and query.ref_id not in errors:
            encoded = delta.encode_extent(kept)
            if len(encoded) <= cache.max_value and await self._set(key, encoded, settings.query_ttl(cache.config)):
                errors.add(query.ref_id)
        return {query.ref_id: answer}

    async def _follow(self, ctx: Context, query: DataQuery, flight: asyncio.Future[bytes | None],
                      call: Call) -> dict[str, DataResponse]:
        """Wait (bounded) for an identical query this worker is running; run it here when that fails."""
        try:
            async with asyncio.timeout(self._cache.config.caching.coalesce_timeout):
                value = await asyncio.shield(flight)
        except TimeoutError:
            value = None
        answer = _readable(self._cache.answer, value)
        if answer is None:
            self._note(MISS)
            return await call(ctx, [query])
        self._cache.stats.coalesced_waits += 1
        self._note(HIT)
        return {query.ref_id: answer}

    async def _await_replica(self, ctx: Context, query: DataQuery, key: str, call: Call) -> dict[str, DataResponse]:
        """Wait (bounded) for the replica holding the lock to store the answer; run it here when it does not
        (its lock released without an answer: it failed, or its answer was too large or an error)."""
        cache = self._cache
        store = cache.store
        deadline = time.monotonic() + cache.config.caching.coalesce_timeout
        while time.monotonic() < deadline and isinstance(store, RedisStore):
            await asyncio.sleep(POLL)
            try:
                value, locked = await store.poll(key)
            except StoreError:
                break
            answer = _readable(cache.answer, value)
            if answer is None and (value is not None or not locked):
                break  # released without an answer, or one this version cannot read: run it here
            if answer is not None:
                cache.stats.coalesced_waits += 1
                self._note(HIT)
                flight = cache.flights.get(key)
                if flight is not None and not flight.done():
                    flight.set_result(value)
                return {query.ref_id: answer}
        self._note(MISS)
        return await call(ctx, [query])
