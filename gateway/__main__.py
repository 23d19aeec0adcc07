"""python -m gateway: serve (default), migrate, check-config, service-accounts, secrets, datasources export."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from types import FrameType

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.accounts import ROLES, AccountStore
from gateway.app import SERVER_OPTIONS, create_app, open_database
from gateway.config import Config, ConfigError
from gateway.crypto import SecretKeyMismatch, unwrap_key, wrap_key
from gateway.datasources.store import DataSourceStore
from gateway.db import DatabaseUnreachable
from gateway.embedded import start_embedded_postgres
from gateway.errors import DatabaseUnavailable, GatewayError, ProvisioningFailed
from gateway.keys import draining_key, peers_key
from gateway.logs import configure as configure_logging
from gateway.provisioning import export

log = logging.getLogger("gateway")


def _config(args: argparse.Namespace) -> Config:
    config = Config.from_env(os.environ, args.config)
    if not config.database.url:
        url = start_embedded_postgres(config.paths.data)
        config = msgspec.structs.replace(config, database=msgspec.structs.replace(config.database, url=url))
    return config


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _retain_freed_memory() -> None:
    """Stop glibc from handing every freed body chunk back to the kernel.

    By default glibc raises its mmap threshold after the first large free and then trims the heap's top
    whenever more than twice that is free: every streamed chunk of a few hundred KiB costs a brk() to grow,
    fresh zeroed pages to fault in and a brk() to shrink. Fixed thresholds keep up to 64 MiB of freed heap
    for reuse (each chunk is bounded by the upstream client's 1 MiB read buffer, so the heap stays near
    what the busiest moment needed); measured here, 1 MiB responses through the proxy went from ~1.05k to
    ~1.8k requests/s on one worker. A no-op where the C library has no mallopt (or, as musl, ignores it).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)


# Shutdown, from the first SIGTERM or SIGINT (README, "Shutdown"): /api/health answers 503 at once; the
# listener stays open for min(DRAIN_SECONDS, shutdown_timeout / 2) so the pod can leave the load balancer's
# rotation, new requests meanwhile served as usual but each response closing its connection; then the
# listener closes and the worker waits for the requests in flight; at shutdown_timeout whatever still runs
# is cancelled; cleanup_ctx runs and the process is gone within shutdown_timeout + SHUTDOWN_MARGIN.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
DRAIN_SECONDS = 5.0
SHUTDOWN_MARGIN = 1.0
_CANCEL_WAIT = 0.25  # aiohttp's wait (per phase) for a cancelled handler to unwind, inside SHUTDOWN_MARGIN


class CannotListen(Exception):
    """[server] http_addr:http_port could not be bound (in use, not a local address, a privileged port)."""


class _NoRequestEchoes(logging.Filter):
    """aiohttp logs a malformed request with a traceback that quotes the offending line, an Authorization
    header included: log one line naming the error instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "malformed request refused: %s", (type(error).__name__,), None, None)
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _serve_worker(config: Config, sock: socket.socket | None, peers: str | None = None) -> None:
    _retain_freed_memory()
    configure_logging(config)
    logging.getLogger("aiohttp.server").addFilter(_NoRequestEchoes())
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_serve(config, sock, peers))


async def _serve(config: Config, sock: socket.socket | None, peers: str | None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop within [server] shutdown_timeout (+ the margin)."""
    loop = asyncio.get_running_loop()
    budget = max(config.server.shutdown_timeout, 0.0)
    app = create_app(config, provision=False)  # main() applied the files before the workers started
    if peers is not None:
        app[peers_key] = peers
    app.on_response_prepare.append(_close_while_draining)
    signalled: asyncio.Future[float] = loop.create_future()  # loop.time() of the first signal

    def on_signal(signum: int) -> None:
        if signalled.done():
            return  # Ctrl+C reaches a worker from the terminal and again from the parent: one shutdown
        signalled.set_result(loop.time())
        app[draining_key].set()
        _exit_after(budget + SHUTDOWN_MARGIN)
        log.info("%s: draining (pid %d), requests still running in %gs are cancelled", signal.Signals(signum).name,
                 os.getpid(), budget)

    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # serve() blocks them across the fork
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_CANCEL_WAIT, **SERVER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    try:
        if not signalled.done():  # a signal during startup: never start listening
            site: web.BaseSite
            if sock is not None:
                site = web.SockSite(runner, sock)
            else:
                site = web.TCPSite(runner, config.server.http_addr or None, config.server.http_port)
            try:
                await site.start()
            except OSError as error:
                raise CannotListen(f"{config.server.http_addr or '*'}:{config.server.http_port}: {error}") from None
            log.info("serving (pid %d)", os.getpid())
            # what startup made (modules, the app, its config and clients) lives as long as the worker: out of
            # the cyclic GC's sight, a full collection scans only what requests made (~33 -> ~4 ms each here)
            gc.collect()
            gc.freeze()
            await _drain(runner, await signalled, budget)
    finally:
        if signalled.done():
            try:
                async with asyncio.timeout_at(signalled.result() + budget + SHUTDOWN_MARGIN / 2):
                    await runner.cleanup()  # cancelled handlers unwind (2 x _CANCEL_WAIT at most), cleanup_ctx
            except TimeoutError:
                log.warning("shutdown: cleanup did not finish within %gs of shutdown_timeout", SHUTDOWN_MARGIN / 2)
        else:
            await runner.cleanup()


