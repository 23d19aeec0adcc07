"""Real clients, unchanged, against a running gateway: grafana-client and schemathesis.

Both live in their own virtualenvs (grafana-client installs urllib3-future, which breaks
requests-based tools); `make test` creates them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "grafana-openapi-datasources.json"


def _tool(venv: str, name: str) -> str:
    path = ROOT / venv / "bin" / name
    assert path.exists(), f"{path} is missing: run `make test`, which creates it"
    return str(path)


@pytest.fixture
def gateway_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gateway as users run it (python -m gateway), on a free port; its log goes to a file (a pipe nobody
    reads would fill up with its request lines and stall it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GF_DATABASE_URL": database_url, "GF_SERVER_HTTP_PORT": str(port),
           "GF_SERVER_HTTP_ADDR": "127.0.0.1", "GF_SERVER_WORKERS": "1"}
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_grafana_client_creates_reads_updates_lists_and_deletes_unchanged(gateway_url):
    result = subprocess.run(
        [_tool(".venv-client", "python"), str(ROOT / "tests" / "clients" / "grafana_client_roundtrip.py"),
         gateway_url.replace("http://", "http://admin:admin@")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round trip ok" in result.stdout


def test_schemathesis_finds_no_5xx_and_responses_match_grafanas_schema(gateway_url, tmp_path):
    """Fuzz the routes built so far; status codes Grafana returns but does not document are in the README."""
    result = subprocess.run(
        [_tool(".venv-schemathesis", "schemathesis"), "run", str(SPEC), "--url", f"{gateway_url}/api",
         "-a", "admin:admin", "--workers", "1", "--max-examples", "40", "--seed", "20261123",
         "--include-path-regex", r"^/datasources(/uid/\{uid\}|/name/\{name\}|/id/\{name\}|/\{id\})?$",
         "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
