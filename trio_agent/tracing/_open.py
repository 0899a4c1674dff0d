"""``open_tracing``: the SDK's tracer provider, our span queue and the export task, for one server.

Everything OpenTelemetry is imported here, when tracing is turned on, and not
before: ``import trio_agent`` and a server without an endpoint never load it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from ._current import reset_tracer, set_tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from ._tracer import GatewayTracer

__all__ = ["open_tracing", "otel_missing", "traces_url"]

_TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``endpoint``: a base URL gets ``/v1/traces``, a full one is kept.

    As ``OTEL_EXPORTER_OTLP_ENDPOINT`` is read: ``http://localhost:4318`` ->
    ``http://localhost:4318/v1/traces``; ``https://cloud.langfuse.com/api/public/otel``
    -> ``.../api/public/otel/v1/traces``.
    """
    base = endpoint.split("?", 1)[0].rstrip("/")
    if base.endswith(_TRACES_PATH):
        return endpoint
    return base + _TRACES_PATH


def otel_missing() -> str | None:
    """The OpenTelemetry package tracing needs and cannot import (``None``: all there)."""
    import importlib.util

    for module, package in (
        ("opentelemetry.sdk", "opentelemetry-sdk"),
        ("opentelemetry.exporter.otlp.proto.http", "opentelemetry-exporter-otlp-proto-http"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return package
    return None


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trio_agent")
    except PackageNotFoundError:
        return None


@asynccontextmanager
async def open_tracing(
    *,
    endpoint: str,
    content: bool = False,
    queue_size: int = 2048,
    batch_size: int = 512,
    export_interval: float = 5.0,
    export_timeout: float = 2.0,
    exporter: SpanExporter | None = None,
) -> AsyncIterator[GatewayTracer]:
    """Trace every task started inside the block; export over OTLP/HTTP to ``endpoint``.

    The tracer is the block's :func:`~._current.current_tracer` (a context
    variable: this task's children see it, other servers in the process do
    not). Sampling follows ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``
    (default: parent-based, always on); the service name is
    ``OTEL_SERVICE_NAME`` or ``trio-agent``; ``OTEL_EXPORTER_OTLP_HEADERS``
    (for example a collector's ``Authorization``) goes with every export. The
    SDK reads these itself. At most ``queue_size`` finished spans wait for
    export (past it: dropped and counted); a batch of ``batch_size`` leaves at
    once, a smaller one every ``export_interval`` seconds; each export call
    gives up after ``export_timeout`` seconds. On leaving, what is queued is
    flushed, for at most ``export_timeout`` plus a second. ``exporter``
    replaces the OTLP exporter (tests).
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from ._export import SpanExport
    from ._queue import SpanQueue
    from ._resource import service_resource
    from ._tracer import GatewayTracer

    # The sampler OTEL_TRACES_SAMPLER (and _ARG) names, as the SDK reads them for a
    # provider. Not the process-global provider, and only its sampler: the gateway
    # records its spans itself (docs/decisions/016).
    sampler = TracerProvider(shutdown_on_exit=False).sampler
    queue = SpanQueue(max_size=queue_size, batch_size=batch_size)
    if exporter is None:
        exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=export_timeout)
    export = SpanExport(
        queue,
        exporter,
        interval=export_interval,
        resource=service_resource(),
        scope=InstrumentationScope("trio_agent", _version()),
    )
    tracer = GatewayTracer(queue, sampler, content=content, export=export)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(export.run, name="span export")
            token = set_tracer(tracer)
            try:
                yield tracer
            finally:
                reset_tracer(token)
                export.close()
                # The flush is bounded: a dead collector holds shutdown this long at most.
                nursery.cancel_scope.deadline = trio.current_time() + export_timeout + 1.0
    finally:
        exporter.shutdown()
