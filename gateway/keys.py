"""Every typed key the app and a request carry, defined here and nowhere else.

The types are imported for the type checker only, so this module depends on nothing of gateway's at run
time and anything may import it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.accounts import AccountStore
    from gateway.auth import Authenticator, Identity
    from gateway.cache.service import QueryCache
    from gateway.config import Config
    from gateway.crypto import SecretBox
    from gateway.datasources.cache import DataSourceCache
    from gateway.datasources.service import DataSourceService
    from gateway.datasources.store import DataSourceStore
    from gateway.db import Database
    from gateway.http.client import Clients
    from gateway.metrics import Metrics
    from gateway.provisioning import Provisioner

config_key: web.AppKey[Config] = web.AppKey("config")
db_key: web.AppKey[Database] = web.AppKey("db")
box_key: web.AppKey[SecretBox] = web.AppKey("box")
store_key: web.AppKey[DataSourceStore] = web.AppKey("store")
service_key: web.AppKey[DataSourceService] = web.AppKey("service")
accounts_key: web.AppKey[AccountStore] = web.AppKey("accounts")
authenticator_key: web.AppKey[Authenticator] = web.AppKey("authenticator")
cache_key: web.AppKey[DataSourceCache] = web.AppKey("cache")
clients_key: web.AppKey[Clients] = web.AppKey("clients")
provisioner_key: web.AppKey[Provisioner] = web.AppKey("provisioner")
query_cache_key: web.AppKey[QueryCache] = web.AppKey("query_cache")
metrics_key: web.AppKey[Metrics] = web.AppKey("metrics")
# with [server] workers > 1: the private directory where the workers answer each other's metrics scrapes
peers_key: web.AppKey[str] = web.AppKey("metrics_peers")
# set from SIGTERM/SIGINT on: /api/health answers 503 while the worker drains (gateway.__main__)
draining_key: web.AppKey[asyncio.Event] = web.AppKey("draining")

identity_key: web.RequestKey[Identity] = web.RequestKey("identity")
request_id_key: web.RequestKey[str] = web.RequestKey("request_id")
