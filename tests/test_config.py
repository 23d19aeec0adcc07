"""Configuration: Grafana's INI keys, GF_ overrides, one clear line for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.config import Config, ConfigError


def test_defaults_match_grafana():
    config = Config.from_env({})
    assert config.server.http_port == 3000
    assert config.security.admin_user == "admin" and config.security.secret_key == "SW2YcwTIb9zpOOhoPsMm"
    assert config.datasources.datasource_limit == 5000
    assert config.dataproxy.timeout == 30 and config.dataproxy.dial_timeout == 10
    assert config.gateway.grafana_version == "12.4.0"
    assert "SW2Y" not in repr(config)  # the secret key never shows in a repr or log line


def test_environment_overrides_every_key_grafana_style(tmp_path):
    custom = tmp_path / "custom.ini"
    custom.write_text("[server]\nhttp_port = 4000\n[dataproxy]\ndialTimeout = 3\n")
    config = Config.from_env({
        "GF_SERVER_HTTP_ADDR": "127.0.0.1",
        "GF_DATABASE_URL": "postgres://u:p@db:5432/g",
        "GF_SECURITY_DATA_SOURCE_PROXY_WHITELIST": "a:1, b:2",
        "GF_DATAPROXY_TIMEOUT": "5",
    }, custom)
    assert config.server.http_port == 4000 and config.server.http_addr == "127.0.0.1"
    assert config.database.url == "postgres://u:p@db:5432/g"
    assert config.security.data_source_proxy_whitelist == ("a:1", "b:2")
    assert config.dataproxy.dial_timeout == 3 and config.dataproxy.timeout == 5


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"GF_SERVER_HTTP_PORT": "abc"}, "[server] http_port"),
        ({"GF_SERVER_HTTP_PORT": "70000"}, "[server] http_port"),
        ({"GF_DATABASE_URL": "mysql://x"}, "[database] url"),
        ({"GF_DATAPROXY_LOGGING": "maybe"}, "[dataproxy] logging"),
        ({"GF_DATAPROXY_TIMEOUT": "0"}, "[dataproxy] timeout"),
    ],
)
def test_bad_values_name_the_key(env, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Config.from_env(env)


def test_check_config_prints_one_line_and_fails():
    env = {**os.environ, "GF_SERVER_HTTP_PORT": "abc"}
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["gateway: invalid value for [server] http_port: 'abc' "
                                                  "(invalid literal for int() with base 10: 'abc')"]
