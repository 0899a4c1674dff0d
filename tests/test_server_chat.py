"""The non-streamed work: collect(), complete() and run_batch() under admission and deadlines."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests._fakes import assert_released, make_gateway
from trio_agent.config import MockLLMConfig
from trio_agent.errors import DeadlineError, ShuttingDownError
from trio_agent.llm import ChatRequest
from trio_agent.server import RequestContext


def info() -> RequestContext:
    return RequestContext(request_id="r", method="POST", path="/chat", started_at=trio.current_time())


async def test_complete_collects_content_usage_and_timings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.5, itl=0.25, tokens=3))
    result = await gw.chat.complete(ChatRequest.from_question("q", max_tokens=2), info())
    assert result.content == "t0 t1 "
    assert (result.finish_reason, result.usage.completion_tokens) == ("length", 2)
    assert result.timings() == {"queued_ms": 0.0, "ttft_ms": 500.0, "total_ms": 750.0}
    assert gw.metrics.queue_wait.count == 1 and gw.metrics.ttft.count == 1
    assert_released(gw, llm)


async def test_complete_raises_the_request_deadline(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=10.0), request_timeout=1.5)
    with pytest.raises(DeadlineError) as exc:
        await gw.chat.complete(ChatRequest.from_question("q"), info())
    assert exc.value.timeout == 1.5 and trio.current_time() == 1.5
    assert gw.metrics.timeouts == 1
    assert_released(gw, llm)


async def test_complete_refuses_while_draining() -> None:
    gw, llm = make_gateway()
    gw.drain.start()
    with pytest.raises(ShuttingDownError):
        await gw.chat.complete(ChatRequest.from_question("q"), info())
    assert llm.started == 0


async def test_run_batch_keeps_input_order_and_the_global_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=0.1, tokens=9), max_concurrency=2)
    reqs = [ChatRequest.from_question("q", max_tokens=n) for n in (5, 1, 3, 2)]
    results = await gw.chat.run_batch(reqs, info())
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["usage"]["completion_tokens"] for r in results] == [5, 1, 3, 2]
    assert llm.max_active == 2
    assert_released(gw, llm)
