"""The export task: batches from the :class:`~._queue.SpanQueue` to the SDK's OTLP exporter.

The exporter is blocking (an HTTP POST with its own retries, bounded by its
``timeout``), so each batch goes out in a worker thread, which also turns the
gateway's spans into the SDK's ``ReadableSpan`` (off the request path). One
batch at a time: while a slow collector holds one, new spans wait in the bounded queue, and
past it they are dropped, so a slow or dead collector costs the server
memory up to the queue's bound and no request ever waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from ._queue import FinishedSpan, SpanQueue, TracingStatistics

__all__ = ["SpanExport"]

logger = logging.getLogger("trio_agent.tracing")


class SpanExport:
    """Hands queued spans to ``exporter`` every ``interval`` seconds, or as soon as a batch is full,
    as the SDK's spans of ``resource`` and ``scope``."""

    def __init__(
        self,
        queue: SpanQueue,
        exporter: SpanExporter,
        *,
        interval: float,
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        self.queue = queue
        self.exporter = exporter
        self.resource = resource
        self.scope = scope
        self.interval = interval
        self.exported = 0
        self.failed = 0
        self.batches = 0
        self.failures = 0
        self._closing = False
        self._failing = False

    def statistics(self) -> TracingStatistics:
        return TracingStatistics(
            queued=len(self.queue),
            max_queued=self.queue.max_size,
            exported=self.exported,
            dropped_queue_full=self.queue.dropped,
            dropped_export_failed=self.failed,
            export_batches=self.batches,
            export_failures=self.failures,
        )

    def close(self) -> None:
        """Ask :meth:`run` to export what is queued and return."""
        self._closing = True
        self.queue.wake()

    async def run(self) -> None:
        """Export until :meth:`close`, then flush what is left and return.

        Bounded: each pass exports one batch (bounded by the exporter's timeout)
        or waits at most ``interval``; after ``close`` each pass takes a batch off
        the queue, so the flush ends (the caller bounds it in time too).
        """
        while not self._closing:
            if len(self.queue) < self.queue.batch_size:
                with trio.move_on_after(self.interval):
                    await self.queue.wait_for_batch()
            await self.export_batch()
        while len(self.queue):
            await self.export_batch()

    async def export_batch(self) -> None:
        batch = self.queue.take()
        if not batch:
            return
        self.batches += 1
        try:
            # Abandoned on cancellation: the thread ends within the exporter's own timeout.
            result = await trio.to_thread.run_sync(self._export, batch, abandon_on_cancel=True)
        except Exception:
            logger.exception("span export raised")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(batch)
            if self._failing:
                self._failing = False
                logger.info("span export recovered")
            return
        self.failed += len(batch)
        self.failures += 1
        if not self._failing:
            # Logged when export starts failing, not per batch: a dead collector would
            # otherwise log once a second.
            self._failing = True
            logger.warning("span export failed: %d span(s) dropped (counted in /metrics)", len(batch))

    def _export(self, batch: Sequence[FinishedSpan]) -> SpanExportResult:
        """In the worker thread: the batch as the SDK's spans, through the exporter."""
        resource, scope = self.resource, self.scope
        return self.exporter.export([span.readable(resource, scope) for span in batch])
