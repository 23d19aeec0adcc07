"""Data sources, their opened secrets and transports, cached in process; kept fresh by LISTEN/NOTIFY.

Every write commits a NOTIFY on CHANNEL; each replica listens and drops what changed. While the
listening connection is down nothing is cached (every lookup reads Postgres), so a replica can
never serve a stale password for longer than its reconnection takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import asyncpg

from gateway.config import DataProxy
from gateway.crypto import SecretBox
from gateway.models import DataSource
from gateway.store import DataSourceStore
from gateway.transport import Transport

log = logging.getLogger("gateway")

CHANNEL = "gateway_datasource"
MAX_ENTRIES = 10_000
UNTRUSTED_TTL = 1.0
# seconds a replaced transport stays open for the requests that already hold it
RETIRE_GRACE = 10.0


class Entry:
    """One data source with its decrypted secrets and (lazily) its transport."""

    __slots__ = ("_transport", "ds", "expires", "proxy", "secrets")

    def __init__(self, ds: DataSource, secrets: dict[str, str], proxy: DataProxy, expires: float) -> None:
        self.ds = ds
        self.expires = expires
        self.secrets = secrets
        self.proxy = proxy
        self._transport: Transport | None = None

    @property
    def transport(self) -> Transport:
        """The data source's transport, built on first use (raises for a bad URL or TLS material)."""
        if self._transport is None:
            self._transport = Transport(self.ds, self.secrets, self.proxy)
        return self._transport

    async def close(self) -> None:
        """Release the transport's connections."""
        if self._transport is not None:
            await self._transport.close()


class DataSourceCache:
    """(org, id) and (org, uid) -> Entry, valid while this replica hears every change."""

    def __init__(self, store: DataSourceStore, box: SecretBox, proxy: DataProxy) -> None:
        self._store = store
        self._box = box
        self._proxy = proxy
        self._entries: dict[tuple[str, int, object], Entry] = {}
        # bumped by every invalidation: a load that raced with a change is used once, not cached
        self._generation = 0
        self._listening = False
        self._listener: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._retiring: dict[int, tuple[asyncio.TimerHandle, Entry]] = {}
        self._loading: dict[tuple[str, int, object], asyncio.Task[Entry]] = {}
        store.listeners.append(self.invalidate)

    async def get(self, org_id: int, *, id: int | None = None, uid: str | None = None) -> Entry:
        """The data source by id or uid, from memory when possible; DataSourceNotFound otherwise.

        Concurrent misses for one key share a single load (no stampede on Postgres).
        """
        key = ("id", org_id, id) if id is not None else ("uid", org_id, uid)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires > time.monotonic():
                return entry
            self._drop(entry)
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.get_running_loop().create_task(self._load(key, org_id, id, uid))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _load(self, key: tuple[str, int, object], org_id: int, id: int | None, uid: str | None) -> Entry:
        generation = self._generation
        ds = await self._store.get_data_source(org_id, id=id, uid=uid)
        trusted = self._listening and generation == self._generation
        expires = math.inf if trusted else time.monotonic() + UNTRUSTED_TTL
        entry = Entry(ds, self._box.open_all(ds.secure_json_data), self._proxy, expires)
        if len(self._entries) >= MAX_ENTRIES:
            self.clear()
        for old_key in (("id", ds.org_id, ds.id), ("uid", ds.org_id, ds.uid)):
            old = self._entries.get(old_key)
            if old is not None and old is not entry:
                self._drop(old)
            self._entries[old_key] = entry
        return entry

    def invalidate(self, org_id: int, ds_id: int, uid: str) -> None:
        """Forget one data source (it changed); loads in flight are used once but not trusted."""
        self._generation += 1
        for key in (("id", org_id, ds_id), ("uid", org_id, uid)):
            entry = self._entries.get(key)
            if entry is not None:
                self._drop(entry)

    def clear(self) -> None:
        """Forget everything."""
        self._generation += 1
        for entry in {id(e): e for e in self._entries.values()}.values():
            self._drop(entry)

    def _drop(self, entry: Entry) -> None:
        """Remove an entry; its transport closes after a grace period, so requests that already
        hold it still complete (and the proxy retries once on a closed pool anyway)."""
        for key in (("id", entry.ds.org_id, entry.ds.id), ("uid", entry.ds.org_id, entry.ds.uid)):
            if self._entries.get(key) is entry:
                del self._entries[key]
        handle = asyncio.get_running_loop().call_later(RETIRE_GRACE, self._close_now, entry)
        self._retiring[id(entry)] = (handle, entry)

    def _close_now(self, entry: Entry) -> None:
        self._retiring.pop(id(entry), None)
        task = asyncio.get_running_loop().create_task(entry.close())
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
        while True:
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
                    await asyncio.wait_for(self._listener.execute("SELECT 1"), 5)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    self._on_lost(self._listener)
                    self._listener.terminate()
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Stop listening and close every transport."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        self._listening = False
        self.clear()
        for handle, entry in list(self._retiring.values()):
            handle.cancel()
            self._close_now(entry)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
