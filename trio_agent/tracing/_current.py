"""The tracer of the running server, if any: one context variable, read on the hot path.

Nothing here imports OpenTelemetry, so the off path costs a context-variable
read and a ``None`` test.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._tracer import GatewayTracer

__all__ = ["current_tracer", "set_tracer", "trace_headers", "trace_meta"]

_TRACER: ContextVar[GatewayTracer | None] = ContextVar("trio_agent.tracer", default=None)

#: The tracer of the server this task belongs to, or ``None`` (tracing off).
current_tracer = _TRACER.get

set_tracer = _TRACER.set
reset_tracer = _TRACER.reset


def trace_headers(headers: dict[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) for the current span to outgoing ``headers``.

    A no-op when tracing is off or no span is current.
    """
    tracer = _TRACER.get()
    if tracer is not None:
        tracer.inject(headers)


def trace_meta() -> dict[str, str] | None:
    """The current span's W3C trace context as an MCP request ``_meta`` (``None``: nothing to carry)."""
    tracer = _TRACER.get()
    if tracer is None:
        return None
    meta: dict[str, str] = {}
    tracer.inject(meta)
    return meta or None
