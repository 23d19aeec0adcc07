"""Grafana's data source provisioning files (`[paths] provisioning`/datasources/*.yaml): read, interpolated,
validated entry by entry, applied in one transaction; and the export that writes them back."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gateway.crypto import SecretBox
from gateway.datasources.models import (
    MAX_FIELD_BYTES,
    MAX_NAME_BYTES,
    MAX_URL_BYTES,
    AddDataSourceCommand,
    DataSource,
    ProvisionedDataSource,
    ProvisionedDelete,
    validate_request_settings,
    validate_uid,
    validate_url,
)
from gateway.datasources.store import DataSourceStore
from gateway.errors import GatewayError, ProvisioningFailed

log = logging.getLogger("gateway.provisioning")

MAX_FILE_BYTES = 1 << 20  # a provisioning file, and a $__file{} it reads
MAX_FILES = 1000
Step = ProvisionedDelete | ProvisionedDataSource

# $$ (a literal $), ${VAR}, $VAR, and Grafana's $__env{VAR} / $__file{path} macros
_EXPAND = re.compile(r"\$(?:(\$)|__(env|file)\{([^}]*)\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# in PyYAML's problems, what is quoted is a token name ('<block end>', ',') or text from the file
_QUOTED = re.compile(r"'([^']*)'")
_TOKEN = re.compile(r"<[a-z ]+>|.")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", ""}


def expand(value: str, environ: Mapping[str, str]) -> str:
    """Grafana's interpolation of one value: $VAR and ${VAR} from the environment (unset: empty), $$ for $."""

    def one(match: re.Match[str]) -> str:
        dollar, macro, argument, braced, bare = match.groups()
        if dollar:
            return "$"
        if macro == "file":
            path = Path(argument.strip())
            try:
                data = _read_bounded(path) if path.is_file() else None
                text = data.decode() if data is not None else None
            except (OSError, UnicodeDecodeError):  # never str(error): a decode error quotes the file's bytes
                text = None
            if text is None:
                raise ValueError(f"$__file{{{argument}}} is not a readable file of at most {MAX_FILE_BYTES} bytes")
            return text.strip()
        return environ.get((argument or braced or bare).strip(), "")

    return _EXPAND.sub(one, value)


def _read_bounded(path: Path) -> bytes | None:
    """The file's bytes, or None past MAX_FILE_BYTES (read, not stat'ed: /proc files say 0 and hold gigabytes)."""
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    return data if len(data) <= MAX_FILE_BYTES else None