async def _drain(runner: web.AppRunner, signalled_at: float, budget: float) -> None:
    """Keep serving for the drain period, stop listening, wait for requests in flight until the deadline."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(signalled_at + min(DRAIN_SECONDS, budget / 2) - loop.time())
    for site in runner.sites:
        await site.stop()
    await asyncio.sleep(0)  # connections accepted just before get their handler before the idle ones close
    server = runner.server
    assert server is not None
    server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their response
    try:
        async with asyncio.timeout_at(signalled_at + budget):
            await server.shutdown(None)  # returns when the last handler has finished
    except TimeoutError:
        # aiohttp's own shutdown(timeout) would wait `timeout` again after cancelling: abort instead, as a
        # client leaving does, so handler_cancellation cancels each handler right away
        busy = [conn.transport for conn in server.connections if conn.transport is not None]
        log.warning("shutdown_timeout: cancelling %d request(s) still running", len(busy))
        for transport in busy:
            transport.abort()


async def _close_while_draining(request: web.Request, response: web.StreamResponse) -> None:
    """While draining, every response closes its connection: a keep-alive client reconnects to a ready pod."""
    if request.app[draining_key].is_set() and response.status != 101:  # a WebSocket upgrade needs its own
        response.force_close()
        response.headers["Connection"] = "close"


def _exit_after(seconds: float) -> None:
    """The last resort: end the process after `seconds` if a handler or cleanup step ignores cancellation."""

    def overrun() -> None:
        log.error("shutdown overran shutdown_timeout + %gs: exiting now", SHUTDOWN_MARGIN)
        os._exit(1)

    timer = threading.Timer(seconds, overrun)
    timer.daemon = True
    timer.start()


def serve(config: Config) -> None:
    """Serve on [server] http_addr:http_port with [server] workers processes sharing one socket."""
    host = config.server.http_addr or "0.0.0.0"  # noqa: S104 - Grafana's default: every interface
    shown = config.server.http_addr or "localhost"
    workers = config.worker_count
    print(
        f"gateway serving Grafana's data source API on http://{shown}:{config.server.http_port}/api"
        f" ({workers} worker{'s' if workers > 1 else ''}); log in as {config.security.admin_user!r},"
        f" e.g. curl -u {config.security.admin_user}:<password> http://{shown}:{config.server.http_port}/api/datasources",
        flush=True,
    )
    if workers == 1:
        _serve_worker(config, None)
        return
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, config.server.http_port))
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise CannotListen(f"{host}:{config.server.http_port}: {error}") from None
    sock.set_inheritable(True)
    # the workers answer each other's metrics here, so one scrape has them all (gateway.metrics); private
    # to this user (mkdtemp makes it 0700), and removed with every socket in it when the workers are gone
    peers = tempfile.mkdtemp(prefix="gateway-metrics-")
    context = multiprocessing.get_context("fork")

    def start(dead: BaseProcess | None = None) -> BaseProcess:
        if dead is not None:  # killed outright, it left its metrics socket: every scrape would knock on it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(peers, f"{dead.pid}.sock"))
        process = context.Process(target=_serve_worker, args=(config, sock, peers), daemon=False)
        process.start()
        return process

    # blocked until each process handles them: a signal during the forks is held, not lost or fatal
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        processes = [start() for _ in range(workers)]
        # the parent keeps the socket to start replacements; it closes it on the first signal, so once the last
        # worker stops listening new connections are refused
        code = _supervise(processes, max(config.server.shutdown_timeout, 0.0) + SHUTDOWN_MARGIN, start, sock.close)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        sock.close()
        shutil.rmtree(peers, ignore_errors=True)
    if code:
        sys.exit(code)


# a worker that dies is replaced, unless workers died this often within the window: a crash loop stops the server
RESTART_LIMIT = 5
RESTART_WINDOW = 30.0


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def _supervise(processes: list[BaseProcess], grace: float,
               start: Callable[[BaseProcess | None], BaseProcess] | None = None,
               on_signal: Callable[[], None] | None = None) -> int:
    """Wait for the workers, replacing one that dies (RESTART_LIMIT per RESTART_WINDOW at most); pass SIGTERM
    and SIGINT on to them and SIGKILL those still running `grace` later. Returns the exit status for the server:
    1 when a crash loop stopped it, else 0."""
    restarts: deque[float] = deque(maxlen=RESTART_LIMIT)
    status = 0
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    previous_wakeup = signal.set_wakeup_fd(wake_w)  # the signal's number is written there, waking wait()
    previous = {signum: signal.signal(signum, _note_signal) for signum in SIGNALS}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    deadline: float | None = None
    try:
        while True:
            # one look at who exited (exitcode reaps): a worker reaped here but not replaced would be waited for
            # nowhere (its pipe closes a moment before it can be reaped, so a wait can wake too early for it)
            running = [process for process in processes if process.exitcode is None]
            if deadline is None and start is not None and len(running) < len(processes):
                deadline, status = _replace_dead(processes, start, restarts, grace, on_signal)
                continue
            if not running:
                break
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                log.warning("worker(s) %s still running %gs after the signal: killing them",
                            ", ".join(str(process.pid) for process in running), grace)
                for process in running:
                    process.kill()
                for process in running:
                    process.join(grace)
                return status
            ready = multiprocessing.connection.wait([wake_r, *(process.sentinel for process in running)], timeout)
            if wake_r not in ready:
                continue
            for signum in os.read(wake_r, 64):
                if signum not in SIGNALS:
                    continue
                if deadline is None:
                    deadline = time.monotonic() + grace
                    log.info("%s: passing it on to %d worker(s)", signal.Signals(signum).name, len(running))
                    if on_signal is not None:
                        on_signal()
                for process in running:  # not reaped yet (exitcode None above), so the pid is still theirs
                    assert process.pid is not None
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signum)
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wake_r)
        os.close(wake_w)
    return status


def _replace_dead(processes: list[BaseProcess], start: Callable[[BaseProcess | None], BaseProcess],
                  restarts: deque[float], grace: float, on_stop: Callable[[], None] | None) -> tuple[float | None, int]:
    """Start a worker in place of each dead one and log it; on a crash loop stop the others instead and return
    (the deadline to kill them, exit status 1)."""
    for index, process in enumerate(processes):
        if process.exitcode is None:
            continue
        now = time.monotonic()
        if len(restarts) == RESTART_LIMIT and now - restarts[0] < RESTART_WINDOW:
            log.error("worker %d died (%s); %d workers died within %gs: stopping the server", process.pid,
                      _exit_reason(process.exitcode), RESTART_LIMIT + 1, RESTART_WINDOW)
            if on_stop is not None:
                on_stop()
            for other in processes:
                if other.exitcode is None and other.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(other.pid, signal.SIGTERM)
            return now + grace, 1
        restarts.append(now)
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # the new worker unblocks them once it handles them
        try:
            processes[index] = start(process)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        log.warning("worker %d died (%s): started worker %d in its place", process.pid,
                    _exit_reason(process.exitcode), processes[index].pid)
    return None, 0


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """A Python-level handler, so the signal is caught and its number reaches the wakeup fd."""


async def _migrate(config: Config) -> None:
    """Apply migrations, create the first data key and apply the provisioning files (unless a replica applied
    the same ones) under the replicas' lock, then disconnect; serve's workers rely on it for the files."""
    db, _ = await open_database(config)
    await db.close()


async def _create_service_account(config: Config, args: argparse.Namespace) -> None:
    db, _ = await open_database(config)
    try:
        permissions = []
        for grant in args.permission or []:
            action, _, scope = grant.partition("=")
            permissions.append((action, scope))
        accounts = AccountStore(db)
        row = await accounts.create_service_account(args.org_id, args.name, args.role, False, tuple(permissions))
        _, _, token = await accounts.create_token(args.org_id, row["id"], args.token_name or args.name)
        print(token)
    finally:
        await db.close()


async def _rotate_secret_key(config: Config, old_key: str) -> None:
    """Re-wrap every data key from `old_key` to the configured [security] secret_key."""
    import asyncpg

    from gateway.sql import load_queries

    queries = load_queries()
    conn = await asyncpg.connect(config.database.url)
    try:
        async with conn.transaction():
            rows = await conn.fetch(queries["list_data_keys"] + " FOR UPDATE")
            rotated = 0
            for row in rows:
                try:
                    unwrap_key(config.security.secret_key, row["id"], row["kek_salt"], row["encrypted_key"])
                    continue  # already under the new key
                except SecretKeyMismatch:
                    pass
                key = unwrap_key(old_key, row["id"], row["kek_salt"], row["encrypted_key"])
                salt, wrapped = wrap_key(config.security.secret_key, row["id"], key)
                await conn.execute(queries["rewrap_data_key"], row["id"], salt, wrapped)
                rotated += 1
    finally:
        await conn.close()
    print(f"re-encrypted {rotated} data key(s) under the configured secret_key")


async def _export_data_sources(config: Config, org_id: int, with_secrets: bool) -> str:
    """The org's data sources as a provisioning file."""
    db, box = await open_database(config, provision=False)
    try:
        sources = await DataSourceStore(db).list_data_sources(org_id, 0)
    finally:
        await db.close()
    return export(sources, box, org_id, with_secrets)


