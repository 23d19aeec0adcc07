"""MySQL and MariaDB (`mysql`): a bounded asyncmy pool per data source; every query runs alone (one statement,
as Grafana's driver), in a READ ONLY transaction that is rolled back, under a statement time limit, its rows
bounded by [dataproxy] row_limit, and its connection is reset before the pool hands it out again (a cancelled
statement is killed); MySQL's macros (spec-query §13, Grafana's mysql macros.go); health as Grafana checks it
(SELECT 1)."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

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
    host_port,
    interpolate_globals,
    max_open_conns,
    row_limit_notice,
    shape,
)
from gateway.frames import DataResponse, Notice
from gateway.http.pool import UpstreamPoolClosed

log = logging.getLogger("gateway.mysql")

CONNECT_TIMEOUT = 10
IDLE_SECONDS = 60  # an idle connection to a data source is recycled after this
KILL_TIMEOUT = 5.0  # seconds for stopping the statement of a cancelled query (connect and KILL QUERY)
READ_ONLY_SESSION = "SET SESSION TRANSACTION READ ONLY"


def connect_options(ctx: Context) -> dict[str, Any]:
    """asyncmy connection keyword arguments from Grafana's fields (url is host[:port])."""
    ds = ctx.ds
    host, port = host_port(ctx, 3306)
    return {
        "host": host, "port": port,
        "user": ds.user or "root", "password": ctx.secrets.get("password", ""),
        "db": str(ds.options.get("database", "") or "") or ds.database or None,  # jsonData's first, as Grafana
        "connect_timeout": CONNECT_TIMEOUT, "autocommit": True, "charset": "utf8mb4",
        # every session refuses writes, whatever the user's grants allow
        "init_command": READ_ONLY_SESSION,
    }


class _Pool:
    """An asyncmy pool with the `close()` coroutine the Context expects of a resource."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


async def pool(ctx: Context) -> Any:
    """The data source's asyncmy pool: connections opened on demand, at most maxOpenConns."""
    import asyncmy  # an optional dependency (gateway[mysql]): only a MySQL data source needs it

    async def open_pool() -> _Pool:
        return _Pool(await asyncmy.create_pool(minsize=0, maxsize=max_open_conns(ctx), pool_recycle=IDLE_SECONDS,
                                               **connect_options(ctx)))

    wrapped: _Pool = await ctx.resource("mysql", open_pool)
    return wrapped.pool


class MySQL(SqlBackend):
    plugin = core_plugin("mysql", "MySQL", "mysql_logo.svg")

    async def run_query(self, ctx: Context, query: DataQuery, raw_sql: str, fmt: str) -> DataResponse:
        """Interpolate, run and shape one query."""
        return await run_query(ctx, query, raw_sql, fmt)

    async def check_health(self, ctx: Context, is_admin: bool) -> HealthResult:
        """SELECT 1 on the pool; admins see why it failed, others a summary."""
        try:
            connections = await pool(ctx)
            async with connections.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute("SELECT 1")
                await cursor.fetchall()
        except ImportError:
            return HealthResult(status="ERROR", message="MySQL support is not installed (pip install 'gateway[mysql]')")
        except Exception as error:  # asyncmy raises pymysql-style errors, OSError and TimeoutError
            detail = f"Failed to connect to the server: {type(error).__name__}: {_public(error)}"
            return HealthResult(status="ERROR", message=detail if is_admin else "Database connection failed")
        return HealthResult(message="Database Connection OK", status="OK")


def _public(error: Exception) -> str:
    """A driver error's text without anything that could hold the password (asyncmy does not echo it)."""
    return str(error)[:300]


# Grafana refuses queries that read the connection's identity (restrictedRegExp in its mysql macros.go)
_RESTRICTED = re.compile(r"([\s]*show[\s]+grants|[\s,]session_user\([^)]*\)|[\s,]current_user(\([^)]*\))?|"
                         r"[\s,]system_user\([^)]*\)|[\s,]user\([^)]*\))([\s,;]|$)", re.IGNORECASE | re.MULTILINE)


# gateway: a READ ONLY transaction does not stop SHUTDOWN, KILL, SET or file access, so a query must be a read
_READS = re.compile(r"[\s(]*(select|with|show|desc|describe|explain|table|values)\b", re.IGNORECASE)
# no word boundaries: MySQL ends a token where the check would see none (`1.5INTO`, `"x"INTO`, OUTFILE'name')
_FILES = re.compile(r"load_file[\s\x00-\x20\x7f]*\(|into[\s\x00-\x20\x7f]+(outfile|dumpfile)", re.IGNORECASE)
# MySQL's `--` comment needs a space or an ASCII control character after the dashes (not any Unicode space:
# `--\u00a0` is two minus signs to the server, and what follows is code)
_DASHES = r"--[\x00-\x20\x7f]"
_LEADING_COMMENT = re.compile(r"\s*(/\*(?![!M]).*?\*/|(" + _DASHES + r"|#)[^\n]*(\n|$))", re.DOTALL)


