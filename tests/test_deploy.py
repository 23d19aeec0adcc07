"""deploy/ and docker-compose.yml parse, and every GF_ variable they set is a real configuration key."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gateway.config import Config

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_parses_and_wires_gateway_to_postgres():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gateway = compose["services"]["gateway"]
    assert gateway["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / gateway["build"]["dockerfile"]).is_file()
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    environment = gateway["environment"]
    assert set(environment) <= Config.env_names()
    config = Config.from_env({k: str(v) for k, v in environment.items()})
    assert config.database.url.startswith("postgres://") and "@postgres:5432/" in config.database.url


def test_dockerfile_runs_as_non_root_with_a_health_check():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile and "/api/health" in dockerfile
    assert re.search(r"^FROM python:3\.1[1-9]-slim", dockerfile, re.MULTILINE)


def test_every_documented_gf_variable_is_a_real_key():
    readme = (ROOT / "README.md").read_text()
    for name in set(re.findall(r"GF_[A-Z_]+", readme)) - {"GF_"}:
        assert name in Config.env_names() or name == "GF_SECTION_KEY", name
