"""Pacer: one shared clock wakes many waiters at their exact (or windowed) due times."""

import pytest
import trio
import trio.testing

from trio_agent.llm._pacer import Pacer


async def test_waiters_wake_at_their_exact_times(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer()
    woke: dict[int, float] = {}

    async def waiter(i: int, due: float) -> None:
        await pacer.sleep_until(due)
        woke[i] = trio.current_time()

    dues = [0.5, 0.1, 0.3, 0.3, 2.0, 0.05, 1.0]
    async with trio.open_nursery() as nursery:
        for i, due in enumerate(dues):
            nursery.start_soon(waiter, i, due)
    assert woke == dict(enumerate(dues))
    assert pacer.waiting == 0


async def test_resolution_batches_wakeups(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(resolution=0.01)
    woke: list[float] = []

    async def waiter(due: float) -> None:
        await pacer.sleep_until(due)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for due in (1.0, 1.004, 1.009, 1.02):
            nursery.start_soon(waiter, due)
    assert sorted(woke) == [1.0, 1.0, 1.0, 1.02]


async def test_a_past_due_time_is_a_plain_checkpoint(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer()
    await trio.sleep(1)
    await pacer.sleep_until(0.5)
    assert trio.current_time() == 1 and pacer.waiting == 0


@pytest.mark.parametrize("cancel_leader", [True, False])
async def test_cancelling_leader_or_follower_hands_over(
    cancel_leader: bool, autojump_clock: trio.testing.MockClock
) -> None:
    pacer = Pacer()
    woke: dict[str, float] = {}

    async def waiter(name: str, due: float, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            await pacer.sleep_until(due)
            woke[name] = trio.current_time()

    victim = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        # The first waiter to park becomes the leader.
        if cancel_leader:
            nursery.start_soon(waiter, "victim", 5.0, victim)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter, "a", 1.0)
        else:
            nursery.start_soon(waiter, "a", 1.0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter, "victim", 5.0, victim)
        nursery.start_soon(waiter, "b", 3.0)
        await trio.sleep(0.5)
        victim.cancel()
    assert woke == {"a": 1.0, "b": 3.0}
    assert pacer.waiting == 0 and trio.current_time() == 3.0


async def test_many_streams_share_one_sleeper(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer()
    done = 0

    async def stream(offset: float) -> None:
        nonlocal done
        start = trio.current_time()
        for i in range(20):
            await pacer.sleep_until(start + offset + i * 0.02)
            assert trio.current_time() == pytest.approx(start + offset + i * 0.02)
        done += 1

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for k in range(200):
                nursery.start_soon(stream, (k % 7) * 0.001)
    assert done == 200 and pacer.waiting == 0


async def test_ticks_run_at_their_times_in_the_shared_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer()
    calls: dict[str, list[float]] = {"a": [], "b": []}
    runs_in: dict[str, list[object]] = {"a": [], "b": []}
    sleeper_task: list[object] = []

    def ticker(name: str, step: float, count: int):  # type: ignore[no-untyped-def]
        def tick(now: float) -> float | None:
            calls[name].append(now)
            runs_in[name].append(trio.lowlevel.current_task())
            return now + step if len(calls[name]) < count else None

        return tick

    async def sleeper() -> None:
        sleeper_task.append(trio.lowlevel.current_task())
        await pacer.sleep_until(0.25)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)  # parks first: it leads until 0.25
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(pacer.run_ticks, 0.1, ticker("a", 0.1, 4))
        nursery.start_soon(pacer.run_ticks, 0.15, ticker("b", 0.2, 3))
    assert calls["a"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert calls["b"] == pytest.approx([0.15, 0.35, 0.55])
    # Before 0.25 every tick ran in the sleeper's task (the leader's pass): no task of a or b
    # was woken for them.
    early = [
        t for name in "ab" for now, t in zip(calls[name], runs_in[name], strict=True) if now < 0.25
    ]
    assert len(early) == 3 and set(early) == set(sleeper_task)
    assert pacer.waiting == 0


async def test_a_failing_tick_raises_in_its_caller_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer()
    ticks = 0

    def good(now: float) -> float | None:
        nonlocal ticks
        ticks += 1
        return now + 0.1 if ticks < 5 else None

    def bad(now: float) -> float | None:
        raise ValueError("boom")

    async def failing(due: float) -> None:
        with pytest.raises(ValueError, match="boom"):
            await pacer.run_ticks(due, bad)

    # The failing caller leads in one case, follows in the other.
    for bad_due in (0.05, 0.25):
        ticks = 0
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(failing, start + bad_due)
            nursery.start_soon(pacer.run_ticks, start + 0.1, good)
        assert ticks == 5 and pacer.waiting == 0


async def test_a_cancelled_caller_is_never_ticked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer()
    seen: list[float] = []
    scope = trio.CancelScope()

    def tick(now: float) -> float | None:
        seen.append(now)
        if len(seen) == 3:
            scope.cancel()  # as a tick that finds its client gone cancels its own request
        return now + 0.1

    async def other() -> None:
        await pacer.sleep_until(1.0)

    async def victim() -> None:
        with scope:
            await pacer.run_ticks(0.1, tick)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(victim)
    assert seen == pytest.approx([0.1, 0.2, 0.3])
    assert pacer.waiting == 0 and trio.current_time() == 1.0
