"""PostgreSQL queries through POST /api/ds/query against the test database: Grafana's sql/ goldens, the macros
with their exact output, and the guards (read only, statement timeout, row limit, the pool's bound).

Goldens: each fixture's temporary table becomes a real `tbl` in the test database (dropped around each test),
queried through a data source that points there. Every pgx golden matches as parsed JSON, with three notes:
`table/types_datetime` is lib/pq's (time and timetz as time.Time) and is not ours to match; `table/no_rows` and
`time_series/no_rows_wide` still list the fields, which Grafana's newest code (and spec §13.3) drops, so they
are compared without them; `time_series/simple` and `table/no_rows` have no fixture of their own and use
`table/simple.sql`, as the goldens' README suggests. Floats such as 1.7e18 are compared as numbers: Go writes
them in digits, msgspec with an exponent (the same double).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import msgspec
import pytest

from gateway.app import SERVER_OPTIONS, create_app
from gateway.backends.base import DataQuery
from gateway.backends.postgres import PostgresMacros, split_statements
from gateway.backends.sql import Column, Fill, MacroError, go_float, interpolate_globals, long_to_wide
from gateway.gtime import TimeRange
from tests.conftest import ADMIN, make_config
from tests.test_frames import load
from tests.test_query import add, post

SQL_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "sql"
# the goldens' range, 2023-12-24T14:15:22.000123456Z to 14:45:13.000876543Z, at /api/ds/query's millisecond precision
FROM, TO = "1703427322000", "1703429113000"


def _target(database_url: str) -> dict[str, Any]:
    """Data source fields that reach the test database (host:port, or the embedded server's socket directory)."""
    parts = urlsplit(database_url)
    url = f"{parts.hostname}:{parts.port or 5432}" if parts.hostname else parse_qs(parts.query)["host"][0]
    return {"url": url, "user": parts.username or "postgres", "database": parts.path.lstrip("/")}


async def add_pg(client: Any, database_url: str, uid: str = "pg", **json_data: Any) -> dict[str, Any]:
    return await add(client, uid, "grafana-postgresql-datasource", **_target(database_url),
                     jsonData={"sslmode": "disable", **json_data})


def sql_query(raw_sql: str, ref_id: str = "A", uid: str = "pg", **extra: Any) -> dict[str, Any]:
    return {"refId": ref_id, "datasource": {"uid": uid}, "rawSql": raw_sql, **extra}


async def answer(client: Any, *queries: dict[str, Any], start: str = FROM, end: str = TO) -> tuple[int, Any]:
    response = await post(client, {"queries": list(queries), "from": start, "to": end})
    return response.status, await response.json()


@pytest.fixture
async def fixture_db(database_url: str) -> Any:
    """A connection to the test database with the fixtures' table (and type) dropped before and after."""
    conn = await asyncpg.connect(database_url)
    cleanup = "DROP TABLE IF EXISTS tbl; DROP TYPE IF EXISTS mood; DROP TABLE IF EXISTS ro_tbl"
    await conn.execute(cleanup)
    yield conn
    await conn.execute(cleanup)
    await conn.close()


def _fixture(path: Path) -> tuple[str, str]:
    """(rawSql, setup) of an X.sql fixture; its temporary table becomes a real one, visible to the data source."""
    text = path.read_text()
    first, _, _ = text.partition("\n")
    assert first.startswith("-- ")
    return first[3:].strip(), text.replace("CREATE TEMPORARY TABLE", "CREATE TABLE")


# golden -> the fixture that makes its data (the README's best guess where Grafana's own is missing)
GOLDENS = {
    **{f"table/{path.stem}": f"table/{path.stem}.sql" for path in sorted((SQL_GOLDEN / "table").glob("*.sql"))},
    **{f"time_series/{path.stem}": f"time_series/{path.stem}.sql"
       for path in sorted((SQL_GOLDEN / "time_series").glob("*.sql"))},
    "time_series/simple": "table/simple.sql",
}
# no rows: Grafana's newest code (and spec §13.3) drop the fields, the goldens predate that
NO_ROWS = {"table/no_rows": "table/simple.sql", "time_series/no_rows_wide": "time_series/no_rows_wide.sql"}


def test_every_sql_golden_but_lib_pq_types_datetime_has_a_test():
    goldens = {str(path.relative_to(SQL_GOLDEN)).removesuffix(".golden.jsonc")
               for path in SQL_GOLDEN.rglob("*.golden.jsonc")}
    assert goldens - set(GOLDENS) - set(NO_ROWS) == {"table/types_datetime"}  # lib/pq reads time as time.Time


def same(ours: Any, golden: Any) -> bool:
    """Parsed JSON equality, where a float equals the integer Go wrote for it (Go writes 1.7e18 in digits)."""
    if isinstance(ours, dict):
        return isinstance(golden, dict) and ours.keys() == golden.keys() and all(same(ours[k], golden[k]) for k in ours)
    if isinstance(ours, list):
        return isinstance(golden, list) and len(ours) == len(golden) and all(map(same, ours, golden))
    if isinstance(ours, float) and isinstance(golden, int) and not isinstance(golden, bool):
        return ours == float(golden)
    return type(ours) is type(golden) and ours == golden


def _ours(body: dict[str, Any]) -> dict[str, Any]:
    result = body["results"]["A"]
    for frame in result.get("frames", []):
        assert frame["schema"].pop("refId") == "A"
    return result


@pytest.mark.parametrize("golden", sorted(set(GOLDENS) - set(NO_ROWS)))
async def test_sql_goldens(client, database_url, fixture_db, golden):
    raw_sql, setup = _fixture(SQL_GOLDEN / GOLDENS[golden])
    await fixture_db.execute(setup)
    await add_pg(client, database_url)
    status, body = await answer(client, sql_query(raw_sql, format=golden.split("/")[0]))
    assert status == 200, body
    ours, expected = _ours(body), load(SQL_GOLDEN / f"{golden}.golden.jsonc")
    assert same(ours, expected), (ours, expected)


@pytest.mark.parametrize("golden", sorted(NO_ROWS))
async def test_no_rows_is_one_frame_without_fields_as_grafanas_newest_code_answers(client, database_url,
                                                                                    fixture_db, golden):
    _, setup = _fixture(SQL_GOLDEN / NO_ROWS[golden])
    await fixture_db.execute(setup)
    await add_pg(client, database_url)
    status, body = await answer(client, sql_query("SELECT * FROM tbl WHERE false", format=golden.split("/")[0]))
    expected = load(SQL_GOLDEN / f"{golden}.golden.jsonc")
    expected["frames"][0]["schema"]["fields"] = []
    expected["frames"][0]["data"]["values"] = []
    assert status == 200 and _ours(body) == expected


# -- macros, exact output ---------------------------------------------------------------------------------

RANGE = TimeRange(1703427322001, 1703429113000)


def _query(**model: Any) -> DataQuery:
    return DataQuery(ref_id="A", query_type="", max_data_points=100, interval_ms=model.pop("interval_ms", 15000),
                     time_range=RANGE, model=msgspec.Raw(msgspec.json.encode(model)))


@pytest.mark.parametrize(("sql", "expanded"), [
    ("$__time(t)", 't AS "time"'),
    ("$__timeEpoch(t)", 'extract(epoch from t) as "time"'),
    ("WHERE $__timeFilter(t)", "WHERE t BETWEEN '2023-12-24T14:15:22.001Z' AND '2023-12-24T14:45:13Z'"),
    ("$__timeFrom() $__timeTo()", "'2023-12-24T14:15:22.001Z' '2023-12-24T14:45:13Z'"),
    ("GROUP BY $__timeGroup(t, 5m)", "GROUP BY floor(extract(epoch from t)/300)*300"),
    ("$__timeGroup(t, '500ms')", "floor(extract(epoch from t)/0.5)*0.5"),
    ("$__timeGroup(t, 30d)", "floor(extract(epoch from t)/2.592e+06)*2.592e+06"),
    ("SELECT $__timeGroup(t, 1h), v", 'SELECT floor(extract(epoch from t)/3600)*3600 AS "time", v'),
    ("$__timeGroupAlias(t, 1m)", 'floor(extract(epoch from t)/60)*60 AS "time"'),
    ("$__unixEpochFilter(e)", "e >= 1703427322 AND e <= 1703429113"),
    ("$__unixEpochNanoFilter(e)", "e >= 1703427322001000000 AND e <= 1703429113000000000"),
    ("$__unixEpochNanoFrom() $__unixEpochNanoTo()", "1703427322001000000 1703429113000000000"),
    ("$__unixEpochGroup(e, 10m)", "floor((e)/600)*600"),
    ("$__unixEpochGroupAlias(e, 10m, previous)", 'floor((e)/600)*600 AS "time"'),
    ("$__interval $__interval_ms $__unixEpochFrom() $__unixEpochTo()", "15s 15000 1703427322 1703429113"),
])
def test_macros_expand_exactly_as_grafanas(sql, expanded):
    query = _query()
    assert PostgresMacros(query, False).expand(interpolate_globals(sql, query)) == expanded


def test_timescaledb_groups_with_time_bucket_and_fill_is_kept():
    engine = PostgresMacros(_query(), True)
    assert engine.expand("$__timeGroupAlias(t, 5m, 27)") == "time_bucket('300.000s',t) AS \"time\""
    assert engine.fill == Fill(300.0, "value", 27.0)
    engine = PostgresMacros(_query(), False)
    engine.expand("$__timeGroup(t, 1m, NULL)")
    assert engine.fill == Fill(60.0, "null")


@pytest.mark.parametrize(("sql", "error"), [
    ("$__foo(x)", 'unknown macro "__foo"'),
    ("$__timeGroup(t)", "macro __timeGroup needs time column and interval and optional fill value"),
    ("$__timeGroup(t, 5x)", "error parsing interval 5x"),
    ("$__timeGroup(t, 5m, null)", "error parsing fill value null"),
])
def test_macro_errors_are_grafanas(sql, error):
    with pytest.raises(MacroError) as raised:
        PostgresMacros(_query(), False).expand(sql)
    assert str(raised.value) == error


def test_go_float_and_statement_splitting():
    assert [go_float(v) for v in (300, 0.5, 86400, 1e6, 1e-5, 2.5e-4)] == ["300", "0.5", "86400", "1e+06", "1e-05",
                                                                          "0.00025"]
    assert split_statements("SELECT ';' ; SELECT $x$;$x$ -- ;\n; /* ; */ ;SELECT \"a;\"") == [
        "SELECT ';' ", " SELECT $x$;$x$ -- ;\n", 'SELECT "a;"']


def test_long_to_wide_sorts_fields_and_rejects_unsorted_time():
    columns = [Column("Time", "time", [1, 1, 2]), Column("host", "string", ["b", "a", None]),
               Column("v", "float64", [1.0, 2.0, 3.0])]
    wide = long_to_wide(columns, None)
    assert [(c.name, c.labels, c.values) for c in wide] == [
        ("Time", None, [1, 2]), ("v", {"host": ""}, [None, 3.0]), ("v", {"host": "a"}, [2.0, None]),
        ("v", {"host": "b"}, [1.0, None])]
    columns[0].values = [2, 1, 3]
    with pytest.raises(ValueError, match="not sorted in ascending order by time"):
        long_to_wide(columns, None)


def test_long_to_wide_and_fill_stop_at_the_cell_bound():
    from gateway.backends.sql import ResampleError, resample

    columns = [Column("Time", "time", [1, 1, 2, 3]), Column("host", "string", ["a", "b", "c", "d"]),
               Column("v", "float64", [1.0, 2.0, 3.0, 4.0])]
    assert len(long_to_wide(columns, None, max_cells=12)) == 5  # 3 times x 4 series: exactly at the bound
    with pytest.raises(ValueError, match="more than 11 cells"):
        long_to_wide(columns, None, max_cells=11)
    with pytest.raises(ValueError, match="more than 5 cells"):  # the third series, before its field exists
        long_to_wide(columns, None, max_cells=5)
    wide = [Column("Time", "time", [0]), Column("v", "float64", [1.0]), Column("w", "float64", [2.0])]
    assert len(resample(wide, Fill(1, "null"), 0, 3_000_000_000, 1_000_000_000, 100, max_cells=12)[0].values) == 4
    with pytest.raises(ResampleError, match="too many cells"):
        resample(wide, Fill(1, "null"), 0, 3_000_000_000, 1_000_000_000, 100, max_cells=11)


# -- end to end -------------------------------------------------------------------------------------------

async def test_errors_come_per_refid_with_the_executed_sql(client, database_url):
    await add_pg(client, database_url)
    status, body = await answer(
        client, sql_query("SELECT 1 AS v"), sql_query("SELECT * FROM nowhere", "B"), sql_query("$__nope()", "C"),
        sql_query("SELECT 1 AS x", "D", format="table"), sql_query("", "E"),
        sql_query("SELECT now() AS time, 'b' AS c, 1 AS v UNION ALL SELECT now() - interval '1h', 'a', 2", "F"),
        sql_query("""SELECT now() AS time, '{"a": 1}'::jsonb AS j""", "G"),
        sql_query("SELECT 'soon' AS time, 1 AS v", "H"))
    assert status == 400
    results = body["results"]
    assert set(results) == {"A", "B", "C", "D", "F", "G", "H"}  # an empty rawSql has no answer
    assert results["A"]["error"].startswith("db has no time column: time column is missing;")
    assert results["B"] == {"error": 'db query error: ERROR: relation "nowhere" does not exist (SQLSTATE 42P01)',
                            "errorSource": "downstream", "status": 500, "frames": [{"schema": {
                                "refId": "B", "meta": {"typeVersion": [0, 0],
                                                       "executedQueryString": "SELECT * FROM nowhere"},
                                "fields": []}, "data": {"values": []}}]}
    assert results["C"]["error"] == 'interpolation failed: unknown macro "__nope"'
    assert results["C"]["frames"][0]["schema"]["meta"] == {"typeVersion": [0, 0]}  # Grafana loses the SQL there
    assert results["G"]["error"] == "convert value to float failed: unsupported field type data.FieldType"
    assert results["H"]["error"] == ("converting time columns failed: failed to convert time column: unable to "
                                     "convert data to a time field")
    assert results["D"]["status"] == 200 and results["D"]["frames"][0]["data"]["values"] == [[1]]
    assert results["F"]["error"].startswith("failed to convert long to wide series when converting from dataframe: "
                                            "unable to process the data because it is not sorted")


async def test_a_metric_column_names_the_series_of_three_columns(client, database_url):
    await add_pg(client, database_url)
    sql = ("SELECT to_timestamp(v * 60) AS time, m AS metric, v::float8 AS value FROM (VALUES (1, 'up'), (1, 'down'),"
           " (2, 'up')) AS t(v, m) ORDER BY 1")
    status, body = await answer(client, sql_query(sql))
    fields = body["results"]["A"]["frames"][0]["schema"]["fields"]
    assert status == 200 and [(f["name"], f.get("labels")) for f in fields] == [("Time", None), ("down", None),
                                                                               ("up", None)]


async def test_a_query_cannot_write_and_changes_nothing(client, database_url, fixture_db):
    await fixture_db.execute("CREATE TABLE ro_tbl (v int); INSERT INTO ro_tbl VALUES (1)")
    await add_pg(client, database_url)
    status, body = await answer(
        client, sql_query("INSERT INTO ro_tbl VALUES (2)", format="table"),
        sql_query("COMMIT; INSERT INTO ro_tbl VALUES (3)", "B", format="table"),
        sql_query("WITH d AS (DELETE FROM ro_tbl RETURNING v) SELECT * FROM d", "C", format="table"),
        sql_query("SET transaction_read_only = off; UPDATE ro_tbl SET v = 4", "D", format="table"))
    assert status == 400
    results = body["results"]
    assert results["A"]["error"] == ("db query error: ERROR: cannot execute INSERT in a read-only transaction "
                                     "(SQLSTATE 25006)")
    assert results["B"]["error"] == "db query error: a query may not end its read-only transaction"
    assert results["C"]["error"] == ("db query error: ERROR: cannot execute SELECT in a read-only transaction "
                                     "(SQLSTATE 25006)")
    assert results["D"]["error"] == ("db query error: ERROR: transaction read-write mode must be set before any query "
                                     "(SQLSTATE 25001)")
    assert await fixture_db.fetch("SELECT v FROM ro_tbl") == [(1,)]


async def test_statements_time_out_at_the_data_sources_timeout(client, database_url):
    await add_pg(client, database_url, timeout=1)
    started = time.monotonic()
    status, body = await answer(client, sql_query("SELECT pg_sleep(5)", format="table"))
    assert status == 400 and time.monotonic() - started < 3
    assert body["results"]["A"]["error"] == ("db query error: ERROR: canceling statement due to statement timeout "
                                             "(SQLSTATE 57014)")


async def test_a_request_past_its_deadline_leaves_the_pool_usable(client, database_url):
    await add_pg(client, database_url, timeout=1, maxOpenConns=1)
    sql = "SELECT pg_sleep(0.6); SELECT pg_sleep(0.6); SELECT 1 AS x"  # each statement within its own timeout
    status, body = await answer(client, sql_query(sql, format="table"))
    assert status == 400 and body["results"]["A"]["error"] == "the data source did not answer within 1s"
    status, body = await answer(client, sql_query("SELECT 2 AS x", format="table"))
    assert status == 200 and body["results"]["A"]["frames"][0]["data"]["values"] == [[2]]


async def test_rows_stop_at_the_row_limit_with_grafanas_notice(aiohttp_client, aiohttp_server, database_url):
    config = make_config(database_url, dataproxy={"row_limit": 3})
    options = {name: value for name, value in SERVER_OPTIONS.items() if name != "handler_cancellation"}
    client = await aiohttp_client(await aiohttp_server(create_app(config), **options))
    await add_pg(client, database_url)
    status, body = await answer(client, sql_query("SELECT generate_series(1, 1000000000) AS n", format="table"),
                                sql_query("SELECT 1 AS n UNION ALL SELECT 2", "B", format="table"))
    frame = body["results"]["A"]["frames"][0]
    assert status == 200 and frame["data"]["values"] == [[1, 2, 3]]
    assert frame["schema"]["meta"]["notices"] == [
        {"severity": "warning", "text": "Results have been limited to 3 because the SQL row limit was reached"}]
    assert "notices" not in body["results"]["B"]["frames"][0]["schema"]["meta"]
    # a fill that would make more rows than the limit is not done, and says so
    sql = "SELECT $__timeGroupAlias(t, 1s, NULL), 1.0 AS v FROM (SELECT now() AS t) q"
    status, body = await answer(client, sql_query(sql))
    frame = body["results"]["A"]["frames"][0]
    assert status == 200 and len(frame["data"]["values"][0]) == 1
    assert frame["schema"]["meta"]["notices"] == [{"severity": "warning", "text": "Failed to resample dataframe"}]


async def test_a_long_frame_too_wide_to_pivot_fails_its_refid(client, database_url):
    await add_pg(client, database_url)
    # 5000 distinct times x 5000 distinct hosts: 25 million cells, past the bound of 10 million
    sql = "SELECT to_timestamp(n) AS time, n::text AS host, 1.0 AS v FROM generate_series(1, 5000) AS n ORDER BY 1"
    started = time.monotonic()
    status, body = await answer(client, sql_query(sql), sql_query("SELECT 1 AS x", "B", format="table"))
    assert status == 400 and time.monotonic() - started < 10
    assert body["results"]["A"]["error"] == (
        "failed to convert long to wide series when converting from dataframe: the wide frame would have more than "
        "10000000 cells (distinct times x series); narrow the time range, group by fewer labels or use the table "
        "format")
    assert body["results"]["B"]["status"] == 200


async def test_sub_second_fill_intervals_align_to_the_interval(client, database_url):
    await add_pg(client, database_url)
    sql = ("SELECT $__timeGroupAlias(t, 500ms, previous), v FROM (VALUES (to_timestamp(1703427322.6), 1.5)) AS q(t, v)"
           " ORDER BY 1")
    status, body = await answer(client, sql_query(sql), start="1703427322200", end="1703427323700")
    assert status == 200, body
    assert body["results"]["A"]["frames"][0]["data"]["values"] == [
        [1703427322000, 1703427322500, 1703427323000, 1703427323500], [None, 1.5, 1.5, 1.5]]


async def test_queries_share_a_pool_bounded_by_max_open_conns(client, database_url):
    from gateway.keys import cache_key

    await add_pg(client, database_url, maxOpenConns=2)
    started = time.monotonic()
    status, _ = await answer(client, *(sql_query("SELECT pg_sleep(0.3)::text AS s", ref, format="table")
                                       for ref in "ABCD"))
    assert status == 200 and time.monotonic() - started >= 0.6  # two at a time
    ctx = await client.app[cache_key].get(1, uid="pg")
    pool = await ctx.resource("postgres", None)
    assert pool.get_max_size() == 2 and pool.get_size() <= 2


async def test_an_unreachable_server_fails_without_leaking_the_password(client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await add(client, "down", "grafana-postgresql-datasource", url=f"127.0.0.1:{port}", user="u", database="d",
              jsonData={"sslmode": "disable"}, secureJsonData={"password": "hunter2-secret"})
    response = await post(client, {"queries": [sql_query("SELECT 1", uid="down")], "from": FROM, "to": TO})
    text = await response.text()
    assert response.status == 400 and "hunter2" not in text
    assert (await response.json())["results"]["A"]["error"] == (
        "db query error: failed to connect to server - please inspect Grafana server log for details")


async def test_fill_parameters_from_outside_fail_the_call(client, database_url):
    await add_pg(client, database_url)
    status, body = await answer(client, sql_query("SELECT 1", fill=True))
    assert status == 400 and body["results"]["A"]["error"] == "query fill-parameters not supported"


async def test_queries_run_concurrently(client, database_url):
    await add_pg(client, database_url)
    started = time.monotonic()
    status, _ = await answer(client, *(sql_query("SELECT pg_sleep(0.3)::text AS s", ref, format="table")
                                       for ref in "ABC"))
    assert status == 200 and time.monotonic() - started < 0.85



async def test_other_types_are_strings_as_postgresql_writes_them(client, database_url, db):
    await add_pg(client, database_url)
    sql = ("SELECT ARRAY[1,2] AS a, ARRAY[['x y','{'],[NULL,'null']] AS b, ROW(1,'a b',NULL) AS c,"
           " int4range(1,5) AS d, '1 mon 2 days'::interval AS e, '10.0.0.1'::inet AS f, 'y'::\"char\" AS g,"
           " '24:00'::time AS h, 'infinity'::float4 AS i, 'empty'::int4range AS j")
    status, body = await answer(client, sql_query(sql, format="table"))
    assert status == 200, body
    values = body["results"]["A"]["frames"][0]["data"]["values"]
    assert values == [["{1,2}"], ['{{"x y","{"},{NULL,"null"}}'], ['(1,"a b",)'], ["[1,5)"], ["1 mon 2 days"],
                      ["10.0.0.1"], ["y"], ["24:00:00"], [None], ["empty"]]
    # PostgreSQL's own text output (inet's cast to text adds the mask its output leaves out)
    texts = await db.fetchrow("SELECT " + ", ".join(f"{name}::text" for name in "abcde") + " FROM (" + sql + ") q")
    assert [[text] for text in texts] == values[:5]
    assert body["results"]["A"]["frames"][0]["data"]["entities"][8] == {"Inf": [0]}


async def test_a_query_leaves_no_setting_behind_on_its_connection(client, database_url):
    await add_pg(client, database_url, maxOpenConns=1)
    status, body = await answer(client, sql_query("SET TIME ZONE 'Asia/Tokyo'; SELECT current_setting('TimeZone') "
                                                  "AS tz", format="table"))
    assert status == 200 and body["results"]["A"]["frames"][0]["data"]["values"] == [["Asia/Tokyo"]]
    status, body = await answer(client, sql_query("SELECT current_setting('TimeZone') AS tz", format="table"))
    assert body["results"]["A"]["frames"][0]["data"]["values"] != [["Asia/Tokyo"]]


async def test_a_pooled_connection_is_clean_before_its_next_query(client, database_url, db):
    await add_pg(client, database_url, maxOpenConns=1)  # one connection: every query below runs on it
    status, body = await answer(client, sql_query("PREPARE gw_leak AS SELECT 1; SELECT pg_backend_pid() AS pid, "
                                                  "pg_advisory_lock(424242)::text AS l", format="table"))
    assert status == 200, body
    pid = body["results"]["A"]["frames"][0]["data"]["values"][0][0]
    # a session setting made to outlive the transaction (the query fails, the COMMIT already happened)
    status, body = await answer(client, sql_query("SELECT set_config('statement_timeout', '0', false), "
                                                  "set_config('gw.leak', 'yes', false); COMMIT", format="table"))
    assert body["results"]["A"]["error"] == "db query error: a query may not end its read-only transaction"
    assert await db.fetchval("SELECT pg_try_advisory_lock(424242)")  # the lock went with the first query
    await db.execute("SELECT pg_advisory_unlock(424242)")
    status, body = await answer(client, sql_query(
        "SELECT pg_backend_pid() AS pid, (SELECT count(*) FROM pg_prepared_statements WHERE name = 'gw_leak') AS p,"
        " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,"
        " coalesce(current_setting('gw.leak', true), '') AS s", format="table"))
    assert status == 200, body
    assert body["results"]["A"]["frames"][0]["data"]["values"] == [[pid], [0], [0], [""]]


def test_resample_takes_the_last_row_of_each_slot_and_fills_the_rest():
    from gateway.backends.sql import resample

    second = 1_000_000_000
    columns = [Column("Time", "time", [5 * second, 12 * second, 14 * second, 31 * second]),
               Column("v", "float64", [1.0, 2.0, 3.0, 4.0])]
    for fill, expected in ((Fill(10, "previous"), [1.0, 3.0, 3.0, 4.0]), (Fill(10, "null"), [1.0, 3.0, None, 4.0]),
                           (Fill(10, "value", 7), [1.0, 3.0, 7.0, 4.0])):
        out = resample(columns, fill, 10 * second, 40 * second, 10 * second, 100)
        assert out[0].values == [10 * second, 20 * second, 30 * second, 40 * second]
        assert out[1].values == expected, fill


def test_split_statements_keeps_quoted_escapes_and_drops_empty_ones():
    sql = "SELECT E'a\\';b'; ; -- only a comment\n; SELECT 'it''s;' /* ; /* nested ; */ */"
    assert split_statements(sql) == ["SELECT E'a\\';b'", " SELECT 'it''s;' /* ; /* nested ; */ */"]


async def test_a_connection_lost_mid_query_is_the_connection_error_and_the_pool_recovers(client, database_url):
    await add_pg(client, database_url)
    status, body = await answer(client, sql_query("SELECT pg_terminate_backend(pg_backend_pid())", format="table"))
    assert status == 400
    assert body["results"]["A"]["error"] == ("db query error: failed to connect to server - please inspect Grafana "
                                             "server log for details")
    status, body = await answer(client, sql_query("SELECT 7 AS v", format="table"))
    assert status == 200 and body["results"]["A"]["frames"][0]["data"]["values"] == [[7]]


async def test_a_numeric_time_past_an_int64_of_nanoseconds_fails_its_refid_in_json_and_msgpack(client, database_url):
    await add_pg(client, database_url)
    queries = [sql_query("SELECT 99999999999999999999999::numeric AS time, 1 AS v"),
               sql_query("SELECT 1e300::float8 AS time, 1 AS v", "B"), sql_query("SELECT 2 AS v", "C", format="table")]
    for accept in ("application/json", "application/msgpack"):
        response = await client.post("/api/ds/query", headers={**ADMIN, "Accept": accept},
                                     json={"queries": queries, "from": FROM, "to": TO})
        assert response.status == 400, await response.text()
        body = await response.read()
        results = (msgspec.msgpack.decode(body) if accept == "application/msgpack" else json.loads(body))["results"]
        for ref_id in ("A", "B"):
            assert results[ref_id]["error"].endswith("unable to convert data to a time field"), results[ref_id]
        assert results["C"]["frames"][0]["data"]["values"] == [[2]]
