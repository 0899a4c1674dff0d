"""map_concurrently and as_completed: bounded map with one Outcome per item."""

from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_agent import (
    ItemCancelledError,
    ItemTimeoutError,
    Outcome,
    RateLimiter,
    TotalTimeoutError,
    as_completed,
    map_concurrently,
)


class Recorder:
    """A scripted fn: sleeps item seconds (or raises it) and records what happened."""

    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.started: dict[object, float] = {}
        self.cancelled: list[object] = []

    async def __call__(self, item: float | BaseException) -> float:
        self.started[item] = trio.current_time()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if isinstance(item, BaseException):
                await trio.sleep(0.5)
                raise item
            await trio.sleep(item)
            return item * 10
        except trio.Cancelled:
            self.cancelled.append(item)
            raise
        finally:
            self.running -= 1


def assert_idle(limiter: trio.CapacityLimiter) -> None:
    stats = limiter.statistics()
    assert (stats.borrowed_tokens, stats.tasks_waiting) == (0, 0)


async def test_ten_items_three_at_a_time_take_four_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fn = Recorder()
    outcomes = await map_concurrently(fn, [1.0] * 10, max_concurrency=3)
    assert trio.current_time() == 4.0
    assert fn.max_running == 3
    assert [o.index for o in outcomes] == list(range(10))
    assert all(o.status == "ok" and o.value == 10.0 and o.duration == 1.0 for o in outcomes)


async def test_outcomes_keep_input_order_and_report_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    error = ValueError("bad item")
    outcomes = await map_concurrently(Recorder(), [3.0, error, 1.0], max_concurrency=3)
    assert [o.status for o in outcomes] == ["ok", "error", "ok"]
    assert [o.value for o in outcomes] == [30.0, None, 10.0]
    assert outcomes[1].error is error
    assert outcomes[1].duration == 0.5
    assert trio.current_time() == 3.0


async def test_item_timeout_marks_only_the_slow_item(autojump_clock: trio.testing.MockClock) -> None:
    fn = Recorder()
    outcomes = await map_concurrently(fn, [1.0, 5.0, 1.0], max_concurrency=3, item_timeout=2.0)
    assert [o.status for o in outcomes] == ["ok", "timeout", "ok"]
    slow = outcomes[1]
    assert slow.duration == 2.0
    assert isinstance(slow.error, ItemTimeoutError)
    assert (slow.error.timeout, slow.error.index) == (2.0, 1)
    assert fn.cancelled == [5.0]
    assert trio.current_time() == 2.0
    with pytest.raises(ItemTimeoutError):
        slow.unwrap()


async def test_fail_fast_raises_the_first_error_and_cancels_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fn = Recorder()
    limiter = trio.CapacityLimiter(10)
    error = KeyError("first")
    with pytest.raises(KeyError) as info:  # the original, not an ExceptionGroup
        await map_concurrently(
            fn, [10.0, error, 10.0, 10.0, 10.0], max_concurrency=3, fail_fast=True, limiter=limiter
        )
    assert info.value is error
    assert trio.current_time() == 0.5
    assert sorted(fn.cancelled) == [10.0, 10.0]  # the two running ones
    assert len(fn.started) == 2  # items 3 and 4 never started (same value, one key)
    assert_idle(limiter)


async def test_fail_fast_on_item_timeout_raises_item_timeout_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fn = Recorder()
    with pytest.raises(ItemTimeoutError):
        await map_concurrently(fn, [1.0, 9.0, 8.0], max_concurrency=3, item_timeout=3.0, fail_fast=True)
    assert trio.current_time() == 3.0
    assert sorted(fn.cancelled) == [8.0, 9.0]  # 9.0 by its own timeout, 8.0 by fail_fast