def _unusable(text: str) -> str | None:
    """Why Postgres could not store `text` (a NUL, a lone surrogate), else None."""
    if "\0" in text:
        return "must not contain a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def escape(value: Any) -> Any:
    """Every string in `value` with $ doubled, so provisioning reads it back unchanged."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [escape(item) for item in value]
    if isinstance(value, dict):
        return {key: escape(item) for key, item in value.items()}
    return value


class _Entry:
    """One mapping of a file, read field by field; every problem names the file, the entry and the field."""

    def __init__(self, where: str, raw: Any, environ: Mapping[str, str]) -> None:
        if not isinstance(raw, dict):
            raise ProvisioningFailed(f"{where}: must be a mapping of fields")
        self.where, self.raw, self.environ = where, raw, environ

    def fail(self, field: str, problem: str) -> ProvisioningFailed:
        return ProvisioningFailed(f"{self.where}: {field}: {problem}")

    def expanded(self, field: str, value: Any) -> Any:
        """Interpolate every string inside `value` (nested jsonData included)."""
        if isinstance(value, str):
            try:
                text = expand(value, self.environ)
            except ValueError as error:
                raise self.fail(field, str(error)) from None
            if (problem := _unusable(text)) is not None:
                raise self.fail(field, problem)
            return text
        if isinstance(value, list):
            return [self.expanded(field, item) for item in value]
        if isinstance(value, dict):
            expanded = {}
            for key, item in value.items():
                if (problem := _unusable(str(key))) is not None:
                    raise self.fail(f"{field} key", problem)
                expanded[str(key)] = self.expanded(f"{field}.{key}", item)
            return expanded
        return value

    def string(self, field: str, required: bool = False) -> str:
        value = self.raw.get(field)
        if value is None:
            if required:
                raise self.fail(field, "required")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(field, "must be a string")
        text = self.expanded(field, str(value))
        if required and not text:
            raise self.fail(field, "required")
        return str(text)

    def boolean(self, field: str) -> bool:
        value = self.raw.get(field)
        if value is None or isinstance(value, bool):
            return bool(value)
        if isinstance(value, str):
            text = str(self.expanded(field, value)).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
        raise self.fail(field, "must be true or false")

    def integer(self, field: str, default: int) -> int:
        value = self.raw.get(field)
        if value is None:
            return default
        if isinstance(value, str):
            value = str(self.expanded(field, value)).strip()
        if isinstance(value, bool):
            raise self.fail(field, "must be a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise self.fail(field, "must be a whole number") from None
        if number < 0 or number > 2**31 - 1:
            raise self.fail(field, "must be a whole number from 0 to 2147483647")
        return number

    def mapping(self, field: str) -> dict[str, Any] | None:
        value = self.raw.get(field)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(field, "must be a mapping")
        expanded: dict[str, Any] = self.expanded(field, value)
        return expanded


def safe_uid(name: str) -> str:
    """The uid Grafana gives a provisioned data source without one: P + 16 hex digits of sha256(name)."""
    return "P" + hashlib.sha256(name.encode()).hexdigest()[:16].upper()


def _data_source(entry: _Entry, box: SecretBox, prune: bool) -> ProvisionedDataSource:
    name = entry.string("name", required=True)
    ds_type = entry.string("type", required=True)
    access = entry.string("access") or "proxy"
    if access not in ("proxy", "direct"):
        log.warning("%s: access: %r is neither proxy nor direct, proxy is used (as Grafana does)", entry.where, access)
        access = "proxy"
    secrets: dict[str, str] = {}
    for key, value in (entry.mapping("secureJsonData") or {}).items():
        if value is None:
            continue
        if isinstance(value, dict | list):
            raise entry.fail(f"secureJsonData.{key}", "must be a string")
        secrets[key] = "true" if value is True else "false" if value is False else str(value)
    json_data = entry.mapping("jsonData")
    cmd = AddDataSourceCommand(
        name=name, type=ds_type, access=access, url=entry.string("url"), user=entry.string("user"),
        database=entry.string("database"), basic_auth=entry.boolean("basicAuth"),
        basic_auth_user=entry.string("basicAuthUser"), with_credentials=entry.boolean("withCredentials"),
        is_default=entry.boolean("isDefault"), json_data=json_data if json_data is not None else {},
        secure_json_data=secrets, uid=entry.string("uid") or safe_uid(name), api_version=entry.string("apiVersion"),
    )
    _validate(entry, cmd)
    return ProvisionedDataSource(
        where=entry.where, org_id=entry.integer("orgId", 1) or 1, cmd=cmd, sealed=box.seal_all(secrets),
        version=entry.integer("version", 0), read_only=not entry.boolean("editable"), prunable=prune,
    )


def _validate(entry: _Entry, cmd: AddDataSourceCommand) -> None:
    """The API's checks, each failure pinned to its field."""
    if len(cmd.name.encode()) > MAX_NAME_BYTES:
        raise entry.fail("name", f"longer than {MAX_NAME_BYTES} bytes")
    if len(cmd.url.encode()) > MAX_URL_BYTES:
        raise entry.fail("url", f"longer than {MAX_URL_BYTES} bytes")
    bounded = {"type": cmd.type, "access": cmd.access, "user": cmd.user, "database": cmd.database,
               "basicAuthUser": cmd.basic_auth_user, "apiVersion": cmd.api_version}
    for field, value in bounded.items():
        if len(value.encode()) > MAX_FIELD_BYTES:
            raise entry.fail(field, f"longer than {MAX_FIELD_BYTES} bytes")
    checks: list[tuple[str, Callable[[], object]]] = [
        ("uid", lambda: validate_uid(cmd.uid)),
        ("url", lambda: validate_url(cmd.type, cmd.url)),
    ]
    for field, check in checks:
        try:
            check()
        except GatewayError as error:
            raise entry.fail(field, error.message) from None
    if isinstance(cmd.json_data, dict) and "teamHttpHeaders" in cmd.json_data:
        raise entry.fail("jsonData.teamHttpHeaders", "team HTTP headers are managed by the LBAC API only")
    try:
        validate_request_settings(cmd)
    except GatewayError as error:
        raise ProvisioningFailed(f"{entry.where}: {error.message}") from None


