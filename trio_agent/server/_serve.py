"""Running the gateway: ``serve()`` in one trio run, ``run_workers()`` for several processes.

``serve(config)`` owns everything app-lifetime: it opens the backend (the
built-in mock, or ``open_openai_backend(config.upstream)``), builds the app,
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
``max_queued // workers`` of the admission limits, so the totals hold.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import FrameType
from typing import Any, cast
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import wrap_app

from ..concurrency import LoopLag
from ..config import ServerConfig, UpstreamConfig
from ..llm import ChatBackend
from ._admission import Limits
from ._app import Gateway, create_app
from ._direct import hypercorn_h11_parts
from ._listen import serve_hypercorn

__all__ = ["abort_hypercorn_transport", "open_backend", "run_workers", "serve", "worker_config"]

logger = logging.getLogger("trio_agent.server")

# Seconds Hypercorn waits, after the drain deadline, for the last bytes to go out.
_FLUSH_GRACE = 2.0
# The kernel caps this at net.core.somaxconn (4096 on current Linux).
_LISTEN_BACKLOG = 4096


@asynccontextmanager
async def open_backend(config: ServerConfig) -> AsyncIterator[ChatBackend]:
    """The backend ``config`` asks for: the upstream when set, else the in-process mock."""
    if config.upstream is not None:
        from ..llm import open_openai_backend

        async with open_openai_backend(upstream_for(config)) as backend:
            yield backend
    else:
        from ..llm import MockLLM

        yield MockLLM(config.mock)


def upstream_for(config: ServerConfig) -> UpstreamConfig:
    """``config.upstream`` with its pool sized to ``max_concurrency`` when it has no size set.

    Every admitted request holds one upstream connection (HTTP/1.1), so a pool
    smaller than the admission cap makes admitted requests queue inside httpx,
    where admission, its deadlines and its metrics do not see them, and
    httpcore's pool scans every waiter on each change: at 1000 proxied
    streams with a 200-connection pool the gateway served a third of the
    baseline's tokens at 2.7 times its CPU per token. An explicit smaller
    pool is kept, with a warning.
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


def _hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.graceful_timeout = config.drain_timeout + _FLUSH_GRACE
    # Hypercorn's default listen backlog of 100 overflows when a thousand clients connect at
    # once: the kernel drops their SYNs and they come back after TCP's 1 s, 3 s retransmits.
    hc.backlog = _LISTEN_BACKLOG
    # Hypercorn's idle timer runs from accept until a whole request head has
    # arrived, and between requests: it bounds slowloris headers too.
    hc.keep_alive_timeout = config.keep_alive_timeout
    # h11 answers 431 to a head still incomplete past this size; the app checks
    # the same limit on heads that arrived whole (see Gateway.__call__).
    hc.h11_max_incomplete_size = config.max_header_bytes
    hc.accesslog = None  # ours is structured and knows the request id
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


def _parse_bind(bind: str) -> tuple[str, int]:
    parts = urlsplit(bind)
    return parts.hostname or "", parts.port or 0


