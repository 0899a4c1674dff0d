"""One scrape, the whole host: the workers of ``run_workers`` answer each other's ``/metrics``.

With ``--workers N`` the kernel hands each connection to one of N processes,
so a worker's own counters are a fraction of the host's. Each worker
therefore also listens on a unix socket of its own in a directory the parent
made for this run (mode 0700). The worker that takes a scrape renders its own
text and, at the same time, asks every other worker for theirs; it sums them
(:func:`~._metrics_merge.merge_expositions`) and answers the host view
(docs/decisions/013)::

    scrape ──> worker k ── render own text
                       ├── connect worker-0.sock ──> worker 0 renders, writes, closes
                       ├── ...                        (all at once, each within `timeout`)
                       └── sum the texts; add trio_agent_workers, _workers_reporting, _worker_up

Why live answers rather than snapshots written every few seconds: a scrape
right after a burst counts every request of it (no staleness to document),
and nothing runs when nobody scrapes. The hot path is untouched: a worker's
counters are read only while it renders its own text, in its own trio run,
as for a single process.

A worker that does not answer within ``timeout`` (dead, stopped, its loop
stuck) is left out of that scrape: the scrape still answers within about
``timeout``, and ``trio_agent_workers_reporting`` below ``trio_agent_workers``
says the sum is partial. Its counters then leave the host's sums, which
Prometheus reads as a counter reset.

The peer protocol is one exchange per connection: the asker connects, the
peer writes its exposition text followed by ``# EOF`` and closes. A text
without the ``# EOF`` line (a peer that died mid-answer) is discarded rather
than summed short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ._metrics_merge import merge_expositions, sample_values

__all__ = ["HostMetrics", "HostMetricsStatistics", "WorkerPeers"]

logger = logging.getLogger("trio_agent.server")

_EOF = "# EOF\n"
# An answer larger than this is not a worker's exposition text; the read stops there.
_MAX_ANSWER_BYTES = 32 * 1024 * 1024
_READ_CHUNK = 65536


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerPeers:
    """Where the ``count`` workers of one host answer each other; this one is ``index``.

    ``timeout`` bounds how long a scrape waits for the other workers (seconds).
    """

    directory: str
    index: int
    count: int
    timeout: float = 2.0

    def socket_path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")


@dataclass(frozen=True, kw_only=True, slots=True)
class HostMetricsStatistics:
    """Scrapes taken by this worker, answers served to its peers, and peers that did not answer."""

    scrapes: int
    answers: int
    peer_failures: int


class HostMetrics:
    """The host view of ``/metrics`` for one worker: ``await scrape()``; ``serve()`` answers peers.

    ``render`` returns this process's own exposition text (what ``/metrics``
    answers without workers); it is called synchronously, in this worker's
    trio run, for its own scrapes and for each peer's request.
    """

    __slots__ = ("_answers", "_peer_failures", "_render", "_scrapes", "peers")

    def __init__(self, peers: WorkerPeers, render: Callable[[], str]) -> None:
        self.peers = peers
        self._render = render
        self._scrapes = 0
        self._answers = 0
        self._peer_failures = 0

    def statistics(self) -> HostMetricsStatistics:
        return HostMetricsStatistics(
            scrapes=self._scrapes, answers=self._answers, peer_failures=self._peer_failures
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer the other workers until cancelled; ``started()`` once the socket listens."""
        path = self.peers.socket_path(self.peers.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a worker of the same index that died
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            sock.listen(max(8, self.peers.count))
        except BaseException:
            sock.close()
            raise
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._answer, [listener])
                task_status.started()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _answer(self, stream: trio.SocketStream) -> None:
        # Each answer has its own deadline, so a peer that stops reading holds one task, briefly.
        async with stream:
            with trio.move_on_after(self.peers.timeout):
                try:
                    data = (self._render() + _EOF).encode()
                except Exception:
                    # The asker counts this worker out of its sum; this worker serves on.
                    logger.exception("rendering metrics for a peer failed")
                    return
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                self._answers += 1

    async def scrape(self) -> str:
        """This worker's text summed with every peer's that answers in time, plus the worker gauges."""
        self._scrapes += 1
        peers = self.peers
        own = self._render()
        answers: list[str | None] = [None] * peers.count
        async with trio.open_nursery() as nursery:
            for i in range(peers.count):
                if i != peers.index:
                    nursery.start_soon(self._ask, i, answers)
        answers[peers.index] = own
        texts = [own, *(t for i, t in enumerate(answers) if i != peers.index and t is not None)]
        self._peer_failures += peers.count - len(texts)
        return merge_expositions(texts) + _worker_lines([t is not None for t in answers])

    async def _ask(self, index: int, answers: list[str | None]) -> None:
        with trio.move_on_after(self.peers.timeout):
            try:
                stream = await trio.open_unix_socket(self.peers.socket_path(index))
            except OSError:
                return  # not listening: dead, or not started yet
            async with stream:
                chunks: list[bytes] = []
                size = 0
                try:
                    while size <= _MAX_ANSWER_BYTES:
                        chunk = await stream.receive_some(_READ_CHUNK)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            try:
                text = b"".join(chunks).decode()
            except UnicodeDecodeError:
                return
            if size > _MAX_ANSWER_BYTES or not text.endswith(_EOF):
                return  # cut short: summing it would under-count
            text = text[: -len(_EOF)]
            try:
                sample_values(text)
            except ValueError:
                return
            answers[index] = text

    def __repr__(self) -> str:
        p = self.peers
        return (
            f"<HostMetrics worker {p.index} of {p.count} scrapes={self._scrapes}"
            f" answers={self._answers} peer_failures={self._peer_failures}>"
        )


def _worker_lines(up: list[bool]) -> str:
    """The gauges that say whose numbers the sums hold (one ``worker_up`` series per worker)."""
    return "\n".join(
        [
            "# HELP trio_agent_workers Worker processes of this host (--workers).",
            "# TYPE trio_agent_workers gauge",
            f"trio_agent_workers {len(up)}",
            "# HELP trio_agent_workers_reporting Workers whose numbers this scrape sums "
            "(the others did not answer in time; the sums are then partial).",
            "# TYPE trio_agent_workers_reporting gauge",
            f"trio_agent_workers_reporting {sum(up)}",
            "# HELP trio_agent_worker_up 1 for each worker whose numbers this scrape sums, 0 for one "
            "that did not answer.",
            "# TYPE trio_agent_worker_up gauge",
            *(f'trio_agent_worker_up{{worker="{i}"}} {int(u)}' for i, u in enumerate(up)),
            "",
        ]
    )
