"""Drain: refuse new work, end queued requests at once, give admitted ones a grace period."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from trio_agent.errors import ShuttingDownError
from trio_agent.server import Drain


async def test_track_sets_the_deadline_and_forgets_the_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drain = Drain()
    with drain.track(5.0) as ctrl:
        assert drain.active == 1
        await trio.sleep_forever()
    assert trio.current_time() == 5.0 and ctrl.timed_out and ctrl.reason is None
    assert drain.active == 0
    with drain.track(math.inf) as ctrl:
        assert ctrl.scope.deadline == math.inf


async def test_track_forgets_the_request_when_it_raises() -> None:
    drain = Drain()
    with pytest.raises(ValueError), drain.track(5.0):
        raise ValueError("boom")
    assert drain.active == 0


async def test_first_reason_wins() -> None:
    with Drain().track(10.0) as ctrl:
        ctrl.cancel("disconnect")
        ctrl.cancel("shutting_down")
        await trio.sleep_forever()
    assert ctrl.reason == "disconnect" and not ctrl.timed_out


async def test_drain_ends_queued_at_once_and_admitted_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drain = Drain()
    ended: dict[str, tuple[float, str | None]] = {}

    async def request(name: str, admitted: bool, work: float) -> None:
        with drain.track(100.0, admitted=admitted) as ctrl:
            await trio.sleep(work)
        ended[name] = (trio.current_time(), ctrl.reason)

    async with trio.open_nursery() as n:
        n.start_soon(request, "queued", False, 50.0)
        n.start_soon(request, "short", True, 2.0)
        n.start_soon(request, "long", True, 50.0)
        await trio.testing.wait_all_tasks_blocked()
        cancelled = await drain.drain(5.0)
    assert ended == {"queued": (0.0, "shutting_down"), "short": (2.0, None), "long": (5.0, "shutting_down")}
    assert cancelled == 1
    with pytest.raises(ShuttingDownError), drain.track(1.0):
        pass
    assert drain.active == 0


async def test_drain_returns_at_once_when_idle(autojump_clock: trio.testing.MockClock) -> None:
    drain = Drain()
    assert await drain.drain(30.0) == 0
    assert trio.current_time() == 0.0
    assert drain.draining and "draining=True" in repr(drain)


async def test_drain_after_start_returns_at_once_when_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drain = Drain()
    drain.start()
    drain.start()
    assert await drain.drain(30.0) == 0
    assert trio.current_time() == 0.0