# what MySQL reads as a separator (comments) or a word (quoted identifiers), so that the file check sees its words;
# strings read with backslash escapes (the default) and without (a server in NO_BACKSLASH_ESCAPES mode)
_COMMENTS_AND_NAMES = r"|`(?:[^`]|``)*`?|/\*M?!\d*|\*/|/\*.*?(?:\*/|$)|(?:" + _DASHES + r"|#)[^\n]*"
_TOKENS = (
    re.compile(r"'(?:[^'\\]|\\.|'')*'?|\"(?:[^\"\\]|\\.|\"\")*\"?" + _COMMENTS_AND_NAMES, re.DOTALL),
    re.compile(r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?" + _COMMENTS_AND_NAMES, re.DOTALL),
)


def _words(sql: str, tokens: re.Pattern[str]) -> str:
    """The statement as MySQL reads it, for the file check: comments become spaces, the code of executable
    comments stays, quoted identifiers lose their quotes (double quotes too: they quote identifiers under
    ANSI_QUOTES) and strings are emptied."""
    def word(match: re.Match[str]) -> str:
        token = match.group()
        if token[0] in "`\"":  # a token of its own, as to MySQL: spaced from what it touches
            return " " + (token[1:-1] if len(token) > 1 and token[-1] == token[0] else token[1:]) + " "
        if token[0] == "'":
            return " '' "
        return " "

    return tokens.sub(word, sql)


def _reads_files(sql: str) -> bool:
    """Whether the statement reads or writes files, as a server in either string mode would read it (a query
    that only mentions `into outfile` in a string holding an escaped quote is refused too)."""
    return any(_FILES.search(_words(sql, tokens)) for tokens in _TOKENS)


def _without_leading_comments(sql: str) -> str:
    """The statement from its first keyword: plain comments before it dropped (MySQL's executable `/*! */`
    ones are code, and stay)."""
    while match := _LEADING_COMMENT.match(sql):
        sql = sql[match.end():]
    return sql


class MySQLMacros(MacroEngine):
    """MySQL's macros: times as FROM_UNIXTIME(seconds), groups with DIV."""

    def __init__(self, query: DataQuery) -> None:
        super().__init__(query.time_range, datetime.now(UTC))

    def expand(self, sql: str) -> str:
        """Refuse identity-reading queries as Grafana does, then expand the macros."""
        if _RESTRICTED.search(sql):
            raise MacroError(f"invalid query - {USER_FACING_DEFAULT_ERROR}")
        return super().expand(sql)

    def macro(self, name: str, args: list[str], sql: str, text: str) -> str:
        """One macro's SQL."""
        from_s, to_s = self.time_range.from_ms // 1000, self.time_range.to_ms // 1000
        if name in ("__time", "__timeEpoch"):
            return f"UNIX_TIMESTAMP({self.column(name, args)}) as time_sec"
        if name == "__timeFilter":
            column = self.column(name, args)
            if from_s < 0:
                start = f"DATE_ADD(FROM_UNIXTIME(0), INTERVAL {from_s} SECOND)"
                return f"{column} BETWEEN {start} AND FROM_UNIXTIME({to_s})"
            return f"{column} BETWEEN FROM_UNIXTIME({from_s}) AND FROM_UNIXTIME({to_s})"
        if name == "__timeFrom":
            return f"FROM_UNIXTIME({from_s})"
        if name == "__timeTo":
            return f"FROM_UNIXTIME({to_s})"
        if name in ("__timeGroup", "__timeGroupAlias"):
            if len(args) < 2:
                raise MacroError(f"macro {name} needs time column and interval")
            seconds = self.group(name, args)
            whole = f"{seconds:.0f}"
            return f"UNIX_TIMESTAMP({args[0]}) DIV {whole} * {whole}" + (' AS "time"' if name.endswith("Alias") else "")
        if name in ("__unixEpochGroup", "__unixEpochGroupAlias"):
            seconds = self.group(name, args)
            step = f"{seconds:g}"
            return f"{args[0]} DIV {step} * {step}" + (' AS "time"' if name.endswith("Alias") else "")
        try:
            return super().macro(name, args, sql, text)
        except MacroError as error:
            if str(error).startswith("unknown macro"):
                raise MacroError(f"unknown macro {name}") from None  # MySQL's wording has no quotes
            raise


async def run_query(ctx: Context, query: DataQuery, raw_sql: str, fmt: str) -> DataResponse:
    """One query: interpolate, run, shape; every failure is an error on its refId with the executed SQL."""
    engine = MySQLMacros(query)
    try:
        if _reads_files(raw_sql) or not _READS.match(_without_leading_comments(raw_sql)):
            raise MacroError("invalid query - only SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, TABLE and VALUES "
                             "statements run, without file access")
        executed = engine.expand(interpolate_globals(raw_sql, query))
    except MacroError as error:
        return error_response(SqlError("interpolation failed", str(error)), "")
    row_limit = ctx.config.dataproxy.row_limit
    try:
        columns, notices = await execute(ctx, executed, row_limit)
        return shape(columns, fmt, executed, notices, engine.fill, query.time_range, row_limit,
                     time_columns=("time", "time_sec"))
    except SqlError as error:
        return error_response(error, executed)


STATEMENT_SHARE = 0.9  # of the query timeout
MULTI_STATEMENTS_OFF = b"\x01\x00"  # COM_SET_OPTION's MYSQL_OPTION_MULTI_STATEMENTS_OFF


async def _one_statement_only(conn: Any) -> None:
    """Switch multi-statements off for this connection (asyncmy always asks for them at connect): a query is
    then exactly one statement, as with Grafana's driver, and `SELECT 1; COMMIT; ...` is a syntax error."""
    from asyncmy.constants import COMMAND

    await conn._execute_command(COMMAND.COM_SET_OPTION, MULTI_STATEMENTS_OFF)
    packet = await conn.read_packet()
    if not (packet.is_eof_packet() or packet.is_ok_packet()):
        raise SqlError("db query error", "the server refused to run one statement at a time")


RESET_CONNECTION = 0x1F  # COM_RESET_CONNECTION (MySQL 5.7.3, MariaDB 10.2.4)


async def _reset(conn: Any) -> None:
    """Roll back and clean the session before the pool hands the connection out again: COM_RESET_CONNECTION
    drops user variables, GET_LOCK locks, session variables, temporary tables and prepared statements; the
    session is then made read only again. When that fails (an older server) the connection is closed, and
    the pool opens a new one."""
    try:
        await conn._execute_command(RESET_CONNECTION, b"")
        packet = await conn.read_packet()
        if not packet.is_ok_packet():
            raise ValueError("COM_RESET_CONNECTION was not answered OK")
        async with conn.cursor() as cursor:
            await cursor.execute(READ_ONLY_SESSION)
    except Exception as error:  # whatever the driver raises: the session's state is unknown, so it goes
        log.info("closing a connection that could not be reset: %s", type(error).__name__)
        conn.close()


_OUTSIDE_BMP = re.compile("[\U00010000-\U0010FFFF]")


async def _kill_query(ctx: Context, thread_id: int, sql: str) -> None:
    """Stop the statement of a query given up on (the client left, or the deadline passed): closing its
    connection does not stop the server's thread, which runs on until the statement ends. KILL QUERY over a
    short-lived connection of its own, within KILL_TIMEOUT, only while that thread still runs this very
    statement (behind a load balancer the new connection may reach another server, where the id is someone
    else's); a failure is only logged."""
    import asyncmy

    try:
        async with asyncio.timeout(KILL_TIMEOUT):
            killer = await asyncmy.connect(**connect_options(ctx))
            try:
                async with killer.cursor() as cursor:
                    # INFO holds a long statement cut short: its start identifies it, up to its first character
                    # outside the BMP (INFO is utf8mb3: it holds one as "????", and comparing it with utf8mb4
                    # text is an error)
                    start = _OUTSIDE_BMP.split(sql[:1024], maxsplit=1)[0]
                    await cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = %s"
                                         " AND COMMAND = 'Query' AND LEFT(INFO, %s) = %s",
                                         (thread_id, len(start), start))
                    if await cursor.fetchall():
                        await cursor.execute(f"KILL QUERY {int(thread_id)}")
            finally:
                killer.close()
    except Exception as error:  # asyncmy raises pymysql-style errors, OSError and TimeoutError
        log.warning("data source %s: cannot stop a cancelled query: %s", ctx.ds.uid, type(error).__name__)


