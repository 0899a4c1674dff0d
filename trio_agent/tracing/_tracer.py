"""The gateway's tracer: spans named and shaped by the OpenTelemetry semantic conventions.

Each kind of span the gateway makes has one method here, so a name or an
attribute is spelled in one place. :meth:`GatewayTracer.span` makes a span
current for a block, the way every nested span finds its parent.

A :class:`TraceSpan` is recorded by the gateway itself (a slotted object: a
dict of attributes, a list of events, a status) and becomes the SDK's
``ReadableSpan`` only in the export thread, where the SDK's OTLP exporter
encodes it. Sampling is the SDK's (the sampler ``OTEL_TRACES_SAMPLER`` names,
asked once per trace, see :meth:`GatewayTracer.start`), ids are the SDK's random
ids, the current span is the OpenTelemetry context's (so ``traceparent`` goes
out with the API's propagator). What is not the SDK's ``Span`` is the recording:
its attribute checks, locks and per-span processor calls were most of tracing's
cost on the request path, and every attribute here is of a type the gateway
chose (docs/decisions/016).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import trio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._export import SpanExport
from ._queue import SpanQueue, TracingStatistics

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


_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


_PLAIN = frozenset({str, int, float, bool})


def _checked(attributes: dict[str, Any]) -> Mapping[str, Any]:
    """``attributes`` as the exporter can encode them.

    The gateway sets plain values (str, int, float, bool, or a tuple of them) and those
    pass as they are. Anything else goes through the SDK's own cleaning
    (``BoundedAttributes``: a sequence made a tuple, an unknown type made ``str``), and a
    ``None`` is left out (as :meth:`TraceSpan.set` leaves it unset), so one odd value never
    fails the encoding of a whole batch. Runs in the export thread.
    """
    for value in attributes.values():
        kind = type(value)
        if kind in _PLAIN or (kind is tuple and all(type(v) in _PLAIN for v in value)):
            continue
        present = {key: value for key, value in attributes.items() if value is not None}
        return BoundedAttributes(attributes=present, immutable=True)
    return attributes


class TraceSpan:
    """A started span, with what the instrumented code does to it.

    Ended once (a second :meth:`end` does nothing); once ended, its attributes,
    events and status no longer change, as with the SDK's spans: the export
    thread reads it while the trio thread goes on. A span the sampler dropped
    is never queued or exported; its context still travels (not sampled), so
    the services behind the gateway drop the trace too.
    """

    __slots__ = (
        "_queue",
        "_token",
        "attributes",
        "context",
        "end_ns",
        "events",
        "kind",
        "name",
        "parent",
        "start_ns",
        "status",
    )

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start_ns: int,
        queue: SpanQueue | None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.context = context
        self.parent = parent
        self.attributes = attributes
        self.start_ns = start_ns
        self.end_ns: int | None = None
        self.events: list[tuple[str, Mapping[str, Any] | None, int]] = []
        self.status = _UNSET
        self._queue = queue
        self._token: object | None = None

    def __repr__(self) -> str:
        return f"<TraceSpan {self.name!r} {self.context.span_id:016x} {'ended' if self.end_ns else 'open'}>"

    def set(self, key: str, value: Any) -> None:
        """Set attribute ``key`` (``None``: leave it unset)."""
        if value is not None and self.end_ns is None:
            self.attributes[key] = value

    def set_all(self, attributes: Mapping[str, Any]) -> None:
        """Set every attribute of ``attributes``."""
        if self.end_ns is None:
            self.attributes.update(attributes)

    def event(self, name: str, attributes: Mapping[str, Any] | None = None, *, at_ns: int | None = None) -> None:
        """An event now, or at ``at_ns`` (the wall clock's ``time_ns``)."""
        if self.end_ns is None:
            self.events.append((name, attributes, time.time_ns() if at_ns is None else at_ns))

    def fail(self, code: str, description: str | None = None) -> None:
        """Status ERROR, ``error.type`` = ``code`` (the code the client got)."""
        if self.end_ns is None:
            self.attributes["error.type"] = code
            self.status = Status(StatusCode.ERROR, description or _DESCRIPTIONS.get(code, code))

    def fail_with(self, exc: BaseException) -> None:
        code = error_type(exc)
        self.fail(code, None if code == "cancelled" else (str(exc) or code))

    def attach(self, parent: Context | None = None) -> None:
        """Make this span current in this task (and in every task started from it, until detach)."""
        self._token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(self.context), parent))

    def detach(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    @contextmanager
    def current(self) -> Iterator[TraceSpan]:
        """This span current for the block, then ended; an exception out of the block sets
        its status (and is re-raised)."""
        self.attach()
        try:
            yield self
        except BaseException as exc:
            self.fail_with(exc)
            raise
        finally:
            self.detach()
            self.end()

    def end(self, end_ns: int | None = None) -> None:
        if self.end_ns is not None:
            return
        self.end_ns = time.time_ns() if end_ns is None else end_ns
        if self._queue is not None:
            self._queue.on_end(self)

    @property
    def trace_id(self) -> int:
        return self.context.trace_id

    @property
    def span_id(self) -> int:
        return self.context.span_id

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        """The SDK's view of this ended span, for its exporter (built in the export thread)."""
        return ReadableSpan(
            name=self.name,
            context=self.context,
            parent=self.parent,
            resource=resource,
            attributes=_checked(self.attributes),
            events=[Event(name, attributes, at) for name, attributes, at in self.events],
            kind=self.kind,
            status=self.status,
            start_time=self.start_ns,
            end_time=self.end_ns,
            instrumentation_scope=scope,
        )


class GatewayTracer:
    """Makes the gateway's spans: ``sampler`` decides, ``queue`` takes the sampled ones when
    they end; ``content`` records prompts and completions too."""

    def __init__(
        self, queue: SpanQueue, sampler: Sampler, *, content: bool, export: SpanExport | None = None
    ) -> None:
        self._queue = queue
        self._sampler = sampler
        # The samplers OTEL_TRACES_SAMPLER names (see start()); any other is asked for every span.
        self._follows_local_parent = isinstance(sampler, (ParentBased, StaticSampler, TraceIdRatioBased))
        self._ids = RandomIdGenerator()
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
        parent: Context | None = None,
    ) -> TraceSpan:
        """A span, child of ``parent``'s span (default: the current one), not made current.

        As the SDK's tracer starts one: the parent's trace id (a new one for a
        root), a new span id, the sampler's decision and attributes. A child of
        one of the gateway's own spans takes its parent's decision when the
        sampler is one ``OTEL_TRACES_SAMPLER`` names: each of those decides so
        too (a parent-based one follows a local parent; a ratio decides on the
        trace id, the parent's; a constant is constant), so the sampler is
        asked once per trace here, at the span that starts or continues it.
        """
        parent_span = trace.get_current_span(parent).get_span_context()
        parent_context = parent_span if parent_span.is_valid else None
        values = dict(attributes) if attributes else {}
        if parent_context is not None and not parent_context.is_remote and self._follows_local_parent:
            trace_id = parent_context.trace_id
            recorded = parent_context.trace_flags.sampled
            trace_state: TraceState | None = parent_context.trace_state
        else:
            if parent_context is None:
                trace_id = self._ids.generate_trace_id()
            else:
                trace_id = parent_context.trace_id
            sampled = self._sampler.should_sample(parent, trace_id, name, kind, attributes)
            # RECORD_ONLY is not exported (as the SDK's batch processor does not export it).
            recorded = sampled.decision is Decision.RECORD_AND_SAMPLE
            trace_state = sampled.trace_state
            if sampled.attributes:
                values.update(sampled.attributes)
        context = SpanContext(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=_SAMPLED if recorded else _NOT_SAMPLED,
            trace_state=trace_state,
        )
        return TraceSpan(
            name,
            kind,
            context,
            parent_context,
            values,
            time.time_ns() if start_ns is None else start_ns,
            self._queue if recorded else None,
        )

    def start_client(self, name: str, attributes: Mapping[str, Any]) -> TraceSpan:
        """A CLIENT span (a call to another service: a model call), child of the current one."""
        return self.start(name, kind=SpanKind.CLIENT, attributes=attributes)

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[TraceSpan]:
        """A span current for the block; an exception out of it sets its status (and is re-raised)."""
        with self.start(name, kind=kind, attributes=attributes).current() as span:
            yield span

    def start_server(
        self, *, method: str, path: str, route: str | None, request_id: str, headers: Mapping[bytes, bytes]
    ) -> TraceSpan:
        """The HTTP server span of one request, current until :meth:`end_server`.

        It continues the caller's trace when the head carries a valid ``traceparent``.
        """
        parent = _PROPAGATOR.extract(headers, getter=_HEAD_GETTER)
        span = self.start(
            f"{method} {route}" if route is not None else method,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "http.route": route or "",
                "trio_agent.request_id": request_id,
            },
            parent=parent,
        )
        span.attach(parent)
        return span

    def end_server(self, span: TraceSpan, *, status: int, outcome: str | None) -> None:
        """End the server span with what the client got: its status and our outcome code."""
        span.detach()
        if status:
            span.attributes["http.response.status_code"] = status
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
        span = self.start(
            "admission",
            attributes={
                "trio_agent.admission.outcome": outcome,
                "trio_agent.admission.queued_ms": round(queued * 1000.0, 3),
            },
            start_ns=end_ns - int(queued * 1e9),
            parent=None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent.context)),
        )
        if outcome != "admitted":
            span.fail(outcome)
        span.end(end_ns)

    def refused_early(
        self, *, method: str, path: str, request_id: str, headers: Mapping[bytes, bytes], status: int, code: str
    ) -> None:
        """A request refused from its head (before the app ran): its server and admission spans."""
        span = self.start_server(method=method, path=path, route=path, request_id=request_id, headers=headers)
        self.admission(queued=0.0, outcome=code, parent=span)
        self.end_server(span, status=status, outcome=code)
