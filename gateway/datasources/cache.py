"""Data sources ready for use (their opened secrets and clients, as backend Contexts), cached in process and
kept fresh by LISTEN/NOTIFY; `resolve(org, reference)` is how every path finds one.

Every write commits a NOTIFY on CHANNEL; each replica listens and drops what changed. While the
listening connection is down nothing is cached (every lookup reads Postgres), so a replica can
never serve a stale password for longer than its reconnection takes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import asyncpg

from gateway.backends import grafana
from gateway.backends.base import Context
from gateway.backends.registry import backend_for
from gateway.binding import parse_id
from gateway.crypto import SecretBox
from gateway.datasources.models import DataSource, is_valid_uid_chars
from gateway.datasources.store import DataSourceStore
from gateway.errors import UidInvalidPath
from gateway.http.client import Clients

log = logging.getLogger("gateway")

CHANNEL = "gateway_datasource"
MAX_ENTRIES = 10_000
UNTRUSTED_TTL = 1.0
# a replaced data source's clients stay open for the requests that already hold them: its query timeout
# (at most RETIRE_AT_MOST), plus RETIRE_GRACE for waiting on a connection and answering
RETIRE_GRACE = 10.0
RETIRE_AT_MOST = 3600.0
Key = tuple[str, int, object]


def retire_grace(context: Context) -> float:
    """Seconds a replaced data source's clients stay open: a query that started just before the change
    runs to its own timeout (jsonData.timeout, else [dataproxy] timeout; Prometheus' queryTimeout)."""
    return min(context.backend.query_timeout(context), RETIRE_AT_MOST) + RETIRE_GRACE


class DataSourceCache:
    """(org, id) and (org, uid) -> Context, valid while this replica hears every change."""

    def __init__(self, store: DataSourceStore, box: SecretBox, clients: Clients) -> None:
        self._store = store
        self._box = box
        self._clients = clients
        self._entries: dict[Key, tuple[float, Context]] = {}
        # bumped by every invalidation: a load that raced with a change is used once, not cached
        self._generation = 0
        self._listening = False
        self._listener: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._closing: set[asyncio.Task[None]] = set()
        self._retiring: dict[int, tuple[asyncio.TimerHandle, Context]] = {}
        self._loading: dict[Key, asyncio.Task[Context]] = {}
        self.hits = 0  # lookups answered from memory, and those that went to Postgres (gateway.metrics)
        self.misses = 0
        store.listeners.append(self.invalidate)

    async def resolve(self, org_id: int, reference: str) -> Context:
        """The org's data source named by `<id>` or `uid/<uid>` (as in the proxy, health and resources
        paths); DataSourceNotFound, IdInvalid or UidInvalidPath otherwise."""
        if reference.startswith("uid/"):
            uid = reference[4:]
            if not is_valid_uid_chars(uid):
                raise UidInvalidPath()
            return await self.get(org_id, uid=uid)
        return await self.get(org_id, id=parse_id(reference, trace=True))

    async def get(self, org_id: int, *, id: int | None = None, uid: str | None = None) -> Context:
        """The data source by id or uid, from memory when possible; DataSourceNotFound otherwise."""
        return await self._cached(("id", org_id, id) if id is not None else ("uid", org_id, uid), org_id, id, uid)

    async def get_default(self, org_id: int) -> Context:
        """The org's default data source, from memory when possible; DataSourceNotFound otherwise."""
        return await self._cached(("default", org_id, None), org_id, None, None)

    async def _cached(self, key: Key, org_id: int, id: int | None, uid: str | None) -> Context:
        """From memory while fresh, else loaded. Concurrent misses for one key share a single load (no stampede
        on Postgres); an expired entry stays until its reload, which keeps it when the data source is unchanged
        (its open clients too)."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            self.hits += 1
            return hit[1]
        self.misses += 1
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.get_running_loop().create_task(self._load(key, org_id, id, uid))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    def built_in(self, org_id: int) -> Context:
        """The org's -- Grafana -- data source (uid `grafana`), which no table holds."""
        return Context(grafana.built_in(org_id), {}, grafana.Grafana(), self._clients)

    async def get_many(self, org_id: int, uids: Iterable[str]) -> dict[str, Context]:
        """The org's data sources among `uids` by uid, those not in memory read in one round trip; unknown and
        malformed uids are left out."""
        found: dict[str, Context] = {}
        missing: list[str] = []
        now = time.monotonic()
        for uid in dict.fromkeys(uids):
            hit = self._entries.get(("uid", org_id, uid))
            if hit is not None and hit[0] > now:
                self.hits += 1
                found[uid] = hit[1]
            elif is_valid_uid_chars(uid):
                missing.append(uid)
        if missing:
            self.misses += len(missing)
            generation = self._generation
            for ds in await self._store.get_data_sources_by_uid(org_id, missing):
                found[ds.uid] = self._keep(ds, generation)
        return found

    async def _load(self, key: Key, org_id: int, id: int | None, uid: str | None) -> Context:
        generation = self._generation
        if key[0] == "default":
            ds = await self._store.get_default_data_source(org_id)
            context = self._keep(ds, generation)
            if generation == self._generation:
                self._entries[key] = (self._entries[("uid", ds.org_id, ds.uid)][0], context)
            return context
        return self._keep(await self._store.get_data_source(org_id, id=id, uid=uid), generation)

    def _keep(self, ds: DataSource, generation: int) -> Context:
        """A data source read from Postgres, opened and cached (trusted while no change raced with the read);
        when memory already holds it unchanged (an expired entry, or concurrent loads), that one is kept, so a
        data source read again never opens a second set of clients."""
        trusted = self._listening and generation == self._generation
        expires = math.inf if trusted else time.monotonic() + UNTRUSTED_TTL
        if len(self._entries) >= MAX_ENTRIES:
            self.clear()
        held = self._entries.get(("uid", ds.org_id, ds.uid))
        if held is not None and held[1].ds == ds:
            context = held[1]
        else:
            context = Context(ds, self._box.open_all(ds.secure_json_data), backend_for(ds.type), self._clients)
        for old_key in (("id", ds.org_id, ds.id), ("uid", ds.org_id, ds.uid)):
            old = self._entries.get(old_key)
            if old is not None and old[1] is not context:
                self._drop(old[1])
            self._entries[old_key] = (expires, context)
        return context

    def contexts(self) -> list[Context]:
        """Every cached data source, once."""
        return list({id(context): context for _, context in self._entries.values()}.values())

    def invalidate(self, org_id: int, ds_id: int, uid: str) -> None:
        """Forget one data source (it changed); loads in flight are used once but not trusted."""
        self._generation += 1
        # any change may move the org's default flag (the data source that lost it sends no notice of its own)
        self._entries.pop(("default", org_id, None), None)
        for key in (("id", org_id, ds_id), ("uid", org_id, uid)):
            hit = self._entries.get(key)
            if hit is not None:
                self._drop(hit[1])

    def clear(self) -> None:
        """Forget everything."""
        self._generation += 1
        for context in {id(c): c for _, c in self._entries.values()}.values():
            self._drop(context)

    def _drop(self, context: Context) -> None:
        """Forget a data source; its clients close after a grace period, so requests that already
        hold them still complete (and the proxy retries once on a closed pool anyway)."""
        ds = context.ds
        for key in (("id", ds.org_id, ds.id), ("uid", ds.org_id, ds.uid), ("default", ds.org_id, None)):
            hit = self._entries.get(key)
            if hit is not None and hit[1] is context:
                del self._entries[key]
        handle = asyncio.get_running_loop().call_later(retire_grace(context), self._close_now, context)
        self._retiring[id(context)] = (handle, context)

    def retiring(self, context: Context) -> float | None:
        """Seconds until a replaced data source's clients close (None: it is not retiring)."""
        entry = self._retiring.get(id(context))
        return None if entry is None else entry[0].when() - asyncio.get_running_loop().time()

    def _close_now(self, context: Context) -> None:
        self._retiring.pop(id(context), None)
        task = asyncio.get_running_loop().create_task(context.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            org_id, ds_id, uid = payload.split(":", 2)
            self.invalidate(int(org_id), int(ds_id), uid)
        except ValueError:
            self.clear()

    def _on_lost(self, _conn: Any) -> None:
        self._listening = False
        self.clear()

    async def start(self, url: str) -> None:
        """Start listening (and keep reconnecting) in the background."""
        self._task = asyncio.get_running_loop().create_task(self._listen_forever(url))

    async def _listen_forever(self, url: str) -> None:
        delay = 0.1
        while not self._stopped:  # besides the cancellation, which an awaited library call may swallow
            if self._listener is None or self._listener.is_closed():
                self._listening = False
                try:
                    self._listener = await asyncpg.connect(url, timeout=5)
                    self._listener.add_termination_listener(self._on_lost)
                    await self._listener.add_listener(CHANNEL, self._on_notify)
                    self.clear()  # changes may have been missed while deaf
                    self._listening = True
                    delay = 0.1
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    log.warning("data source change listener cannot connect: %s", type(error).__name__)
                    delay = min(delay * 2, 5.0)
            else:
                delay = 1.0
                # a silent network loss does not close the socket: probe it
                try:
                    async with asyncio.timeout(5):
                        await self._listener.execute("SELECT 1")
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    self._on_lost(self._listener)
                    self._listener.terminate()
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Stop listening and close every data source's clients (each step bounded in time)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            # a cancellation that lands inside asyncio.wait_for can be lost (CPython 3.11): never wait forever
            await asyncio.wait({self._task}, timeout=5)
        if self._listener is not None and not self._listener.is_closed():
            try:
                async with asyncio.timeout(5):
                    await self._listener.close()
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                self._listener.terminate()  # a graceful close must not hold up the shutdown
        for loading in list(self._loading.values()):
            loading.cancel()
        self._listening = False
        self.clear()
        for handle, context in list(self._retiring.values()):
            handle.cancel()
            self._close_now(context)
        if self._closing:
            await asyncio.wait(self._closing, timeout=15)
