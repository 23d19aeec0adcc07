"""PostgreSQL: health runs SELECT 1 and queries run on the data source's own pool (bounded, closed when it
changes). What is PostgreSQL's own here: the connection, the macros' SQL, running the statements inside a
READ ONLY transaction with a statement timeout, fetching at most row_limit + 1 rows, and the column types;
the rest of the query path is gateway.backends.sql, shared with the other SQL data sources."""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from gateway.backends.base import Context, DataQuery, HealthResult, core_plugin
from gateway.backends.sql import (
    USER_FACING_DEFAULT_ERROR,
    Column,
    MacroEngine,
    MacroError,
    SqlBackend,
    SqlError,
    epoch_ns,
    error_response,
    go_float,
    host_port,
    interpolate_globals,
    max_open_conns,
    rfc3339_nano,
    row_limit_notice,
    shape,
)
from gateway.frames import DataResponse, Notice
from gateway.http.pool import UpstreamPoolClosed

log = logging.getLogger("gateway.postgres")

CONNECT_TIMEOUT = 10.0
IDLE_SECONDS = 60.0  # an idle connection to a data source is closed after this


def connect_options(ctx: Context) -> dict[str, Any]:
    """asyncpg connection keyword arguments from Grafana's fields (url is host[:port], or a socket directory)."""
    ds = ctx.ds
    host, port = host_port(ctx, 5432)
    mode = str(ds.options.get("sslmode", "require"))
    tls: object = False
    if mode in ("require", "verify-ca", "verify-full"):
        context = ssl.create_default_context()
        if mode == "require":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        tls = context
    return {
        "host": host, "port": port,
        "database": str(ds.options.get("database", "") or "") or ds.database or None,  # jsonData's first, as Grafana
        "user": ds.user or None, "password": ctx.secrets.get("password"), "ssl": tls,
        "timeout": CONNECT_TIMEOUT,  # no command_timeout: a query is bounded by its statement_timeout and deadline
    }


async def pool(ctx: Context) -> Any:
    """The data source's asyncpg pool: connections opened on demand, at most maxOpenConns."""
    async def open_pool() -> Any:
        # user SQL varies without end: no statement cache, so nothing is kept prepared on the server
        return await asyncpg.create_pool(min_size=0, max_size=max_open_conns(ctx), init=_text_codecs,
                                         reset=_reset, statement_cache_size=0,
                                         max_inactive_connection_lifetime=IDLE_SECONDS, **connect_options(ctx))

    return await ctx.resource("postgres", open_pool)


class Postgres(SqlBackend):
    plugin = core_plugin("grafana-postgresql-datasource", "PostgreSQL", "postgresql_logo.svg", "postgres")

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """SELECT 1 on the pool; admins see why it failed (Grafana's detailed message), others a summary."""
        try:
            connections = await pool(ctx)
            async with connections.acquire(timeout=CONNECT_TIMEOUT) as conn:
                await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
        except asyncpg.PostgresError as error:
            code = getattr(error, "sqlstate", "") or ""
            detail = f"Database error: Failed to connect to the postgres server. Postgres error code: {code}"
            return HealthResult(status="ERROR", message=detail if is_admin else "Database connection failed")
        except (TimeoutError, OSError, asyncpg.InterfaceError, ValueError) as error:
            detail = f"Network error: Failed to connect to the server. Error message: {type(error).__name__}: {error}"
            return HealthResult(status="ERROR", message=detail if is_admin else "Database connection failed")
        return HealthResult(message="Database Connection OK", status="OK")

    async def run_query(self, ctx: Context, query: DataQuery, raw_sql: str, fmt: str) -> DataResponse:
        """Interpolate, run and shape one query."""
        return await run_query(ctx, query, raw_sql, fmt)


# types whose value is the text PostgreSQL writes (pgx reads every value as text, and these stay strings);
# float4 too, so that a real is the float64 of its shortest text, as in Grafana
TEXT_TYPES = ("float4", "time", "timetz", "interval", "money", "inet", "cidr", "macaddr", "macaddr8", "bit",
              "varbit", "point", "line", "lseg", "box", "path", "polygon", "circle", "tsvector", "tsquery",
              "pg_lsn", "txid_snapshot")