def read_file(path: Path, box: SecretBox, environ: Mapping[str, str]) -> list[Step]:
    """The steps of one file, in Grafana's order: its deletes, then its data sources."""
    try:
        read = _read_bounded(path)
    except FileNotFoundError:
        return []  # removed since the folder was listed (a file replaced by rename, a ConfigMap swapped)
    except OSError as error:
        raise ProvisioningFailed(f"{path}: cannot be read ({error.strerror or type(error).__name__})") from None
    if read is None:
        raise ProvisioningFailed(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    text = read
    try:
        alias = next((event for event in yaml.parse(text, Loader=yaml.SafeLoader)
                      if isinstance(event, yaml.AliasEvent)), None)
        if alias is not None:  # a few nested aliases expand to gigabytes ("billion laughs")
            mark = alias.start_mark
            raise ProvisioningFailed(f"{path}: YAML aliases (*name) are not accepted (line {mark.line + 1})")
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:  # never str(error): its snippet could quote a secret
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        # the problem quotes tags ('!...'), and an unquoted password that starts with ! reads as one
        problem = _QUOTED.sub(lambda quoted: quoted.group() if _TOKEN.fullmatch(quoted.group(1)) else "'…'",
                              error.problem or "")
        raise ProvisioningFailed(f"{path}: not valid YAML ({problem}{where})") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ProvisioningFailed(f"{path}: not valid YAML") from None
    except RecursionError:  # PyYAML parses nesting recursively: a few hundred levels of [ or {
        raise ProvisioningFailed(f"{path}: nested too deeply") from None
    if document is None:
        return []
    top = _Entry(str(path), document, environ)
    if top.integer("apiVersion", 0) != 1:
        raise top.fail("apiVersion", "must be 1")
    prune = top.boolean("prune")
    steps: list[Step] = []
    for key in ("deleteDatasources", "datasources"):
        if not isinstance(document.get(key) or [], list):
            raise top.fail(key, "must be a list")
    for n, raw in enumerate(document.get("deleteDatasources") or []):
        entry = _Entry(f"{path}: deleteDatasources[{n}]", raw, environ)
        steps.append(ProvisionedDelete(where=entry.where, org_id=entry.integer("orgId", 1) or 1,
                                       name=entry.string("name", required=True)))
    for n, raw in enumerate(document.get("datasources") or []):
        name = raw.get("name") if isinstance(raw, dict) else None
        label = f" ({name!r})" if isinstance(name, str) and "$" not in name else ""
        steps.append(_data_source(_Entry(f"{path}: datasources[{n}]{label}", raw, environ), box, prune))
    return steps


def read_directory(directory: Path, box: SecretBox, environ: Mapping[str, str]) -> list[Step]:
    """Every step of directory/datasources/*.yaml and *.yml by file name, checked as a whole."""
    folder = directory / "datasources"
    if not folder.is_dir():
        return []
    files = sorted(path for path in folder.iterdir() if path.suffix in (".yaml", ".yml") and path.is_file())
    if len(files) > MAX_FILES:
        raise ProvisioningFailed(f"{folder}: more than {MAX_FILES} files")
    steps = [step for path in files for step in read_file(path, box, environ)]
    defaults: dict[int, str] = {}
    for step in steps:
        if isinstance(step, ProvisionedDataSource) and step.cmd.is_default:
            if step.org_id in defaults:
                raise ProvisioningFailed(
                    f"{step.where}: isDefault: only one data source per organization can be marked as default"
                    f" ({defaults[step.org_id]} is too)")
            defaults[step.org_id] = step.where
    return steps


def digest(directory: Path, secret_key: str, environ: Mapping[str, str]) -> str:
    """A keyed digest of the files and what they read, variables and $__file{} contents (keyed: it covers
    secrets)."""
    mac = hmac.new(secret_key.encode(), digestmod=hashlib.sha256)
    folder = directory / "datasources"
    names: set[str] = set()
    files: set[str] = set()
    if folder.is_dir():
        for path in sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()):
            text = _digested(path)
            mac.update(path.name.encode() + b"\0" + text + b"\0")
            for match in _EXPAND.finditer(text.decode(errors="replace")):
                if match.group(2) == "file":
                    files.add(match.group(3).strip())
                else:
                    names.add((match.group(3) or match.group(4) or match.group(5) or "").strip())
    for name in sorted(names):
        mac.update(name.encode() + b"=" + environ.get(name, "").encode() + b"\0")
    for name in sorted(files):
        mac.update(b"$__file " + name.encode() + b"=" + _digested(Path(name)) + b"\0")
    return mac.hexdigest()


