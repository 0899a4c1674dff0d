"""The bounded queue between finished spans and the exporter.

The SDK's ``BatchSpanProcessor`` keeps its own thread and queue; the gateway
wants the queue bounded and owned by the server's lifespan instead
(docs/decisions/012). A sampled span's ``end`` calls :meth:`SpanQueue.on_end`,
which appends it to a deque and never blocks; when the deque holds
``max_size`` spans the new one is dropped and counted. The export task
(:mod:`._export`) takes batches off it.

Invariant: spans are ended in the trio thread (every span of the gateway is),
so the deque and the wake-up event are touched by one thread only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["FinishedSpan", "SpanQueue", "TracingStatistics"]


class FinishedSpan(Protocol):
    """An ended span as the queue and the export task see it (``_tracer.TraceSpan``)."""

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        """The SDK's view of the span, for its exporter."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class TracingStatistics:
    """Spans since the start: waiting now, exported, and dropped (by reason)."""

    queued: int
    max_queued: int
    exported: int
    dropped_queue_full: int
    dropped_export_failed: int
    export_batches: int
    export_failures: int

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_export_failed


class SpanQueue:
    """Finished spans waiting for export, at most ``max_size``; full: drop and count."""

    def __init__(self, *, max_size: int, batch_size: int) -> None:
        if max_size < 1 or batch_size < 1:
            raise ValueError("max_size and batch_size must be >= 1")
        self.max_size = max_size
        self.batch_size = batch_size
        self.dropped = 0
        self._spans: deque[FinishedSpan] = deque()
        self._batch_ready: trio.Event | None = None

    def __len__(self) -> int:
        return len(self._spans)

    def __repr__(self) -> str:
        return f"<SpanQueue queued={len(self._spans)}/{self.max_size} dropped={self.dropped}>"

    # -- the spans' side ------------------------------------------------------------------

    def on_end(self, span: FinishedSpan) -> None:
        spans = self._spans
        if len(spans) >= self.max_size:
            self.dropped += 1
            return
        spans.append(span)
        ready = self._batch_ready
        if ready is not None and len(spans) >= self.batch_size:
            self._batch_ready = None
            ready.set()

    # -- the export task's side ---------------------------------------------------------

    async def wait_for_batch(self) -> None:
        """Return once a whole batch is queued (at once if it is), or on :meth:`wake`."""
        if len(self._spans) >= self.batch_size:
            await trio.lowlevel.checkpoint()
            return
        self._batch_ready = ready = trio.Event()
        await ready.wait()

    def wake(self) -> None:
        """End a :meth:`wait_for_batch` now (the export task is closing)."""
        ready = self._batch_ready
        if ready is not None:
            self._batch_ready = None
            ready.set()

    def take(self) -> list[FinishedSpan]:
        """Up to ``batch_size`` spans, oldest first (``[]``: none queued)."""
        spans = self._spans
        n = min(len(spans), self.batch_size)
        return [spans.popleft() for _ in range(n)]