KINDS = {"int2": "int16", "int4": "int32", "int8": "int64", "float4": "float64", "float8": "float64",
         "numeric": "float64", "bool": "bool", "timestamp": "time", "timestamptz": "time", "date": "time",
         "json": "json", "jsonb": "json"}
STATEMENT_SHARE = 0.9  # of the query timeout, for each statement
FETCH_CHUNK = 1000  # rows read from a cursor at a time
BEGIN = "BEGIN READ ONLY"
SET_TIMEOUT = "SELECT set_config('statement_timeout', $1, true)"
ROLLBACK = "ROLLBACK"


# what a connection is cleaned with before its pool hands it out again: asyncpg's own reset (advisory locks,
# cursors, LISTEN, RESET ALL) leaves PREPAREd statements, temporary tables and SET SESSION AUTHORIZATION behind
RESET = "DISCARD ALL"


async def _reset(conn: Any) -> None:
    """The pool's reset, after asyncpg rolled back any transaction: nothing one query left on the session
    reaches the next one (a failure here makes asyncpg close the connection)."""
    await conn.execute(RESET)


async def _text_codecs(conn: Any) -> None:
    def identity(value: str) -> str:
        return value

    for name in TEXT_TYPES:
        await conn.set_type_codec(name, schema="pg_catalog", encoder=identity, decoder=identity, format="text")


class PostgresMacros(MacroEngine):
    """PostgreSQL's macros (spec-query §13.2); `timescaledb` groups with time_bucket."""

    def __init__(self, query: DataQuery, timescaledb: bool) -> None:
        super().__init__(query.time_range, datetime.now(UTC))
        self.timescaledb = timescaledb

    def macro(self, name: str, args: list[str], sql: str, text: str) -> str:
        """One macro's SQL."""
        if name == "__time":
            return f'{self.column(name, args)} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {self.column(name, args)}) as "time"'
        if name == "__timeFilter":
            return f"{self.column(name, args)} BETWEEN '{rfc3339_nano(self.from_ns)}' AND '{rfc3339_nano(self.to_ns)}'"
        if name == "__timeFrom":
            return f"'{rfc3339_nano(self.from_ns)}'"
        if name == "__timeTo":
            return f"'{rfc3339_nano(self.to_ns)}'"
        if name == "__timeGroup":
            # before 5.3 $__timeGroup also named the column: a comma right after (its first occurrence) says so
            index = sql.find(text)
            alias = index >= 0 and sql[index + len(text):index + len(text) + 1] == ","
            return self._time_group(name, args) + (' AS "time"' if alias else "")
        if name == "__timeGroupAlias":
            return self._time_group("__timeGroup", args) + ' AS "time"'
        return super().macro(name, args, sql, text)

    def _time_group(self, name: str, args: list[str]) -> str:
        seconds = self.group(name, args)
        if self.timescaledb:
            return f"time_bucket('{seconds:.3f}s',{args[0]})"
        return f"floor(extract(epoch from {args[0]})/{go_float(seconds)})*{go_float(seconds)}"


async def run_query(ctx: Context, query: DataQuery, raw_sql: str, fmt: str) -> DataResponse:
    """One query: interpolate, run, shape; every failure is an error on its refId with the executed SQL."""
    engine = PostgresMacros(query, ctx.ds.options.get("timescaledb") is True)
    try:
        executed = engine.expand(interpolate_globals(raw_sql, query))
    except MacroError as error:
        return error_response(SqlError("interpolation failed", str(error)), "")  # Grafana loses the SQL here
    row_limit = ctx.config.dataproxy.row_limit
    try:
        columns, notices = await execute(ctx, executed, row_limit)
        return shape(columns, fmt, executed, notices, engine.fill, query.time_range, row_limit)
    except SqlError as error:
        return error_response(error, executed)


