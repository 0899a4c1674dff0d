"""The keep-alive idle timer of one connection: one task, a movable deadline.

Hypercorn restarts its idle timer whenever a connection turns idle (a
response ended) and stops it whenever it turns busy (a request began); its
own ``SingleTask`` starts a task in a fresh cancel scope per restart and
cancels it per stop, under a lock. Under overload, where each request is a
cheap 503, that spawn and cancel is a large share of the CPU a request costs
(docs/decisions/002). :class:`IdleTimer` keeps one task per connection
waiting in a cancel scope whose deadline ``restart`` sets to
``keep_alive_timeout`` from now and ``stop`` to infinity: neither yields nor
spawns, and the timeout is the same.

It starts its task with ``spawn``, part of Hypercorn's ``TaskGroup``
protocol (hypercorn.typing); that the trio task group's ``spawn`` starts the
task at once in the connection's nursery is checked in
tests/test_http_contracts.py.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

__all__ = ["IdleTimer"]


class Terminated(Protocol):
    """Hypercorn's ``WorkerContext.terminated``: set when the server stops."""

    async def wait(self) -> None: ...

    def is_set(self) -> bool: ...


class IdleTimer:
    """Hypercorn's idle-timeout ``SingleTask`` as one task per connection (see the module).

    When the deadline passes, or the server stops (``terminated``) while the
    connection is idle, the task runs ``action``, which closes the
    connection. A connection busy when the server stops closes as soon as it
    turns idle, as with Hypercorn's timer. ``cancel`` ends the task when the
    connection is done (Hypercorn's task group waits for its tasks, and this
    one would otherwise wait forever).

    ``on_change(idle)`` is told each turn idle (``True``) or busy
    (``False``), synchronously; :meth:`expire` closes the connection now if
    it is idle, else as soon as it turns idle.
    """

    __slots__ = (
        "_cancelled", "_deadline", "_on_change", "_running", "_scope", "_terminated", "_timeout",
    )  # fmt: skip

    def __init__(
        self,
        timeout: float,
        terminated: Terminated,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._on_change = on_change
        self._timeout = timeout
        self._terminated = terminated
        self._deadline = math.inf
        self._scope: trio.CancelScope | None = None
        self._running = False
        self._cancelled = False

    def _set_deadline(self, deadline: float) -> None:
        # Moving a cancel scope's deadline re-registers it with trio (a heap push): done only
        # when the new deadline is earlier. A later one is left to the watcher, which wakes at
        # the old deadline, finds it moved, and waits again (once per keep_alive_timeout, not
        # once per request).
        self._deadline = deadline
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        """Idle from now: run ``action`` after ``timeout`` unless :meth:`stop` comes first."""
        self._set_deadline(trio.current_time() + self._timeout)
        if self._on_change is not None:
            self._on_change(True)
        if not self._running and not self._cancelled:
            self._running = True
            task_group.spawn(self._watch, action)

    async def stop(self) -> None:
        """Busy from now: no deadline until the next :meth:`restart`."""
        self._set_deadline(math.inf)
        if self._on_change is not None:
            self._on_change(False)

    def expire(self) -> None:
        """Close the connection now if it is idle, else when it next turns idle."""
        self._timeout = 0.0
        if self._deadline < math.inf:
            self._set_deadline(trio.current_time())

    def detach(self) -> None:
        """Stop telling ``on_change`` (the connection is done; drops the reference)."""
        self._on_change = None

    def cancel(self) -> None:
        """The connection is done: end the timer task without running its action."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, action: Callable[[], Awaitable[None]]) -> None:
        terminated = self._terminated
        while not self._cancelled:
            with trio.CancelScope(deadline=self._deadline) as scope:
                self._scope = scope
                if not terminated.is_set():
                    await terminated.wait()
                    continue  # the server is stopping: see below, in a fresh scope
                self._timeout = 0.0  # from now on, turning idle closes the connection at once
                if self._deadline < math.inf:
                    break  # idle now
                await trio.sleep_forever()  # busy: until restart() sets a deadline
            if trio.current_time() >= self._deadline:
                break
        self._scope = None
        if not self._cancelled:
            await action()
