"""A real OTLP/HTTP trace receiver for the tracing tests: ``POST /v1/traces`` on 127.0.0.1:0.

A stdlib HTTP server in a thread (the exporter under test is blocking and runs in
a worker thread of its own): each request body, an ``ExportTraceServiceRequest``
in protobuf (gzip accepted), is decoded with ``opentelemetry-proto`` into
:class:`ReceivedSpan` records. :func:`receiving_otlp` yields the receiver;
``await receiver.wait_for(predicate)`` polls, bounded, until the spans satisfy it.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

# opentelemetry.proto.trace.v1 Span.SpanKind and Status.StatusCode values
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if which is None:
        return None
    return getattr(v, which)


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: tuple[tuple[str, int], ...]
    service_name: str = ""


@dataclass
class OTLPReceiver:
    url: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReceivedSpan:
        found = self.named(name)
        assert len(found) == 1, f"expected one span {name!r}, got {[s.name for s in self.spans]}"
        return found[0]

    def by_id(self, span_id: str) -> ReceivedSpan:
        return next(s for s in self.spans if s.span_id == span_id)

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.parent_span_id == parent.span_id]

    async def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], limit: float = 20.0) -> None:
        """Poll (the spans arrive from another thread) until ``predicate(spans)``, at most ``limit`` s."""
        with trio.fail_after(limit):
            for _ in range(int(limit / 0.02) + 1):
                if predicate(list(self.spans)):
                    return
                await trio.sleep(0.02)
        raise AssertionError(f"spans never matched: {[s.name for s in self.spans]}")

    def _receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            status_code=s.status.code,
                            status_message=s.status.message,
                            events=tuple((e.name, e.time_unix_nano) for e in s.events),
                            service_name=service,
                        )
                    )
        self.requests += 1


@contextmanager
def receiving_otlp() -> Iterator[OTLPReceiver]:
    """Run a receiver until the block ends; yields it (``url`` is its base, without /v1/traces)."""
    holder: list[OTLPReceiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            holder[0]._receive(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host, port = server.server_address[:2]
    holder.append(OTLPReceiver(url=f"http://{host}:{port}"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