async def execute(ctx: Context, sql: str, row_limit: int) -> tuple[list[Column], list[Notice]]:
    """Run `sql` statement by statement in one READ ONLY transaction (rolled back) with a statement timeout:
    the columns of the first statement that returns rows, with the rows of every such statement."""
    # a little under the request's timeout for this data source, so that the server's own error answers first
    timeout_ms = max(1, int(ctx.backend.query_timeout(ctx) * STATEMENT_SHARE * 1000))
    try:
        connections = await pool(ctx)
        conn = await connections.acquire(timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError,
            UpstreamPoolClosed) as error:  # the last: a request that outlived a change of the data source
        log.warning("data source %s: cannot connect: %s", ctx.ds.uid, type(error).__name__)
        raise SqlError("db query error", f"failed to connect to server - {USER_FACING_DEFAULT_ERROR}") from None
    try:
        await conn.execute(BEGIN)
        lost = False
        try:
            # also the transaction's first query: from here on its read-only mode can no longer be switched off
            await conn.fetchval(SET_TIMEOUT, str(timeout_ms))
            return await _statements(conn, sql, row_limit)
        except (OSError, asyncpg.ConnectionDoesNotExistError):
            lost = True  # the pool has let go of the connection: asking it anything would mask this error
            raise
        finally:
            if not lost and conn.is_in_transaction():
                await conn.execute(ROLLBACK)
    except (OSError, asyncpg.ConnectionDoesNotExistError) as error:  # before PostgresError: it is one
        log.warning("data source %s: connection lost: %s", ctx.ds.uid, type(error).__name__)
        raise SqlError("db query error", f"failed to connect to server - {USER_FACING_DEFAULT_ERROR}") from None
    except asyncpg.PostgresError as error:
        raise SqlError("db query error", _pg_error(error)) from None
    except asyncpg.InterfaceError as error:
        raise SqlError("db query error", str(error)) from None
    finally:
        await connections.release(conn)


def _pg_error(error: asyncpg.PostgresError) -> str:
    """pgconn.PgError's text: `ERROR: <message> (SQLSTATE <code>)`."""
    severity = getattr(error, "severity", None) or "ERROR"
    return f"{severity}: {getattr(error, 'message', None) or error} (SQLSTATE {getattr(error, 'sqlstate', '')})"


async def _statements(conn: Any, sql: str, row_limit: int) -> tuple[list[Column], list[Notice]]:
    columns: list[Column] | None = None
    notices: list[Notice] = []
    for statement in split_statements(sql):
        # one statement per prepare: the extended protocol refuses two commands, so a mis-split cannot smuggle one
        prepared = await conn.prepare(statement)
        attributes = prepared.get_attributes()
        if not attributes:
            await prepared.fetch()
        else:
            rows = await _fetch(prepared, row_limit + 1)
            if len(rows) > row_limit:
                del rows[row_limit:]
                notices.append(row_limit_notice(row_limit))
            columns = _append(columns, attributes, rows)
        if not conn.is_in_transaction():  # COMMIT, ROLLBACK, ...: what follows would run outside READ ONLY
            raise SqlError("db query error", "a query may not end its read-only transaction")
    return columns or [], notices


async def _fetch(prepared: Any, limit: int) -> list[Any]:
    """At most `limit` rows, read from a cursor a chunk at a time."""
    cursor = await prepared.cursor()
    rows: list[Any] = []
    while len(rows) < limit:
        wanted = min(FETCH_CHUNK, limit - len(rows))
        chunk = await cursor.fetch(wanted)
        rows.extend(chunk)
        if len(chunk) < wanted:
            break
    return rows


def _append(columns: list[Column] | None, attributes: Any, rows: list[Any]) -> list[Column]:
    """The rows of one statement appended to the columns (made from the first statement that returns rows)."""
    if columns is None:
        columns = [Column(attribute.name, KINDS.get(attribute.type.name, "string"), []) for attribute in attributes]
    elif len(attributes) != len(columns):
        raise SqlError("convert frame from rows error",
                       f"incompatible result structure: expected {len(columns)} columns, got {len(attributes)} columns")
    for position, (column, attribute) in enumerate(zip(columns, attributes, strict=True)):
        if attribute.name != column.name:
            raise SqlError("convert frame from rows error", f'column name mismatch at position {position}: expected '
                           f'"{column.name}", got "{attribute.name}"')
        if KINDS.get(attribute.type.name, "string") != column.kind:
            raise SqlError("convert frame from rows error", f'column type mismatch at position {position}: '
                           f'"{attribute.name}" is {attribute.type.name}')
        convert: Callable[[Any], Any] = _CONVERT.get(column.kind, _string)
        column.values.extend(None if row[position] is None else convert(row[position]) for row in rows)
    return columns


