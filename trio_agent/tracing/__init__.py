"""Tracing: OpenTelemetry spans of requests, model calls and agent runs, exported over OTLP/HTTP.

Off by default, and then nothing here imports OpenTelemetry: the hot path asks
:func:`current_tracer` (a context variable) and gets ``None``. ``serve()``
turns it on with :func:`open_tracing` when ``ServerConfig.otlp_endpoint`` is
set; every task of that server inherits the tracer through the context, and
so does the OpenTelemetry context (the current span), which trio copies into
each child task when it starts (parallel tool calls see their step's span).

::

    open_tracing(config)                      the SDK's sampler and resource, our SpanQueue, the exporter
    ├── GatewayTracer                         records spans (TraceSpan) on the request path
    ├── SpanQueue                             finished spans -> a bounded deque (full: dropped, counted)
    └── export task (lifespan nursery)        batches -> the SDK's ReadableSpan -> OTLPSpanExporter.export,
                                              in a worker thread

The spans follow the OpenTelemetry semantic conventions for generative AI
(``chat {model}``, ``invoke_agent``, ``execute_tool {name}``); see
docs/tracing.md and docs/decisions/012 and 016.
"""

from ._current import current_tracer, trace_headers, trace_meta
from ._open import open_tracing, otel_missing, traces_url

__all__ = ["current_tracer", "open_tracing", "otel_missing", "trace_headers", "trace_meta", "traces_url"]
