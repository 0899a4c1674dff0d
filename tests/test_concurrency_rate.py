"""RateLimiter: GCRA starts per second on trio's clock."""

import pytest
import trio
import trio.testing

from trio_agent import RateLimiter


async def _start_times(limiter: RateLimiter, n: int) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return sorted(times)


async def test_rate_2_burst_1_spaces_starts_half_a_second(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(2.0)
    assert await _start_times(limiter, 5) == [0.0, 0.5, 1.0, 1.5, 2.0]
    stats = limiter.statistics()
    assert (stats.acquired, stats.tasks_waiting) == (5, 0)


async def test_burst_allows_back_to_back_starts_then_refills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(1.0, burst=3)
    assert limiter.statistics().tokens_available == 3
    assert await _start_times(limiter, 5) == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert limiter.statistics().tokens_available == 0
    await trio.sleep(10)  # quiet period: the bucket refills, but never above burst
    assert limiter.statistics().tokens_available == 3
    assert await _start_times(limiter, 4) == [12.0, 12.0, 12.0, 13.0]


async def test_acquire_nowait_raises_would_block(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(2.0)
    limiter.acquire_nowait()
    with pytest.raises(trio.WouldBlock):
        limiter.acquire_nowait()
    await trio.sleep(0.5)
    limiter.acquire_nowait()
    assert limiter.statistics().acquired == 2


async def test_acquire_nowait_does_not_jump_the_line(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(1.0)
    limiter.acquire_nowait()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.acquire)  # waits until 1.0
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1
        await trio.sleep(1.5)  # past 1.0 the waiter has taken its start
    with pytest.raises(trio.WouldBlock):  # next one is due at 2.0
        limiter.acquire_nowait()


async def test_cancelled_acquire_consumes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(1.0)
    await limiter.acquire()  # t=0, next start due at 1.0
    with trio.move_on_after(0.3) as scope:
        await limiter.acquire()
    assert scope.cancelled_caught
    stats = limiter.statistics()
    assert (stats.acquired, stats.tasks_waiting) == (1, 0)
    await limiter.acquire()
    assert trio.current_time() == 1.0  # not 2.0: the cancelled wait took no slot


async def test_acquire_checkpoints_even_when_free(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(1.0)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await limiter.acquire()
    assert limiter.statistics().acquired == 0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("inf"), 1), (1, 0), (1, 1.5)])
def test_rejects_bad_arguments(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


async def test_repr_shows_live_state() -> None:
    limiter = RateLimiter(2, burst=2)
    limiter.acquire_nowait()
    assert repr(limiter) == "<RateLimiter rate=2/s burst=2 tokens_available=1 tasks_waiting=0 acquired=1>"
