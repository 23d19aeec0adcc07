"""Data source provisioning files: applied at start and on reload, in one transaction, and exported back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.app import SERVER_OPTIONS, create_app, open_database
from gateway.crypto import SecretBox
from gateway.errors import ProvisioningFailed
from gateway.provisioning import expand, safe_uid
from tests.conftest import ADMIN, make_config

ROOT = Path(__file__).resolve().parent.parent
RELOAD = "/api/admin/provisioning/datasources/reload"


def write(folder: Path, name: str, text: str) -> Path:
    (folder / "datasources").mkdir(parents=True, exist_ok=True)
    path = folder / "datasources" / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def provisioning(tmp_path: Path) -> Path:
    return tmp_path / "provisioning"


@pytest.fixture
async def start(aiohttp_client: Any, aiohttp_server: Any, database_url: str, provisioning: Path) -> Any:
    """Start an app (as a fresh replica would) with [paths] provisioning set; returns its test client."""

    async def started() -> Any:
        config = make_config(database_url, paths={"provisioning": str(provisioning)})
        options = {name: value for name, value in SERVER_OPTIONS.items() if name != "handler_cancellation"}
        return await aiohttp_client(await aiohttp_server(create_app(config), **options))

    return started


async def view(client: Any, uid: str) -> dict[str, Any]:
    response = await client.get(f"/api/datasources/uid/{uid}", headers=ADMIN)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def names(client: Any) -> list[str]:
    response = await client.get("/api/datasources", headers=ADMIN)
    return sorted(ds["name"] for ds in await response.json())


async def secrets_of(db: Any, database_url: str, uid: str) -> dict[str, str]:
    row = await db.fetchrow("SELECT secure_json_data::text AS s FROM data_source WHERE uid = $1", uid)
    database, box = await open_database(make_config(database_url), provision=False)
    await database.close()
    return box.open_all(yaml.safe_load(row["s"]))


# -- interpolation --------------------------------------------------------------------------------------

def test_values_interpolate_vars_braced_vars_and_escape_dollars(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("from-file\n")
    env = {"HOST": "prom", "PORT": "9090"}
    assert expand("http://$HOST:${PORT}/x", env) == "http://prom:9090/x"
    assert expand("pa$$word $$HOST", env) == "pa$word $HOST"
    assert expand("$UNSET-end", env) == "-end"  # Grafana: an unset variable is empty
    assert expand("$__env{HOST} $__file{" + str(secret) + "}", env) == "prom from-file"
    assert expand("no $ sign here $", env) == "no $ sign here $"


def test_a_provisioned_uid_defaults_to_grafanas_hash_of_the_name():
    assert safe_uid("Prometheus") == safe_uid("Prometheus") != safe_uid("prometheus")
    assert len(safe_uid("x")) == 17 and safe_uid("x").startswith("P") and safe_uid("x").isupper()


# -- at start ---------------------------------------------------------------------------------------------

async def test_files_apply_at_start_read_only_unless_editable_with_env_and_sealed_secrets(
        start, provisioning, db, database_url, monkeypatch):
    monkeypatch.setenv("PROV_HOST", "prom.internal")
    monkeypatch.setenv("PROV_PASSWORD", "s3cret")
    write(provisioning, "a.yaml", """
        apiVersion: 1
        datasources:
          - name: Prometheus
            type: prometheus
            url: http://${PROV_HOST}:9090
            isDefault: true
            basicAuth: true
            basicAuthUser: admin
            jsonData: {httpMethod: POST, nested: {host: $PROV_HOST}}
            secureJsonData:
              basicAuthPassword: $PROV_PASSWORD
              httpHeaderValue1: "cost$$5"
          - name: Loki
            type: loki
            uid: loki-uid
            access: direct
            orgId: 1
            url: http://loki:3100
            editable: true
        """)
    client = await start()
    prom = await view(client, safe_uid("Prometheus"))
    assert prom["url"] == "http://prom.internal:9090" and prom["access"] == "proxy"
    assert prom["readOnly"] is True and prom["isDefault"] is True and prom["version"] == 1
    assert prom["jsonData"] == {"httpMethod": "POST", "nested": {"host": "prom.internal"}}
    assert prom["secureJsonFields"] == {"basicAuthPassword": True, "httpHeaderValue1": True}
    loki = await view(client, "loki-uid")
    assert loki["readOnly"] is False and loki["access"] == "direct" and loki["isDefault"] is False
    stored = await db.fetchval("SELECT secure_json_data::text FROM data_source WHERE name = 'Prometheus'")
    assert "s3cret" not in stored
    assert await secrets_of(db, database_url, prom["uid"]) == {"basicAuthPassword": "s3cret",
                                                               "httpHeaderValue1": "cost$5"}

    # provisioned and not editable: the API refuses to change or delete it, as Grafana does
    body = {"name": "Prometheus", "type": "prometheus", "access": "proxy", "url": "http://other"}
    response = await client.put(f"/api/datasources/uid/{prom['uid']}", json=body, headers=ADMIN)
    assert response.status == 403
    assert (await response.json())["message"] == "Cannot update read-only data source"
    response = await client.delete(f"/api/datasources/uid/{prom['uid']}", headers=ADMIN)
    assert response.status == 403
    assert (await response.json())["message"] == "Cannot delete read-only data source"
    response = await client.delete("/api/datasources/uid/loki-uid", headers=ADMIN)
    assert response.status == 200  # editable: the API may delete it


async def test_a_start_applies_files_once_across_replicas_and_reload_applies_them_again(start, provisioning):
    write(provisioning, "a.yaml", """
        apiVersion: 1
        datasources:
          - {name: Editable, type: prometheus, uid: ed, url: "http://a:9090", editable: true}
        """)
    first = await start()
    body = {"name": "Editable", "type": "prometheus", "access": "proxy", "url": "http://changed:9090"}
    response = await first.put("/api/datasources/uid/ed", json=body, headers=ADMIN)
    assert response.status == 200
    second = await start()  # another replica (or worker) starting with the same files: already applied
    assert (await view(second, "ed"))["url"] == "http://changed:9090"
    response = await second.post(RELOAD, headers=ADMIN)
    assert response.status == 200
    assert await response.json() == {"message": "Datasources config reloaded"}
    assert (await view(first, "ed"))["url"] == "http://a:9090"


async def test_a_file_error_at_start_stops_the_start_naming_file_entry_and_field(database_url, provisioning):
    path = write(provisioning, "bad.yaml", """
        apiVersion: 1
        datasources:
          - {name: ok, type: prometheus, url: "http://ok:9090"}
          - {name: broken, type: prometheus, url: "http://bad host:9090"}
        """)
    config = make_config(database_url, paths={"provisioning": str(provisioning)})
    with pytest.raises(ProvisioningFailed) as raised:
        await open_database(config)
    assert raised.value.message == (
        f"Datasources config not applied: {path}: datasources[1] ('broken'): url: Validation error, invalid URL")


# -- reload -----------------------------------------------------------------------------------------------

async def test_reload_updates_by_name_deletes_and_prunes_in_one_run(start, provisioning, db):
    write(provisioning, "a.yaml", """
        apiVersion: 1
        prune: true
        datasources:
          - {name: kept, type: prometheus, url: "http://kept:9090"}
          - {name: pruned, type: prometheus, url: "http://pruned:9090"}
        """)
    write(provisioning, "b.yaml", """
        apiVersion: 1
        datasources:
          - {name: unpruned, type: prometheus, url: "http://unpruned:9090"}
        """)
    client = await start()
    response = await client.post("/api/datasources", json={"name": "by-api", "type": "loki", "access": "proxy",
                                                           "url": "http://loki:3100"}, headers=ADMIN)
    assert response.status == 200
    assert await names(client) == ["by-api", "kept", "pruned", "unpruned"]

    write(provisioning, "a.yaml", """
        apiVersion: 1
        prune: true
        deleteDatasources:
          - {name: by-api, orgId: 1}
          - {name: by-api, orgId: 99}
          - {name: never-existed}
        datasources:
          - {name: kept, type: prometheus, url: "http://kept-2:9090", jsonData: {timeInterval: 15s}}
        """)
    (provisioning / "datasources" / "b.yaml").unlink()
    response = await client.post(RELOAD, headers=ADMIN)
    assert response.status == 200, await response.text()
    # `pruned` was written by a prune file and left it; `unpruned` came from a file without prune: it stays
    assert await names(client) == ["kept", "unpruned"]
    kept = await view(client, safe_uid("kept"))
    assert kept["url"] == "http://kept-2:9090" and kept["jsonData"] == {"timeInterval": "15s"}
    assert await db.fetchval("SELECT version FROM data_source WHERE name = 'kept'") == 1


async def test_a_newer_stored_version_is_kept_and_a_higher_file_version_wins(start, provisioning):
    def version_file(version: int, url: str) -> None:
        write(provisioning, "a.yaml", f"""
            apiVersion: 1
            datasources:
              - {{name: v, uid: v, type: prometheus, url: "{url}", version: {version}}}
            """)

    version_file(3, "http://one:9090")
    client = await start()
    assert (await view(client, "v"))["version"] == 1
    version_file(3, "http://two:9090")
    assert (await client.post(RELOAD, headers=ADMIN)).status == 200
    assert (await view(client, "v"))["version"] == 4  # stored 1 <= 3: updated to 3 + 1
    version_file(3, "http://three:9090")
    assert (await client.post(RELOAD, headers=ADMIN)).status == 200
    v = await view(client, "v")
    assert (v["version"], v["url"]) == (4, "http://two:9090")  # stored 4 > 3: the file is older, kept
    version_file(9, "http://four:9090")
    assert (await client.post(RELOAD, headers=ADMIN)).status == 200
    assert (await view(client, "v"))["url"] == "http://four:9090"


async def test_reload_reaches_the_data_source_cache(start, provisioning, aiohttp_server):
    def answering(name: str) -> Any:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response({"upstream": name})
        return answer

    urls = []
    for name in ("one", "two"):
        app = web.Application()
        app.router.add_get("/{tail:.*}", answering(name))
        urls.append(f"http://127.0.0.1:{(await aiohttp_server(app)).port}")
    template = """
        apiVersion: 1
        datasources:
          - {{name: up, uid: up, type: generic-http, url: "{url}"}}
        """
    write(provisioning, "a.yaml", template.format(url=urls[0]))
    client = await start()
    response = await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
    assert await response.json() == {"upstream": "one"}
    write(provisioning, "a.yaml", template.format(url=urls[1]))
    assert (await client.post(RELOAD, headers=ADMIN)).status == 200
    response = await client.get("/api/datasources/proxy/uid/up/x", headers=ADMIN)
    assert await response.json() == {"upstream": "two"}


async def test_reload_is_for_the_server_admin_only(start, make_token):
    client = await start()
    for role in ("Admin", "Editor", "Viewer"):
        response = await client.post(RELOAD, headers=await make_token(role))
        assert response.status == 403, role
    granted = await make_token("Viewer", (("provisioning:reload", "provisioners:datasources"),))
    assert (await client.post(RELOAD, headers=granted)).status == 200


BAD_FILES = [
    ("apiVersion: 2\ndatasources: []\n", "apiVersion: must be 1"),
    ("apiVersion: 1\ndatasources: {name: x}\n", "datasources: must be a list"),
    ("apiVersion: 1\ndatasources:\n  - {type: prometheus, url: 'http://x'}\n", "datasources[0]: name: required"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, url: 'http://x'}\n", "datasources[0] ('x'): type: required"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus}\n",
     "datasources[0] ('x'): url: Validation error, invalid URL"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', uid: 'a/b'}\n",
     "datasources[0] ('x'): uid: Invalid datasource UID."),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', orgId: many}\n",
     "datasources[0] ('x'): orgId: must be a whole number"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', isDefault: maybe}\n",
     "datasources[0] ('x'): isDefault: must be true or false"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', jsonData: [1]}\n",
     "datasources[0] ('x'): jsonData: must be a mapping"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', user: '" + "u" * 256 + "'}\n",
     "datasources[0] ('x'): user: longer than 255 bytes"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x',"
     " secureJsonData: {password: '$__file{/nonexistent/pw}'}}\n",
     "datasources[0] ('x'): secureJsonData.password: $__file{/nonexistent/pw} is not a readable file of at most"
     " 1048576 bytes"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', orgId: 7}\n",
     "datasources[0] ('x'): orgId: organization 7 does not exist"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: generic-http, url: 'http://x',"
     " jsonData: {httpHeaderName1: 'bad name'}}\n",
     "datasources[0] ('x'): Validation error, invalid HTTP header in jsonData.httpHeaderName1"),
    ("apiVersion: 1\ndatasources:\n  - {name: a, type: prometheus, url: 'http://a', isDefault: true}\n"
     "  - {name: b, type: prometheus, url: 'http://b', isDefault: true}\n",
     "datasources[1] ('b'): isDefault: only one data source per organization can be marked as default"
     " ({file}: datasources[0] ('a') is too)"),
    ("apiVersion: 1\ndatasources:\n  - {name: a, uid: same, type: prometheus, url: 'http://a'}\n"
     "  - {name: b, uid: same, type: prometheus, url: 'http://b'}\n",
     "datasources[1] ('b'): uid: another data source of org 1 has this uid"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', jsonData: {x: "
     + "[" * 600 + "]" * 600 + "}}\n", "nested too deeply"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', jsonData: {a: \"x\\0y\"}}\n",
     "datasources[0] ('x'): jsonData.a: must not contain a NUL character"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x', jsonData: {\"k\\0\": 1}}\n",
     "datasources[0] ('x'): jsonData key: must not contain a NUL character"),
    ("apiVersion: 1\ndatasources:\n  - {name: x, type: prometheus, url: 'http://x',"
     " secureJsonData: {password: \"\\ud800\"}}\n",
     "datasources[0] ('x'): secureJsonData.password: must be valid Unicode (no lone surrogates)"),
    ("apiVersion: 1\ndatasources:\n  - name: x\n    secureJsonData: {password: hunter2\n",
     "not valid YAML (expected ',' or '}', but got '<stream end>' at line 5, column 1)"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_FILES)
async def test_a_bad_file_names_file_entry_and_field_and_changes_nothing(start, provisioning, db, text, problem):
    write(provisioning, "a.yaml", """
        apiVersion: 1
        prune: true
        datasources:
          - {name: before, uid: before, type: prometheus, url: "http://before:9090"}
        """)
    client = await start()
    rows_before = await db.fetch("SELECT * FROM data_source ORDER BY id")
    # a good file first: its changes (the prune of `before`, the new `good`) must be rolled back too
    write(provisioning, "a.yaml", "apiVersion: 1\nprune: true\ndatasources:\n"
                                  "  - {name: good, type: prometheus, url: 'http://good:9090'}\n")
    bad = write(provisioning, "b.yaml", text)
    response = await client.post(RELOAD, headers=ADMIN)
    assert response.status == 400
    message = (await response.json())["message"]
    assert message == f"Datasources config not applied: {bad}: " + problem.replace("{file}", str(bad))
    assert "hunter2" not in message
    assert await db.fetch("SELECT * FROM data_source ORDER BY id") == rows_before


# -- export -----------------------------------------------------------------------------------------------

def run_gateway(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GF_DATABASE_URL": database_url, "GF_PATHS_PROVISIONING": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


async def test_export_provisions_the_same_state_back(start, provisioning, db, database_url, tmp_path):
    client = await start()
    bodies = [
        {"name": "prom", "uid": "prom", "type": "prometheus", "access": "proxy", "url": "http://prom:9090",
         "basicAuth": True, "basicAuthUser": "scraper", "isDefault": True,
         "jsonData": {"httpMethod": "GET", "timeInterval": "30s", "list": [1, "$x"], "httpHeaderName1": "X-Cost"},
         "secureJsonData": {"basicAuthPassword": "pa$$w0rd ${HOME}", "httpHeaderValue1": "v: 1"}},
        {"name": "pg $name", "uid": "pg", "type": "grafana-postgresql-datasource", "access": "proxy",
         "url": "db:5432", "user": "reader", "database": "metrics", "withCredentials": True,
         "jsonData": {"sslmode": "disable"}, "secureJsonData": {"password": "x\ny"}},
        {"name": "loki", "uid": "loki", "type": "loki", "access": "direct", "url": "http://loki:3100"},
    ]
    for body in bodies:
        response = await client.post("/api/datasources", json=body, headers=ADMIN)
        assert response.status == 200, await response.text()
    before = [await view(client, uid) for uid in ("prom", "pg", "loki")]
    secrets_before = {uid: await secrets_of(db, database_url, uid) for uid in ("prom", "pg")}

    plain = run_gateway(database_url, "datasources", "export")
    assert plain.returncode == 0, plain.stderr
    assert "pa$$w0rd" not in plain.stdout and "basicAuthPassword: " not in plain.stdout
    assert "#   'prom': 'basicAuthPassword', 'httpHeaderValue1'" in plain.stdout
    assert "secureJsonData" not in yaml.safe_load(plain.stdout)["datasources"][0]

    out = tmp_path / "export.yaml"
    full = run_gateway(database_url, "datasources", "export", "--org-id", "1", "--with-secrets", "-o", str(out))
    assert full.returncode == 0, full.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    document = yaml.safe_load(out.read_text())
    assert document["apiVersion"] == 1 and "deleteDatasources" not in document

    await db.execute("TRUNCATE data_source CASCADE")
    write(provisioning, "export.yaml", out.read_text())
    response = await client.post(RELOAD, headers=ADMIN)
    assert response.status == 200, await response.text()
    after = [await view(client, uid) for uid in ("prom", "pg", "loki")]
    for old, new in zip(before, after, strict=True):
        assert {**new, "id": old["id"]} == old
    assert {uid: await secrets_of(db, database_url, uid) for uid in ("prom", "pg")} == secrets_before


async def test_export_of_an_org_without_data_sources_is_an_empty_file(database_url):
    done = run_gateway(database_url, "datasources", "export", "--org-id", "1")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout) == {"apiVersion": 1, "datasources": []}


def test_an_export_that_cannot_be_written_names_the_file_not_the_database(database_url, tmp_path):
    target = tmp_path / "missing" / "datasources.yaml"
    done = run_gateway(database_url, "datasources", "export", "-o", str(target))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"gateway: cannot write {target}: No such file or directory"


def test_a_sealed_secret_never_reaches_an_error(tmp_path):
    # the reader's YAML error quotes no part of the file, so no secret on the failing line
    from gateway.provisioning import read_file

    path = write(tmp_path, "a.yaml", "apiVersion: 1\ndatasources:\n  - secureJsonData: {password: hunter2 : :\n")
    with pytest.raises(ProvisioningFailed) as raised:
        read_file(path, SecretBox({"k": b"0" * 32}, "k"), {})
    assert "hunter2" not in raised.value.message and str(path) in raised.value.message


def test_yaml_aliases_are_refused_before_they_can_expand(tmp_path):
    from gateway.errors import ProvisioningFailed
    from gateway.provisioning import read_file

    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    lines += ["apiVersion: 1", "datasources:", "  - name: x", "    type: prometheus", "    jsonData: {x: *i}"]
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProvisioningFailed, match=r"bomb.yaml: YAML aliases \(\*name\) are not accepted \(line 2\)"):
        read_file(bomb, None, {})  # type: ignore[arg-type]  # refused before anything needs the box


def test_a_file_gone_since_the_folder_was_listed_is_skipped_and_an_unreadable_one_named(tmp_path):
    from gateway.provisioning import read_file

    assert read_file(tmp_path / "removed.yaml", None, {}) == []  # type: ignore[arg-type]
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    with pytest.raises(ProvisioningFailed) as raised:
        read_file(folder, None, {})  # type: ignore[arg-type]
    assert raised.value.message == f"Datasources config not applied: {folder}: cannot be read (Is a directory)"


def test_a_huge_file_or_a_proc_file_is_never_read_past_the_limit(tmp_path):
    import tracemalloc

    from gateway.provisioning import MAX_FILE_BYTES, digest, expand

    write(tmp_path, "a.yaml", "apiVersion: 1\n")
    with (tmp_path / "datasources" / "huge.yaml").open("wb") as file:
        file.truncate(64 << 20)  # sparse: the disk holds nothing, a read holds 64 MiB
    tracemalloc.start()
    try:
        digest(tmp_path, "key", {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_FILE_BYTES
    # /proc/self/pagemap says 0 bytes and holds one entry per page of the address space (hundreds of GiB)
    with pytest.raises(ValueError, match="is not a readable file of at most"):
        expand("$__file{/proc/self/pagemap}", {})


async def test_a_start_reapplies_the_files_when_a_file_they_read_changed(start, provisioning, tmp_path):
    token = tmp_path / "team"
    token.write_text("one\n")
    write(provisioning, "a.yaml", f"""
        apiVersion: 1
        datasources:
          - {{name: P, type: prometheus, uid: p, url: "http://p:9090", jsonData: {{team: "$__file{{{token}}}"}}}}
        """)
    first = await start()
    assert (await view(first, "p"))["jsonData"] == {"team": "one"}
    token.write_text("two\n")  # e.g. a mounted Secret rotated, then the pods restarted
    second = await start()
    assert (await view(second, "p"))["jsonData"] == {"team": "two"}


def test_a_password_that_reads_as_a_yaml_tag_is_not_quoted_in_the_error(tmp_path):
    from gateway.provisioning import read_file

    path = write(tmp_path, "a.yaml", "apiVersion: 1\ndatasources:\n  - name: x\n    type: prometheus\n"
                                     "    secureJsonData:\n      password: !S3cr3t-pw\n")
    with pytest.raises(ProvisioningFailed) as raised:
        read_file(path, None, {})  # type: ignore[arg-type]
    assert raised.value.message == (f"Datasources config not applied: {path}: not valid YAML (could not determine a "
                                    "constructor for the tag '…' at line 6, column 17)")
