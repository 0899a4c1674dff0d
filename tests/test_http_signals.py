"""watch_signals and set_after: SIGTERM/SIGINT or a caller's trigger become one event."""

from __future__ import annotations

import os
import signal

import trio
import trio.testing

from trio_agent.http import set_after, watch_signals


async def test_set_after_sets_the_event_once_the_trigger_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def trigger() -> None:
        await trio.sleep(3)

    event = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(set_after, trigger, event)
        await event.wait()
        assert trio.current_time() == 3


async def test_sigterm_sets_the_event() -> None:
    event = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, event)
            await trio.testing.wait_all_tasks_blocked()
            os.kill(os.getpid(), signal.SIGTERM)
            await event.wait()  # the signal was taken from the queue: none is redelivered on exit
            nursery.cancel_scope.cancel()
