"""DrainingListener takes a burst of connections in one pass (docs/decisions/008)."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing

from tests._http import running_http
from trio_agent.http import DrainingListener, HTTPConfig


@contextmanager
def listening() -> Iterator[socket.socket]:
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield sock
    finally:
        sock.close()


@contextmanager
def burst(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections made at once, with no trio checkpoint in between (all in the backlog)."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    try:
        yield clients
    finally:
        for c in clients:
            c.close()


async def passes_to_accept(listener: trio.abc.Listener[trio.SocketStream], n: int) -> int:
    """How many scheduler passes accepting ``n`` queued connections takes."""
    passes = 0
    streams = []

    async def ticker() -> None:
        nonlocal passes
        while True:
            passes += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()  # the ticker is running
        start = passes
        for _ in range(n):
            streams.append(await listener.accept())
        taken = passes - start
        nursery.cancel_scope.cancel()
    for s in streams:
        await s.aclose()
    return taken


async def test_a_burst_is_accepted_in_one_pass_where_trios_listener_takes_one_per_pass() -> None:
    with listening() as sock:
        listener = DrainingListener(sock.dup())
        try:
            with burst(sock.getsockname()[1], 20):
                assert await passes_to_accept(listener, 20) <= 2
            stats = listener.statistics()
            assert (stats.accepted, stats.passes, stats.largest_pass, stats.ready) == (20, 1, 20, 0)
        finally:
            await listener.aclose()
        # The behaviour it replaces: trio's SocketListener yields after every accept.
        trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock.dup()))
        try:
            with burst(sock.getsockname()[1], 20):
                assert await passes_to_accept(trio_listener, 20) >= 19
        finally:
            await trio_listener.aclose()


async def test_a_pass_takes_at_most_max_batch() -> None:
    with listening() as sock:
        listener = DrainingListener(sock.dup(), max_batch=8)
        try:
            with burst(sock.getsockname()[1], 20):
                await passes_to_accept(listener, 20)
            stats = listener.statistics()
            assert (stats.accepted, stats.passes, stats.largest_pass) == (20, 3, 8)  # 8 + 8 + 4
        finally:
            await listener.aclose()


async def test_closing_closes_what_was_accepted_but_not_handed_out() -> None:
    with listening() as sock:
        listener = DrainingListener(sock.dup())
        with burst(sock.getsockname()[1], 5) as clients:
            first = await listener.accept()
            assert listener.statistics().ready == 4
            await listener.aclose()
            await first.aclose()
            for c in clients:  # the server side is gone: each client reads EOF
                c.settimeout(5)
                assert c.recv(1) == b""
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()


@pytest.mark.e2e
async def test_serve_http_accepts_a_burst_of_clients_in_one_pass() -> None:
    with trio.fail_after(10):
        async with running_http(HTTPConfig()) as srv:
            (listener,) = srv.listeners
            before = listener.statistics().accepted
            with burst(srv.port, 30):
                while True:  # the server runs in this trio run: let it take them
                    if listener.statistics().accepted >= before + 30:
                        break
                    await trio.sleep(0.01)
            assert listener.statistics().largest_pass >= 30  # at most 64 per pass


class _ExhaustedSocket(socket.socket):
    """A listening socket whose next ``fail`` accepts fail with ``EMFILE``."""

    fail = 0

    def accept(self) -> tuple[socket.socket, object]:
        if self.fail:
            self.fail -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


async def test_descriptor_exhaustion_is_one_warning_per_episode_with_backoff(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    sock = _ExhaustedSocket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    freed: list[int] = []

    def free_nothing() -> int:
        freed.append(1)
        return 0

    listener = DrainingListener(sock, on_exhausted=free_nothing)
    with caplog.at_level(logging.WARNING, logger="trio_agent.http"):
        for episode in range(2):
            sock.fail = 5
            with burst(sock.getsockname()[1], 1):
                started = trio.current_time()
                stream = await listener.accept()
                waited = trio.current_time() - started
                await stream.aclose()
            # Backoff doubles from 10 ms: 10 + 20 + 40 + 80 + 160 ms before the accept that works.
            assert waited == pytest.approx(0.31, abs=0.005), episode
            stats = listener.statistics()
            assert not stats.exhausted
    await listener.aclose()
    assert (stats.exhausted_accepts, stats.exhaustion_episodes) == (10, 2)
    assert len(freed) == 10  # each failure asked for an idle connection to be closed
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages  # a start and an end per episode
    assert "Too many open files" in messages[0] and "5 accepts failed" in messages[1]
    assert not any(r.exc_info for r in caplog.records)
