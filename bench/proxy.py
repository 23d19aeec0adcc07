"""Benchmark the data source proxy against nginx, in one run, and print a markdown table.

Three paths to the same nginx upstream serving static files, measured back to back per scenario:

  direct       wrk -> upstream nginx
  nginx-proxy  wrk -> a second nginx (proxy_pass, upstream keepalive 64, HTTP/1.1) -> upstream nginx
  gateway      wrk -> gateway /api/datasources/proxy/uid/bench/<file> (admin basic auth) -> upstream nginx

Scenarios: small.json saturated (wrk -t2 -c64: req/s, p50, p99), small.json at low load (wrk -t1 -c1: p50,
and gateway's added latency over nginx-proxy), 1 MiB bodies (wrk -t2 -c16: req/s) and one 1 GiB stream
(curl: MB/s, and the gateway worker's peak RSS growth while it streams).

    .venv/bin/python bench/proxy.py                  # full run, 10 s per wrk run, 1 GiB stream (~3 minutes)
    .venv/bin/python bench/proxy.py --quick          # smoke test: 3 s runs, 256 MiB stream
    .venv/bin/python bench/proxy.py --rounds 3       # each scenario 3 times, interleaved; medians (less noise)
    .venv/bin/python bench/proxy.py --markdown bench.md --workers 2 --database-url postgresql://...
    .venv/bin/python bench/proxy.py --metrics off    # gateway with [metrics] enabled = false (default: on);
                                                     # run off then on back to back for the metrics' cost

Needs nginx, wrk and curl (installed with apt-get when missing and running as root) and a PostgreSQL:
--database-url, else GATEWAY_TEST_DATABASE_URL, else 127.0.0.1:5432 if it answers, else an embedded one.
A fresh database bench_<random> is created for the run and dropped at the end. Every request goes to
127.0.0.1; everything started is stopped at the end, also on Ctrl-C.

The gateway runs as `python -m gateway` from this checkout's work tree (the header says which commit, and
whether gateway/ has uncommitted changes), with GF_* variables of the calling shell removed; the data source
is of an unknown type ("generic-http"), so it is proxied with the default rules. The upstream's files live on
tmpfs when there is one. The CPU that other processes used during the measured runs is reported, since a
2-core machine shared with anything else gives numbers that mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AUTH = "Basic " + base64.b64encode(b"admin:admin").decode()
DS_UID = "bench"
PATHS = ("direct", "nginx-proxy", "gateway")
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Environment variables that would send a client's requests elsewhere or reconfigure the gateway.
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}

WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\\"requests\\":%.0f,\\"duration_us\\":%.0f,\\"bytes\\":%.0f,\\"p50_us\\":%.0f,\\"p99_us\\":%.0f,"
    .. "\\"connect\\":%.0f,\\"read\\":%.0f,\\"write\\":%.0f,\\"status\\":%.0f,\\"timeout\\":%.0f}\\n",
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    """This process's environment without proxy settings and without GF_* overrides."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS and not k.startswith("GF_")}


