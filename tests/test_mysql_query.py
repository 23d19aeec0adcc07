"""MySQL data sources queried through POST /api/ds/query against the real MariaDB on 127.0.0.1:3306."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncmy
import msgspec
import pytest

from gateway.backends.base import DataQuery
from gateway.backends.mysql import MySQLMacros, _kill_query
from gateway.backends.sql import MacroError
from gateway.gtime import TimeRange
from gateway.keys import cache_key
from tests.conftest import ADMIN, make_config

FROM_MS, TO_MS = 1_700_000_000_000, 1_700_000_600_000  # 2023-11-14T22:13:20Z + 10 minutes


@pytest.fixture
async def table() -> AsyncIterator[str]:
    """A fresh table in MariaDB's `test` database: host, time, value rows over ten minutes."""
    name = f"gw_{secrets.token_hex(4)}"
    conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="", db="test")
    async with conn.cursor() as cursor:
        await cursor.execute(f"CREATE TABLE {name} (ts DATETIME(3), host VARCHAR(20), v DOUBLE, n INT, d DECIMAL(6,2),"
                             f" t TIME, j JSON, tiny TINYINT)")
        rows = [(f"2023-11-14 22:{13 + minute}:20", host, minute * 1.5 + (10 if host == "b" else 0), minute,
                 "1.25", "01:02:03", '{"k": 1}', 7)
                for minute in range(0, 10, 2) for host in ("a", "b")]
        await cursor.executemany(f"INSERT INTO {name} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    await conn.commit()
    try:
        yield name
    finally:
        async with conn.cursor() as cursor:
            await cursor.execute(f"DROP TABLE IF EXISTS {name}")
        conn.close()


async def add_mysql(client: Any, **extra: Any) -> None:
    body = {"name": "my", "uid": "my", "type": "mysql", "access": "proxy", "url": "127.0.0.1:3306", "user": "root",
            "database": "test", **extra}
    response = await client.post("/api/datasources", json=body, headers=ADMIN)
    assert response.status == 200, await response.text()


async def query(client: Any, *queries: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = {"queries": [{"datasource": {"uid": "my"}, **q} for q in queries], "from": str(FROM_MS), "to": str(TO_MS)}
    response = await client.post("/api/ds/query", json=body, headers=ADMIN)
    return response.status, await response.json()


async def count(table: str) -> int:
    conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="", db="test")
    async with conn.cursor() as cursor:
        await cursor.execute(f"SELECT count(*) FROM {table}")
        (total,) = await cursor.fetchone()
    conn.close()
    return int(total)


async def test_time_series_long_to_wide_with_macros(client, table):
    await add_mysql(client)
    status, body = await query(client, {"refId": "A", "format": "time_series", "rawSql":
        f"SELECT $__timeGroupAlias(ts, 2m), host, avg(v) AS v FROM {table} WHERE $__timeFilter(ts) "
        f"GROUP BY 1, host ORDER BY 1"})
    assert status == 200, body
    frame = body["results"]["A"]["frames"][0]
    assert frame["schema"]["meta"]["type"] == "timeseries-wide"
    assert frame["schema"]["meta"]["executedQueryString"] == (
        f"SELECT UNIX_TIMESTAMP(ts) DIV 120 * 120 AS \"time\", host, avg(v) AS v FROM {table} WHERE ts BETWEEN "
        f"FROM_UNIXTIME(1700000000) AND FROM_UNIXTIME(1700000600) GROUP BY 1, host ORDER BY 1")
    fields = frame["schema"]["fields"]
    assert [(f["name"], f.get("labels")) for f in fields] == [("Time", None), ("v", {"host": "a"}),
                                                              ("v", {"host": "b"})]
    times, a, b = frame["data"]["values"]
    assert times == [1_699_999_920_000 + 120_000 * k for k in range(5)]
    assert a == [0.0, 3.0, 6.0, 9.0, 12.0] and b == [10.0, 13.0, 16.0, 19.0, 22.0]


async def test_table_format_keeps_mysql_types(client, table):
    await add_mysql(client)
    status, body = await query(client, {"refId": "T", "format": "table", "rawSql":
        f"SELECT ts AS time, host, n, d, t, j, tiny FROM {table} ORDER BY ts, host LIMIT 2"})
    assert status == 200, body
    frame = body["results"]["T"]["frames"][0]
    types = [(f["name"], f["typeInfo"]["frame"]) for f in frame["schema"]["fields"]]
    assert types == [("time", "time.Time"), ("host", "string"), ("n", "int32"), ("d", "float64"),
                     ("t", "string"), ("j", "string"), ("tiny", "int8")]
    assert all(f["typeInfo"]["nullable"] for f in frame["schema"]["fields"])
    values = frame["data"]["values"]
    assert values[0] == [1_700_000_000_000, 1_700_000_000_000] and values[1] == ["a", "b"]
    assert values[3] == [1.25, 1.25] and values[4] == ["01:02:03", "01:02:03"] and values[6] == [7, 7]


async def test_a_query_cannot_write_in_any_form(client, table):
    await add_mysql(client)
    before = await count(table)
    attempts = [f"INSERT INTO {table} (host) VALUES ('x')", f"DELETE FROM {table}",
                f"SELECT 1; DELETE FROM {table}", f"COMMIT; DELETE FROM {table}",
                f"SET SESSION TRANSACTION READ WRITE; DELETE FROM {table}", f"DROP TABLE {table}",
                # not writes, but a READ ONLY transaction lets them through: refused before anything is sent
                "SHUTDOWN", "/*!50000 SHUTDOWN */", "KILL 1", "SET @x = 5", "DO SLEEP(0)",
                "SELECT LOAD_FILE('/etc/passwd')", "SELECT 1 INTO OUTFILE '/tmp/gateway-probe'"]
    status, body = await query(client, *({"refId": f"W{n}", "format": "table", "rawSql": sql}
                                         for n, sql in enumerate(attempts)))
    assert status == 400
    for n in range(len(attempts)):
        assert body["results"][f"W{n}"]["error"].startswith((
            "db query error: Error ", "interpolation failed: invalid query - only SELECT, WITH, SHOW")), \
            body["results"][f"W{n}"]
    assert await count(table) == before
    # the pool's connections still answer afterwards
    status, body = await query(client, {"refId": "A", "format": "table",
                                        "rawSql": f"SELECT count(*) AS c FROM {table}"})
    assert status == 200 and body["results"]["A"]["frames"][0]["data"]["values"] == [[before]]


async def test_identity_reading_queries_are_refused_as_grafana(client):
    await add_mysql(client)
    status, body = await query(client, {"refId": "A", "rawSql": "SELECT current_user()", "format": "table"})
    assert status == 400
    assert body["results"]["A"]["error"] == ("interpolation failed: invalid query - please inspect Grafana server "
                                             "log for details")


async def test_row_limit_and_statement_time_limit(aiohttp_client, database_url):
    from gateway.app import create_app

    client = await aiohttp_client(create_app(make_config(database_url, dataproxy={"row_limit": 3})))
    await add_mysql(client, jsonData={"timeout": 1})
    status, body = await query(client, {"refId": "A", "format": "table", "rawSql": "SELECT seq FROM seq_1_to_100"},
                               {"refId": "B", "format": "table", "rawSql": "SELECT SLEEP(5) AS s"})
    frame = body["results"]["A"]["frames"][0]
    assert frame["data"]["values"] == [[1, 2, 3]]
    assert frame["schema"]["meta"]["notices"] == [
        {"severity": "warning", "text": "Results have been limited to 3 because the SQL row limit was reached"}]
    assert status == 400 and "error" in body["results"]["B"]


async def test_unreachable_server_never_shows_the_password(client):
    await add_mysql(client, url="127.0.0.1:1", secureJsonData={"password": "pw-9f3x"})
    status, body = await query(client, {"refId": "A", "rawSql": "SELECT 1"})
    assert status == 400 and "pw-9f3x" not in str(body)
    assert body["results"]["A"]["error"] == ("db query error: failed to connect to server - please inspect Grafana "
                                             "server log for details")


def _macros() -> MySQLMacros:
    return MySQLMacros(DataQuery("A", "", 100, 1000, TimeRange(FROM_MS, TO_MS), msgspec.Raw(b"{}")))


@pytest.mark.parametrize(("sql", "expanded"), [
    ("$__time(ts)", "UNIX_TIMESTAMP(ts) as time_sec"),
    ("$__timeEpoch(ts)", "UNIX_TIMESTAMP(ts) as time_sec"),
    ("$__timeFilter(ts)", "ts BETWEEN FROM_UNIXTIME(1700000000) AND FROM_UNIXTIME(1700000600)"),
    ("$__timeFrom() $__timeTo()", "FROM_UNIXTIME(1700000000) FROM_UNIXTIME(1700000600)"),
    ("$__timeGroup(ts, '5m')", "UNIX_TIMESTAMP(ts) DIV 300 * 300"),
    ("$__timeGroupAlias(ts, 1h)", 'UNIX_TIMESTAMP(ts) DIV 3600 * 3600 AS "time"'),
    ("$__unixEpochFilter(e)", "e >= 1700000000 AND e <= 1700000600"),
    ("$__unixEpochGroup(e, 90s)", "e DIV 90 * 90"),
    ("$__unixEpochGroupAlias(e, 1.5s)", 'e DIV 1.5 * 1.5 AS "time"'),
    ("$__unixEpochNanoFrom()", "1700000000000000000"),
])
def test_mysql_macros_expand_as_grafanas(sql, expanded):
    assert _macros().expand(sql) == expanded


@pytest.mark.parametrize(("sql", "message"), [
    ("$__timeGroup(ts)", "macro __timeGroup needs time column and interval"),
    ("$__nope(x)", "unknown macro __nope"),
    ("$__timeGroup(ts, 1x)", "error parsing interval 1x"),
])
def test_mysql_macro_errors(sql, message):
    with pytest.raises(MacroError, match=message):
        _macros().expand(sql)


async def test_a_pooled_connection_is_clean_before_its_next_query(client):
    await add_mysql(client, jsonData={"maxOpenConns": 1})  # one connection: both queries run on it
    status, body = await query(client, {"refId": "A", "format": "table", "rawSql":
        "SELECT CONNECTION_ID() AS id, @gw_leak := 7 AS v, GET_LOCK('gw_leak_lock', 0) AS l, LAST_INSERT_ID(5) AS n"})
    assert status == 200, body
    connection, value, locked, _ = body["results"]["A"]["frames"][0]["data"]["values"]
    assert value == [7] and locked == [1]
    status, body = await query(client, {"refId": "A", "format": "table", "rawSql":
        "SELECT CONNECTION_ID() AS id, @gw_leak AS v, IS_USED_LOCK('gw_leak_lock') AS l, LAST_INSERT_ID() AS n, "
        "@@session.tx_read_only AS ro"})
    assert status == 200, body
    assert body["results"]["A"]["frames"][0]["data"]["values"] == [connection, [None], [None], [0], [1]]


@pytest.mark.parametrize("extra", ["", ", 'é😀' AS e"], ids=["ascii", "outside-the-bmp"])
async def test_a_cancelled_query_stops_on_the_server(client, extra):
    import asyncio

    await add_mysql(client, jsonData={"timeout": 60})
    marker = f"gw_cancel_{secrets.token_hex(4)}"
    # outside-the-bmp: PROCESSLIST.INFO is utf8mb3, it holds the emoji as "????", and comparing it with utf8mb4
    # text is an error
    request = asyncio.ensure_future(query(client, {"refId": "A", "format": "table",
                                                   "rawSql": f"SELECT SLEEP(20) AS {marker}{extra}"}))
    conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="", db="test")

    async def running() -> list[int]:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
                                 "AND INFO LIKE %s", (f"%{marker}%",))
            return [int(row[0]) for row in await cursor.fetchall()]

    try:
        for _ in range(100):
            if await running():
                break
            await asyncio.sleep(0.05)
        (thread_id,) = await running()
        # a thread that runs another statement (another server's thread of the same id) is left alone
        ctx = await client.app[cache_key].get(1, uid="my")
        await _kill_query(ctx, thread_id, "SELECT 1")
        assert await running() == [thread_id]
        request.cancel()  # the client leaves
        for _ in range(60):
            await asyncio.sleep(0.05)
            if not await running():
                break
        assert await running() == []
    finally:
        conn.close()


