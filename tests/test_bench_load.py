"""trio_agent.bench._load: the load generator, in virtual time, against in-process backends."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_agent.bench import (
    BackendClient,
    LoadGenerator,
    Outcome,
    arrival_times,
    compute_metrics,
    peak_concurrency,
)
from trio_agent.config import BenchConfig
from trio_agent.errors import UpstreamStreamError
from trio_agent.llm import ChatChunk, ChatCompletion, ChatRequest, Usage

URL = "http://in-process"
REQUEST = ChatRequest.from_question("hi")


class ScriptedBackend:
    """A ChatBackend that streams ``tokens`` after ``ttft``, ``itl`` apart, on trio's clock."""

    def __init__(
        self,
        *,
        ttft: float = 0.25,
        itl: float = 0.125,
        tokens: int = 4,
        stall: bool = False,
        fail: bool = False,
        durations: list[float] | None = None,
    ) -> None:
        self.ttft, self.itl, self.tokens = ttft, itl, tokens
        self.stall, self.fail = stall, fail
        self.durations = iter(durations) if durations is not None else None
        self.active = 0
        self.max_active = 0

    @property
    def model(self) -> str:
        return "scripted"

    async def _chunks(self) -> AsyncIterator[ChatChunk]:
        ttft = next(self.durations) if self.durations is not None else self.ttft
        await trio.sleep(ttft)
        if self.stall:
            await trio.sleep_forever()
        if self.fail:
            raise UpstreamStreamError("boom")
        for i in range(self.tokens):
            if i:
                await trio.sleep(self.itl)
            yield ChatChunk(delta="x")
        yield ChatChunk(
            finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=self.tokens)
        )

    @asynccontextmanager
    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            yield self._chunks()
        finally:
            self.active -= 1

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion:
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        return ["scripted"]


async def run(backend: ScriptedBackend, **config: object):  # type: ignore[no-untyped-def]
    gen = LoadGenerator(BackendClient(backend, REQUEST), BenchConfig(url=URL, **config))  # type: ignore[arg-type]
    result = await gen.run()
    assert gen.statistics().in_flight == 0
    assert backend.active == 0
    return result


async def test_closed_loop_exact_times(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedBackend()  # each request: 0.25 + 3 * 0.125 = 0.625 s
    result = await run(backend, concurrency=3, requests=9)
    assert result.duration == 1.875  # three rounds of three
    assert [r.index for r in result.records] == list(range(9))
    assert sorted({r.sent_at for r in result.records}) == [0.0, 0.625, 1.25]
    m = compute_metrics(result.records, duration=result.duration)
    assert m.ok == 9
    assert m.ttft.n == 9 and m.ttft.p50 == m.ttft.max == pytest.approx(0.25, abs=1e-9)
    assert m.itl.n == 27 and m.itl.p99 == pytest.approx(0.125, abs=1e-9)
    assert m.tpot.mean == pytest.approx(0.125, abs=1e-9)
    assert m.e2e.p99 == pytest.approx(0.625, abs=1e-9)
    assert m.output_tokens == 36
    assert m.request_throughput == pytest.approx(9 / 1.875)
    assert m.peak_concurrency == 3
    assert backend.max_active == 3


async def test_closed_loop_never_exceeds_its_concurrency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(5)
    backend = ScriptedBackend(tokens=1, durations=[rng.uniform(0.01, 1.0) for _ in range(200)])
    result = await run(backend, concurrency=7, requests=200)
    assert len(result.records) == 200
    assert backend.max_active == 7
    assert peak_concurrency(result.records) == 7
    assert all(r.sent_at == r.scheduled_at for r in result.records)


async def test_duration_bound_and_drain(autojump_clock: trio.testing.MockClock) -> None:
    result = await run(ScriptedBackend(), concurrency=2, duration=2.0)
    # Each worker sends at 0, 0.625, 1.25, 1.875 (< 2.0), and the last ones finish at 2.5.
    assert len(result.records) == 8
    assert result.duration == 2.5
    assert all(r.outcome is Outcome.OK for r in result.records)


async def test_closed_loop_without_ramp_up_stays_in_phase(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Against a server whose service time does not vary, every wave goes out in one instant.
    result = await run(ScriptedBackend(), concurrency=4, requests=12)
    sends = sorted(r.sent_at for r in result.records)
    assert sends == [0.0] * 4 + [0.625] * 4 + [1.25] * 4


async def test_closed_loop_ramp_up_spreads_the_first_requests_and_they_stay_spread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    result = await run(ScriptedBackend(), concurrency=4, requests=12, ramp_up=0.5)
    firsts = [0.0, 0.125, 0.25, 0.375]
    sends = sorted(r.sent_at for r in result.records)
    assert sends == pytest.approx(
        firsts + [t + 0.625 for t in firsts] + [t + 1.25 for t in firsts], abs=1e-9
    )
    assert all(r.sent_at == r.scheduled_at for r in result.records)
    assert result.duration == pytest.approx(0.375 + 3 * 0.625, abs=1e-9)
    m = compute_metrics(result.records, duration=result.duration)
    assert m.ok == 12 and m.ttft.max == pytest.approx(0.25, abs=1e-9)
    assert peak_concurrency(result.records) == 4


async def test_ramp_up_longer_than_the_budget_leaves_late_workers_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Worker 0 sends at 0 and 0.625 (two requests, the whole budget) before worker 1's start at 1.0.
    result = await run(ScriptedBackend(), concurrency=2, requests=2, ramp_up=2.0)
    assert [r.sent_at for r in result.records] == [0.0, 0.625]
    assert result.duration == pytest.approx(1.25, abs=1e-9)


async def test_closed_loop_ramp_up_over_shards_is_the_same_ramp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = BenchConfig(url=URL, concurrency=5, requests=5, ramp_up=1.0)
    sends = []
    for k in range(2):
        origin = trio.current_time()
        gen = LoadGenerator(
            BackendClient(ScriptedBackend(ttft=2.0), REQUEST), config, shard_index=k, shard_count=2
        )
        sends.extend(r.sent_at for r in (await gen.run(origin=origin)).records)
    assert sorted(sends) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8], abs=1e-9)