async def test_shared_limiter_caps_the_map_too(autojump_clock: trio.testing.MockClock) -> None:
    limiter = trio.CapacityLimiter(2)
    fn = Recorder()
    async with trio.open_nursery() as nursery:
        # Someone else holds one of the two global tokens for 3 s.
        async def other() -> None:
            async with limiter:
                await trio.sleep(3)

        nursery.start_soon(other)
        await trio.testing.wait_all_tasks_blocked()
        outcomes = await map_concurrently(fn, [1.0] * 6, max_concurrency=5, limiter=limiter)
    # 1 token for 3 s (3 items), then 2 tokens (3 more items in 2 s).
    assert trio.current_time() == 5.0
    assert fn.max_running == 2
    assert all(o.ok for o in outcomes)
    assert_idle(limiter)


async def test_outside_cancellation_propagates_and_releases_the_limiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = trio.CapacityLimiter(2)
    fn = Recorder()
    with trio.move_on_after(1.5) as scope:
        await map_concurrently(fn, [1.0] * 10, max_concurrency=4, limiter=limiter)
    assert scope.cancelled_caught
    assert trio.current_time() == 1.5
    assert fn.cancelled == [1.0, 1.0]
    assert fn.running == 0
    assert_idle(limiter)


class Fatal(BaseException):
    pass


async def test_base_exception_from_an_item_is_not_swallowed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = trio.CapacityLimiter(5)
    with pytest.raises(Fatal):
        await map_concurrently(Recorder(), [5.0, Fatal(), 5.0], max_concurrency=3, limiter=limiter)
    assert_idle(limiter)


async def test_total_timeout_reports_cancelled_items(autojump_clock: trio.testing.MockClock) -> None:
    fn = Recorder()
    outcomes = await map_concurrently(fn, [1.0] * 5, max_concurrency=2, total_timeout=1.5)
    assert trio.current_time() == 1.5
    assert [o.status for o in outcomes] == ["ok", "ok", "cancelled", "cancelled", "cancelled"]
    assert [o.duration for o in outcomes] == [1.0, 1.0, 0.5, 0.5, 0.0]
    assert all(isinstance(o.error, ItemCancelledError) for o in outcomes[2:])
    assert fn.running == 0


