"""The gateway's tracer: spans named and shaped by the OpenTelemetry semantic conventions.

A thin layer over an SDK ``Tracer``: each kind of span the gateway makes has
one method here, so a name or an attribute is spelled in one place.
:class:`TraceSpan` wraps a started span with the few operations the
instrumented code needs (set, event, fail), and :meth:`GatewayTracer.span`
makes a span current for a block, the way every nested span finds its parent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import trio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._export import SpanExport
from ._queue import TracingStatistics

__all__ = ["ADMISSION_SPAN_MIN", "GatewayTracer", "TraceSpan", "error_type"]

# W3C trace context only (not the process-global, configurable propagator): ``traceparent``
# in, ``traceparent`` out, whatever else the process set up.
_PROPAGATOR = TraceContextTextMapPropagator()

# Outcomes of a request that are not failures (RequestContext.outcome).
_OK_OUTCOMES = frozenset({"done", "ok", "preflight"})
_DESCRIPTIONS = {
    "disconnect": "cancelled: the client disconnected",
    "write_stalled": "cancelled: a write to the client stalled",
    "shutting_down": "cancelled: the server shut down",
    "cancelled": "cancelled",
}


class _HeadGetter(Getter[Mapping[bytes, bytes]]):
    """Reads a request head as the server keeps it: lower-cased ``bytes`` names and values."""

    def get(self, carrier: Mapping[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Mapping[bytes, bytes]) -> list[str]:
        return [k.decode("latin-1") for k in carrier]


_HEAD_GETTER = _HeadGetter()

#: A wait for admission shorter than this (seconds) gets no span of its own.
ADMISSION_SPAN_MIN = 0.001


def _is_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False


def error_type(exc: BaseException) -> str:
    """The ``error.type`` of ``exc``: our error code, ``cancelled``, or the exception's class name."""
    if _is_cancelled(exc):
        return "cancelled"
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    return type(exc).__qualname__


class TraceSpan:
    """A started span, with what the instrumented code does to it."""

    __slots__ = ("_token", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self._token: object | None = None

    def set(self, key: str, value: Any) -> None:
        """Set attribute ``key`` (``None``: leave it unset)."""
        if value is not None:
            self.span.set_attribute(key, value)

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self.span.add_event(name, attributes)

    def fail(self, code: str, description: str | None = None) -> None:
        """Status ERROR, ``error.type`` = ``code`` (the code the client got)."""
        self.span.set_attribute("error.type", code)
        self.span.set_status(Status(StatusCode.ERROR, description or _DESCRIPTIONS.get(code, code)))

    def fail_with(self, exc: BaseException) -> None:
        code = error_type(exc)
        self.fail(code, None if code == "cancelled" else (str(exc) or code))

    def attach(self) -> None:
        """Make this span current in this task (and in every task started from it, until detach)."""
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def detach(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def end(self) -> None:
        self.span.end()

    @property
    def trace_id(self) -> int:
        return self.span.get_span_context().trace_id

    @property
    def span_id(self) -> int:
        return self.span.get_span_context().span_id


class GatewayTracer:
    """Makes the gateway's spans on ``tracer``; ``content`` records prompts and completions too."""

    def __init__(self, tracer: trace.Tracer, *, content: bool, export: SpanExport | None = None) -> None:
        self._tracer = tracer
        self.content = content
        self.export = export

    def __repr__(self) -> str:
        return f"<GatewayTracer content={self.content} export={self.export!r}>"

    def statistics(self) -> TracingStatistics | None:
        return None if self.export is None else self.export.statistics()

    def inject(self, carrier: dict[str, str]) -> None:
        """W3C ``traceparent``/``tracestate`` of the current span into ``carrier``."""
        _PROPAGATOR.inject(carrier)

    # -- spans -------------------------------------------------------------------------

    def start(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        start_ns: int | None = None,
    ) -> TraceSpan:
        """A span, child of the current one, not made current."""
        return TraceSpan(
            self._tracer.start_span(name, kind=kind, attributes=attributes, start_time=start_ns)
        )

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[TraceSpan]:
        """A span current for the block; an exception out of it sets its status (and is re-raised)."""
        span = self.start(name, kind=kind, attributes=attributes)
        span.attach()
        try:
            yield span
        except BaseException as exc:
            span.fail_with(exc)
            raise
        finally:
            span.detach()
            span.end()

    def start_server(
        self, *, method: str, path: str, route: str | None, request_id: str, headers: Mapping[bytes, bytes]
    ) -> TraceSpan:
        """The HTTP server span of one request, current until :meth:`end_server`.

        It continues the caller's trace when the head carries a valid ``traceparent``.
        """
        parent = _PROPAGATOR.extract(headers, getter=_HEAD_GETTER)
        span = TraceSpan(
            self._tracer.start_span(
                f"{method} {route}" if route is not None else method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": method,
                    "url.path": path,
                    "http.route": route or "",
                    "trio_agent.request_id": request_id,
                },
            )
        )
        span._token = otel_context.attach(trace.set_span_in_context(span.span, parent))
        return span

    def end_server(self, span: TraceSpan, *, status: int, outcome: str | None) -> None:
        """End the server span with what the client got: its status and our outcome code."""
        span.detach()
        if status:
            span.span.set_attribute("http.response.status_code", status)
        if status == 0 and outcome is None:
            span.fail("cancelled")
        elif status >= 400 or (outcome is not None and outcome not in _OK_OUTCOMES):
            span.fail(outcome or str(status))
        span.end()

    def admission(self, *, queued: float, outcome: str, parent: TraceSpan | None = None) -> None:
        """The admission wait of one request, ``queued`` seconds up to now, as a finished span.

        Only a request that waited (``ADMISSION_SPAN_MIN`` or more) or was refused gets one: a
        slot taken at once is the usual case, and a span saying so would cost every request.
        ``parent`` (default: the current span) is the request's server span.
        """
        if outcome == "admitted" and queued < ADMISSION_SPAN_MIN:
            return
        end_ns = time.time_ns()
        span = TraceSpan(
            self._tracer.start_span(
                "admission",
                context=None if parent is None else trace.set_span_in_context(parent.span),
                attributes={
                    "trio_agent.admission.outcome": outcome,
                    "trio_agent.admission.queued_ms": round(queued * 1000.0, 3),
                },
                start_time=end_ns - int(queued * 1e9),
            )
        )
        if outcome != "admitted":
            span.fail(outcome)
        span.span.end(end_time=end_ns)

    def refused_early(
        self, *, method: str, path: str, request_id: str, headers: Mapping[bytes, bytes], status: int, code: str
    ) -> None:
        """A request refused from its head (before the app ran): its server and admission spans."""
        span = self.start_server(method=method, path=path, route=path, request_id=request_id, headers=headers)
        self.admission(queued=0.0, outcome=code, parent=span)
        self.end_server(span, status=status, outcome=code)
