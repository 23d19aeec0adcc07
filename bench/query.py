"""Benchmark POST /api/ds/query with Prometheus data sources, in one run, and print markdown tables.

Three measurements, each a ratio of two things measured side by side in the same run:

  (a) fan-out    one /api/ds/query holding N = 1, 10, 50, 100, 200 queries, each to its own Prometheus data
                 source whose upstream answers api/v1/query_range after 100 ms, over one direct call to such
                 an upstream (medians); aims <= 1.10 up to N = 100 and <= 1.20 at N = 200
  (b) conversion a 1e3, 1e5 and 1e6-point matrix answer turned into response bytes by gateway (the request
                 timed from sending it to its last byte) over a plain stdlib-json implementation of the same
                 conversion in this process (fetching the same answer, decoding, building the frames,
                 json.dumps); aim >= 10x. Also gateway's frame encoder alone at 1e6 points (MB/s, aim >= 350)
                 and the serving worker's peak RSS growth while it answers the 1e6-point request (<= 250 MiB)
  (c) throughput requests/s of a one-query /api/ds/query against a fast Prometheus stub (nginx answering a
                 small matrix) over requests/s of the data source proxy to the same stub: wrk -t2 -c64 with
                 a POST lua script, all gateway workers; aim >= 0.5

    .venv/bin/python bench/query.py              # ~1 minute on 2 cores
    .venv/bin/python bench/query.py --quick      # smoke test: fewer repetitions, 2 s wrk runs
    .venv/bin/python bench/query.py --markdown query.md --workers 2 --database-url postgresql://...

Needs nginx and wrk (see bench/proxy.py, whose helpers this uses) and a PostgreSQL (--database-url, else
GATEWAY_TEST_DATABASE_URL, else 127.0.0.1:5432, else an embedded one); a fresh database is created for the
run and dropped at the end. The upstreams are a bare asyncio HTTP server in one child process of this script
(`--stub`); gateway runs as `python -m gateway` from this checkout. Everything written (logs, nginx prefix,
gateway's data dir) goes under one temp dir, removed at the end, also on Ctrl-C; no bytecode is written.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # importing bench/proxy.py must not leave a __pycache__ behind

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import secrets  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from proxy import (  # noqa: E402
    AUTH,
    ROOT,
    WRK_LUA,
    BenchError,
    ForeignCpu,
    RssSampler,
    Service,
    _execute,
    _raise_interrupt,
    _with_database,
    clean_env,
    clean_up,
    database_server,
    ensure_tools,
    free_port,
    gateway_process,
    git_commit,
    http,
    loadavg,
    port_open,
    publish,
    redact,
    report_failure,
    run,
    service_pids,
    start,
    start_nginx,
    versions,
    wait_for,
    worker_pids,
    written_bytes,
)

FAN_OUT = (1, 10, 50, 100, 200)
SIZES = (1_000, 100_000, 1_000_000)
UPSTREAM_DELAY_MS = 100
PER_SERIES = 10_000  # points per series in the big answers (Prometheus caps a range query at 11,000)
SMALL_POINTS = 10
START_S = 1_700_000_000  # the stub's first sample, epoch seconds
STEP_S = 15
FROM_MS = START_S * 1000
TO_MS = FROM_MS + PER_SERIES * STEP_S * 1000
EXPR = "rate(bench_requests_total[5m])"


# ---------------------------------------------------------------- the Prometheus stub (a child process)


def matrix(points: int) -> bytes:
    """A query_range answer with `points` samples in series of PER_SERIES, values as Prometheus writes them."""
    result = []
    for series in range(math.ceil(points / PER_SERIES)):
        count = min(PER_SERIES, points - series * PER_SERIES)
        result.append({
            "metric": {"__name__": "bench_requests_total", "instance": f"host-{series}:9100", "job": "bench"},
            "values": [[START_S + i * STEP_S, f"{(series * PER_SERIES + i) * 7919 % 100_003 / 1000:g}"]
                       for i in range(count)],
        })
    body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
    return json.dumps(body, separators=(",", ":")).encode()


def stub_main(port: int) -> None:
    """Serve `/<kind>/<arg>/api/v1/query_range` (and `/query`) on 127.0.0.1:port until SIGTERM.

    slow/<ms>: a small matrix after <ms> milliseconds; big/<points>: the prebuilt answer of that size.

    A bare asyncio protocol (HTTP/1.1 keep-alive, Content-Length bodies), not a web framework: the upstreams
    of the fan-out share the machine with gateway, and a framework's ~0.1 ms of CPU per request would be
    counted against gateway (200 requests at once cost such a stub ~20 ms), where real upstreams run elsewhere.
    """
    def response(body: bytes, status: bytes = b"200 OK") -> bytes:
        return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    small = response(matrix(SMALL_POINTS))
    big = {size: response(matrix(size)) for size in SIZES}
    unknown = response(b'"unknown stub path"', b"404 Not Found")

    class Stub(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].lower()
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17:].split(b"\r\n", 1)[0]) if at >= 0 else 0
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length:]
                parts = head.split(b" ", 2)[1].split(b"/")  # b"", kind, arg, b"api", b"v1", endpoint
                kind, arg = (parts[1], parts[2]) if len(parts) > 5 and parts[2].isdigit() else (b"", b"0")
                if kind == b"slow":
                    asyncio.get_running_loop().call_later(int(arg) / 1000, self.reply, small)
                else:
                    self.reply(big.get(int(arg), unknown) if kind == b"big" else unknown)

        def reply(self, answer: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(answer)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Stub, "127.0.0.1", port, backlog=4096)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        async with server:
            await stop

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


# ---------------------------------------------------------------- the reference conversion (stdlib json)


def reference_frames(body: bytes, ref_id: str, expr: str, step_ms: int) -> bytes:
    """The same conversion done plainly: decode the matrix, one frame per series as Grafana's promlib writes
    it (Time and a float64 value field named after `__name__`, its labels, a legend, NaN/±Inf as null with
    entities), the QueryDataResponse encoded by the json module."""
    answer = json.loads(body)
    frames = []
    for position, series in enumerate(answer["data"]["result"]):
        labels = series["metric"]
        times, values = [], []
        entities: dict[str, list[int]] = {}
        for row, (stamp, text) in enumerate(series["values"]):
            times.append(round(float(stamp) * 1000))
            value = float(text)
            if math.isfinite(value):
                values.append(value)
            else:
                values.append(None)
                key = "NaN" if value != value else ("Inf" if value > 0 else "NegInf")
                entities.setdefault(key, []).append(row)
        name = labels.get("__name__", "Value")
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        meta: dict[str, Any] = {"type": "timeseries-multi", "typeVersion": [0, 1],
                                "custom": {"resultType": "matrix"}}
        if position == 0:
            meta["executedQueryString"] = f"Expr: {expr}\nStep: {step_ms // 1000}s"
        data: dict[str, Any] = {"values": [times, values]}
        if entities:
            data["entities"] = [None, entities]
        frames.append({
            "schema": {"refId": ref_id, "meta": meta, "fields": [
                {"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time"},
                 "config": {"interval": step_ms}},
                {"name": name, "type": "number", "typeInfo": {"frame": "float64"}, "labels": labels,
                 "config": {"displayNameFromDS": f"{name}{{{inner}}}"}},
            ]},
            "data": data,
        })
    return json.dumps({"results": {ref_id: {"status": 200, "frames": frames}}}, separators=(",", ":")).encode()


# ---------------------------------------------------------------- talking to gateway


def query(uid: str, ref_id: str = "A") -> dict[str, Any]:
    return {"refId": ref_id, "datasource": {"type": "prometheus", "uid": uid}, "expr": EXPR, "range": True,
            "instant": False, "intervalMs": STEP_S * 1000, "maxDataPoints": PER_SERIES + 1000}


def ds_query_body(queries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"from": str(FROM_MS), "to": str(TO_MS), "queries": queries}).encode()


def timed(method: str, url: str, body: bytes | None = None, timeout: float = 120.0) -> tuple[float, int, bytes]:
    """(seconds from sending to the last body byte, status, body) of one request."""
    began = time.perf_counter()
    status, answer = http(method, url, body, timeout=timeout)
    return time.perf_counter() - began, status, answer


def check_answer(status: int, answer: bytes, what: str, expect: int) -> dict[str, Any]:
    """The decoded QueryDataResponse; a clear BenchError when a refId failed."""
    if b'"results"' not in answer[:64]:
        raise BenchError(f"{what}: HTTP {status}: {answer[:500]!r}")
    results = json.loads(answer)["results"]
    errors = {ref: result["error"] for ref, result in results.items() if result.get("error")}
    if status != 200 or errors or len(results) != expect:
        first = next(iter(errors.items()), None)
        raise BenchError(f"{what}: HTTP {status}, {len(results)} of {expect} results, errors {len(errors)}"
                         f" (first: {first})")
    return results


@dataclass
class Bench:
    args: argparse.Namespace
    tools: dict[str, str]
    tmp: Path
    gateway: str = ""  # http://127.0.0.1:<port>
    stub: str = ""
    gateway_pid: int = 0
    services: list[Service] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    foreign: ForeignCpu = field(init=False)

    def __post_init__(self) -> None:
        self.foreign = ForeignCpu(self.service_pids)

    def service_pids(self) -> list[int]:
        return service_pids(self.services)

    def add_prometheus(self, uid: str, url: str) -> None:
        body = json.dumps({"name": uid, "uid": uid, "type": "prometheus", "access": "proxy", "url": url,
                           "jsonData": {"httpMethod": "POST", "timeInterval": f"{STEP_S}s"}}).encode()
        status, answer = http("POST", f"{self.gateway}/api/datasources", body)
        if status != 200:
            raise BenchError(f"POST /api/datasources ({uid}) -> HTTP {status}: {answer[:300]!r}")

    def ds_query(self, queries: list[dict[str, Any]], what: str) -> tuple[float, bytes]:
        seconds, status, answer = timed("POST", f"{self.gateway}/api/ds/query", ds_query_body(queries))
        check_answer(status, answer, what, len(queries))
        return seconds, answer

    def wrk(self, url: str, method: str, body: str, content_type: str, label: str) -> dict[str, float]:
        script = self.tmp / f"wrk-{label}.lua"
        script.write_text(f"wrk.method = {json.dumps(method)}\nwrk.body = {json.dumps(body)}\n"
                          f'wrk.headers["Content-Type"] = {json.dumps(content_type)}\n'
                          f'wrk.headers["Authorization"] = {json.dumps(AUTH)}\n' + WRK_LUA)
        seconds = self.args.seconds
        cmd = [self.tools["wrk"], "-t2", "-c64", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), url]
        with self.foreign.watch(label):
            result = run(cmd, timeout=seconds + 60)
        line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            raise BenchError(f"no report from {shlex.join(cmd)}:\n{result.stdout}\n{result.stderr}")
        data = json.loads(line.removeprefix("BENCH "))
        errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout") if data[k]}
        if errors:
            raise BenchError(f"{label}: wrk saw errors {errors} in {int(data['requests'])} requests"
                             " (status = non-2xx answers)")
        return {"rps": data["requests"] / (data["duration_us"] / 1e6), "p50_ms": data["p50_us"] / 1000,
                "p99_ms": data["p99_us"] / 1000}


# ---------------------------------------------------------------- the three measurements


def fan_out(bench: Bench) -> list[tuple[int, float, float]]:
    """(N, median /api/ds/query seconds, median direct upstream seconds) for each N."""
    reps = bench.args.reps
    for index in range(max(FAN_OUT)):
        bench.add_prometheus(f"slow-{index}", f"{bench.stub}/slow/{UPSTREAM_DELAY_MS}")
    direct_url = f"{bench.stub}/slow/{UPSTREAM_DELAY_MS}/api/v1/query_range"
    form = f"query={EXPR}&start={START_S}&end={START_S + PER_SERIES * STEP_S}&step={STEP_S}".encode()
    rows = []
    for n in FAN_OUT:
        queries = [query(f"slow-{index}", f"Q{index}") for index in range(n)]
        bench.ds_query(queries, f"fan-out N={n} (warm-up)")  # data sources resolved, connections opened
        gateway_runs, direct_runs = [], []
        with bench.foreign.watch(f"fan-out N={n}"):
            for _ in range(reps):  # interleaved, so both see the same machine
                gateway_runs.append(bench.ds_query(queries, f"fan-out N={n}")[0])
                seconds, status, _ = timed("POST", direct_url, form)
                if status != 200:
                    raise BenchError(f"the stub answered HTTP {status}")
                direct_runs.append(seconds)
        rows.append((n, statistics.median(gateway_runs), statistics.median(direct_runs)))
        print(f"fan-out N={n}: {rows[-1][1] * 1000:.1f} ms, one backend {rows[-1][2] * 1000:.1f} ms", flush=True)
    return rows


@dataclass
class Conversion:
    points: int
    response_bytes: int
    gateway_s: float
    reference_s: float


def encoder_mb_per_s(body: bytes, reps: int) -> tuple[float, int]:
    """gateway.frames' JSON encoder alone on the frames of a matrix answer: (MB/s, bytes), median of reps."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from gateway.frames import DataResponse, Field, Frame, encode_json, meta

    answer = json.loads(body)
    frames = []
    for series in answer["data"]["result"]:
        times = [round(float(stamp) * 1000) for stamp, _ in series["values"]]
        values = [float(text) for _, text in series["values"]]
        name = series["metric"].get("__name__", "Value")
        frames.append(Frame([Field("Time", "time.Time", times, config={"interval": STEP_S * 1000}),
                             Field(name, "float64", values, labels=series["metric"],
                                   config={"displayNameFromDS": name})],
                            meta=meta("timeseries-multi", (0, 1), custom={"resultType": "matrix"})))
    results = {"A": DataResponse(frames)}
    runs = []
    size = 0
    for _ in range(reps):
        began = time.perf_counter()
        size = len(encode_json(results))
        runs.append(time.perf_counter() - began)
    return size / statistics.median(runs) / 1e6, size


