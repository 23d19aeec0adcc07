"""Typed keys for everything the app and a request carry."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from gateway.accounts import AccountStore
from gateway.auth import authenticator_key, identity_key
from gateway.cache import DataSourceCache
from gateway.config import Config
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.store import DataSourceStore

config_key = web.AppKey("config", Config)
db_key = web.AppKey("db", Database)
box_key = web.AppKey("box", SecretBox)
store_key = web.AppKey("store", DataSourceStore)
accounts_key = web.AppKey("accounts", AccountStore)
cache_key = web.AppKey("cache", DataSourceCache)
client_key = web.AppKey("client", aiohttp.ClientSession)
# set from SIGTERM/SIGINT on: /api/health answers 503 while the worker drains (gateway.__main__)
draining_key = web.AppKey("draining", asyncio.Event)

__all__ = [
    "accounts_key", "authenticator_key", "box_key", "cache_key", "client_key", "config_key", "db_key",
    "draining_key", "identity_key", "store_key",
]
