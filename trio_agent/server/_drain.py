"""Graceful drain: every request registers a cancel scope; shutdown ends them on a deadline.

A request is tracked for its whole life (queue wait, upstream call, writing)::

    with drain.track(config.request_timeout) as ctrl:   # 503 shutting_down if draining
        ...                                              # runs inside ctrl.scope
    if ctrl.reason == SHUTTING_DOWN: ...

The control is registered on entry, its scope entered, and both undone on
every way out, so the registry never holds a finished request. Its scope carries the request deadline, and anyone
may end it with a *reason*: the client left (``disconnect``), a write stalled
(``write_stalled``), or the server is shutting down (``shutting_down``). The
handler reads the reason afterwards to decide the single terminal answer.

:meth:`Drain.drain` refuses new requests (503 ``shutting_down``), ends the
ones still queued at once, gives admitted ones ``grace`` seconds to finish,
then cancels the rest with reason ``shutting_down``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from ..errors import ShuttingDownError

__all__ = ["DISCONNECT", "SHUTTING_DOWN", "WRITE_STALLED", "Drain", "RequestControl", "shutting_down_error"]

DISCONNECT = "disconnect"
WRITE_STALLED = "write_stalled"
SHUTTING_DOWN = "shutting_down"


def shutting_down_error() -> ShuttingDownError:
    return ShuttingDownError("server is shutting down", retry_after=1.0)


class RequestControl:
    """One request's cancel scope, its admission state and why it was ended (if it was)."""

    __slots__ = ("admitted", "reason", "scope")

    def __init__(self, deadline: float) -> None:
        self.scope = trio.CancelScope(deadline=deadline)
        self.admitted = False
        self.reason: str | None = None

    def cancel(self, reason: str) -> None:
        """End the request; the first reason given wins."""
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()

    @property
    def timed_out(self) -> bool:
        """The scope ended because its deadline passed (not an explicit cancel)."""
        return self.reason is None and self.scope.cancelled_caught

    def __repr__(self) -> str:
        return f"<RequestControl admitted={self.admitted} reason={self.reason!r}>"


class Drain:
    """The registry of live requests and the shutdown switch."""

    def __init__(self) -> None:
        self._controls: set[RequestControl] = set()
        self._draining = False
        self._empty = trio.Event()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def active(self) -> int:
        return len(self._controls)

    @contextmanager
    def track(self, timeout: float, *, admitted: bool = False) -> Iterator[RequestControl]:
        """Track one request inside a scope whose deadline is ``timeout`` from now.

        Raises :class:`~trio_agent.errors.ShuttingDownError` (503) on entry
        when draining. ``admitted=True`` for work that never waits for a slot
        of its own (a batch: its items take theirs), so starting a drain does
        not end it before ``grace``.
        """
        if self._draining:
            raise shutting_down_error()
        ctrl = RequestControl(trio.current_time() + timeout if math.isfinite(timeout) else math.inf)
        ctrl.admitted = admitted
        self._controls.add(ctrl)
        try:
            with ctrl.scope:
                yield ctrl
        finally:
            self._controls.discard(ctrl)
            if self._draining and not self._controls:
                self._empty.set()

    def start(self) -> None:
        """Refuse new requests and end those not yet admitted (idempotent)."""
        self._draining = True
        if not self._controls:
            self._empty.set()
        for ctrl in list(self._controls):
            if not ctrl.admitted:
                ctrl.cancel(SHUTTING_DOWN)

    async def drain(self, grace: float, *, cleanup_grace: float = 2.0) -> int:
        """Start draining; wait up to ``grace`` seconds for requests to end, then cancel the rest.

        Returns how many requests the deadline cancelled.
        """
        self.start()
        with trio.move_on_after(grace):
            await self._empty.wait()
        leftovers = list(self._controls)
        for ctrl in leftovers:
            ctrl.cancel(SHUTTING_DOWN)
        with trio.move_on_after(cleanup_grace):
            await self._empty.wait()
        return len(leftovers)

    def __repr__(self) -> str:
        return f"<Drain draining={self._draining} active={len(self._controls)}>"