async def test_total_timeout_with_fail_fast_raises(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(TotalTimeoutError) as info:
        await map_concurrently(Recorder(), [1.0] * 5, max_concurrency=2, total_timeout=1.5, fail_fast=True)
    assert info.value.timeout == 1.5
    assert trio.current_time() == 1.5


async def test_huge_lazy_input_keeps_tasks_and_reads_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pulled = 0
    children: list[int] = []

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(1_000):
            pulled += 1
            yield i

    async def fn(i: int) -> int:
        if i == 0:
            children.append(pulled)
            task = trio.lowlevel.current_task()
            assert task.parent_nursery is not None
            children.append(len(task.parent_nursery.child_tasks))
        await trio.sleep(1)
        return i

    outcomes = await map_concurrently(fn, items(), max_concurrency=4)
    assert children[0] <= 4  # at most one item read ahead per worker
    assert children[1] == 4  # one task per worker, not per item
    assert [o.value for o in outcomes] == list(range(1_000))
    assert trio.current_time() == 250.0


async def test_broken_input_iterator_is_raised(autojump_clock: trio.testing.MockClock) -> None:
    def items() -> Iterator[float]:
        yield 1.0
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        await map_concurrently(Recorder(), items(), max_concurrency=2)


async def test_rate_limiter_spaces_the_starts(autojump_clock: trio.testing.MockClock) -> None:
    fn = Recorder()
    items = [10.0, 10.1, 10.2, 10.3]
    await map_concurrently(fn, items, max_concurrency=10, rate_limiter=RateLimiter(2.0))
    assert [fn.started[i] for i in items] == [0.0, 0.5, 1.0, 1.5]


async def test_empty_input(autojump_clock: trio.testing.MockClock) -> None:
    assert await map_concurrently(Recorder(), [], max_concurrency=3) == []


@pytest.mark.parametrize("kwargs", [{"max_concurrency": 0}, {"max_concurrency": 1, "item_timeout": -1}])
async def test_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        await map_concurrently(Recorder(), [1.0], **kwargs)  # type: ignore[arg-type]


# -- as_completed -----------------------------------------------------------------


async def test_as_completed_yields_in_completion_order(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[int, float]] = []
    async with as_completed(Recorder(), [3.0, 1.0, 2.0], max_concurrency=3) as outcomes:
        async for outcome in outcomes:
            seen.append((outcome.index, trio.current_time()))
    assert seen == [(1, 1.0), (2, 2.0), (0, 3.0)]


async def test_as_completed_reports_errors_and_timeouts(autojump_clock: trio.testing.MockClock) -> None:
    error = ValueError("x")
    async with as_completed(Recorder(), [error, 9.0], max_concurrency=2, item_timeout=1.0) as outcomes:
        got: list[Outcome[float]] = [o async for o in outcomes]
    assert [(o.index, o.status) for o in got] == [(0, "error"), (1, "timeout")]


async def test_leaving_as_completed_early_cancels_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fn = Recorder()
    limiter = trio.CapacityLimiter(3)
    async with as_completed(fn, [1.0, 5.0, 6.0, 7.0], max_concurrency=3, limiter=limiter) as outcomes:
        async for outcome in outcomes:
            assert outcome.index == 0
            break
    assert trio.current_time() == 1.0
    # 7.0 may or may not have started in the same tick; whatever started was cancelled.
    assert {5.0, 6.0} <= set(fn.started)
    assert sorted(fn.cancelled) == sorted(k for k in fn.started if k != 1.0)
    assert fn.running == 0
    assert_idle(limiter)


async def test_exception_in_as_completed_body_comes_out_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fn = Recorder()
    with pytest.raises(ZeroDivisionError):
        async with as_completed(fn, [1.0, 5.0], max_concurrency=2) as outcomes:
            async for _ in outcomes:
                1 / 0  # noqa: B018
    assert fn.cancelled == [5.0]
    assert fn.running == 0


async def test_outside_cancellation_of_as_completed(autojump_clock: trio.testing.MockClock) -> None:
    fn = Recorder()
    with trio.move_on_after(2.5):
        async with as_completed(fn, [1.0] * 10, max_concurrency=2) as outcomes:
            async for _ in outcomes:
                pass
    assert trio.current_time() == 2.5
    assert fn.cancelled == [1.0, 1.0]
    assert fn.running == 0


async def test_as_completed_with_rate_limiter(autojump_clock: trio.testing.MockClock) -> None:
    async with as_completed(
        Recorder(), [0.0] * 3, max_concurrency=3, rate_limiter=RateLimiter(4.0)
    ) as outcomes:
        times = [trio.current_time() async for _ in outcomes]
    assert times == [0.0, 0.25, 0.5]


async def test_as_completed_broken_input_iterator_is_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def items() -> Iterator[float]:
        yield 1.0
        raise RuntimeError("source broke")

    fn = Recorder()
    with pytest.raises(RuntimeError, match="source broke"):
        async with as_completed(fn, items(), max_concurrency=2) as outcomes:
            async for _ in outcomes:
                pass
    assert fn.running == 0


async def test_as_completed_empty_input(autojump_clock: trio.testing.MockClock) -> None:
    async with as_completed(Recorder(), [], max_concurrency=2) as outcomes:
        assert [o async for o in outcomes] == []


async def test_group_left_after_an_item_timeout_is_an_error_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # fn's own nursery: on the item timeout one child fails while unwinding.
    async def fn(_: int) -> None:
        async def fails_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise OSError("cleanup failed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails_on_cancel)
            nursery.start_soon(trio.sleep_forever)

    [outcome] = await map_concurrently(fn, [0], max_concurrency=1, item_timeout=1.0)
    assert outcome.status == "error"
    assert isinstance(outcome.error, ExceptionGroup)
    assert outcome.error.subgroup(OSError) is not None
