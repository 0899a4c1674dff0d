"""The non-streamed work: one admitted chat call collected into a :class:`ChatResult`, and batches.

Used by ``POST /chat``, the non-streamed branch of ``/v1/chat/completions``
and every item of ``POST /chat/batch`` (JSON and SSE). Each call takes a
lease from the gateway's :class:`~trio_agent.server.Limits` first, so nothing
(a batch included) reaches the upstream past the global cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..concurrency import Outcome, map_concurrently
from ..errors import DeadlineError, TrioAgentError, UpstreamError
from ..llm import (
    ChatBackend,
    ChatCompletion,
    ChatRequest,
    ToolCall,
    ToolCallAssembler,
    Usage,
    complete_chat_traced,
    stream_chat_traced,
)
from ..tracing import current_tracer
from ._admission import Limits
from ._context import RequestContext
from ._drain import SHUTTING_DOWN, Drain, RequestControl, shutting_down_error
from ._errors import as_trio_agent_error, error_fields
from ._metrics import GatewayMetrics

__all__ = [
    "ChatResult",
    "ChatService",
    "batch_item_payload",
    "request_timeout_error",
    "timeout_outcome",
    "usage_payload",
]


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
    #: The tool calls the model asked for (``finish_reason`` then says ``"tool_calls"``).
    tool_calls: tuple[ToolCall, ...] = ()

    def timings(self) -> dict[str, float | None]:
        return {
            "queued_ms": round(self.queued_ms, 3),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }

    def payload(self) -> dict[str, Any]:
        """The ``POST /chat`` answer (``tool_calls`` only when the model called tools)."""
        out: dict[str, Any] = {
            "content": self.content,
            "finish_reason": self.finish_reason,
            "model": self.model,
            "usage": usage_payload(self.usage),
            "timings": self.timings(),
        }
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls
            ]
        return out


def usage_payload(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def request_timeout_error(timeout: float) -> DeadlineError:
    return DeadlineError(f"request exceeded request_timeout of {timeout:g}s", timeout=timeout)


class ChatService:
    """Whole (non-streamed) chat calls: each one admitted, under the request deadline and the drain.

    Holds only what such a call needs: the backend, the limits, the metrics,
    the drain switch and the request timeout.
    """

    __slots__ = ("_backend", "_batch_concurrency", "_drain", "_limits", "_metrics", "_timeout")

    def __init__(
        self,
        *,
        backend: ChatBackend,
        limits: Limits,
        metrics: GatewayMetrics,
        drain: Drain,
        request_timeout: float,
        batch_concurrency: int,
    ) -> None:
        self._backend = backend
        self._limits = limits
        self._metrics = metrics
        self._drain = drain
        self._timeout = request_timeout
        self._batch_concurrency = batch_concurrency

    async def collect(
        self, request: ChatRequest, ctx: RequestContext, ctrl: RequestControl | None = None
    ) -> ChatResult:
        """Take a lease, stream the reply from the backend and gather it whole."""
        metrics = self._metrics
        async with self._limits.lease(ctx.key_id) as lease:
            if ctrl is not None:
                ctrl.admitted = True
            metrics.queue_wait.observe(lease.queued)
            _trace_admission(lease.queued)
            parts: list[str] = []
            first_at: float | None = None
            usage: Usage | None = None
            finish: str | None = None
            calls: ToolCallAssembler | None = None
            model = request.model or self._backend.model
            try:
                async with metrics.genai.call("chat", model) as call, stream_chat_traced(self._backend, request) as chunks:
                    async for chunk in chunks:
                        if chunk.delta:
                            if first_at is None:
                                first_at = trio.current_time()
                            parts.append(chunk.delta)
                        if chunk.tool_calls:
                            if first_at is None:
                                first_at = trio.current_time()
                            if calls is None:
                                calls = ToolCallAssembler()
                            calls.feed(chunk)
                        if chunk.finish_reason is not None:
                            finish = chunk.finish_reason
                        if chunk.usage is not None:
                            usage = chunk.usage
                    call.finish(usage)
                if calls is not None:
                    calls.finish()
            except UpstreamError as exc:
                metrics.count_upstream_error(exc.code)
                raise
        end = trio.current_time()
        start = ctx.started_at
        if first_at is not None:
            metrics.ttft.observe(first_at - start)
        metrics.total.observe(end - start)
        return ChatResult(
            content="".join(parts),
            finish_reason=finish,
            usage=usage or Usage(prompt_tokens=0, completion_tokens=len(parts)),
            model=request.model or self._backend.model,
            queued_ms=lease.queued * 1000.0,
            ttft_ms=None if first_at is None else (first_at - start) * 1000.0,
            total_ms=(end - start) * 1000.0,
            tool_calls=() if calls is None else calls.calls,
        )

    async def complete(self, request: ChatRequest, ctx: RequestContext) -> ChatResult:
        """One whole chat call under the request deadline and the drain; raises on failure."""
        result: ChatResult | None = None
        with self._drain.track(self._timeout) as ctrl:
            result = await self.collect(request, ctx, ctrl)
        if result is not None:
            return result
        if ctrl.reason == SHUTTING_DOWN:
            raise shutting_down_error()
        self._metrics.timeouts += 1
        raise request_timeout_error(self._timeout)

    async def complete_whole(self, request: ChatRequest, ctx: RequestContext) -> ChatCompletion:
        """One non-streamed upstream call (``complete_chat``), admitted, under the request
        deadline and the drain: the upstream's own answer, for a relay."""
        completion: ChatCompletion | None = None
        metrics = self._metrics
        with self._drain.track(self._timeout) as ctrl:
            async with self._limits.lease(ctx.key_id) as lease:
                ctrl.admitted = True
                metrics.queue_wait.observe(lease.queued)
                _trace_admission(lease.queued)
                try:
                    async with metrics.genai.call("chat", request.model or self._backend.model) as call:
                        completion = await complete_chat_traced(self._backend, request)
                        call.finish(completion.usage)
                except UpstreamError as exc:
                    metrics.count_upstream_error(exc.code)
                    raise
        if completion is not None:
            metrics.total.observe(trio.current_time() - ctx.started_at)
            metrics.count_usage(ctx.path, completion.usage)
            return completion
        if ctrl.reason == SHUTTING_DOWN:
            raise shutting_down_error()
        self._metrics.timeouts += 1
        raise request_timeout_error(self._timeout)

    async def run_batch(
        self, requests: Sequence[ChatRequest], ctx: RequestContext
    ) -> list[dict[str, Any]]:
        """Every item through admission, ``batch_concurrency`` at once; results in input order."""
        outcomes: list[Outcome[ChatResult]] = []
        timeout = self._timeout

        async def one(req: ChatRequest) -> ChatResult:
            return await self.collect(req, ctx)

        # The batch itself holds no slot (its items take theirs), so it counts as
        # admitted: a drain gives it the grace period instead of ending it at once.
        with self._drain.track(math.inf, admitted=True) as ctrl:
            outcomes = await map_concurrently(
                one,
                requests,
                max_concurrency=self._batch_concurrency,
                item_timeout=timeout,
                total_timeout=timeout,
            )
        if ctrl.reason == SHUTTING_DOWN:
            raise shutting_down_error()
        return [batch_item_payload(o, ctx.request_id) for o in outcomes]


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


def _trace_admission(queued: float) -> None:
    tracer = current_tracer()
    if tracer is not None:
        tracer.admission(queued=queued, outcome="admitted")
