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
