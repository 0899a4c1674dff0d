"""MockLLM: exact token times on the autojump clock, content, faults, statistics."""

import pytest
import trio

from tests._fakes import drain_ready
from trio_agent import UpstreamStatusError, UpstreamStreamError
from trio_agent.llm import ChatRequest, MockLLM


async def _collect(llm: MockLLM, req: ChatRequest) -> list[tuple[float, str, str | None]]:
    out = []
    async with llm.stream_chat(req) as chunks:
        async for c in chunks:
            out.append((trio.current_time(), c.delta, c.finish_reason))
    return out


async def test_tokens_paced_against_absolute_deadlines(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.2, itl=0.02, tokens=5)
    start = trio.current_time()
    got = await _collect(llm, ChatRequest.from_question("hi"))
    times = [round(t - start, 9) for t, d, _ in got if d]
    assert times == [0.2, 0.22, 0.24, 0.26, 0.28]
    # OpenAI's order: the finish reason, then usage in a chunk of its own.
    assert [f for _, _, f in got if f] == ["stop"] and got[-2][2] == "stop"
    s = llm.statistics()
    assert (s.active, s.started, s.finished, s.cancelled, s.tokens) == (0, 1, 1, 0, 5)


async def test_slow_consumer_does_not_accumulate_delay(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.1, itl=0.1, tokens=4)
    start = trio.current_time()
    arrivals = []
    async with llm.stream_chat(ChatRequest.from_question("hi")) as chunks:
        async for c in chunks:
            if c.delta:
                arrivals.append(round(trio.current_time() - start, 9))
                await trio.sleep(0.05)
    assert arrivals == [0.1, 0.2, 0.3, 0.4]


async def test_echo_content_and_max_tokens_length(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0, tokens=10, content="echo")
    got = await _collect(llm, ChatRequest.from_question("alpha beta gamma", max_tokens=4))
    assert "".join(d for _, d, _ in got) == "alpha beta gamma alpha"
    assert got[-2][2] == "length"


async def test_seeded_jitter_is_reproducible(autojump_clock: trio.testing.MockClock) -> None:
    async def times(seed: int) -> list[float]:
        llm = MockLLM(pacing_resolution=0, ttft=0.1, itl=0.05, jitter=0.01, tokens=6, seed=seed)
        start = trio.current_time()
        return [round(t - start, 9) for t, d, _ in await _collect(llm, ChatRequest.from_question("q")) if d]

    assert await times(7) == await times(7)
    assert await times(7) != await times(8)


async def test_fail_before_first(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.5, tokens=3, fail_before_first=True)
    with pytest.raises(UpstreamStatusError):
        await _collect(llm, ChatRequest.from_question("q"))
    assert trio.current_time() == 0.5
    s = llm.statistics()
    assert (s.active, s.failed, s.finished, s.cancelled) == (0, 1, 0, 0)


async def test_fail_after_k_tokens(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0.01, tokens=10, fail_after_tokens=3)
    seen = []
    with pytest.raises(UpstreamStreamError):
        async with llm.stream_chat(ChatRequest.from_question("q")) as chunks:
            async for c in chunks:
                seen.append(c.delta)
    assert len([d for d in seen if d]) == 3
    assert llm.statistics().failed == 1 and llm.statistics().active == 0


async def test_stall_then_cancel_counts_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0.01, tokens=10, stall_after_tokens=2)
    with trio.move_on_after(5) as scope:
        await _collect(llm, ChatRequest.from_question("q"))
    assert scope.cancelled_caught and trio.current_time() == 5
    s = llm.statistics()
    assert (s.active, s.cancelled, s.tokens) == (0, 1, 2)


async def test_early_exit_counts_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0.01, tokens=10)
    async with llm.stream_chat(ChatRequest.from_question("q")) as chunks:
        async for _ in chunks:
            break
    assert llm.statistics().cancelled == 1 and llm.statistics().active == 0


async def test_complete_chat_and_models(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.2, itl=0.02, tokens=3)
    done = await llm.complete_chat(ChatRequest.from_question("hello there"))
    assert trio.current_time() == pytest.approx(0.24)
    assert done.usage.completion_tokens == 3 and done.finish_reason == "stop"
    assert len(done.content.split()) == 3
    assert await llm.list_models() == ["mock-llm"]