async def execute(ctx: Context, sql: str, row_limit: int) -> tuple[list[Column], list[Notice]]:
    """Run the one statement in a READ ONLY transaction, with a time limit and at most row_limit + 1 rows
    sent by the server; then reset the connection (_reset). A cancelled statement is killed (_kill_query)."""
    seconds = max(0.001, ctx.backend.query_timeout(ctx) * STATEMENT_SHARE)
    try:
        connections = await pool(ctx)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            conn = await connections.acquire()
    except (OSError, TimeoutError, UpstreamPoolClosed, ImportError) as error:
        log.warning("data source %s: cannot connect: %s", ctx.ds.uid, type(error).__name__)
        raise SqlError("db query error", f"failed to connect to server - {USER_FACING_DEFAULT_ERROR}") from None
    except Exception as error:  # asyncmy's own connection errors (access denied, unknown database, ...)
        log.warning("data source %s: cannot connect: %s", ctx.ds.uid, type(error).__name__)
        raise SqlError("db query error", f"failed to connect to server - {USER_FACING_DEFAULT_ERROR}") from None
    broken = False
    thread_id = conn.thread_id()
    try:
        await _one_statement_only(conn)
        async with conn.cursor() as cursor:
            mariadb = "mariadb" in str(conn.get_server_info()).lower()
            limit = f"max_statement_time = {seconds:.3f}" if mariadb else f"max_execution_time = {int(seconds * 1000)}"
            # the server sends at most row_limit + 1 rows and stops the statement in time; times are UTC (the
            # character set again too: a reset may have set the server's default)
            await cursor.execute(f"SET NAMES utf8mb4, SESSION sql_select_limit = {row_limit + 1}, SESSION {limit}, "
                                 "SESSION time_zone = '+00:00'")
            await cursor.execute("START TRANSACTION READ ONLY")
            try:
                await cursor.execute(sql)
                description = cursor.description
                rows = list(await cursor.fetchall()) if description else []
            except asyncio.CancelledError:
                broken = True  # mid-statement: the statement is killed and the connection closed
                raise
            finally:
                if not broken:
                    await _reset(conn)  # rolls back too
    except asyncio.CancelledError:
        broken = True
        await _kill_query(ctx, thread_id, sql)
        raise
    except SqlError:
        broken = True
        raise
    except Exception as error:  # the server's error for this statement, as the driver raises it
        broken = not _is_server_error(error)
        raise SqlError("db query error", _server_message(error)) from None
    finally:
        if broken:
            conn.close()
        connections.release(conn)
    notices: list[Notice] = []
    if len(rows) > row_limit:
        del rows[row_limit:]
        notices.append(row_limit_notice(row_limit))
    return _columns(description or (), rows), notices