def _write_export(text: str, output: str | None) -> None:
    if not output or output == "-":
        sys.stdout.write(text)
        return
    # the file may hold decrypted secrets: readable by its owner only
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
    except OSError as error:  # not the database's: main() reads any other OSError as one
        sys.exit(f"gateway: cannot write {output}: {error.strerror or error}")


def _org_id(text: str) -> int:
    """An org id as the database holds it (bigint), refused by argparse with its usage line otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"not an org id (1 to 2^63 - 1): {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--config", help="custom INI file, applied over the embedded defaults")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the API (default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    commands.add_parser("check-config", help="validate the configuration and exit")
    accounts = commands.add_parser("service-accounts", help="manage service accounts").add_subparsers(dest="action")
    create = accounts.add_parser("create", help="create a service account and print a new token for it")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=ROLES, default="Viewer")
    create.add_argument("--org-id", type=_org_id, default=1)
    create.add_argument("--token-name")
    create.add_argument("--permission", action="append", metavar="ACTION=SCOPE",
                        help="extra grant, e.g. datasources:query=datasources:uid:abc (repeatable)")
    secrets_cmd = commands.add_parser("secrets", help="manage encryption keys").add_subparsers(dest="action")
    rotate = secrets_cmd.add_parser("rotate", help="re-encrypt data keys from --old-key to [security] secret_key")
    rotate.add_argument("--old-key", required=True)
    sources = commands.add_parser("datasources", help="data sources").add_subparsers(dest="action")
    exporter = sources.add_parser("export", help="write the org's data sources as a provisioning file")
    exporter.add_argument("--org-id", type=_org_id, default=1)
    exporter.add_argument("--with-secrets", action="store_true",
                          help="include secureJsonData, decrypted (the file then holds every secret)")
    exporter.add_argument("-o", "--output", help="file to write (mode 0600); default: standard output")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gateway` and `python -m gateway`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            config = Config.from_env(os.environ, args.config)
            print(f"configuration is valid: {config.server.http_addr or '*'}:{config.server.http_port}")
            return
        config = _config(args)
        configure_logging(config)
        if args.command in (None, "serve"):
            asyncio.run(_migrate(config))  # once before the workers start, failing fast with one clear line
            serve(config)
        elif args.command == "migrate":
            asyncio.run(_migrate(config))
            print("migrations applied")
        elif args.command == "service-accounts" and args.action == "create":
            asyncio.run(_create_service_account(config, args))
        elif args.command == "secrets" and args.action == "rotate":
            asyncio.run(_rotate_secret_key(config, args.old_key))
        elif args.command == "datasources" and args.action == "export":
            _write_export(asyncio.run(_export_data_sources(config, args.org_id, args.with_secrets)), args.output)
        else:
            _parser().print_help()
            sys.exit(2)
    except ConfigError as error:
        sys.exit(f"gateway: {error}")
    except SecretKeyMismatch as error:
        sys.exit(
            f"gateway: [security] secret_key cannot decrypt data key {error}; if the key was changed,"
            " run: gateway secrets rotate --old-key <previous key>"
        )
    except DatabaseUnreachable as error:
        log.error("%s", error)
        sys.exit(f"gateway: {error}")
    except ProvisioningFailed as error:
        sys.exit(f"gateway: provisioning: {error.message}")
    except CannotListen as error:
        sys.exit(f"gateway: cannot listen on {error}")
    except (OSError, TimeoutError, DatabaseUnavailable) as error:
        sys.exit(f"gateway: cannot reach the database at [database] url: {error}")
    except GatewayError as error:  # a command's own refusal, e.g. an org that does not exist
        sys.exit(f"gateway: {error.message}")


if __name__ == "__main__":
    main()
