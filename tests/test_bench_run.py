"""trio_agent.bench._run: the server sampler measures CPU over the window, not the drain after it."""

from __future__ import annotations

import trio
import trio.testing

from trio_agent.bench import SLO, CPUTimes, ProcessTreeSample, RequestRecord, compute_metrics
from trio_agent.bench._records import Outcome
from trio_agent.bench._run import _ServerSampler


class ClockSampler(_ServerSampler):
    """A server that burns one core: user CPU seconds = trio time since the origin."""

    def sample(self) -> ProcessTreeSample | None:
        now = trio.current_time()
        s = ProcessTreeSample(
            pids=(self.pid,), cpu=CPUTimes(user=now, system=0.0), rss_bytes=100, root_hwm_bytes=0
        )
        self.last = s
        self.peak_rss = max(self.peak_rss, s.rss_bytes)
        return s


async def test_cpu_is_taken_at_the_window_start_and_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origin = trio.current_time()
    sampler = ClockSampler(pid=1)
    records = [
        RequestRecord(
            index=0, scheduled_at=0.0, sent_at=0.0, end_at=4.0, outcome=Outcome.OK,
            first_token_at=2.5, token_times=(2.5, 3.0, 3.5, 4.0), output_tokens=4,
        ),
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run, origin + 2.0, origin + 5.0)
        await trio.sleep(9.0)  # the run drains for 4 s past the window: not counted
        nursery.cancel_scope.cancel()
    m = compute_metrics(records, duration=9.0, warmup=2.0, measure_end=5.0, slo=SLO())
    figures = sampler.figures(m)
    assert figures is not None
    assert figures.cpu.user == 3.0  # 2.0 .. 5.0 of one busy core
    assert figures.cpu_utilization == figures.cpu.total / 3.0
    assert m.delivered_tokens == 4 and m.completed == 1
    assert figures.cpu_ms_per_1k_tokens_user == figures.cpu.user * 1000 * 1000 / 4
    assert figures.cpu_ms_per_request_user == figures.cpu.user * 1000


async def test_without_a_window_end_cpu_runs_to_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origin = trio.current_time()
    sampler = ClockSampler(pid=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run, origin + 1.0)
        await trio.sleep(4.0)
        nursery.cancel_scope.cancel()
    m = compute_metrics([], duration=4.0, warmup=1.0)
    figures = sampler.figures(m)
    assert figures is not None and figures.cpu.user == 3.0