def run(cmd: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{shlex.join(cmd)} did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} exited {result.returncode}: {(result.stderr or result.stdout)[-2000:]}")
    return result


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request to 127.0.0.1 with admin basic auth; returns (status, body)."""
    assert url.startswith("http://127.0.0.1:"), url
    headers = {"Authorization": AUTH}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def ensure_tools() -> dict[str, str]:
    """nginx, wrk and curl, installed with apt-get when missing."""
    missing = [name for name in ("nginx", "wrk", "curl") if find_binary(name) is None]
    if missing:
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            raise BenchError(f"missing {', '.join(missing)}: install them (apt-get install -y {' '.join(missing)})")
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = clean_env() | {"DEBIAN_FRONTEND": "noninteractive"}
        for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", *missing]):
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
            if result.returncode != 0:
                raise BenchError(f"{shlex.join(cmd)} failed: {result.stderr[-2000:]}")
    tools = {}
    for name in ("nginx", "wrk", "curl"):
        path = find_binary(name)
        if path is None:
            raise BenchError(f"{name} is still missing after apt-get install")
        tools[name] = path
    return tools


def versions(tools: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    nginx = run([tools["nginx"], "-v"], 10, check=False)
    out["nginx"] = (nginx.stderr or nginx.stdout).strip().removeprefix("nginx version: ").removeprefix("nginx/")
    wrk = run([tools["wrk"], "-v"], 10, check=False)
    first = (wrk.stdout or wrk.stderr).strip().splitlines()
    out["wrk"] = first[0].split(" Copyright")[0].removeprefix("wrk ") if first else "?"
    curl = run([tools["curl"], "--version"], 10, check=False).stdout.split()
    out["curl"] = curl[1] if len(curl) > 1 else "?"
    out["python"] = platform.python_version()
    for module in ("aiohttp", "uvloop"):
        with contextlib.suppress(ImportError, AttributeError):
            out[module] = __import__(module).__version__
    return out


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    head = result.stdout.strip() or "?"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway", "sql"],
                                capture_output=True, text=True, timeout=10, check=False)
        if status.stdout.strip():
            head += " + uncommitted changes in the work tree"
    return head


# ---------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def worker_pids(parent: int) -> list[int]:
    """The processes that serve requests: the parent's children, or the parent itself when it has none."""
    return children(parent) or [parent]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def written_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent in user and system mode since boot, over all cores."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / CLK_TCK  # user, nice, system


def steal_seconds() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / CLK_TCK if len(fields) > 8 else 0.0


def own_children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk and curl, once waited for
    return usage.ru_utime + usage.ru_stime


class ForeignCpu:
    """How much CPU processes that are not part of the benchmark used while it measured.

    Machine-wide busy time minus the CPU of the services, of wrk/curl and of this process; as a share of
    all cores over the measured interval. Approximate (tick accounting), but it tells a disturbed run.
    """

    def __init__(self, own_pids: Callable[[], list[int]]) -> None:
        self.own_pids = own_pids
        self.runs: list[tuple[str, float]] = []
        self.steal: list[float] = []  # the hypervisor's share, per run

    def _own(self) -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        return cpu_seconds(self.own_pids()) + own_children_seconds() + me.ru_utime + me.ru_stime

    @contextlib.contextmanager
    def watch(self, label: str) -> Iterator[None]:
        busy, own, steal, start = machine_busy_seconds(), self._own(), steal_seconds(), time.monotonic()
        yield
        capacity = (time.monotonic() - start) * (os.cpu_count() or 1)
        foreign = (machine_busy_seconds() - busy) - (self._own() - own)
        self.runs.append((label, max(0.0, foreign) / capacity))
        self.steal.append((steal_seconds() - steal) / capacity)

    def summary(self) -> str:
        if not self.runs:
            return "?"
        mean = sum(share for _, share in self.runs) / len(self.runs)
        label, worst = max(self.runs, key=lambda run: run[1])
        steal = sum(self.steal) / len(self.steal)
        return (f"≈{mean:.0%} of the machine's CPU on average over the measured runs (most: {worst:.0%}, {label});"
                f" hypervisor steal ≈{steal:.0%}")

    def mean(self) -> float:
        return sum(share for _, share in self.runs) / len(self.runs) if self.runs else 0.0


class RssSampler:
    """Samples VmRSS of the given processes every `interval` seconds in a thread; keeps the maxima."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.before = {pid: rss_kib(pid) for pid in pids}
        self.peak = dict(self.before)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_kib(pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def growth_mib(self, pid: int) -> float:
        return (self.peak[pid] - self.before[pid]) / 1024


# ---------------------------------------------------------------- processes


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Signal the process, then kill its whole process group (it was started in its own session)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers: workers of a parent that died first
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def start(name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
          stop_signal: int = signal.SIGTERM) -> Service:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env or clean_env(), cwd=cwd, start_new_session=True)
    return Service(name, proc, log, stop_signal)


def wait_for(service: Service, ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise BenchError(f"{service.name} exited {service.proc.returncode} before {what}:\n{tail(service.log)}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise BenchError(f"{service.name}: no {what} within {timeout:.0f} s:\n{tail(service.log)}")


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{body}
}}
"""