async def serve(
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    handle_signals: bool = True,
    sockets: Sockets | None = None,
    backend: ChatBackend | None = None,
    on_app: Callable[[Gateway], None] | None = None,
) -> None:
    """Serve the gateway until SIGTERM/SIGINT or ``shutdown_trigger``, then drain and return.

    ``task_status.started((host, port))`` reports the bound address (port 0
    picks a free one). ``handle_signals=False`` leaves the process's signal
    handlers alone (for embedding and tests). ``sockets`` are pre-bound
    sockets to serve (see :func:`run_workers`). ``backend`` replaces the one
    ``config`` would open (the caller then owns it); ``on_app`` sees the app
    once it is built. While it runs, Python's collector threshold for its
    youngest generation is ``config.gc_threshold`` (restored on return).
    """
    loop_lag = LoopLag()
    async with (
        _gc_threshold(config.gc_threshold),
        _maybe_backend(config, backend) as be,
        _maybe_shared_limits(config, loop_lag) as limits,
    ):
        app = create_app(config, backend=be, limits=limits, loop_lag=loop_lag)
        app.abort_transport = abort_hypercorn_transport
        if on_app is not None:
            on_app(app)
        hc = _hypercorn_config(config)
        if sockets is not None:
            for sock in sockets.insecure_sockets:
                sock.listen(hc.backlog)
        stop_accepting = trio.Event()
        shutdown_requested = trio.Event()
        hypercorn_done = trio.Event()

        async def run_hypercorn(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve_hypercorn(
                    wrap_app(cast(Any, app), hc.wsgi_max_body_size, "asgi"),
                    hc,
                    sockets=sockets,
                    shutdown_trigger=stop_accepting.wait,
                    on_listeners=app.listeners.extend,
                    counter=app.connections,
                    early=app.early_refusal,
                    task_status=task_status,
                )
            finally:
                hypercorn_done.set()
                shutdown_requested.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop_lag.run)
            if handle_signals:
                nursery.start_soon(_watch_signals, shutdown_requested)
            if shutdown_trigger is not None:
                nursery.start_soon(_wait_then_set, shutdown_trigger, shutdown_requested)
            binds: list[str] = await nursery.start(run_hypercorn)
            host, port = _parse_bind(binds[0]) if binds else (config.host, config.port)
            task_status.started((host, port))

            await shutdown_requested.wait()
            logger.info("shutting down: draining for up to %gs", config.drain_timeout)
            app.drain.start()
            stop_accepting.set()
            cancelled = await app.drain.drain(config.drain_timeout)
            if cancelled:
                logger.info("drain deadline: ended %d request(s) with shutting_down", cancelled)
            await hypercorn_done.wait()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _gc_threshold(threshold: int) -> AsyncIterator[None]:
    """Python's youngest-generation GC threshold set to ``threshold`` (0: unchanged), then restored.

    An async context manager only to sit in ``serve``'s ``async with`` beside the others.
    """
    if not threshold:
        yield
        return
    before = gc.get_threshold()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def abort_hypercorn_transport(send: Callable[..., Awaitable[None]]) -> bool:
    """Close the TCP connection under a Hypercorn HTTP/1.1 ASGI ``send``; False if not possible.

    Hypercorn writes to the socket inside a shielded cancel scope, so a
    client that stops reading can hold a write (and the task in it) forever.
    Closing the socket wakes that write with ``ClosedResourceError``, which
    Hypercorn treats as the client leaving. This reaches into Hypercorn's
    objects (``HTTPStream.app_send`` -> ``H11Protocol.stream_send`` ->
    ``TCPServer.protocol_send``): on any other shape (HTTP/2, a future
    Hypercorn) it does nothing and returns False.
    """
    parts = hypercorn_h11_parts(send)
    if parts is None:
        return False
    sock = getattr(getattr(parts[2], "stream", None), "socket", None)
    if not isinstance(sock, trio.socket.SocketType):
        return False
    sock.close()
    return True


@asynccontextmanager
async def _maybe_backend(
    config: ServerConfig, backend: ChatBackend | None
) -> AsyncIterator[ChatBackend]:
    if backend is not None:
        yield backend
    else:
        async with open_backend(config) as be:
            yield be


async def _watch_signals(shutdown_requested: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not shutdown_requested.is_set():
                logger.info("received %s", signal.Signals(signum).name)
            shutdown_requested.set()


async def _wait_then_set(trigger: Callable[[], Awaitable[Any]], event: trio.Event) -> None:
    await trigger()
    event.set()


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


def _worker_main(config: ServerConfig, sockets: Sockets) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    trio.run(partial(serve, config, sockets=sockets))


def run_workers(config: ServerConfig, *, on_bound: Callable[[str, int], None] | None = None) -> int:
    """Bind once, run ``config.workers`` processes on the shared socket; forward SIGTERM/SIGINT.

    Returns 0 when every worker exited 0 (after its own drain), else 1.
    """
    hc = _hypercorn_config(config)
    sockets = hc.create_sockets()
    host, port = sockets.insecure_sockets[0].getsockname()[:2]
    share = worker_config(config)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(share, sockets), daemon=False)
        for _ in range(config.workers)
    ]
    for proc in procs:
        proc.start()
    for sock in sockets.insecure_sockets:
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
    return 0 if all(p.exitcode == 0 for p in procs) else 1


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass

