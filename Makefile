# The two commands: `make run` (serve, embedded Postgres when none is configured) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_QUIET := -q --disable-pip-version-check

.PHONY: run test lint bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) -e '.[embedded,mysql,cache,test,lint]'
	touch $@

# Clients that must not share an environment with each other (see tests/test_clients.py).
.venv-client/.installed:
	$(PYTHON) -m venv .venv-client
	.venv-client/bin/python -m pip install $(PIP_QUIET) 'grafana-client>=5'
	touch $@

.venv-schemathesis/.installed:
	$(PYTHON) -m venv .venv-schemathesis
	.venv-schemathesis/bin/python -m pip install $(PIP_QUIET) 'schemathesis>=4'
	touch $@

install: $(VENV)/.installed

## serve on :3000 (admin/admin); with no GF_DATABASE_URL, an embedded PostgreSQL under data/
run: install
	$(PY) -m gateway

## the test suite, against GATEWAY_TEST_DATABASE_URL, else 127.0.0.1:5432 if it answers, else an embedded one
test: install .venv-client/.installed .venv-schemathesis/.installed
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/proxy.py
	$(PY) bench/query.py
	$(PY) bench/cache.py

clean:
	rm -rf $(VENV) .venv-client .venv-schemathesis .pytest_cache .mypy_cache .ruff_cache