UPSTREAM_BODY = """\
    types {{ application/json json; application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{ }}
    }}"""

PROXY_BODY = """\
    upstream files {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://files;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def start_nginx(nginx: str, name: str, prefix: Path, workers: int, body: str, port: int) -> Service:
    prefix.mkdir(parents=True)
    # Workers of a root master switch to an unprivileged user, which cannot read our 0700 temp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_COMMON.format(workers=workers, prefix=prefix, user=user, body=body))
    service = start(name, [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                    prefix / "stdout.log")
    service.log = prefix / "error.log"  # nginx reports there, also what goes wrong at startup
    wait_for(service, lambda: port_open(port), 15, f"listening on 127.0.0.1:{port}")
    return service


# ---------------------------------------------------------------- database


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


async def _execute(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement, timeout=60)
    finally:
        await conn.close()


async def _answers(url: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def database_server(option: str | None) -> tuple[str, str]:
    """(server URL, where it came from): --database-url, GATEWAY_TEST_DATABASE_URL, local :5432, embedded."""
    if option:
        return option, "--database-url"
    if url := os.environ.get("GATEWAY_TEST_DATABASE_URL"):
        return url, "GATEWAY_TEST_DATABASE_URL"
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if asyncio.run(_answers(local)):
        return local, "127.0.0.1:5432"
    print("no PostgreSQL on 127.0.0.1:5432: starting an embedded one ...", flush=True)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from gateway.embedded import start_embedded_postgres

    return start_embedded_postgres(os.path.join(tempfile.gettempdir(), "gateway-bench-pg")), "embedded"


def redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return scheme + sep + creds + at + host


# ---------------------------------------------------------------- measurements


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float

    @staticmethod
    def median(rounds: list[WrkResult]) -> WrkResult:
        """Each metric's median over the rounds (with one round: that round)."""
        return WrkResult(*(statistics.median(getattr(r, name) for r in rounds)
                           for name in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")))


@dataclass
class StreamResult:
    mb_per_s: float
    seconds: float
    rss_growth_mib: float | None = None  # the gateway worker that served the stream
    rss_growth_sum_mib: float | None = None  # summed over all gateway workers
    rss_peak_mib: float | None = None  # the serving worker's whole VmRSS at its peak
    rss_samples: int = 0

    @staticmethod
    def median(rounds: list[StreamResult]) -> StreamResult:
        """Median MB/s over the rounds; the largest RSS growth of any round."""
        out = StreamResult(statistics.median(r.mb_per_s for r in rounds), statistics.median(r.seconds for r in rounds))
        if rounds[0].rss_growth_mib is not None:
            out.rss_growth_mib = max(r.rss_growth_mib or 0.0 for r in rounds)
            out.rss_growth_sum_mib = max(r.rss_growth_sum_mib or 0.0 for r in rounds)
            out.rss_peak_mib = max(r.rss_peak_mib or 0.0 for r in rounds)
            out.rss_samples = sum(r.rss_samples for r in rounds)
        return out


def service_pids(services: list[Service]) -> list[int]:
    """The processes of the started services and their children (whose CPU is not "foreign")."""
    pids = []
    for service in services:
        pids += [service.proc.pid, *children(service.proc.pid)]
    return pids


@dataclass
class Bench:
    args: argparse.Namespace
    tools: dict[str, str]
    tmp: Path
    urls: dict[str, str] = field(default_factory=dict)  # path -> URL prefix the file name is appended to
    fronts: dict[str, int] = field(default_factory=dict)  # path -> pid of the process the client talks to
    gateway_pid: int = 0
    notes: list[str] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    foreign: ForeignCpu = field(init=False)

    def __post_init__(self) -> None:
        self.foreign = ForeignCpu(self.service_pids)

    def service_pids(self) -> list[int]:
        return service_pids(self.services)

    def wrk(self, path: str, file: str, threads: int, connections: int, seconds: float) -> WrkResult:
        lua = self.tmp / "report.lua"
        if not lua.exists():
            lua.write_text(WRK_LUA)
        url = self.urls[path] + file
        cmd = [self.tools["wrk"], f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
               "-s", str(lua), "-H", f"Authorization: {AUTH}", url]
        front = [*worker_pids(self.fronts[path]), self.fronts[path]]
        cpu_before = cpu_seconds(front)
        with self.foreign.watch(f"{path} {file} -c{connections}"):
            result = run(cmd, timeout=seconds + 60)
        cpu = cpu_seconds(front) - cpu_before
        line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            raise BenchError(f"no report from {shlex.join(cmd)}:\n{result.stdout}\n{result.stderr}")
        data = json.loads(line.removeprefix("BENCH "))
        errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout") if data[k]}
        requests = int(data["requests"])
        if errors:
            self.notes.append(f"{path} {file} -t{threads} -c{connections}: errors {errors} in {requests} requests"
                              " (status = non-2xx/3xx responses)")
        if requests == 0:
            raise BenchError(f"{shlex.join(cmd)} completed no request:\n{result.stdout}")
        return WrkResult(requests / (data["duration_us"] / 1e6), data["p50_us"] / 1000, data["p99_us"] / 1000,
                         cpu / requests * 1e6)

    def stream(self, path: str, file: str, size: int) -> StreamResult:
        cmd = [self.tools["curl"], "-s", "--noproxy", "*", "--max-time", "900", "-o", "/dev/null",
               "-H", f"Authorization: {AUTH}", "-w", "%{http_code} %{size_download} %{time_total}",
               self.urls[path] + file]
        sampler = None
        if path == "gateway":
            workers = worker_pids(self.gateway_pid)
            wrote = {pid: written_bytes(pid) for pid in workers}
            sampler = RssSampler(workers)
        with sampler or contextlib.nullcontext(), self.foreign.watch(f"{path} stream"):
            result = run(cmd, timeout=960)
        code, downloaded, seconds = result.stdout.split()
        if code != "200" or int(downloaded) != size:
            raise BenchError(f"{path} stream: HTTP {code}, {downloaded} of {size} bytes")
        out = StreamResult(size / float(seconds) / 1e6, float(seconds))
        if sampler is not None:
            served = max(sampler.pids, key=lambda pid: written_bytes(pid) - wrote[pid])
            out.rss_growth_mib = sampler.growth_mib(served)
            out.rss_growth_sum_mib = sum(sampler.growth_mib(pid) for pid in sampler.pids)
            out.rss_peak_mib = sampler.peak[served] / 1024
            out.rss_samples = sampler.samples
        return out


def stream_file(size: int) -> str:
    return "1gib.bin" if size == 1024 * MIB else f"{size // MIB}mib.bin"


def files_dir(tmp: Path) -> Path:
    """Where the upstream's files live: a tmpfs when there is one, else under `tmp`.

    Page cache can be dropped behind our back (some VMs reclaim it within a minute or two), and then
    reading a file, even the holes of a sparse one, means allocating fresh pages: on a VM that can be
    slower than the proxies under test. Holes of a sparse file on tmpfs read as the shared zero page.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="gateway-bench-www-", dir=shm))
    return tmp / "www"


def make_files(www: Path, stream_size: int) -> dict[str, bytes]:
    www.mkdir(parents=True, exist_ok=True)
    www.chmod(0o755)
    small = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []},
                        "padding": "x" * 24}).encode()
    (www / "small.json").write_bytes(small)
    mib = os.urandom(MIB)
    (www / "1mib.bin").write_bytes(mib)
    stream = www / stream_file(stream_size)
    with stream.open("wb") as f:
        f.truncate(stream_size)  # sparse: fast to make
    with stream.open("rb") as f:  # read once: the first read of a sparse file fills the page cache, slowly
        while f.read(8 * MIB):
            pass
    return {"small.json": small, "1mib.bin": mib}


def check_paths(bench: Bench, files: dict[str, bytes]) -> None:
    """Each path serves each file byte for byte before anything is measured."""
    for path in PATHS:
        for name, body in files.items():
            status, got = http("GET", bench.urls[path] + name, timeout=30)
            if status != 200 or hashlib.sha256(got).digest() != hashlib.sha256(body).digest():
                raise BenchError(f"{path}: GET {bench.urls[path]}{name} -> HTTP {status}, {len(got)} bytes"
                                 f" (expected 200, {len(body)} bytes): {got[:300]!r}")


# ---------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else ""


def report(header: list[str], results: dict[str, Any], notes: list[str], stream_label: str) -> str:
    sat: dict[str, WrkResult] = results["small_c64"]
    low: dict[str, WrkResult] = results["small_c1"]
    big: dict[str, WrkResult] = results["mib_c16"]
    stream: dict[str, StreamResult] = results["stream"]
    rows: list[tuple[str, str, dict[str, float | None], int, bool]] = [
        # (scenario, metric, values per path, digits, higher is better)
        ("small.json, wrk -t2 -c64", "req/s", {p: sat[p].rps for p in PATHS}, 0, True),
        ("small.json, wrk -t2 -c64", "p50 latency, ms", {p: sat[p].p50_ms for p in PATHS}, 3, False),
        ("small.json, wrk -t2 -c64", "p99 latency, ms", {p: sat[p].p99_ms for p in PATHS}, 3, False),
        ("small.json, wrk -t2 -c64", "front server CPU, µs/req", {p: sat[p].cpu_us_per_request for p in PATHS},
         1, False),
        ("small.json, wrk -t1 -c1", "req/s", {p: low[p].rps for p in PATHS}, 0, True),
        ("small.json, wrk -t1 -c1", "p50 latency, ms", {p: low[p].p50_ms for p in PATHS}, 3, False),
        ("small.json, wrk -t1 -c1", "p99 latency, ms", {p: low[p].p99_ms for p in PATHS}, 3, False),
        ("1mib.bin, wrk -t2 -c16", "req/s", {p: big[p].rps for p in PATHS}, 0, True),
        ("1mib.bin, wrk -t2 -c16", "p99 latency, ms", {p: big[p].p99_ms for p in PATHS}, 3, False),
        ("1mib.bin, wrk -t2 -c16", "front server CPU, µs/req", {p: big[p].cpu_us_per_request for p in PATHS},
         0, False),
        (f"{stream_label} stream, curl", "MB/s", {p: stream[p].mb_per_s for p in PATHS}, 0, True),
        (f"{stream_label} stream, curl", "peak RSS growth, MiB",
         {"direct": None, "nginx-proxy": None, "gateway": stream["gateway"].rss_growth_mib}, 1, False),
        (f"{stream_label} stream, curl", "peak RSS, MiB",
         {"direct": None, "nginx-proxy": None, "gateway": stream["gateway"].rss_peak_mib}, 1, False),
    ]
    lines = [*header, "",
             "| scenario | metric | direct | nginx-proxy | gateway | gateway / nginx-proxy | direct / nginx-proxy |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for scenario, metric, values, digits, _ in rows:
        cells = [fmt(values[p], digits) for p in PATHS]
        lines.append(f"| {scenario} | {metric} | {' | '.join(cells)} |"
                     f" {ratio(values['gateway'], values['nginx-proxy'])} |"
                     f" {ratio(values['direct'], values['nginx-proxy'])} |")
    added = low["gateway"].p50_ms - low["nginx-proxy"].p50_ms
    aims = [
        ("small.json req/s at -c64, gateway / nginx-proxy", sat["gateway"].rps / sat["nginx-proxy"].rps, 0.25,
         True, ""),
        ("1mib.bin req/s at -c16, gateway / nginx-proxy", big["gateway"].rps / big["nginx-proxy"].rps, 0.9,
         True, ""),
        (f"{stream_label} stream MB/s, gateway / nginx-proxy",
         stream["gateway"].mb_per_s / stream["nginx-proxy"].mb_per_s, 0.8, True, ""),
        ("added p50 latency at -c1, gateway - nginx-proxy", added, 0.3, False, " ms"),
    ]
    lines += ["", "| aim | value | target | |", "|---|---:|---:|---|"]
    for name, value, target, higher, unit in aims:
        met = value >= target if higher else value <= target
        sign = "+" if unit and value >= 0 else ""
        lines.append(f"| {name} | {sign}{value:.3f}{unit} | {'≥' if higher else '≤'} {target:g}{unit} |"
                     f" {'met' if met else 'missed'} |")
    gw = stream["gateway"]
    lines += ["", "Notes:",
              "- latency percentiles are wrk's (per request, µs resolution, from a lua `done` hook);"
              " MB/s is 10^6 bytes/s as curl measured it reading into /dev/null",
              "- front server CPU: user+system CPU of the process the client talks to (upstream nginx for direct,"
              " the proxy nginx, the gateway workers), per request; the upstream's own CPU is not included",
              f"- peak RSS growth: VmRSS of the gateway worker that served the stream, sampled every 50 ms"
              f" ({gw.rss_samples} samples), max during - before; summed over all workers:"
              f" {fmt(gw.rss_growth_sum_mib, 1)} MiB; peak RSS is that worker's whole VmRSS, which includes"
              " the heap glibc keeps from the earlier 1 MiB runs"]
    lines += [f"- {note}" for note in notes]
    if not notes:
        lines.append("- no wrk run saw an error or a non-2xx response")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="duration of each wrk run (default 10)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 s runs and a 256 MiB stream")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="gateway workers and nginx worker_processes (default: number of cores)")
    parser.add_argument("--database-url", help="PostgreSQL server to create the run's database on")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat each scenario's (direct, nginx-proxy, gateway) sequence; report medians")
    parser.add_argument("--metrics", choices=("on", "off"), default="on",
                        help="gateway's [metrics] enabled (default on: the instrumented hot path is measured)")
    parser.add_argument("--access-log", choices=("on", "off"), default="on",
                        help="gateway's [server] router_logging (default on, gateway's default: a line per request)")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0
    if args.seconds <= 0 or args.workers < 1 or args.rounds < 1:
        parser.error("--seconds, --workers and --rounds must be positive")
    args.stream_size = (256 if args.quick else 1024) * MIB
    return args


def gateway_process(name: str, tmp: Path, database_url: str, port: int, workers: int,
                    env: dict[str, str] | None = None) -> Service:
    """`python -m gateway` on 127.0.0.1:port with its data, log and temp files under `tmp` (and `env` on top),
    once GET /api/health answers 200."""
    full_env = clean_env() | {
        "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp), "GF_DATABASE_URL": database_url,
        "GF_SERVER_HTTP_PORT": str(port), "GF_SERVER_HTTP_ADDR": "127.0.0.1", "GF_SERVER_WORKERS": str(workers),
        "GF_SERVER_SHUTDOWN_TIMEOUT": "5", "GF_PATHS_DATA": str(tmp / f"{name}-data"), **(env or {}),
    }
    service = start(name, [sys.executable, "-m", "gateway"], tmp / f"{name}.log", env=full_env, cwd=ROOT)
    wait_for(service, lambda: http("GET", f"http://127.0.0.1:{port}/api/health", timeout=2)[0] == 200, 120,
             "GET /api/health answering 200")
    return service


def start_gateway(bench: Bench, database_url: str, port: int) -> Service:
    return gateway_process("gateway", bench.tmp, database_url, port, bench.args.workers, {
        "GF_METRICS_ENABLED": "true" if bench.args.metrics == "on" else "false",
        "GF_SERVER_ROUTER_LOGGING": "true" if bench.args.access_log == "on" else "false",
    })


def create_datasource(port: int, upstream: int) -> None:
    body = json.dumps({"name": "bench", "type": "generic-http", "access": "proxy",
                       "url": f"http://127.0.0.1:{upstream}", "uid": DS_UID}).encode()
    status, answer = http("POST", f"http://127.0.0.1:{port}/api/datasources", body)
    if status != 200:
        raise BenchError(f"POST /api/datasources -> HTTP {status}: {answer[:500]!r}")


def measure(bench: Bench) -> dict[str, Any]:
    seconds = bench.args.seconds
    results: dict[str, Any] = {}
    print(f"warming up: 1 s of small.json and of 1mib.bin per path ({', '.join(PATHS)}) ...", flush=True)
    for path in PATHS:
        bench.wrk(path, "small.json", 2, 64, 1)
        bench.wrk(path, "1mib.bin", 2, 16, 1)
    bench.notes.clear()  # errors while warming up are not results
    bench.foreign.runs.clear()
    plan: list[tuple[str, str, int, int]] = [
        ("small_c64", "small.json", 2, 64),
        ("small_c1", "small.json", 1, 1),
        ("mib_c16", "1mib.bin", 2, 16),
    ]
    rounds = bench.args.rounds
    for key, file, threads, connections in plan:
        runs: dict[str, list[WrkResult]] = {path: [] for path in PATHS}
        for n in range(rounds):
            for path in PATHS:
                label = f"{key}: {path} (wrk -t{threads} -c{connections} -d{seconds:g}s {file})"
                print(label + (f" round {n + 1}/{rounds}" if rounds > 1 else "") + " ...", end=" ", flush=True)
                result = bench.wrk(path, file, threads, connections, seconds)
                runs[path].append(result)
                print(f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms", flush=True)
        results[key] = {path: WrkResult.median(runs[path]) for path in PATHS}
    streams: dict[str, list[StreamResult]] = {path: [] for path in PATHS}
    for n in range(rounds):
        for path in PATHS:
            print(f"stream: {path} ({bench.args.stream_size // MIB} MiB)"
                  + (f" round {n + 1}/{rounds}" if rounds > 1 else "") + " ...", end=" ", flush=True)
            stream = bench.stream(path, stream_file(bench.args.stream_size), bench.args.stream_size)
            streams[path].append(stream)
            extra = f", RSS +{stream.rss_growth_mib:.1f} MiB" if stream.rss_growth_mib is not None else ""
            print(f"{stream.mb_per_s:,.0f} MB/s{extra}", flush=True)
    results["stream"] = {path: StreamResult.median(streams[path]) for path in PATHS}
    return results


def clean_up(services: list[Service], server_url: str | None, database_name: str | None, *dirs: Path,
             grace: float = 10.0) -> None:
    """A bench's end, also on Ctrl-C: stop the services (newest first), drop the run's database, remove its
    temp dirs; a second Ctrl-C must not cut this short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for service in reversed(services):
        service.stop(grace)
    if server_url and database_name:
        try:
            asyncio.run(_execute(server_url, f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)'))
        except Exception as exc:
            print(f"could not drop database {database_name}: {exc}", file=sys.stderr)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def publish(text: str, markdown: Path | None) -> int:
    """Print the report (and write it to `markdown` when given); the exit status of a finished run."""
    print()
    print(text, end="", flush=True)
    if markdown:
        markdown.write_text(text)
    return 0


def report_failure(error: BenchError, services: list[Service]) -> int:
    """Say why the run stopped, with the end of the log of each service that had exited; exit status 1."""
    print(f"\nbench failed: {error}", file=sys.stderr)
    for service in services:
        if not service.alive():
            print(f"\n{service.name} had exited with {service.proc.returncode}; the end of its log:\n"
                  f"{tail(service.log)}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tools = ensure_tools()
    tool_versions = versions(tools)
    load_before = loadavg()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    www = files_dir(tmp)
    services: list[Service] = []
    server_url = database_name = None
    try:
        bench = Bench(args, tools, tmp, services=services)
        server_url, source = database_server(args.database_url)
        database_name = f"bench_{secrets.token_hex(5)}"
        asyncio.run(_execute(server_url, f'CREATE DATABASE "{database_name}"'))
        database_url = _with_database(server_url, database_name)

        files = make_files(www, args.stream_size)
        upstream_port, proxy_port, gateway_port = free_port(), free_port(), free_port()
        upstream = start_nginx(tools["nginx"], "upstream nginx", tmp / "upstream", args.workers,
                               UPSTREAM_BODY.format(port=upstream_port, www=www), upstream_port)
        services.append(upstream)
        proxy = start_nginx(tools["nginx"], "proxy nginx", tmp / "proxy", args.workers,
                            PROXY_BODY.format(port=proxy_port, upstream=upstream_port), proxy_port)
        services.append(proxy)
        gateway = start_gateway(bench, database_url, gateway_port)
        services.append(gateway)
        create_datasource(gateway_port, upstream_port)

        bench.urls = {
            "direct": f"http://127.0.0.1:{upstream_port}/",
            "nginx-proxy": f"http://127.0.0.1:{proxy_port}/",
            "gateway": f"http://127.0.0.1:{gateway_port}/api/datasources/proxy/uid/{DS_UID}/",
        }
        bench.fronts = {"direct": upstream.proc.pid, "nginx-proxy": proxy.proc.pid, "gateway": gateway.proc.pid}
        bench.gateway_pid = gateway.proc.pid
        check_paths(bench, files)
        results = measure(bench)

        stream_label = f"{args.stream_size // MIB} MiB" if args.stream_size < 1024 * MIB else "1 GiB"
        header = [
            "## gateway proxy benchmark",
            "",
            f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
            f"- date: {started}",
            f"- machine: {os.cpu_count()} cores, {platform.system()} {platform.release()};"
            f" load average before the run {load_before}, after {loadavg()}",
            f"- gateway workers: {args.workers} (nginx worker_processes: {args.workers} each);"
            f" gateway at {git_commit()}, metrics {args.metrics}, access log {args.access_log}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in tool_versions.items()),
            f"- wrk runs of {args.seconds:g} s, back to back per scenario (direct, nginx-proxy, gateway)"
            + (f", {args.rounds} rounds of that, medians shown" if args.rounds > 1 else "") + ";"
            f" database {redact(database_url)} ({source})",
        ]
        disturbed = bench.foreign.mean() > 0.1
        header.append(f"- other processes on this machine used {bench.foreign.summary()}"
                      + (": **the numbers are disturbed, run again on a quiet machine**" if disturbed else ""))
        return publish(report(header, results, bench.notes, stream_label), args.markdown)
    except BenchError as exc:
        for service in services:
            if service.alive() and service.name == "gateway" and args.workers > 1 \
                    and len(children(service.proc.pid)) < args.workers:
                print(f"\ngateway has {len(children(service.proc.pid))} of {args.workers} workers left;"
                      f" the end of its log:\n{tail(service.log)}", file=sys.stderr)
        return report_failure(exc, services)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        clean_up(services, server_url, database_name, tmp, www)


if __name__ == "__main__":
    sys.exit(main())
