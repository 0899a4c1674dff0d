"""Running the gateway: ``serve()`` in one trio run, ``run_workers()`` for several processes.

``serve(config)`` owns everything app-lifetime: it opens the backend (the
built-in mock, or ``open_router_backend(config.upstream)``), builds the app,
runs Hypercorn's trio worker with a shutdown trigger, and reports the bound
``(host, port)`` through ``task_status.started``. SIGTERM or SIGINT (or
``shutdown_trigger`` returning) starts the drain:

1. Hypercorn stops accepting connections; ``/readyz`` answers 503 and new
   requests on open connections get 503 ``shutting_down``; requests still
   waiting for admission get 503 ``shutting_down`` at once;
2. admitted requests get ``drain_timeout`` seconds to finish;
3. the rest end with an SSE ``error`` event ``shutting_down`` (or a 503);
4. ``serve()`` returns (the CLI then exits 0).

With ``workers > 1``, :func:`run_workers` binds the socket once in the parent
and starts that many processes, each its own trio run serving the shared
socket. Each worker gets ``max_concurrency // workers`` (at least 1) and
``max_queued // workers`` of the admission limits, so the totals hold. The
workers answer each other's metrics over unix sockets in a private directory
of the run, so one scrape of ``/metrics`` reports the whole host
(``_metrics_workers``, docs/decisions/013).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

import trio

from ..concurrency import LoopLag
from ..config import ServerConfig, UpstreamConfig
from ..errors import ConfigError
from ..http import (
    HTTPConfig,
    abort_transport,
    bind_sockets,
    current_fd_limit,
    gc_threshold,
    raise_fd_limit,
    serve_http,
    set_after,
    watch_signals,
)
from ..llm import ChatBackend
from ._admission import Limits
from ._agent import open_gateway_agent
from ._app import Gateway, create_app
from ._connections import REFUSAL, max_connections_for
from ._metrics_workers import HostMetrics, WorkerPeers
from ._routes_info import render_metrics

if TYPE_CHECKING:
    from ..tracing._tracer import GatewayTracer

__all__ = ["http_config", "open_backend", "run_workers", "serve", "worker_config"]

logger = logging.getLogger("trio_agent.server")

# Seconds the server waits, after the drain deadline, for the last bytes to go out.
_FLUSH_GRACE = 2.0


@asynccontextmanager
async def open_backend(config: ServerConfig) -> AsyncIterator[ChatBackend]:
    """The backend ``config`` asks for: the upstream when set, else the in-process mock."""
    if config.upstream is not None:
        from ..llm import open_router_backend

        # One upstream or several, through the router: failover, ejection, fast failure.
        async with open_router_backend(upstream_for(config)) as backend:
            yield backend
    else:
        from ..llm import MockLLM

        yield MockLLM(config.mock)


def upstream_for(config: ServerConfig) -> UpstreamConfig:
    """``config.upstream`` with its pool sized to ``max_concurrency`` when it has no size set.

    Every admitted request holds one upstream connection (HTTP/1.1), so a pool
    smaller than the admission cap makes admitted requests queue inside httpx,
    where admission, its deadlines and its metrics do not see them, and the
    pool scans every waiter on each change (docs/decisions/004). An explicit
    smaller pool is kept, with a warning.
    """
    upstream = config.upstream
    assert upstream is not None
    if upstream.max_connections is None:
        return dataclasses.replace(upstream, max_connections=config.max_concurrency)
    if upstream.max_connections < config.max_concurrency:
        logger.warning(
            "upstream max_connections (%d) < max_concurrency (%d): admitted requests past "
            "the pool wait inside httpx",
            upstream.max_connections,
            config.max_concurrency,
        )
    return upstream


def http_config(config: ServerConfig, *, nofile: int | None = None) -> HTTPConfig:
    """The HTTP layer's part of ``config``.

    ``max_connections`` is ``config``'s, or derived from ``nofile`` (default:
    the descriptor limit in force) when it is None (see ``_connections``).

    Open streams get ``drain_timeout`` and then a short grace for their last
    bytes. The keep-alive timer runs from accept until a whole request head
    has arrived, and between requests: it bounds slowloris heads too. h11
    answers 431 to a head still incomplete past ``max_header_bytes``; the app
    checks the same limit on heads that arrived whole.
    """
    return HTTPConfig(
        host=config.host,
        port=config.port,
        graceful_timeout=config.drain_timeout + _FLUSH_GRACE,
        keep_alive_timeout=config.keep_alive_timeout,
        max_header_bytes=config.max_header_bytes,
        max_connections=max_connections_for(
            config, current_fd_limit().soft if nofile is None else nofile
        ),
    )


async def serve(
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    handle_signals: bool = True,
    sockets: Sequence[socket.socket] | None = None,
    backend: ChatBackend | None = None,
    on_app: Callable[[Gateway], None] | None = None,
    peers: WorkerPeers | None = None,
) -> None:
    """Serve the gateway until SIGTERM/SIGINT or ``shutdown_trigger``, then drain and return.

    ``task_status.started((host, port))`` reports the bound address (port 0
    picks a free one). ``handle_signals=False`` leaves the process's signal
    handlers alone (for embedding and tests). ``sockets`` are pre-bound
    sockets to serve (see :func:`run_workers`). ``backend`` replaces the one
    ``config`` would open (the caller then owns it); ``on_app`` sees the app
    once it is built. While it runs, Python's collector threshold for its
    youngest generation is ``config.gc_threshold`` (restored on return).
    ``peers`` makes this process one worker of several (:func:`run_workers`):
    it answers the others' metrics requests, and its ``/metrics`` the host's.
    """
    loop_lag = LoopLag()
    fd_limit = raise_fd_limit()
    http = http_config(config, nofile=fd_limit.soft)
    with gc_threshold(config.gc_threshold):
        async with (
            # Outermost: every span of the server ends before the last spans are flushed.
            _maybe_tracing(config) as tracing,
            _maybe_backend(config, backend) as be,
            _maybe_shared_limits(config, loop_lag) as limits,
            # The agent of the /agent routes: its MCP sessions are opened and closed in
            # this task's lifespan, around the whole of serving.
            open_gateway_agent(config, be) as agent,
        ):
            app = create_app(config, backend=be, limits=limits, loop_lag=loop_lag, agent=agent)
            app.abort_transport = abort_transport
            app.connections.refusal = REFUSAL
            if tracing is not None:
                app.metrics.tracing = tracing.statistics
            if on_app is not None:
                on_app(app)
            if peers is not None:
                app.metrics.host = HostMetrics(peers, render=partial(
                    render_metrics, app.metrics, app.limits, app.drain, app.backend,
                    app.loop_lag, app.connections, app.agents,
                ))  # fmt: skip
            await _serve_app(
                app, config, http, sockets, loop_lag, task_status, shutdown_trigger, handle_signals,
                limits_line=f"{fd_limit}; at most {http.max_connections} client connections",
            )  # fmt: skip


async def _serve_app(
    app: Gateway,
    config: ServerConfig,
    http: HTTPConfig,
    sockets: Sequence[socket.socket] | None,
    loop_lag: LoopLag,
    task_status: trio.TaskStatus[tuple[str, int]],
    shutdown_trigger: Callable[[], Awaitable[Any]] | None,
    handle_signals: bool,
    *,
    limits_line: str,
) -> None:
    """Serve ``app`` until a signal or ``shutdown_trigger``, then drain it (the module's steps).

    ``limits_line`` is logged once the socket is bound.
    """
    stop_accepting = trio.Event()
    shutdown_requested = trio.Event()
    http_done = trio.Event()

    async def run_http(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        try:
            await serve_http(
                app,
                http,
                sockets=sockets,
                shutdown_trigger=stop_accepting.wait,
                on_listeners=app.listeners.extend,
                counter=app.connections,
                early=app.early_refusal,
                task_status=task_status,
            )
        finally:
            http_done.set()
            shutdown_requested.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop_lag.run)
        if config.tracemalloc_dir is not None:
            from ._memtrace import serve_memtrace

            await nursery.start(serve_memtrace, config.tracemalloc_dir)
        if handle_signals:
            nursery.start_soon(watch_signals, shutdown_requested)
        if shutdown_trigger is not None:
            nursery.start_soon(set_after, shutdown_trigger, shutdown_requested)
        if app.metrics.host is not None:
            # Listening before this worker serves: a scrape it can take, its peers can too.
            await nursery.start(app.metrics.host.serve)
        host, port = await nursery.start(run_http)
        logger.info("%s", limits_line)
        task_status.started((host, port))

        await shutdown_requested.wait()
        logger.info("shutting down: draining for up to %gs", config.drain_timeout)
        app.drain.start()
        stop_accepting.set()
        cancelled = await app.drain.drain(config.drain_timeout)
        if cancelled:
            logger.info("drain deadline: ended %d request(s) with shutting_down", cancelled)
        await http_done.wait()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _maybe_backend(
    config: ServerConfig, backend: ChatBackend | None
) -> AsyncIterator[ChatBackend]:
    if backend is not None:
        yield backend
    else:
        async with open_backend(config) as be:
            yield be


@asynccontextmanager
async def _maybe_tracing(config: ServerConfig) -> AsyncIterator[GatewayTracer | None]:
    if config.otlp_endpoint is None:
        yield None
        return
    from ..tracing import open_tracing, otel_missing, traces_url

    missing = otel_missing()
    if missing is not None:
        raise ConfigError(f"otlp_endpoint needs {missing}: pip install 'trio_agent[otel]'")
    url = traces_url(config.otlp_endpoint)
    async with open_tracing(
        endpoint=config.otlp_endpoint,
        content=config.trace_content,
        queue_size=config.trace_queue_size,
        export_interval=config.trace_export_interval,
        export_timeout=config.trace_export_timeout,
    ) as tracer:
        # Without the scheme: tools that read the server's URL off its first lines must not take this one.
        where = url.split("://", 1)[-1]
        logger.info("tracing: spans go over OTLP/HTTP to %s%s", where, " (with content)" if config.trace_content else "")
        yield tracer


# -- several worker processes ---------------------------------------------------------


@asynccontextmanager
async def _maybe_shared_limits(
    config: ServerConfig, loop_lag: LoopLag
) -> AsyncIterator[Limits | None]:
    if config.redis_url is None:
        yield None
        return
    from ._shared_limits import open_shared_limits

    async with open_shared_limits(config, loop_lag=loop_lag) as limits:
        yield limits


def worker_config(config: ServerConfig) -> ServerConfig:
    """One worker's share of ``config``.

    Without Redis, the admission limits are divided by ``workers``. With
    Redis, ``max_concurrency`` stays the global cap that every worker shares;
    only the local fallback share and the waiting room are divided.
    """
    n = config.workers
    if config.redis_url is not None:
        return dataclasses.replace(
            config,
            workers=1,
            max_queued=config.max_queued // n,
            redis_local_share=config.redis_local_share or max(1, config.max_concurrency // n),
        )
    return dataclasses.replace(
        config,
        workers=1,
        max_concurrency=max(1, config.max_concurrency // n),
        max_queued=config.max_queued // n,
    )


def _worker_main(config: ServerConfig, sockets: list[socket.socket], peers: WorkerPeers) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    trio.run(partial(serve, config, sockets=sockets, peers=peers))


def run_workers(config: ServerConfig, *, on_bound: Callable[[str, int], None] | None = None) -> int:
    """Bind once, run ``config.workers`` processes on the shared socket; forward SIGTERM/SIGINT.

    Returns 0 when every worker exited 0 (after its own drain), else 1. The
    workers' metrics sockets live in a directory of this run (mode 0700),
    removed on return.
    """
    sockets = bind_sockets(http_config(config))
    host, port = sockets[0].getsockname()[:2]
    share = worker_config(config)
    ctx = multiprocessing.get_context("spawn")
    # Short (unix socket paths are limited to about 100 bytes), private to this user.
    peer_dir = tempfile.mkdtemp(prefix="trio-agent-")
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(share, sockets, WorkerPeers(directory=peer_dir, index=i, count=config.workers)),
            daemon=False,
        )
        for i in range(config.workers)
    ]
    for proc in procs:
        proc.start()
    for sock in sockets:
        sock.close()
    if on_bound is not None:
        on_bound(host, port)

    def forward(signum: int, frame: FrameType | None) -> None:
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                _send(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for proc in procs:
            proc.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(peer_dir, ignore_errors=True)
    return 0 if all(p.exitcode == 0 for p in procs) else 1


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass

