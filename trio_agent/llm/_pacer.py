"""One clock for many paced streams: a shared ticker instead of a sleep per token per stream.

``trio.sleep_until`` costs a cancel scope, a deadline registration and a
``Cancelled`` raised and caught: about 15 to 25 µs of CPU. A thousand mock
streams pacing 50 tokens a second each would spend most of a core on sleeping
alone. :class:`Pacer` parks each waiter with the cheap
``wait_task_rescheduled`` and lets ONE of them (the *leader*) sleep until the
earliest due time and wake every waiter due by then (within ``resolution``
seconds). Leadership passes to the next waiter when the leader's own time
comes or it is cancelled, so no background task is needed and nothing
outlives its callers.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import outcome
import trio

__all__ = ["Pacer"]

_LEAD = object()  # the value a parked waiter is woken with when it must become the leader

# A waiter's heap entry is a list ``[due, seq, task, tick]``, compared by the heap in C (a
# float, then a unique int: task and tick are never compared); ``task`` is None once the
# entry is dead (woken, done or aborted); ``tick`` is None for a plain sleep. A Python
# ``__lt__`` would be called a dozen times per push and pop, on every token of every
# stream: the comparisons cost more than the rest of the wait.
_DUE, _SEQ, _TASK, _TICK = 0, 1, 2, 3
Entry = list[Any]
Tick = Callable[[float], "float | None"]
# A tick asking for a time inside the pass that called it runs in the next pass: at most
# one call per tick per pass, so a pass is bounded by the number of entries.
_LATER = 1e-9


class Pacer:
    """Wake many tasks at absolute trio times with one sleeping task at a time.

    ``resolution`` (seconds) lets the leader wake every waiter due within that
    window of the earliest one in one pass: 0 keeps exact times (for tests on
    the autojump clock), 0.001 bounds wake-ups at 1,000 a second whatever the
    number of streams.
    """

    def __init__(self, *, resolution: float = 0.0) -> None:
        if resolution < 0:
            raise ValueError("resolution must be >= 0")
        self._resolution = resolution
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        self._leader: Entry | None = None
        self._sleep_scope: trio.CancelScope | None = None

    @property
    def waiting(self) -> int:
        """Tasks parked right now (0 when idle)."""
        return sum(1 for e in self._heap if e[_TASK] is not None)

    def __repr__(self) -> str:
        return f"<Pacer waiting={self.waiting} resolution={self._resolution}>"

    async def sleep_until(self, due: float) -> None:
        """Return at ``due`` (or up to ``resolution`` earlier). A checkpoint, cancellable."""
        if due <= trio.current_time():
            await trio.lowlevel.checkpoint()
            return
        await self._park([due, next(self._seq), trio.lowlevel.current_task(), None])

    async def run_ticks(self, due: float, tick: Tick) -> None:
        """Call ``tick(now)`` at ``due`` (or up to ``resolution`` earlier), then again at each
        time it returns, until it returns None; then return. Cancellable, like a sleep.

        The ticks run in the pacer's own wake-up pass, in whichever task leads it, while the
        caller stays parked: a stream paced this way costs no task switch per unit, only
        the call. So ``tick`` must not block and must not assume its own task: it is plain
        synchronous work (produce a unit, hand it on). An exception it raises ends the ticks
        and is raised here, in the caller. Once the caller is cancelled, its tick is never
        called again.
        """
        await self._park([due, next(self._seq), trio.lowlevel.current_task(), tick])

    async def _park(self, entry: Entry) -> None:
        heapq.heappush(self._heap, entry)
        due = entry[_DUE]
        sleeping = self._sleep_scope
        if sleeping is not None and due < sleeping.deadline:
            sleeping.deadline = due  # wake the leader earlier, for this entry
        if self._leader is None:
            await self._lead(entry)
            return

        def abort(_: object) -> trio.lowlevel.Abort:
            entry[_TASK] = None
            return trio.lowlevel.Abort.SUCCEEDED

        if await trio.lowlevel.wait_task_rescheduled(abort) is _LEAD:
            await self._lead(entry)

    async def _lead(self, mine: Entry) -> None:
        """Sleep until the earliest due time, wake all due waiters (or call their ticks);
        hand over when done."""
        self._leader = mine
        heap = self._heap
        pop, push = heapq.heappop, heapq.heappush
        reschedule = trio.lowlevel.reschedule
        value = outcome.Value
        seq = self._seq
        failure: BaseException | None = None
        try:
            while mine[_TASK] is not None:
                while heap and heap[0][_TASK] is None:
                    pop(heap)
                with trio.CancelScope(deadline=heap[0][_DUE] if heap else mine[_DUE]) as scope:
                    self._sleep_scope = scope
                    await trio.sleep_forever()
                self._sleep_scope = None
                now = trio.current_time()
                horizon = now + self._resolution
                while heap and heap[0][_DUE] <= horizon:
                    entry = pop(heap)
                    task = entry[_TASK]
                    if task is None:
                        continue
                    tick = entry[_TICK]
                    if tick is not None:
                        try:
                            due = tick(now)
                        except Exception as exc:
                            due = None
                            if entry is mine:
                                failure = exc
                            else:
                                entry[_TASK] = None
                                reschedule(task, outcome.Error(exc))
                                continue
                        # The tick may have cancelled its own caller (a client found gone):
                        # the abort marked the entry dead, and the caller gets Cancelled.
                        if due is not None and entry[_TASK] is not None:
                            # Later than now, so this pass never runs the same tick again.
                            entry[_DUE] = max(due, horizon + _LATER)
                            entry[_SEQ] = next(seq)
                            push(heap, entry)
                            continue
                        if entry[_TASK] is None:
                            continue
                    entry[_TASK] = None
                    if entry is not mine:
                        reschedule(task, value(None))  # an outcome is unwrapped once: one each
        finally:
            mine[_TASK] = None
            self._leader = None
            self._sleep_scope = None
            self._hand_over()
        if failure is not None:
            raise failure

    def _hand_over(self) -> None:
        heap = self._heap
        while heap:
            entry = heap[0]
            task = entry[_TASK]
            if task is None:
                heapq.heappop(heap)
                continue
            # Stay in the heap: the new leader's own entry.
            self._leader = entry
            trio.lowlevel.reschedule(task, outcome.Value(_LEAD))
            return
