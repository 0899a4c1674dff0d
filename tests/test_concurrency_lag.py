"""LoopLag: how late trio runs a task that asked to wake, as a moving average; 0 when not running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_agent.concurrency import LoopLag


@asynccontextmanager
async def running(lag: LoopLag) -> AsyncIterator[None]:
    """``lag.run`` in the background, after 0.1 s of an idle loop; stopped on exit."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(0.1)
        yield
        nursery.cancel_scope.cancel()


async def _hog(clock: trio.testing.MockClock, seconds: float, passes: int) -> None:
    """Keep the 'CPU' for ``seconds`` in each of ``passes`` scheduler passes (time jumps while we run)."""
    for _ in range(passes):
        clock.jump(seconds)
        await trio.lowlevel.checkpoint()


async def test_not_running_reports_zero() -> None:
    lag = LoopLag()
    assert lag.current == 0.0
    assert not lag.overloaded(0.0)
    s = lag.statistics()
    assert (s.current, s.samples, s.running) == (0.0, 0, False)


async def test_an_idle_loop_has_no_lag(autojump_clock: trio.testing.MockClock) -> None:
    lag = LoopLag(interval=0.01)
    async with running(lag):
        await trio.sleep(1.0)
        s = lag.statistics()
        assert s.running and s.samples >= 90
        assert s.current == pytest.approx(0.0, abs=1e-9)
        assert not lag.overloaded(0.001)
    assert lag.current == 0.0 and not lag.statistics().running


async def test_a_busy_loop_shows_its_lag_and_recovers(autojump_clock: trio.testing.MockClock) -> None:
    lag = LoopLag(interval=0.01, alpha=0.5)
    async with running(lag):
        # Every pass now takes 0.2 s of "CPU": each wake of the monitor is about that late.
        await _hog(autojump_clock, 0.2, 12)
        assert lag.current > 0.15
        assert lag.overloaded(0.1)
        assert lag.statistics().peak >= 0.19
        # Idle again: the average decays within a few samples.
        await trio.sleep(0.2)
        assert lag.current < 0.01
        assert not lag.overloaded(0.1)


async def test_one_slow_pass_does_not_trip_it(autojump_clock: trio.testing.MockClock) -> None:
    lag = LoopLag(interval=0.01, alpha=0.3)
    async with running(lag):
        await _hog(autojump_clock, 0.1, 1)
        await trio.sleep(0.0)
        assert lag.statistics().last >= 0.05
        assert not lag.overloaded(0.05)


async def test_one_run_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    lag = LoopLag()
    async with running(lag):
        with pytest.raises(RuntimeError):
            await lag.run()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        LoopLag(interval=0)
    with pytest.raises(ValueError):
        LoopLag(alpha=0)
    with pytest.raises(ValueError):
        LoopLag(alpha=1.5)
    assert "LoopLag" in repr(LoopLag())