async def test_file_access_hidden_by_comments_or_quoting_is_refused(client, tmp_path):
    await add_mysql(client)
    target = tmp_path / "gateway-probe"  # the server runs on this machine: a file it wrote would appear here
    attempts = [f"SELECT 1 INTO/**/OUTFILE '{target}1'", f"SELECT 1 INTO#x\nOUTFILE '{target}2'",
                f"SELECT 1 INTO-- x\nDUMPFILE '{target}3'", f"SELECT 1 /*!INTO*/ OUTFILE '{target}4'",
                f"SELECT 1 /*!50000INTO*/ OUTFILE '{target}5'",
                "SELECT LOAD_FILE/**/('/etc/hostname')", "SELECT `LOAD_FILE`('/etc/hostname')",
                "SELECT LOAD_FILE#\n('/etc/hostname')",
                # a server in NO_BACKSLASH_ESCAPES mode ends the first string at its backslash
                f"SELECT '\\' INTO OUTFILE '{target}6' -- '",
                # `--` and a control character is a comment to MySQL; `--` and a Unicode space is not
                "SELECT LOAD_FILE --\x01 '\n('/etc/hostname') -- '",
                f"SELECT 1 --\x7f '\nINTO OUTFILE '{target}7' -- '",
                "SELECT 1 --\u00a0 , LOAD_FILE('/etc/hostname') FROM (SELECT 1 AS `\u00a0`) t",
                f"SELECT 1 --\u3000 FROM (SELECT 1 AS `\u3000`) t INTO OUTFILE '{target}8'",
                # tokens MySQL ends where no word boundary is: after a quoted name, a string or a number
                f"SELECT 1 AS `x`INTO OUTFILE '{target}9'", f"SELECT \"x\"INTO OUTFILE '{target}10'",
                f"SELECT 1.5INTO DUMPFILE '{target}11'", f"SELECT 'x'INTO OUTFILE'{target}12'"]
    status, body = await query(client, *({"refId": f"F{n}", "format": "table", "rawSql": sql}
                                         for n, sql in enumerate(attempts)))
    assert status == 400
    for n in range(len(attempts)):
        assert body["results"][f"F{n}"]["error"].startswith(
            "interpolation failed: invalid query - only SELECT, WITH, SHOW"), (attempts[n], body["results"][f"F{n}"])
    assert list(tmp_path.iterdir()) == []
    # a string that only mentions them is a read like any other
    status, body = await query(client, {"refId": "A", "format": "table",
                                        "rawSql": "SELECT 'into /* outfile' AS a, '`load_file`(' AS b"})
    assert status == 200, body
    assert body["results"]["A"]["frames"][0]["data"]["values"] == [["into /* outfile"], ["`load_file`("]]
