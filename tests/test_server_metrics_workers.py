"""Workers answering each other's metrics over unix sockets: sums, a dead or hung or cut-off peer.

In one trio run (the protocol and its deadlines, on the autojump clock); the
real ``--workers 2`` processes are in ``test_server_metrics_workers_e2e``.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_agent.server._metrics_merge import sample_values
from trio_agent.server._metrics_workers import HostMetrics, WorkerPeers


def _text(n: int) -> str:
    return f"# HELP x_total X.\n# TYPE x_total counter\nx_total {n}\n"


@pytest.fixture
def peer_dir() -> Iterator[str]:
    # Not tmp_path: a unix socket's path must stay under about 100 bytes.
    path = tempfile.mkdtemp(prefix="ta-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _hosts(directory: str, renders: list[int], count: int | None = None) -> list[HostMetrics]:
    n = count if count is not None else len(renders)
    return [
        HostMetrics(WorkerPeers(directory=directory, index=i, count=n), render=lambda v=v: _text(v))
        for i, v in enumerate(renders)
    ]


async def test_any_worker_answers_the_sum_of_all(peer_dir: str) -> None:
    hosts = _hosts(peer_dir, [1, 20, 300])
    async with trio.open_nursery() as nursery:
        for h in hosts:
            await nursery.start(h.serve)
        for h in hosts:
            values = sample_values(await h.scrape())
            assert values["x_total"] == 321
            assert values["trio_agent_workers"] == 3
            assert values["trio_agent_workers_reporting"] == 3
            assert [values[f'trio_agent_worker_up{{worker="{i}"}}'] for i in range(3)] == [1, 1, 1]
        nursery.cancel_scope.cancel()
    assert [h.statistics().answers for h in hosts] == [2, 2, 2]
    assert sum(h.statistics().peer_failures for h in hosts) == 0


async def test_a_dead_worker_is_left_out_at_once(
    peer_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    # Worker 2 never listens (dead before it started, or gone: its socket refuses).
    hosts = _hosts(peer_dir, [1, 20], count=3)
    async with trio.open_nursery() as nursery:
        for h in hosts:
            await nursery.start(h.serve)
        started = trio.current_time()
        values = sample_values(await hosts[0].scrape())
        assert trio.current_time() == started  # no wait for a peer that is not there
        assert values["x_total"] == 21
        assert values["trio_agent_workers_reporting"] == 2
        assert values['trio_agent_worker_up{worker="2"}'] == 0
        assert hosts[0].statistics().peer_failures == 1
        nursery.cancel_scope.cancel()


async def test_a_hung_worker_costs_the_scrape_its_timeout_and_no_more(
    peer_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    peers = WorkerPeers(directory=peer_dir, index=0, count=2, timeout=1.5)
    host = HostMetrics(peers, render=lambda: _text(7))
    # Worker 1's socket listens, but its loop never gets to answer (stopped, or stuck).
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(peers.socket_path(1))
    hung.listen(4)
    try:
        started = trio.current_time()
        values = sample_values(await host.scrape())
        assert trio.current_time() - started == 1.5
    finally:
        hung.close()
    assert values["x_total"] == 7
    assert values["trio_agent_workers_reporting"] == 1


async def test_an_answer_cut_short_is_not_summed(peer_dir: str) -> None:
    peers = WorkerPeers(directory=peer_dir, index=0, count=2)
    host = HostMetrics(peers, render=lambda: _text(7))
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(peers.socket_path(1))
    sock.listen(4)
    listener = trio.SocketListener(sock)

    async def half_an_answer() -> None:
        stream = await listener.accept()
        async with stream:
            await stream.send_all(_text(100).encode()[:-3])  # "x_total 1": dies mid-number

    async with trio.open_nursery() as nursery, listener:
        nursery.start_soon(half_an_answer)
        values = sample_values(await host.scrape())
    assert values["x_total"] == 7
    assert values["trio_agent_workers_reporting"] == 1


async def test_a_render_that_fails_is_logged_and_the_peer_serves_on(
    peer_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return _text(5)

    asker = HostMetrics(WorkerPeers(directory=peer_dir, index=0, count=2), render=lambda: _text(1))
    peer = HostMetrics(WorkerPeers(directory=peer_dir, index=1, count=2), render=flaky)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        assert sample_values(await asker.scrape())["x_total"] == 1
        assert sample_values(await asker.scrape())["x_total"] == 6
        nursery.cancel_scope.cancel()
    assert "rendering metrics for a peer failed" in caplog.text


async def test_the_socket_is_removed_when_the_worker_stops(peer_dir: str) -> None:
    import os

    host = _hosts(peer_dir, [1])[0]
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        assert os.listdir(peer_dir) == ["worker-0.sock"]
        nursery.cancel_scope.cancel()
    assert os.listdir(peer_dir) == []
    assert "worker 0 of 1" in repr(host)
