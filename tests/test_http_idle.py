"""IdleTimer: Hypercorn's keep-alive timer as one task per connection with a movable deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from trio_agent.http._idle import IdleTimer


class _TaskGroup:
    """Hypercorn's TaskGroup protocol, as far as IdleTimer uses it (``spawn``)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def spawn(self, func: Callable[..., Awaitable[None]], *args: object) -> None:
        self._nursery.start_soon(func, *args)


def _recording_close() -> tuple[list[float], Callable[[], Awaitable[None]]]:
    """An idle-timer action that records when it ran."""
    fired: list[float] = []

    async def close() -> None:
        fired.append(trio.current_time())

    return fired, close


async def test_idle_timer_restarts_and_stops_without_a_task_per_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired, close = _recording_close()
    timer = IdleTimer(5.0, trio.Event())
    async with trio.open_nursery() as nursery:
        tg = _TaskGroup(nursery)
        start = trio.current_time()
        await timer.restart(tg, close)
        await trio.sleep(3)
        for _ in range(100):  # a hundred requests on the connection: still one timer task
            await timer.stop()
            await timer.restart(tg, close)  # a response ended: the timeout starts over
        assert len(nursery.child_tasks) == 1
        await trio.sleep(3)
        assert fired == []
        await timer.stop()  # a request started: no timeout while it runs
        await trio.sleep(10)
        assert fired == []
        await timer.restart(tg, close)
        await trio.sleep(6)
        assert fired == [pytest.approx(start + 3 + 3 + 10 + 5)]
    assert len(fired) == 1


@pytest.mark.parametrize("busy", [False, True])
async def test_idle_timer_closes_the_connection_once_idle_when_the_server_stops(
    autojump_clock: trio.testing.MockClock, busy: bool
) -> None:
    fired, close = _recording_close()
    terminated = trio.Event()
    timer = IdleTimer(5.0, terminated)
    async with trio.open_nursery() as nursery:
        tg = _TaskGroup(nursery)
        t0 = trio.current_time()
        await timer.restart(tg, close)
        if busy:
            await timer.stop()  # a request is running
        await trio.sleep(1)
        terminated.set()  # idle, with 4 s of its keep-alive left: closed at once
        await trio.sleep(20)
        if busy:
            assert fired == []  # the request ran on; the connection stayed open
            await timer.restart(tg, close)  # its response ended: closed at once
            await trio.sleep(0.1)
        assert fired == [pytest.approx(t0 + (21 if busy else 1))]


async def test_idle_timer_cancel_ends_its_task_without_closing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Hypercorn's connection task group waits for the timer task: a connection that is done
    # must end it, busy or idle, started or not, or the connection's task never ends.
    fired, close = _recording_close()
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            for busy, settle in ((False, True), (True, True), (False, False)):
                timer = IdleTimer(5.0, trio.Event())
                await timer.restart(_TaskGroup(nursery), close)
                if busy:
                    await timer.stop()
                if settle:
                    await trio.testing.wait_all_tasks_blocked()
                timer.cancel()
    assert fired == []