async def test_receive_nowait_hands_over_a_first_token_due_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No first-token delay: the role chunk and the first token are there when the stream
    # opens, so the gateway writes them without waiting a scheduler pass in __anext__.
    llm = MockLLM(pacing_resolution=0, ttft=0.0, itl=0.01, tokens=3, seed=2)
    async with llm.stream_chat(ChatRequest.from_question("hi")) as chunks:
        ready = drain_ready(chunks)
        assert len(ready) == 2 and ready[0].delta == ""  # the role, then token 0
        assert trio.current_time() == 0
        rest = [c async for c in chunks]
    assert len([c for c in ready + rest if c.delta]) == 3
    # An injected failure before the first token stays __anext__'s to raise.
    llm = MockLLM(pacing_resolution=0, ttft=0.0, tokens=3, fail_before_first=True)
    async with llm.stream_chat(ChatRequest.from_question("hi")) as chunks:
        assert drain_ready(chunks) == []
        with pytest.raises(UpstreamStatusError):
            await chunks.__anext__()


async def test_receive_nowait_hands_over_only_tokens_already_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.1, itl=0.01, tokens=6, jitter=0.002, seed=4)
    paced = [d for _, d, _ in await _collect(llm, ChatRequest.from_question("hi")) if d]
    llm = MockLLM(pacing_resolution=0, ttft=0.1, itl=0.01, tokens=6, jitter=0.002, seed=4)
    async with llm.stream_chat(ChatRequest.from_question("hi")) as chunks:
        with pytest.raises(trio.WouldBlock):
            chunks.receive_nowait()  # type: ignore[attr-defined]  # the first token is __anext__'s
        role = await chunks.__anext__()  # OpenAI's first chunk: the role, no text
        assert role.delta == "" and role.raw is not None and b'"role":"assistant"' in role.raw
        first = chunks.receive_nowait()  # type: ignore[attr-defined]  # token 0 came with it
        with pytest.raises(trio.WouldBlock):
            chunks.receive_nowait()  # type: ignore[attr-defined]  # token 1 is not due yet
        await trio.sleep(0.035)  # fall behind: tokens 1..3 are due by now
        ready = drain_ready(chunks)
        assert len(ready) == 3
        rest = [c async for c in chunks]
    assert rest[-2].finish_reason == "stop" and rest[-1].usage is not None
    # Same words, same seeded schedule, whichever way they were taken.
    assert [first.delta, *(c.delta for c in ready), *(c.delta for c in rest if c.delta)] == paced
    assert llm.statistics().tokens == 6


async def _consume(
    llm: MockLLM, req: ChatRequest, out: list[tuple[float, str, str | None]], room: int | None
) -> None:
    """What a consumer gets, in order, into ``out``: plain ``async for`` (``room`` None), or as
    the gateway's producer consumes ``push`` (offered chunks, taking ``room`` at a time and
    then going on with ``__anext__``)."""

    def offer(chunk, ready) -> bool:  # type: ignore[no-untyped-def]
        out.append((trio.current_time(), chunk.delta, chunk.finish_reason))
        while (more := ready()) is not None:
            out.append((trio.current_time(), more.delta, more.finish_reason))
        assert room is not None
        return len(out) % room != 0

    async with llm.stream_chat(req) as chunks:
        while True:
            if room is not None:
                await chunks.push(offer)  # type: ignore[attr-defined]
            try:
                c = await chunks.__anext__()
            except StopAsyncIteration:
                break
            out.append((trio.current_time(), c.delta, c.finish_reason))


@pytest.mark.parametrize("room", [1000, 3])
@pytest.mark.parametrize(
    "overrides",
    [
        {"ttft": 0.2, "itl": 0.02, "tokens": 9},
        {"ttft": 0.0, "itl": 0.01, "tokens": 6, "jitter": 0.004, "seed": 3},
        {"ttft": 0.1, "itl": 0.02, "tokens": 8, "fail_after_tokens": 5},
    ],
)
async def test_push_hands_over_what_anext_would_at_the_same_times(
    overrides: dict[str, float], room: int, autojump_clock: trio.testing.MockClock
) -> None:
    async def run(room: int | None):  # type: ignore[no-untyped-def]
        llm = MockLLM(pacing_resolution=0, **overrides)
        start = trio.current_time()
        out: list[tuple[float, str, str | None]] = []
        failed = False
        try:
            await _consume(llm, ChatRequest.from_question("hi there"), out, room)
        except UpstreamStreamError:
            failed = True
        return [(round(t - start, 9), d, f) for t, d, f in out], failed, llm.statistics()

    plain = await run(None)
    pushed = await run(room)
    assert pushed == plain
    assert len(plain[0]) >= 5  # tokens came (the failing case: five, then the fault)