def conversion(bench: Bench) -> tuple[list[Conversion], float | None, float]:
    """Each size end to end through gateway and through the reference; the 1e6 request's RSS growth."""
    out = []
    growth: float | None = None
    step_ms = STEP_S * 1000
    for points in SIZES:
        uid = f"big-{points}"
        bench.add_prometheus(uid, f"{bench.stub}/big/{points}")
        reps = max(1, bench.args.reps // 2) if points >= 1_000_000 else bench.args.reps
        upstream = f"{bench.stub}/big/{points}/api/v1/query_range"
        form = f"query={EXPR}&start={START_S}&end={START_S + PER_SERIES * STEP_S}&step={STEP_S}".encode()
        workers = worker_pids(bench.gateway_pid)
        wrote = {pid: written_bytes(pid) for pid in workers}
        sampler = RssSampler(workers) if points == max(SIZES) else None
        if sampler is not None:
            with sampler:  # the first big request: what it costs a worker that has not served one
                _, answer = bench.ds_query([query(uid)], f"{points} points (warm-up)")
            served = max(sampler.pids, key=lambda pid: written_bytes(pid) - wrote[pid])
            growth = sampler.growth_mib(served)
        else:
            _, answer = bench.ds_query([query(uid)], f"{points} points (warm-up)")
        gateway_frames = json.loads(answer)["results"]["A"]["frames"]
        _, _, raw = timed("POST", upstream, form)
        reference = json.loads(reference_frames(raw, "A", EXPR, step_ms))["results"]["A"]["frames"]
        if [f["data"]["values"] for f in gateway_frames] != [f["data"]["values"] for f in reference]:
            raise BenchError(f"{points} points: gateway's frames hold other values than the reference conversion")
        gateway_runs, reference_runs = [], []
        size = len(answer)
        with bench.foreign.watch(f"{points} points"):
            for _ in range(reps):
                gateway_runs.append(bench.ds_query([query(uid)], f"{points} points")[0])
                began = time.perf_counter()
                _, status, raw = timed("POST", upstream, form)
                size_ref = len(reference_frames(raw, "A", EXPR, step_ms))
                reference_runs.append(time.perf_counter() - began)
                if status != 200 or not size_ref:
                    raise BenchError(f"the stub answered HTTP {status}")
        out.append(Conversion(points, size, statistics.median(gateway_runs), statistics.median(reference_runs)))
        print(f"{points:,} points: gateway {out[-1].gateway_s * 1000:.0f} ms, reference"
              f" {out[-1].reference_s * 1000:.0f} ms, {size:,} bytes", flush=True)
    _, _, raw = timed("POST", f"{bench.stub}/big/{max(SIZES)}/api/v1/query_range", b"")
    encoder, _ = encoder_mb_per_s(raw, max(1, bench.args.reps // 2))
    print(f"encoder alone at {max(SIZES):,} points: {encoder:,.0f} MB/s", flush=True)
    return out, growth, encoder


def throughput(bench: Bench, fast: str) -> tuple[dict[str, float], dict[str, float]]:
    """wrk against a one-query /api/ds/query and against the proxy, both to the nginx stub."""
    bench.add_prometheus("fast", fast)
    body = ds_query_body([query("fast")]).decode()
    bench.ds_query([query("fast")], "small query through the nginx stub")
    form = f"query={EXPR}&start={START_S}&end={START_S + 600}&step={STEP_S}"
    proxy_url = f"{bench.gateway}/api/datasources/proxy/uid/fast/api/v1/query_range"
    status, answer = http("POST", proxy_url, form.encode())
    if status != 200 or not answer.startswith(b'{"status":"success"'):
        raise BenchError(f"the proxy to the stub answered HTTP {status}: {answer[:300]!r}")
    runs = {}
    for label, url, text, kind in (("query", f"{bench.gateway}/api/ds/query", body, "application/json"),
                                   ("proxy", proxy_url, form, "application/x-www-form-urlencoded")):
        bench.wrk(url, "POST", text, kind, f"{label}-warm-up")
        runs[label] = bench.wrk(url, "POST", text, kind, label)
        print(f"{label}: {runs[label]['rps']:,.0f} req/s, p50 {runs[label]['p50_ms']:.2f} ms", flush=True)
    return runs["query"], runs["proxy"]


# ---------------------------------------------------------------- report


def report(header: list[str], fan: list[tuple[int, float, float]], conv: list[Conversion], growth: float | None,
           encoder: float, small: tuple[dict[str, float], dict[str, float]], notes: list[str]) -> str:
    aims: list[tuple[str, float, str, bool]] = []
    lines = [*header, "", "### (a) fan-out: one /api/ds/query with N queries, each upstream answering in"
             f" {UPSTREAM_DELAY_MS} ms", "",
             "| N | /api/ds/query, ms | one backend, ms | ratio | aim |", "|---:|---:|---:|---:|---|"]
    for n, gateway_s, direct_s in fan:
        value = gateway_s / direct_s
        target = 1.10 if n <= 100 else 1.20
        lines.append(f"| {n} | {gateway_s * 1000:.1f} | {direct_s * 1000:.1f} | {value:.3f} | ≤ {target:.2f} |")
        aims.append((f"fan-out N={n}: /api/ds/query / one backend", value, f"≤ {target:.2f}", value <= target))
    lines += ["", "### (b) a matrix answer to response bytes: gateway vs a plain stdlib-json conversion", "",
              "| points | response bytes | gateway, ms | reference, ms | reference / gateway | gateway MB/s |",
              "|---:|---:|---:|---:|---:|---:|"]
    for row in conv:
        value = row.reference_s / row.gateway_s
        lines.append(f"| {row.points:,} | {row.response_bytes:,} | {row.gateway_s * 1000:.0f} |"
                     f" {row.reference_s * 1000:.0f} | {value:.1f} | {row.response_bytes / row.gateway_s / 1e6:.0f} |")
        aims.append((f"{row.points:,} points: reference / gateway, end to end", value, "≥ 10", value >= 10))
    aims.append((f"encoder alone at {max(SIZES):,} points, MB/s", encoder, "≥ 350", encoder >= 350))
    if growth is not None:
        aims.append((f"serving worker's peak RSS growth, {max(SIZES):,}-point request, MiB", growth, "≤ 250",
                     growth <= 250))
    query_run, proxy_run = small
    lines += ["", "### (c) small queries: wrk -t2 -c64 against the same fast stub", "",
              "| path | req/s | p50, ms | p99, ms |", "|---|---:|---:|---:|",
              f"| /api/ds/query, one query | {query_run['rps']:,.0f} | {query_run['p50_ms']:.2f} |"
              f" {query_run['p99_ms']:.2f} |",
              f"| proxy, query_range | {proxy_run['rps']:,.0f} | {proxy_run['p50_ms']:.2f} |"
              f" {proxy_run['p99_ms']:.2f} |"]
    value = query_run["rps"] / proxy_run["rps"]
    aims.append(("small /api/ds/query req/s / proxy req/s", value, "≥ 0.5", value >= 0.5))
    lines += ["", "### aims", "", "| measurement | value | aim | |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {value:,.3f} | {target} | {'met' if met else 'missed'} |"
              for name, value, target, met in aims]
    lines += ["", "Notes:",
              "- (a) and (b) are medians; gateway and the direct or reference run alternate, so both see the"
              " same machine; times are from sending the request to its last byte (urllib, this process)",
              "- (b) reference: the same answer fetched from the stub, json.loads, one frame per series with"
              " Time and the value field (labels, legend, NaN/±Inf as entities), json.dumps; before timing,"
              " its data values are checked equal to gateway's",
              "- (b) encoder alone: gateway.frames.encode_json on the 1e6 points' frames built in this process;"
              " peak RSS growth: VmRSS of the worker that served the first 1e6-point request, sampled every"
              " 50 ms, max during - before",
              "- (c) the stub is nginx answering a fixed small matrix to any path; the proxy runs POST"
              " api/v1/query_range with the same form the backend sends"]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 repetitions, 2 s wrk runs")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 5)")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each wrk run (default 5)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="gateway workers")
    parser.add_argument("--database-url", help="PostgreSQL server to create the run's database on")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)  # internal: serve the stub on this port
    args = parser.parse_args(argv)
    args.reps = args.reps or (2 if args.quick else 5)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    if args.reps < 1 or args.seconds <= 0 or args.workers < 1:
        parser.error("--reps, --seconds and --workers must be positive")
    return args