async def test_warmup_requests_are_sent_but_not_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    result = await run(ScriptedBackend(), concurrency=1, requests=3, warmup=1.0)
    assert [r.scheduled_at for r in result.records] == [0.0, 0.625, 1.25, 1.875, 2.5]
    m = compute_metrics(result.records, duration=result.duration, warmup=1.0)
    assert (m.requests, m.warmup_requests) == (3, 2)
    assert m.window == 2.125


async def test_open_loop_follows_the_seeded_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    result = await run(
        ScriptedBackend(tokens=1), concurrency=1000, rate=4.0, burstiness=0.5, seed=9, duration=10.0
    )
    expected = list(
        itertools.takewhile(lambda t: t < 10.0, arrival_times(4.0, 0.5, random.Random(9)))
    )
    assert len(result.records) == len(expected) > 20
    assert [r.scheduled_at for r in result.records] == pytest.approx(expected, abs=1e-9)
    assert all(r.sent_at == r.scheduled_at for r in result.records)


async def test_open_loop_shards_deal_out_the_same_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = BenchConfig(url=URL, concurrency=100, rate=5.0, seed=1, requests=30)
    whole = await LoadGenerator(BackendClient(ScriptedBackend(), REQUEST), config).run(origin=0.0)
    parts = []
    for k in range(3):
        gen = LoadGenerator(
            BackendClient(ScriptedBackend(), REQUEST), config, shard_index=k, shard_count=3
        )
        parts.extend((await gen.run(origin=trio.current_time())).records)
    assert sorted(r.index for r in parts) == [r.index for r in whole.records] == list(range(30))
    by_index = {r.index: r.scheduled_at for r in parts}
    assert [by_index[i] for i in range(30)] == pytest.approx(
        [r.scheduled_at for r in whole.records], abs=1e-9
    )


async def test_open_loop_queues_in_the_client_at_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = ScriptedBackend(ttft=1.0, tokens=1)
    result = await run(backend, concurrency=2, rate=100.0, requests=6)
    assert backend.max_active == 2
    assert peak_concurrency(result.records) == 2
    m = compute_metrics(result.records, duration=result.duration)
    assert m.ttft.max == pytest.approx(1.0, abs=1e-9)  # from sending: the server was quick ...
    assert (
        m.ttft_from_scheduled.max is not None and m.ttft_from_scheduled.max > 2.5
    )  # ... the user waited


async def test_client_deadline_gives_timeout(autojump_clock: trio.testing.MockClock) -> None:
    result = await run(ScriptedBackend(stall=True), concurrency=2, requests=2, request_timeout=1.5)
    assert [r.outcome for r in result.records] == [Outcome.TIMEOUT, Outcome.TIMEOUT]
    assert [r.e2e for r in result.records] == [1.5, 1.5]
    assert result.duration == 1.5


async def test_hard_cap_cancels_what_is_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    result = await run(
        ScriptedBackend(stall=True),
        concurrency=3,
        requests=10,
        request_timeout=100.0,
        max_duration=5.0,
    )
    assert len(result.records) == 3
    assert all(r.outcome is Outcome.CANCELLED for r in result.records)
    assert result.duration == 5.0


async def test_hard_cap_on_request_count(autojump_clock: trio.testing.MockClock) -> None:
    result = await run(ScriptedBackend(tokens=1), concurrency=4, duration=100.0, max_requests=10)
    assert len(result.records) == 10


async def test_backend_errors_are_upstream_errors(autojump_clock: trio.testing.MockClock) -> None:
    result = await run(ScriptedBackend(fail=True), concurrency=1, requests=2)
    assert [r.outcome for r in result.records] == [Outcome.UPSTREAM_ERROR] * 2
    assert result.records[0].error_code == "upstream_stream_error"


def test_bad_shard() -> None:
    with pytest.raises(ValueError):
        LoadGenerator(
            BackendClient(ScriptedBackend(), REQUEST),
            BenchConfig(url=URL, requests=1),
            shard_index=2,
            shard_count=2,
        )
