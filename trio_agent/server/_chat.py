"""The non-streamed work: one admitted chat call collected into a :class:`ChatResult`, and batches.

Used by ``POST /chat``, the non-streamed branch of ``/v1/chat/completions``
and every item of ``POST /chat/batch``. Each call takes a lease from the
gateway's :class:`~trio_agent.server.Limits` first, so nothing (a batch
included) reaches the upstream past the global cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ..concurrency import Outcome, map_concurrently
from ..errors import (
    DeadlineError,
    ShuttingDownError,
    TrioAgentError,
    UpstreamError,
)
from ..llm import ChatRequest, Usage
from ._drain import SHUTTING_DOWN, RequestControl
from ._errors import as_trio_agent_error, error_fields

if TYPE_CHECKING:
    from ._app import Gateway, RequestInfo

__all__ = ["ChatResult", "batch_item_payload", "collect", "complete", "run_batch"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatResult:
    """A whole reply with its timings (milliseconds from the request's arrival)."""

    content: str
    finish_reason: str | None
    usage: Usage
    model: str
    queued_ms: float
    ttft_ms: float | None
    total_ms: float

    def timings(self) -> dict[str, float | None]:
        return {
            "queued_ms": round(self.queued_ms, 3),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }

    def payload(self) -> dict[str, Any]:
        """The ``POST /chat`` answer."""
        return {
            "content": self.content,
            "finish_reason": self.finish_reason,
            "model": self.model,
            "usage": usage_payload(self.usage),
            "timings": self.timings(),
        }


def usage_payload(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def request_timeout_error(timeout: float) -> DeadlineError:
    return DeadlineError(f"request exceeded request_timeout of {timeout:g}s", timeout=timeout)


def shutting_down_error() -> ShuttingDownError:
    return ShuttingDownError("server is shutting down", retry_after=1.0)


async def collect(
    gw: Gateway,
    request: ChatRequest,
    info: RequestInfo,
    ctrl: RequestControl | None = None,
) -> ChatResult:
    """Take a lease, stream the reply from the backend and gather it whole."""
    metrics = gw.metrics
    async with gw.limits.lease(info.key_id) as lease:
        if ctrl is not None:
            ctrl.admitted = True
        metrics.queue_wait.observe(lease.queued)
        parts: list[str] = []
        first_at: float | None = None
        usage: Usage | None = None
        finish: str | None = None
        try:
            async with gw.backend.stream_chat(request) as chunks:
                async for chunk in chunks:
                    if chunk.delta:
                        if first_at is None:
                            first_at = trio.current_time()
                        parts.append(chunk.delta)
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason
                    if chunk.usage is not None:
                        usage = chunk.usage
        except UpstreamError as exc:
            metrics.count_upstream_error(exc.code)
            raise
    end = trio.current_time()
    start = info.started_at
    if first_at is not None:
        metrics.ttft.observe(first_at - start)
    metrics.total.observe(end - start)
    return ChatResult(
        content="".join(parts),
        finish_reason=finish,
        usage=usage or Usage(prompt_tokens=0, completion_tokens=len(parts)),
        model=request.model or gw.backend.model,
        queued_ms=lease.queued * 1000.0,
        ttft_ms=None if first_at is None else (first_at - start) * 1000.0,
        total_ms=(end - start) * 1000.0,
    )


async def complete(gw: Gateway, request: ChatRequest, info: RequestInfo) -> ChatResult:
    """One whole chat call under the request deadline and the drain; raises on failure."""
    ctrl = gw.drain.register(gw.config.request_timeout)
    result: ChatResult | None = None
    try:
        with ctrl.scope:
            result = await collect(gw, request, info, ctrl)
    finally:
        gw.drain.unregister(ctrl)
    if result is not None:
        return result
    if ctrl.reason == SHUTTING_DOWN:
        raise shutting_down_error()
    gw.metrics.timeouts += 1
    raise request_timeout_error(gw.config.request_timeout)


def batch_item_payload(outcome: Outcome[ChatResult], request_id: str) -> dict[str, Any]:
    """One batch item's result: ``ok`` with the reply, or ``error``/``timeout`` with the error."""
    if outcome.status == "ok" and outcome.value is not None:
        return {"index": outcome.index, "status": "ok", **outcome.value.payload()}
    status = "error" if outcome.status == "error" else "timeout"
    err = outcome.error if outcome.error is not None else TrioAgentError("unknown failure")
    exc = as_trio_agent_error(err)
    if status == "timeout" and not isinstance(exc, DeadlineError):
        exc = DeadlineError("the batch ran out of time before this item finished")
    fields = error_fields(exc, request_id)
    fields.pop("request_id", None)
    return {"index": outcome.index, "status": status, "error": fields}


def timeout_outcome(index: int) -> Outcome[ChatResult]:
    return Outcome(
        index=index,
        status="timeout",
        error=DeadlineError("the batch ran out of time before this item finished"),
    )


async def run_batch(
    gw: Gateway, requests: Sequence[ChatRequest], info: RequestInfo
) -> list[dict[str, Any]]:
    """Every item through admission, ``batch_concurrency`` at once; results in input order."""
    ctrl = gw.drain.register(math.inf)
    ctrl.admitted = True
    outcomes: list[Outcome[ChatResult]] = []
    timeout = gw.config.request_timeout

    async def one(req: ChatRequest) -> ChatResult:
        return await collect(gw, req, info)

    try:
        with ctrl.scope:
            outcomes = await map_concurrently(
                one,
                requests,
                max_concurrency=gw.config.batch_concurrency,
                item_timeout=timeout,
                total_timeout=timeout,
            )
    finally:
        gw.drain.unregister(ctrl)
    if ctrl.reason == SHUTTING_DOWN:
        raise shutting_down_error()
    return [batch_item_payload(o, info.request_id) for o in outcomes]
