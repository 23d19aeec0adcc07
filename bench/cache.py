"""Benchmark the query cache with a dashboard storm, in one run, and print a markdown table.

20 clients each show one dashboard of 30 Prometheus panels (`now-1h`, a 15 s step) and refresh it every 10 s
of simulated time; the clients are spread over two gateway replicas that share one PostgreSQL (and one
Redis, where the cache uses it). The upstream is a Prometheus-API stub that answers after 100 ms and counts
the calls and bytes it sends. Four runs, side by side:

  off          no data source caches (the baseline)
  memory       [caching] backend = memory: each replica keeps its own cache
  redis        [caching] backend = redis: both replicas share the cache and coalesce through Redis
  redis+delta  the same, with delta fetches for the range queries ([caching] delta = true)

For each: backend calls, backend bytes, p50/p99 latency of the panel requests, and the p50 of answers served
from the cache (last passes over the newest refresh, every answer already cached: one at the storm's pace,
one back to back). Aims: backend calls <= 1/20 of `off` (redis), a hit's added latency <= 2 ms at p50 (the
paced hits' p50 minus the p50 of `off` less the upstream's 100 ms: both measured under the same load), and
delta fetches moving <= 5 % of the bytes of full refreshes once warm (rounds after the first, redis+delta
over redis).

Simulated time: the refreshes are sent back to back with absolute ranges that end 10 s apart, all more than
`backfill_tolerance` in the past, so the steps a live dashboard always fetches again (the newest 30 s by
default) are not fetched again here; a live dashboard moves that much more per refresh.

    .venv/bin/python bench/cache.py              # 12 refreshes per run (2 simulated minutes)
    .venv/bin/python bench/cache.py --quick      # smoke test: 3 refreshes, 5 clients x 6 panels

Needs a PostgreSQL (as bench/query.py) and Redis on 127.0.0.1:6379 (redis-server; `.ci/run` starts one).
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # importing bench/proxy.py must not leave a __pycache__ behind

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import secrets  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from proxy import (  # noqa: E402
    AUTH,
    BenchError,
    Service,
    _execute,
    _raise_interrupt,
    _with_database,
    clean_env,
    clean_up,
    database_server,
    free_port,
    gateway_process,
    git_commit,
    http,
    loadavg,
    port_open,
    publish,
    redact,
    report_failure,
    start,
    wait_for,
)

UPSTREAM_DELAY_MS = 100
STEP_S = 15
WINDOW_S = 3600
REFRESH_S = 10
SERIES_PER_PANEL = 5
SCENARIOS: dict[str, dict[str, str]] = {
    "off": {"GF_CACHING_ENABLED_BY_DEFAULT": "false"},
    "memory": {"GF_CACHING_BACKEND": "memory", "GF_CACHING_DELTA": "false"},
    "redis": {"GF_CACHING_BACKEND": "redis", "GF_CACHING_DELTA": "false"},
    "redis+delta": {"GF_CACHING_BACKEND": "redis", "GF_CACHING_DELTA": "true"},
}


# ---------------------------------------------------------------- the Prometheus stub (a child process)


def stub_main(port: int) -> None:
    """Serve api/v1/query_range on 127.0.0.1:port after UPSTREAM_DELAY_MS: SERIES_PER_PANEL series whose
    values depend on the expression and the time only; GET /stats answers and resets the counters."""
    from aiohttp import web

    counters = {"calls": 0, "bytes": 0, "points": 0}

    async def query_range(request: web.Request) -> web.Response:
        form = await request.post()
        start, end, step = float(str(form["start"])), float(str(form["end"])), float(str(form["step"]))
        expr = str(form["query"])
        seed = sum(map(ord, expr))
        times = [start + index * step for index in range(int((end - start) / step) + 1)]
        result = [{"metric": {"__name__": expr, "instance": f"host-{series}:9100", "job": "bench"},
                   "values": [[stamp, f"{(seed + series * 31 + int(stamp)) % 1000 / 10:g}"] for stamp in times]}
                  for series in range(SERIES_PER_PANEL)]
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}},
                          separators=(",", ":")).encode()
        await asyncio.sleep(UPSTREAM_DELAY_MS / 1000)
        counters["calls"] += 1
        counters["bytes"] += len(body)
        counters["points"] += len(times) * SERIES_PER_PANEL
        return web.Response(body=body, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        answer = dict(counters)
        counters.update(calls=0, bytes=0, points=0)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/api/v1/query_range", query_range)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------- the run


@dataclass
class Result:
    name: str
    calls: int
    bytes: int
    first_round_bytes: int
    latencies: list[float]
    hits: list[float]  # the last pass's hits, sent at the storm's pace
    hits_back_to_back: list[float]  # the same hits again, each client sending as fast as it can
    headers: dict[str, int] = field(default_factory=dict)

    def p(self, q: float, values: list[float] | None = None) -> float:
        values = sorted(self.latencies if values is None else values)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))] * 1000


def panel_query(panel: int) -> dict[str, Any]:
    return {"refId": "A", "datasource": {"type": "prometheus", "uid": "prom"}, "expr": f"bench_panel_{panel}",
            "range": True, "instant": False, "intervalMs": STEP_S * 1000, "maxDataPoints": 1000}


def redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def stub_stats(stub: str) -> dict[str, int]:
    status, answer = http("GET", f"{stub}/stats")
    if status != 200:
        raise BenchError(f"the stub answered /stats with HTTP {status}")
    return dict(json.loads(answer))


async def storm(replicas: list[str], clients: int, panels: int, rounds: int, end_s: int,
                stub: str) -> tuple[list[float], list[float], list[float], dict[str, int], dict[str, int],
                                    dict[str, int]]:
    """Every client refreshes its dashboard `rounds` times (one request per panel, in order), then shows the
    last one again, twice (answers already cached: the latencies of plain hits, not of waits for a call in
    flight): first at the storm's pace (a client's next request no sooner than UPSTREAM_DELAY_MS after its last
    began, as each storm request took that long), so the replicas carry the load the `off` run measured its
    overhead under; then back to back, each client as fast as it can, which measures the replicas saturated.
    Returns the storm's latencies, the paced and the back-to-back hits' latencies, the storm's X-Cache counts
    and the backend counters of the first round and of the later ones."""
    import aiohttp

    latencies: list[float] = []
    paced: list[float] = []
    back_to_back: list[float] = []
    headers: dict[str, int] = {}
    first_round: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": AUTH}) as session:

        async def client(index: int, until_ms: int, hits: list[float] | None = None, pace: float = 0.0) -> None:
            base = replicas[index % len(replicas)]
            for panel in range(panels):
                body = {"from": str(until_ms - WINDOW_S * 1000), "to": str(until_ms), "queries": [panel_query(panel)]}
                began = time.perf_counter()
                async with session.post(f"{base}/api/ds/query", json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise BenchError(f"/api/ds/query answered HTTP {response.status}")
                    seconds = time.perf_counter() - began
                    cache = response.headers.get("X-Cache", "none")
                if hits is not None:
                    if cache == "HIT":
                        hits.append(seconds)
                    await asyncio.sleep(pace - seconds)
                    continue
                latencies.append(seconds)
                headers[cache] = headers.get(cache, 0) + 1

        for round_ in range(rounds):
            until_ms = (end_s - (rounds - 1 - round_) * REFRESH_S) * 1000
            await asyncio.gather(*(client(index, until_ms) for index in range(clients)))
            if round_ == 0:
                first_round = stub_stats(stub)
        later = stub_stats(stub)
        await asyncio.gather(*(client(index, end_s * 1000, paced, UPSTREAM_DELAY_MS / 1000)
                               for index in range(clients)))
        await asyncio.gather(*(client(index, end_s * 1000, back_to_back) for index in range(clients)))
        stub_stats(stub)  # the last passes are not part of the storm
    return latencies, paced, back_to_back, headers, first_round, later


def start_replica(tmp: Path, database_url: str, name: str, env: dict[str, str]) -> tuple[Service, str]:
    port = free_port()
    service = gateway_process(name, tmp, database_url, port, 1, {"GF_SERVER_SHUTDOWN_TIMEOUT": "2", **env})
    return service, f"http://127.0.0.1:{port}"


def run_scenario(args: argparse.Namespace, tmp: Path, database_url: str, stub: str, name: str,
                 end_s: int) -> Result:
    env = {"GF_CACHING_ENABLED_BY_DEFAULT": "true", "GF_CACHING_REDIS_PREFIX": f"bench-{secrets.token_hex(4)}:",
           "GF_CACHING_TTL": "300", **SCENARIOS[name]}
    services: list[Service] = []
    try:
        urls = []
        for index in range(2):
            service, url = start_replica(tmp, database_url, f"gateway-{name}-{index}", env)
            services.append(service)
            urls.append(url)
        stub_stats(stub)  # reset
        latencies, hits, back_to_back, headers, first, counted = asyncio.run(
            storm(urls, args.clients, args.panels, args.rounds, end_s, stub))
        return Result(name, counted["calls"] + first["calls"], counted["bytes"] + first["bytes"], first["bytes"],
                      latencies, hits, back_to_back, headers)
    finally:
        for service in services:
            service.stop(grace=5)


def report(header: list[str], results: dict[str, Result], args: argparse.Namespace) -> str:
    off = results["off"]
    overhead = off.p(0.5) - UPSTREAM_DELAY_MS  # gateway's own p50 cost around the upstream's 100 ms
    lines = [*header, "",
             "| run | backend calls | backend MB | calls / off | p50 ms | p99 ms | hit p50 ms, storm pace"
             " | hit p50 ms, back to back | X-Cache |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for result in results.values():
        hit = result.p(0.5, result.hits) if result.hits else float("nan")
        saturated = result.p(0.5, result.hits_back_to_back) if result.hits_back_to_back else float("nan")
        lines.append(f"| {result.name} | {result.calls:,} | {result.bytes / 1e6:.2f} | {result.calls / off.calls:.3f} |"
                     f" {result.p(0.5):.1f} | {result.p(0.99):.1f} | {hit:.2f} | {saturated:.2f} |"
                     f" {', '.join(f'{k} {v}' for k, v in sorted(result.headers.items()))} |")
    redis, delta = results["redis"], results["redis+delta"]
    warm_full = redis.bytes - redis.first_round_bytes
    warm_delta = delta.bytes - delta.first_round_bytes
    hit_added = delta.p(0.5, delta.hits) - overhead if delta.hits else float("nan")
    ratio = warm_delta / warm_full if warm_full else float("nan")
    lines += ["", "| aim | value | target | |", "|---|---:|---:|---|",
              f"| backend calls, redis / off | {redis.calls / off.calls:.3f} | <= 0.050 |"
              f" {'met' if redis.calls / off.calls <= 0.05 else 'missed'} |",
              f"| a hit's added p50 latency (hit p50 at the storm's pace - (off p50 - {UPSTREAM_DELAY_MS} ms))"
              f" | {hit_added:.2f} ms |"
              f" <= 2 ms | {'met' if hit_added <= 2 else 'missed'} |",
              f"| backend bytes once warm, redis+delta / redis | {ratio:.3f} | <= 0.050 |"
              f" {'met' if ratio <= 0.05 else 'missed'} |", ""]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 refreshes of 5 clients x 6 panels")
    parser.add_argument("--rounds", type=int, default=None, help="refreshes per run (default 12)")
    parser.add_argument("--clients", type=int, default=None, help="clients (default 20)")
    parser.add_argument("--panels", type=int, default=None, help="panels per dashboard (default 30)")
    parser.add_argument("--database-url", help="PostgreSQL server to create the run's database on")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)  # internal: serve the stub on this port
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 12)
    args.clients = args.clients or (5 if args.quick else 20)
    args.panels = args.panels or (6 if args.quick else 30)
    if min(args.rounds, args.clients, args.panels) < 1:
        parser.error("--rounds, --clients and --panels must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stub:
        stub_main(args.stub)
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if not redis_answers():
        print("bench failed: no Redis answers on 127.0.0.1:6379 (start redis-server)", file=sys.stderr)
        return 1
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    load_before = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-cache-"))
    services: list[Service] = []
    server_url = database_name = None
    try:
        server_url, source = database_server(args.database_url)
        database_name = f"bench_{secrets.token_hex(5)}"
        asyncio.run(_execute(server_url, f'CREATE DATABASE "{database_name}"'))
        database_url = _with_database(server_url, database_name)
        port = free_port()
        stub_service = start("prometheus stub", [sys.executable, str(Path(__file__).resolve()), "--stub", str(port)],
                             tmp / "stub.log", env=clean_env() | {"PYTHONDONTWRITEBYTECODE": "1"})
        services.append(stub_service)
        wait_for(stub_service, lambda: port_open(port), 60, f"listening on 127.0.0.1:{port}")
        stub = f"http://127.0.0.1:{port}"
        # the data source, once (the replicas of every run share the database)
        setup, url = start_replica(tmp, database_url, "gateway-setup", {})
        services.append(setup)
        body = json.dumps({"name": "prom", "uid": "prom", "type": "prometheus", "access": "proxy", "url": stub,
                           "jsonData": {"httpMethod": "POST", "timeInterval": f"{STEP_S}s"}}).encode()
        status, answer = http("POST", f"{url}/api/datasources", body)
        if status != 200:
            raise BenchError(f"POST /api/datasources -> HTTP {status}: {answer[:300]!r}")
        setup.stop(grace=5)
        end_s = int(time.time()) // STEP_S * STEP_S - 600  # every window long settled (see the docstring)
        results = {}
        for name in SCENARIOS:
            print(f"run {name} ...", flush=True)
            results[name] = run_scenario(args, tmp, database_url, stub, name, end_s)
            result = results[name]
            print(f"  {result.calls} backend calls, {result.bytes / 1e6:.2f} MB, p50 {result.p(0.5):.1f} ms,"
                  f" {result.headers}", flush=True)
        header = [
            "## gateway query cache benchmark", "",
            f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
            f"- date: {started}; gateway at {git_commit()}",
            f"- machine: {os.cpu_count()} cores, {platform.system()} {platform.release()};"
            f" load average before the run {load_before}, after {loadavg()}",
            f"- {args.clients} clients x {args.panels} panels, {args.rounds} refreshes {REFRESH_S} s apart"
            f" (simulated), 2 replicas of 1 worker, upstream {UPSTREAM_DELAY_MS} ms; database"
            f" {redact(database_url)} ({source})",
            f"- latency medians over {statistics.fmean([len(r.latencies) for r in results.values()]):.0f}"
            " requests per run",
        ]
        return publish(report(header, results, args), args.markdown)
    except BenchError as exc:
        return report_failure(exc, services)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        clean_up(services, server_url, database_name, tmp, grace=5)


if __name__ == "__main__":
    sys.exit(main())
