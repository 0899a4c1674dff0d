"""iter_with_timeouts: first-item, idle and total deadlines; the source always closed."""

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from trio_agent import (
    DeadlineError,
    FirstItemTimeoutError,
    IdleTimeoutError,
    TimeoutIterator,
    TotalTimeoutError,
    iter_with_timeouts,
)


class Source:
    """An async iterator scripted as a list of delays; item i arrives after delays[i]."""

    def __init__(self, delays: list[float], *, fail_at: int | None = None) -> None:
        self.delays = delays
        self.fail_at = fail_at
        self.next = 0
        self.closed = 0
        self.cancelled = 0

    def __aiter__(self) -> "Source":
        return self

    async def __anext__(self) -> int:
        if self.next == self.fail_at:
            raise OSError("source broke")
        if self.next >= len(self.delays):
            raise StopAsyncIteration
        try:
            await trio.sleep(self.delays[self.next])
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.next += 1
        return self.next - 1

    async def aclose(self) -> None:
        self.closed += 1


async def collect(it: TimeoutIterator[int], into: list[tuple[int, float]]) -> None:
    async for item in it:
        into.append((item, trio.current_time()))


async def test_normal_end_closes_the_source(autojump_clock: trio.testing.MockClock) -> None:
    source = Source([1, 1, 1])
    got: list[tuple[int, float]] = []
    await collect(iter_with_timeouts(source, first_timeout=2, idle_timeout=2, total_timeout=5), got)
    assert got == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert source.closed == 1


async def test_first_item_timeout(autojump_clock: trio.testing.MockClock) -> None:
    source = Source([5])
    with pytest.raises(FirstItemTimeoutError) as info:
        await collect(iter_with_timeouts(source, first_timeout=2, idle_timeout=1), [])
    assert info.value.timeout == 2
    assert "first_timeout=2" in str(info.value)
    assert trio.current_time() == 2.0
    assert (source.cancelled, source.closed) == (1, 1)


async def test_idle_timeout_between_items(autojump_clock: trio.testing.MockClock) -> None:
    source = Source([1, 1, 5])
    got: list[tuple[int, float]] = []
    with pytest.raises(IdleTimeoutError) as info:
        await collect(iter_with_timeouts(source, first_timeout=10, idle_timeout=2), got)
    assert got == [(0, 1.0), (1, 2.0)]
    assert info.value.timeout == 2
    assert trio.current_time() == 4.0
    assert source.closed == 1


async def test_idle_timeout_does_not_apply_to_the_first_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[tuple[int, float]] = []
    await collect(iter_with_timeouts(Source([5, 1]), idle_timeout=2), got)
    assert got == [(0, 5.0), (1, 6.0)]


async def test_time_spent_by_the_consumer_is_not_idle_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got = []
    async for item in iter_with_timeouts(Source([0, 1, 1]), idle_timeout=1.5):
        got.append(item)
        await trio.sleep(10)  # slow consumer
    assert got == [0, 1, 2]


async def test_total_timeout(autojump_clock: trio.testing.MockClock) -> None:
    source = Source([1] * 10)
    got: list[tuple[int, float]] = []
    with pytest.raises(TotalTimeoutError) as info:
        await collect(iter_with_timeouts(source, idle_timeout=2, total_timeout=3.5), got)
    assert [i for i, _ in got] == [0, 1, 2]
    assert info.value.timeout == 3.5
    assert trio.current_time() == 3.5
    assert source.closed == 1


async def test_tightest_deadline_wins_and_names_itself(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(TotalTimeoutError):
        await collect(iter_with_timeouts(Source([9]), first_timeout=5, total_timeout=3), [])
    assert trio.current_time() == 3.0
    with pytest.raises(FirstItemTimeoutError):  # on a tie the per-item deadline is named
        await collect(iter_with_timeouts(Source([9]), first_timeout=3, total_timeout=3), [])
    assert trio.current_time() == 6.0


async def test_clocks_start_at_the_first_anext_call(autojump_clock: trio.testing.MockClock) -> None:
    it = iter_with_timeouts(Source([1, 1]), first_timeout=1.5, total_timeout=2.5)
    await trio.sleep(100)  # constructed long before use: no deadline counted yet
    got: list[tuple[int, float]] = []
    await collect(it, got)
    assert got == [(0, 101.0), (1, 102.0)]
    assert it.total_deadline == 102.5


async def test_breaking_out_of_async_with_closes_the_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = Source([1, 1, 1])
    async with iter_with_timeouts(source, idle_timeout=5) as it:
        async for item in it:
            assert item == 0
            break
    assert source.closed == 1
    with pytest.raises(StopAsyncIteration):  # closed: nothing more comes out
        await it.__anext__()
    assert source.closed == 1  # and it is closed only once


async def test_outside_cancellation_closes_the_source_and_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = Source([1, 5])
    with trio.move_on_after(2) as scope:
        await collect(iter_with_timeouts(source, idle_timeout=10), [])
    assert scope.cancelled_caught
    assert (source.cancelled, source.closed) == (1, 1)


async def test_error_from_the_source_propagates_and_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = Source([1, 1], fail_at=1)
    with pytest.raises(OSError, match="source broke"):
        await collect(iter_with_timeouts(source, idle_timeout=10), [])
    assert source.closed == 1


async def test_async_generator_source_is_closed_even_when_never_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in range(10):
                await trio.sleep(1)
                yield i
        finally:
            events.append("finally")

    async with iter_with_timeouts(numbers(), idle_timeout=5) as it:
        assert await it.__anext__() == 0
    assert events == ["finally"]


async def test_memory_channel_source_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[int](1)
    with pytest.raises(FirstItemTimeoutError):
        async with iter_with_timeouts(receive, first_timeout=1) as it:
            await it.__anext__()
    with pytest.raises(trio.BrokenResourceError):  # the receiver was closed
        send.send_nowait(1)


async def test_errors_are_deadline_errors() -> None:
    for cls in (FirstItemTimeoutError, IdleTimeoutError, TotalTimeoutError):
        assert issubclass(cls, DeadlineError)


def test_rejects_negative_timeouts() -> None:
    with pytest.raises(ValueError):
        iter_with_timeouts(Source([]), idle_timeout=-1)


async def test_repr(autojump_clock: trio.testing.MockClock) -> None:
    it = iter_with_timeouts(Source([1]), idle_timeout=2)
    assert repr(it).startswith("<TimeoutIterator new items_received=0 ")
    await collect(it, [])
    assert repr(it).startswith("<TimeoutIterator closed items_received=1 ")