def _is_server_error(error: Exception) -> bool:
    """True for an error the server sent about the statement (a code of 1000 or more): the connection is fine."""
    args = tuple(error.args)
    return bool(args) and isinstance(args[0], int) and args[0] >= 1000


def _server_message(error: Exception) -> str:
    args = tuple(error.args)
    if len(args) >= 2 and isinstance(args[0], int):
        return f"Error {args[0]}: {args[1]}"
    return f"failed to connect to server - {USER_FACING_DEFAULT_ERROR}"


# MySQL column types (the protocol's field type codes) as Grafana's mysql converters read them
_KINDS = {1: "int8", 2: "int16", 3: "int32", 9: "int32", 8: "int64", 13: "int64", 4: "float64", 5: "float64",
          0: "float64", 246: "float64", 7: "time", 10: "time", 12: "time", 14: "time", 245: "json"}


def _columns(description: Any, rows: list[Any]) -> list[Column]:
    columns = []
    for position, item in enumerate(description):
        kind = _KINDS.get(item[1], "string")
        values = [row[position] for row in rows]
        columns.append(Column(item[0], kind, [None if value is None else _convert(kind, value) for value in values]))
    return columns


def _convert(kind: str, value: Any) -> Any:
    if kind == "time":
        return epoch_ns(value)
    if kind == "float64":
        return float(value)
    if kind.startswith("int"):
        return int(value)
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    if isinstance(value, timedelta):  # TIME: as MySQL writes it, [-]H:MM:SS[.ffffff]
        total = value.total_seconds()
        sign, total = ("-" if total < 0 else ""), abs(total)
        hours, rest = divmod(int(total), 3600)
        text = f"{sign}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
        return text + (f".{value.microseconds:06d}" if value.microseconds else "")
    if isinstance(value, Decimal):
        return str(value)
    return str(value) if not isinstance(value, str) else value