def _digested(path: Path) -> bytes:
    """What the digest covers of a file: its bytes, or a marker when it is too large, gone or unreadable (applying
    the files then says which)."""
    try:
        data = _read_bounded(path) if path.is_file() else None  # never opened unless regular: a FIFO blocks
    except OSError:
        data = None
    return data if data is not None else b"\0unusable"


class Provisioner:
    """Applies `[paths] provisioning` to the store: at start (once across replicas) and on reload."""

    def __init__(self, store: DataSourceStore, box: SecretBox, directory: str, secret_key: str,
                 environ: Mapping[str, str], lock_key: int) -> None:
        self._store, self._box = store, box
        self._directory = Path(directory)
        self._secret_key, self._environ, self._lock_key = secret_key, environ, lock_key

    async def start(self, conn: Any) -> int:
        """Apply the files unless a replica (or an earlier start) applied these same files; `conn` holds the
        migration lock."""
        files_digest = digest(self._directory, self._secret_key, self._environ)
        if await self._store.provisioned_digest(conn) == files_digest:
            return 0
        return await self.apply(conn, files_digest)

    async def apply(self, conn: Any = None, files_digest: str = "") -> int:
        """Read, check and apply every file in one transaction; returns how many data sources changed."""
        steps = read_directory(self._directory, self._box, self._environ)
        changed = await self._store.provision(steps, self._lock_key, conn=conn, digest=files_digest)
        log.info("provisioning: %d file step(s) from %s applied, %d data source(s) changed", len(steps),
                 self._directory / "datasources", changed)
        return changed


# -- export ---------------------------------------------------------------------------------------------

def export(sources: Sequence[DataSource], box: SecretBox, org_id: int, with_secrets: bool) -> str:
    """A provisioning file (apiVersion 1) that provisions `sources` back as they are."""
    entries = []
    notes = []
    for ds in sorted(sources, key=lambda ds: ds.id):
        entry: dict[str, Any] = {
            "name": ds.name, "type": ds.type, "uid": ds.uid, "orgId": ds.org_id, "access": ds.access,
            "url": ds.url, "user": ds.user, "database": ds.database, "basicAuth": ds.basic_auth,
            "basicAuthUser": ds.basic_auth_user, "withCredentials": ds.with_credentials,
            "isDefault": ds.is_default, "jsonData": ds.json_data if ds.json_data is not None else {},
            "editable": not ds.read_only,
        }
        if ds.api_version:
            entry["apiVersion"] = ds.api_version
        if ds.secure_json_data and with_secrets:
            entry["secureJsonData"] = box.open_all(ds.secure_json_data)
        elif ds.secure_json_data:
            notes.append(f"#   {ds.name!r}: {', '.join(repr(field) for field in sorted(ds.secure_json_data))}")
        entries.append(escape(entry))
    header = [f"# Data sources of org {org_id}, exported by gateway as a Grafana provisioning file."]
    if notes:
        header += ["# secureJsonData left out (export with --with-secrets to include it) for:", *notes]
    body = yaml.safe_dump({"apiVersion": 1, "datasources": entries}, sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + str(body)

