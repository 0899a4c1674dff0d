"""Accepting connections fairly under load: drain the kernel's accept queue in one pass.

trio's :class:`trio.SocketListener` yields after every ``accept()`` (a
scheduling point, as every trio operation is), so :func:`trio.serve_listeners`
takes in one connection per pass of the scheduler. Under load a pass is long
(every busy stream gets its turn in it), so new clients wait in the kernel's
backlog behind the streams already served. :class:`DrainingListener` accepts
everything the kernel has queued (up to ``max_batch``) when the socket turns
readable and hands the connections out without yielding in between, so a
pass admits (or refuses with a 503) every client that arrived during the
previous one (docs/decisions/008).

Invariant: :meth:`DrainingListener.accept` yields only when no accepted
connection is waiting to be handed out.

Descriptor exhaustion (``EMFILE``/``ENFILE``, or the kernel out of buffers)
is an episode, not an error per retry: the first failed ``accept()`` logs
one warning, the listener asks ``on_exhausted`` to free descriptors (the
server closes its oldest idle connections; it returns how many) and waits
before it tries again, 10 ms when some were freed, else a backoff doubling
from 10 ms to 0.5 s, the client waiting in the kernel's
backlog meanwhile; once the backlog is empty again (every waiting client
got in) one more line ends the episode with the number of accepts that
failed. The listening socket is never closed for it
(trio's ``serve_listeners`` logs a traceback each 100 ms instead).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

__all__ = ["DrainingListener", "ListenerStatistics"]

# Errors of accept(2) that concern one connection only (as trio's SocketListener).
_IGNORABLE = {errno.ECONNABORTED, errno.EPERM, errno.EPROTO}
_CLOSED = {errno.EBADF, errno.EINVAL, errno.ENOTSOCK}
# Errors of accept(2) that mean the process or the system is out of descriptors or memory.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_BACKOFF_MIN = 0.01
_BACKOFF_MAX = 0.5

logger = logging.getLogger("trio_agent.http")
# Most connections taken in one pass: enough that a burst never waits behind busy streams for
# more than a pass or two, few enough that a flood of new clients (each a task, a parse and
# most likely a 503 under overload) cannot crowd out the streams already admitted.
_MAX_BATCH = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class ListenerStatistics:
    """``accepted`` connections so far, in ``passes`` wake-ups; ``largest_pass`` the most at once;
    ``ready`` accepted but not yet handed out; ``exhausted_accepts`` accepts that failed for
    want of descriptors, in ``exhaustion_episodes``; ``exhausted`` True during one."""

    accepted: int
    passes: int
    largest_pass: int
    ready: int
    exhausted_accepts: int = 0
    exhaustion_episodes: int = 0
    exhausted: bool = False


class DrainingListener(trio.abc.Listener[trio.SocketStream]):
    """A listener that takes every queued connection at once (see the module docstring)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_batch: int = _MAX_BATCH,
        on_exhausted: Callable[[], int] | None = None,
    ) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("DrainingListener needs a SOCK_STREAM socket")
        sock.setblocking(False)
        self._sock = sock
        self._max_batch = max_batch
        self._ready: deque[trio.SocketStream] = deque()
        self._accepted = self._passes = self._largest = 0
        self._closed = False
        self._on_exhausted = on_exhausted
        self._exhausted_accepts = self._episodes = 0
        # During an episode: failed accepts in it, its start, the current backoff.
        self._episode_failures = 0
        self._episode_started = 0.0
        self._backoff = 0.0

    @property
    def socket(self) -> socket.socket:
        """The listening socket."""
        return self._sock

    def statistics(self) -> ListenerStatistics:
        """Counts so far, and connections accepted but not yet handed out (``ready``)."""
        return ListenerStatistics(
            accepted=self._accepted,
            passes=self._passes,
            largest_pass=self._largest,
            ready=len(self._ready),
            exhausted_accepts=self._exhausted_accepts,
            exhaustion_episodes=self._episodes,
            exhausted=self._episode_failures > 0,
        )

    def __repr__(self) -> str:
        return f"<DrainingListener fd={self._sock.fileno()} accepted={self._accepted} ready={len(self._ready)}>"

    async def accept(self) -> trio.SocketStream:
        """The next connection; only waits (and yields) when none is queued."""
        while not self._ready:
            if self._closed:
                raise trio.ClosedResourceError("the listener is closed")
            if self._backoff:
                await trio.sleep(self._backoff)
            else:
                await trio.lowlevel.wait_readable(self._sock)
            self._drain()
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._ready.popleft()

    def _drain(self) -> None:
        taken = 0
        while taken < self._max_batch:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                # The backlog is empty: every waiting client got in, so an episode is over;
                # wait for the next client, not for a backoff.
                if self._episode_failures:
                    self._recovered()
                break
            except OSError as exc:
                if exc.errno in _IGNORABLE:
                    continue
                if exc.errno in _CLOSED:
                    raise trio.ClosedResourceError("the listener is closed") from None
                if exc.errno in _EXHAUSTED:
                    self._exhausted(exc)
                    break
                raise
            conn.setblocking(False)
            self._ready.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
            taken += 1
        if taken:
            self._passes += 1
            self._accepted += taken
            self._largest = max(self._largest, taken)

    def _exhausted(self, exc: OSError) -> None:
        self._exhausted_accepts += 1
        self._episode_failures += 1
        if self._episode_failures == 1:
            self._episodes += 1
            self._episode_started = trio.current_time()
            self._backoff = _BACKOFF_MIN
            logger.warning(
                "accept failed: %s; out of file descriptors, new connections wait in the "
                "backlog (retrying every %g-%g s)",
                exc.strerror or exc, _BACKOFF_MIN, _BACKOFF_MAX,
            )  # fmt: skip
        else:
            self._backoff = min(max(self._backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
        if self._on_exhausted is not None and self._on_exhausted():
            self._backoff = _BACKOFF_MIN  # descriptors are being freed: try again soon

    def _recovered(self) -> None:
        logger.warning(
            "accept caught up after %.1f s short of file descriptors (%d accepts failed)",
            trio.current_time() - self._episode_started, self._episode_failures,
        )  # fmt: skip
        self._backoff = 0.0
        self._episode_failures = 0

    async def aclose(self) -> None:
        """Close the listening socket and every connection accepted but not handed out."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
            while self._ready:
                await trio.aclose_forcefully(self._ready.popleft())
        await trio.lowlevel.checkpoint()
