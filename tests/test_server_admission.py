"""Admission: the global cap, the bounded queue (FIFO, adaptive LIFO), queue-wait deadline, per-key cap, statistics."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests._fakes import make_gateway
from trio_agent.concurrency import LoopLag
from trio_agent.config import ServerConfig
from trio_agent.errors import KeyLimitError, OverloadedError
from trio_agent.server import Admission, Lease, Limits


def make(**kw: object) -> Admission:
    args: dict[str, object] = {"max_concurrency": 2, "max_queued": 2, "max_queue_wait": 5.0}
    args.update(kw)
    return Admission(**args)  # type: ignore[arg-type]


def assert_idle(adm: Admission) -> None:
    s = adm.statistics()
    assert (s.in_flight, s.queued, s.keys_in_flight) == (0, 0, 0)


def test_admission_is_a_limits() -> None:
    assert isinstance(make(), Limits)


async def test_admits_up_to_the_cap_at_once(autojump_clock: trio.testing.MockClock) -> None:
    adm = make()
    async with adm.lease() as a, adm.lease() as b:
        assert isinstance(a, Lease) and isinstance(b, Lease)
        assert a.queued == b.queued == 0
        assert adm.statistics().in_flight == 2
    assert_idle(adm)
    assert adm.statistics().admitted == 2


async def test_waiters_are_fifo_and_record_their_wait(autojump_clock: trio.testing.MockClock) -> None:
    adm = make(max_concurrency=1, max_queued=3, max_queue_wait=100.0)
    order: list[tuple[int, float]] = []

    async def hold(i: int, seconds: float) -> None:
        async with adm.lease() as lease:
            order.append((i, lease.queued))
            await trio.sleep(seconds)

    async with trio.open_nursery() as n:
        n.start_soon(hold, 0, 1.0)
        await trio.testing.wait_all_tasks_blocked()
        for i in (1, 2, 3):
            n.start_soon(hold, i, 1.0)
            await trio.testing.wait_all_tasks_blocked()
        assert adm.statistics().queued == 3
    assert order == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert_idle(adm)


async def test_a_busy_queue_serves_newest_first_until_it_empties(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = make(max_concurrency=1, max_queued=4, max_queue_wait=100.0, lifo_after=1.5)
    order: list[tuple[int, float]] = []

    async def hold(i: int) -> None:
        async with adm.lease() as lease:
            order.append((i, lease.queued))
            await trio.sleep(1.0)

    async def round_of(first: int, waiters: int) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(hold, first)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(first + 1, first + 1 + waiters):
                n.start_soon(hold, i)
                await trio.testing.wait_all_tasks_blocked()

    await round_of(0, 3)
    # t=1: busy for 1 s < 1.5 s, oldest first; t=2 and t=3: newest first.
    assert order == [(0, 0.0), (1, 1.0), (3, 2.0), (2, 3.0)]
    assert adm.statistics().admitted_newest_first == 1  # 2 was alone when it got its slot
    order.clear()
    await round_of(4, 2)  # the queue emptied: in order again until busy for 1.5 s
    assert order == [(4, 0.0), (5, 1.0), (6, 2.0)]
    assert adm.statistics().admitted_newest_first == 1
    assert_idle(adm)


async def test_a_waiter_passed_over_still_leaves_after_max_queue_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = make(max_concurrency=1, max_queued=3, max_queue_wait=5.0, lifo_after=0.5)
    served: list[str] = []
    waited: list[float] = []

    async def hold(name: str, at: float) -> None:
        await trio.sleep_until(at)
        try:
            async with adm.lease():
                served.append(name)
                await trio.sleep(2.0)
        except OverloadedError as exc:
            waited.append(exc.waited or 0.0)

    async with trio.open_nursery() as n:
        for name, at in (("first", 0.0), ("old", 0.0), ("b", 1.0), ("c", 3.0)):
            n.start_soon(hold, name, at)
            await trio.testing.wait_all_tasks_blocked()
    # "old" queued at 0 was passed over at t=2 (for b) and t=4 (for c), and left at t=5.
    assert served == ["first", "b", "c"]
    assert waited == [5.0]
    s = adm.statistics()
    assert (s.shed_timeout, s.admitted, s.admitted_newest_first) == (1, 3, 2)
    assert_idle(adm)


async def test_full_queue_is_refused_at_once_with_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = make(max_concurrency=1, max_queued=1)
    async with trio.open_nursery() as n:
        n.start_soon(trio.sleep, 0)  # keep nursery non-empty
        lease = adm.lease()
        await lease.__aenter__()
        n.start_soon(lambda: _enter_and_wait(adm, 1.0))
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(OverloadedError) as info:
            async with adm.lease():
                pass  # pragma: no cover
        assert trio.current_time() == start
        assert info.value.status_code == 503
        assert info.value.retry_after is not None and 1.0 <= info.value.retry_after <= 60.0
        await lease.__aexit__(None, None, None)
    s = adm.statistics()
    assert (s.shed_full, s.shed_timeout, s.admitted) == (1, 0, 2)
    assert_idle(adm)


async def _enter_and_wait(adm: Admission, seconds: float) -> None:
    async with adm.lease():
        await trio.sleep(seconds)


async def test_queue_wait_runs_out_after_max_queue_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = make(max_concurrency=1, max_queued=5, max_queue_wait=2.5)
    async with trio.open_nursery() as n:
        n.start_soon(_enter_and_wait, adm, 10.0)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(OverloadedError) as info:
            async with adm.lease():
                pass  # pragma: no cover
        assert trio.current_time() - start == 2.5
        assert info.value.waited == 2.5
        n.cancel_scope.cancel()
    assert adm.statistics().shed_timeout == 1
    assert_idle(adm)


async def test_zero_queue_refuses_past_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    adm = make(max_concurrency=1, max_queued=0)
    async with adm.lease():
        with pytest.raises(OverloadedError):
            async with adm.lease():
                pass  # pragma: no cover
    assert_idle(adm)


async def test_cancelled_waiter_leaves_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    adm = make(max_concurrency=1, max_queued=2, max_queue_wait=100.0)
    async with adm.lease():
        with trio.move_on_after(1.0):
            async with adm.lease():
                pass  # pragma: no cover
        assert adm.statistics().queued == 0
        assert adm.statistics().in_flight == 1
    assert_idle(adm)


async def test_cancel_inside_the_block_releases(autojump_clock: trio.testing.MockClock) -> None:
    adm = make()
    with trio.move_on_after(1.0):
        async with adm.lease(key="k"):
            await trio.sleep_forever()
    assert_idle(adm)


async def test_error_inside_the_block_releases() -> None:
    adm = make(per_key_max_concurrency=1)
    with pytest.raises(ValueError):
        async with adm.lease(key="k"):
            raise ValueError
    assert_idle(adm)


async def test_per_key_cap_is_429_and_counts_waiters(autojump_clock: trio.testing.MockClock) -> None:
    adm = make(max_concurrency=4, per_key_max_concurrency=1)
    async with adm.lease(key="alice"):
        with pytest.raises(KeyLimitError) as info:
            async with adm.lease(key="alice"):
                pass  # pragma: no cover
        assert info.value.status_code == 429
        async with adm.lease(key="bob"), adm.lease(key=None), adm.lease(key=None):
            assert adm.statistics().keys_in_flight == 2
    assert adm.statistics().shed_key_limit == 1
    assert_idle(adm)


async def test_retry_after_follows_mean_service_time(autojump_clock: trio.testing.MockClock) -> None:
    adm = make(max_concurrency=2, max_queued=10)
    for _ in range(3):
        async with adm.lease():
            await trio.sleep(8.0)
    assert adm.statistics().mean_service_time == pytest.approx(8.0)
    # 8 s x (position 3 + 1) / 2 slots
    assert adm.retry_after(3) == pytest.approx(16.0)
    assert adm.retry_after(100) == 60.0
    fast = make()
    async with fast.lease():
        await trio.sleep(0.01)
    assert fast.retry_after(0) == 1.0


def test_repr_shows_live_state() -> None:
    r = repr(make())
    assert "in_flight=0/2" in r and "queued=0/2" in r


def test_the_gateway_builds_its_queue_from_the_config() -> None:
    for setting, expected in ((0.25, 0.25), (0.0, None)):
        gw, _ = make_gateway(queue_lifo_after=setting)
        assert isinstance(gw.limits, Admission)
        assert gw.limits.lifo_after == expected
    assert make_gateway()[0].limits.lifo_after == 0.1  # type: ignore[attr-defined]


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        Admission(max_concurrency=0, max_queued=0, max_queue_wait=0)
    with pytest.raises(ValueError, match="lifo_after"):
        Admission(max_concurrency=1, max_queued=0, max_queue_wait=0, lifo_after=-1.0)


async def test_refuse_nowait_answers_what_lease_would_refuse_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = make(max_concurrency=1, max_queued=1, per_key_max_concurrency=1)
    assert adm.refuse_nowait() is None  # a slot is free
    async with trio.open_nursery() as nursery:
        async with adm.lease("k"):
            assert adm.refuse_nowait() is None  # no slot, but room in the queue
            assert isinstance(adm.refuse_nowait("k"), KeyLimitError)  # "k" is at its cap

            async def queued() -> None:
                async with adm.lease():
                    pass

            nursery.start_soon(queued)
            await trio.testing.wait_all_tasks_blocked()
            refusal = adm.refuse_nowait()  # no slot and a full queue: what lease() would say
            assert isinstance(refusal, OverloadedError) and refusal.retry_after is not None
            with pytest.raises(OverloadedError):
                async with adm.lease():
                    pass
    s = adm.statistics()
    assert (s.shed_full, s.shed_key_limit, s.admitted) == (2, 1, 2)
    assert_idle(adm)


async def _lagging(clock: trio.testing.MockClock, lag: LoopLag) -> None:
    """Make ``lag`` see a scheduler 0.3 s behind (each pass 'takes' 0.3 s)."""
    for _ in range(8):
        clock.jump(0.3)
        await trio.lowlevel.checkpoint()
    assert lag.current > 0.2


async def test_loop_lag_refuses_new_requests_with_free_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lag = LoopLag(interval=0.01)
    adm = make(max_concurrency=4, per_key_max_concurrency=2, loop_lag=lag, max_loop_lag=0.1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(0.1)
        async with adm.lease("k") as held:  # admitted while the loop keeps up
            await _lagging(autojump_clock, lag)
            refusal = adm.refuse_nowait("other")
            assert isinstance(refusal, OverloadedError)
            assert "behind" in str(refusal) and refusal.retry_after == 1.0
            with pytest.raises(OverloadedError, match="behind"):
                async with adm.lease("k"):
                    pytest.fail("admitted while the scheduler lags")
            s = adm.statistics()
            assert (s.in_flight, s.shed_loop_lag, s.admitted) == (1, 2, 1)
            assert held.key == "k"
        # The key's count was given back by the refused lease: the key can still take two.
        await trio.sleep(1.0)
        assert not lag.overloaded(0.1)
        assert adm.refuse_nowait("k") is None
        async with adm.lease("k"), adm.lease("k"):
            assert adm.statistics().in_flight == 2
        nursery.cancel_scope.cancel()
    assert_idle(adm)


async def test_loop_lag_stands_aside_below_a_tenth_of_the_slots_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Refusing everything while almost nothing runs would serve nothing: the lag then comes
    # from the refusals themselves. Below a tenth of the slots (here 2 of 20) it admits.
    lag = LoopLag(interval=0.01)
    adm = make(max_concurrency=20, loop_lag=lag, max_loop_lag=0.1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await _lagging(autojump_clock, lag)
        assert adm.refuse_nowait() is None
        async with adm.lease():
            assert adm.refuse_nowait() is None  # 1 held
            async with adm.lease():  # 2 held: the rule applies again
                assert isinstance(adm.refuse_nowait(), OverloadedError)
                with pytest.raises(OverloadedError, match="behind"):
                    async with adm.lease():
                        pytest.fail("admitted past the floor while the scheduler lags")
        # An explicit count (the shared limits pass this process's leases) decides instead.
        assert isinstance(adm.refuse_if_lagging(in_flight=2), OverloadedError)
        assert adm.refuse_if_lagging(in_flight=1) is None
        nursery.cancel_scope.cancel()
    assert adm.statistics().shed_loop_lag == 3
    assert_idle(adm)


async def test_loop_lag_leaves_queued_requests_their_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lag = LoopLag(interval=0.01)
    adm = make(max_concurrency=1, max_queued=1, max_queue_wait=10.0, loop_lag=lag, max_loop_lag=0.1)
    got: list[float] = []

    async def waiter() -> None:
        async with adm.lease() as lease:
            got.append(lease.queued)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(0.1)
        async with adm.lease():
            nursery.start_soon(waiter)
            await trio.sleep(0.5)
            assert adm.statistics().queued == 1
            await _lagging(autojump_clock, lag)
        # The slot freed while lagging goes to the request already queued.
        await trio.sleep(0.1)
        assert len(got) == 1
        nursery.cancel_scope.cancel()
    assert adm.statistics().shed_loop_lag == 0
    assert_idle(adm)


async def test_loop_lag_refusals_are_logged_once_per_episode(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The rule overrides max_concurrency and max_queued: an operator must be able to see why,
    # without a line per refused request (docs/decisions/015).
    lag = LoopLag(interval=0.01)
    adm = make(max_concurrency=4, max_queued=8, loop_lag=lag, max_loop_lag=0.1)
    caplog.set_level("WARNING", logger="trio_agent.server")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(0.1)
        async with adm.lease():
            await _lagging(autojump_clock, lag)
            for _ in range(5):
                assert isinstance(adm.refuse_nowait(), OverloadedError)
            lines = [r.getMessage() for r in caplog.records]
            assert len(lines) == 1
            assert "refusing new requests with 503" in lines[0]
            assert "1 of max_concurrency 4 slots held" in lines[0]
            assert "0 of max_queued 8" in lines[0] and "max_loop_lag 100 ms" in lines[0]
            await trio.sleep(1.0)  # the loop keeps up again
            assert adm.refuse_nowait() is None
            assert adm.refuse_nowait() is None
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2
        assert lines[1] == "admitting again: 5 request(s) refused over 1.0 s while the scheduler lagged"
        # A second episode is logged again.
        async with adm.lease():
            await _lagging(autojump_clock, lag)
            assert isinstance(adm.refuse_nowait(), OverloadedError)
        assert len(caplog.records) == 3
        nursery.cancel_scope.cancel()
    assert adm.statistics().shed_loop_lag == 6
    assert_idle(adm)


def test_loop_lag_is_opt_in() -> None:
    # Off unless asked for: a refusal past the operator's limits is a choice (docs/decisions/015).
    assert ServerConfig().max_loop_lag == 0
    assert Admission.from_config(ServerConfig(), loop_lag=LoopLag()).refuse_if_lagging(in_flight=50) is None


def test_loop_lag_without_a_monitor_or_limit_never_refuses() -> None:
    assert make(max_loop_lag=0.1).refuse_nowait() is None
    assert make(loop_lag=LoopLag()).refuse_nowait() is None
    with pytest.raises(ValueError):
        make(max_loop_lag=0.0)