def child_env(tmp: Path) -> dict[str, str]:
    return clean_env() | {"PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp)}


def start_stub(bench: Bench) -> Service:
    port = free_port()
    service = start("prometheus stub", [sys.executable, str(Path(__file__).resolve()), "--stub", str(port)],
                    bench.tmp / "stub.log", env=child_env(bench.tmp))
    wait_for(service, lambda: port_open(port), 120, f"listening on 127.0.0.1:{port}")
    bench.stub = f"http://127.0.0.1:{port}"
    return service


def start_fast_stub(bench: Bench) -> tuple[Service, str]:
    port = free_port()
    small = matrix(SMALL_POINTS).decode()
    body = (f"    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n"
            f"            default_type application/json;\n            return 200 '{small}';\n        }}\n    }}")
    service = start_nginx(bench.tools["nginx"], "nginx stub", bench.tmp / "nginx-stub", 1, body, port)
    return service, f"http://127.0.0.1:{port}/fast"


def start_gateway(bench: Bench, database_url: str) -> Service:
    port = free_port()
    service = gateway_process("gateway", bench.tmp, database_url, port, bench.args.workers)
    bench.gateway = f"http://127.0.0.1:{port}"
    bench.gateway_pid = service.proc.pid
    return service


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stub:
        stub_main(args.stub)
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tools = ensure_tools()
    tool_versions = versions(tools)
    load_before = loadavg()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-query-"))
    bench = Bench(args, tools, tmp)
    server_url = database_name = None
    try:
        server_url, source = database_server(args.database_url)
        database_name = f"bench_{secrets.token_hex(5)}"
        asyncio.run(_execute(server_url, f'CREATE DATABASE "{database_name}"'))
        database_url = _with_database(server_url, database_name)
        print("starting the stubs and gateway ...", flush=True)
        bench.services.append(start_stub(bench))
        nginx_stub, fast = start_fast_stub(bench)
        bench.services.append(nginx_stub)
        bench.services.append(start_gateway(bench, database_url))
        bench.add_prometheus("probe", f"{bench.stub}/slow/0")
        bench.ds_query([query("probe")], "the first Prometheus query")  # stops here without a backend
        fan = fan_out(bench)
        conv, growth, encoder = conversion(bench)
        small = throughput(bench, fast)
        header = [
            "## gateway query benchmark", "",
            f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
            f"- date: {started}",
            f"- machine: {os.cpu_count()} cores, {platform.system()} {platform.release()};"
            f" load average before the run {load_before}, after {loadavg()}",
            f"- gateway workers: {args.workers}; gateway at {git_commit()}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in tool_versions.items() if k != "curl"),
            f"- {args.reps} repetitions per measurement, wrk runs of {args.seconds:g} s;"
            f" database {redact(database_url)} ({source})",
            f"- other processes on this machine used {bench.foreign.summary()}"
            + (": **the numbers are disturbed, run again on a quiet machine**" if bench.foreign.mean() > 0.1
               else ""),
        ]
        return publish(report(header, fan, conv, growth, encoder, small, bench.notes), args.markdown)
    except BenchError as exc:
        return report_failure(exc, bench.services)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        clean_up(bench.services, server_url, database_name, tmp)


if __name__ == "__main__":
    sys.exit(main())
