"""The tracing export's series in ``/metrics``: spans exported and dropped, queue depth.

Shown only while tracing is on. A drop is a span the collector never got:
the queue was full (a slow or dead collector, or more spans than it takes),
or its batch failed to export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tracing._queue import TracingStatistics

__all__ = ["trace_metric_lines"]


def trace_metric_lines(statistics: Callable[[], TracingStatistics | None] | None) -> Iterator[str]:
    stats = None if statistics is None else statistics()
    if stats is None:
        return
    yield "# HELP trio_agent_trace_spans_exported_total Spans the OTLP collector accepted."
    yield "# TYPE trio_agent_trace_spans_exported_total counter"
    yield f"trio_agent_trace_spans_exported_total {stats.exported}"
    yield (
        "# HELP trio_agent_trace_spans_dropped_total Spans never exported, by reason: "
        "queue_full (the export queue was full), export_failed (the collector refused or did not answer)."
    )
    yield "# TYPE trio_agent_trace_spans_dropped_total counter"
    yield f'trio_agent_trace_spans_dropped_total{{reason="queue_full"}} {stats.dropped_queue_full}'
    yield f'trio_agent_trace_spans_dropped_total{{reason="export_failed"}} {stats.dropped_export_failed}'
    yield "# HELP trio_agent_trace_spans_queued Finished spans waiting for export now."
    yield "# TYPE trio_agent_trace_spans_queued gauge"
    yield f"trio_agent_trace_spans_queued {stats.queued}"