def _string(value: Any) -> str:
    """A value of a type Grafana reads as a string, as PostgreSQL writes it (the text codecs give most as is;
    arrays, composites and ranges arrive decoded and are written back in PostgreSQL's text form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return "{" + ",".join("NULL" if item is None else _string(item) if isinstance(item, list)
                              else _quoted(_element(item), _ARRAY_SPECIAL, True) for item in value) + "}"
    if isinstance(value, tuple):  # a composite (record)
        return "(" + ",".join("" if item is None else _quoted(_element(item), _RECORD_SPECIAL, False)
                              for item in value) + ")"
    if isinstance(value, asyncpg.Range):
        if value.isempty:
            return "empty"
        lower = "" if value.lower_inf else _quoted(_element(value.lower), _RECORD_SPECIAL, False)
        upper = "" if value.upper_inf else _quoted(_element(value.upper), _RECORD_SPECIAL, False)
        return f"{'[' if value.lower_inc else '('}{lower},{upper}{']' if value.upper_inc else ')'}"
    return _element(value)


_ARRAY_SPECIAL = frozenset('{}",\\')
_RECORD_SPECIAL = frozenset('()[]",\\')


def _element(value: Any) -> str:
    """One element of an array, composite or range as PostgreSQL's text output writes it (near enough for
    numbers and times: Python's shortest float, ISO times with a space)."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text.replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, datetime | date):
        return str(value)
    if isinstance(value, list | tuple | bytes) or isinstance(value, asyncpg.Range):
        return _string(value)
    return str(value)


def _quoted(text: str, special: frozenset[str], null_word: bool) -> str:
    """`text` in double quotes (backslash-escaped) when PostgreSQL would quote it in an array or record."""
    if text and not any(char in special or char.isspace() for char in text) \
            and not (null_word and text.upper() == "NULL"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "int16": int, "int32": int, "int64": int, "float64": float, "bool": bool, "time": epoch_ns, "json": str,
    "string": _string,
}


def split_statements(sql: str) -> list[str]:
    """`sql` cut at the semicolons that end statements (not those in quotes, dollar quotes or comments);
    statements of only blanks and comments are dropped."""
    statements: list[str] = []
    start = index = 0
    significant = False
    size = len(sql)
    while index < size:
        char = sql[index]
        if sql.startswith("--", index):
            end = sql.find("\n", index)
            index = size if end < 0 else end + 1
            continue
        if sql.startswith("/*", index):
            depth, index = 1, index + 2
            while index < size and depth:
                if sql.startswith("/*", index):
                    depth, index = depth + 1, index + 2
                elif sql.startswith("*/", index):
                    depth, index = depth - 1, index + 2
                else:
                    index += 1
            continue
        if char == ";":
            if significant:
                statements.append(sql[start:index])
            start, index, significant = index + 1, index + 1, False
            continue
        if not char.isspace():
            significant = True
        if char in "'\"":
            escapes = char == "'" and index > 0 and sql[index - 1] in "eE" and \
                (index < 2 or not (sql[index - 2].isalnum() or sql[index - 2] == "_"))
            index += 1
            while index < size:
                if escapes and sql[index] == "\\":
                    index += 2
                    continue
                if sql[index] == char:
                    if sql.startswith(char * 2, index):
                        index += 2
                        continue
                    break
                index += 1
            index += 1
            continue
        if char == "$" and (index == 0 or not (sql[index - 1].isalnum() or sql[index - 1] == "_")):
            match = _DOLLAR.match(sql, index)
            if match is not None:
                end = sql.find(match.group(0), match.end())
                index = size if end < 0 else end + len(match.group(0))
                continue
        index += 1
    if significant:
        statements.append(sql[start:])
    return statements


_DOLLAR = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z_0-9\u0080-\uffff]*)?\$")
