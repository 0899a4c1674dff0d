"""One record per request: what happened to it and when.

Times are float seconds since the run's origin (the moment the load generator
started), on the generator's clock, so that records from several generator
processes line up. ``scheduled_at`` is when the schedule wanted the request to
go out; ``sent_at`` is when the client started it (connecting included). The
gap between the two is client-side queueing, which from-scheduled latencies
keep visible.

:class:`RequestTrace` is the mutable form a client fills in while the request
runs; :meth:`RequestTrace.freeze` turns it into the frozen
:class:`RequestRecord` the metrics read. The client sets the protocol outcome
(``ok``, ``shed``, ``http_error``, ``upstream_error``, ``protocol_error``,
``connect_error``); the runner sets ``timeout`` and ``cancelled``, which only
it can see.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Outcome", "RequestRecord", "RequestTrace"]


class Outcome(enum.StrEnum):
    """How one benchmark request ended."""

    OK = "ok"
    """A terminal ``done`` (or ``[DONE]``) event arrived."""
    SHED = "shed"
    """The server refused at once: 503 or 429 (``retry_after`` from its header)."""
    TIMEOUT = "timeout"
    """The client-side deadline (``request_timeout``) ran out."""
    HTTP_ERROR = "http_error"
    """Any other non-200 status."""
    UPSTREAM_ERROR = "upstream_error"
    """An ``error`` event inside a 200 stream."""
    PROTOCOL_ERROR = "protocol_error"
    """Bad HTTP framing, a non-SSE body, or a stream that ended without a terminal event."""
    CONNECT_ERROR = "connect_error"
    """The TCP connection could not be opened, or broke before a response."""
    CANCELLED = "cancelled"
    """The run's hard cap ended the request while it was in flight."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestRecord:
    """What one request did, in seconds since the run's origin (``None``: never happened).

    ``token_times`` holds the arrival time of every event that carried
    content; the server may coalesce several tokens into one event, so
    ``output_tokens`` (from the terminal event's usage when it reports one)
    can exceed ``len(token_times)``. ``sse_events`` counts every SSE event
    received (thinking, tokens, terminal), for the client-cost figures.
    """

    index: int
    scheduled_at: float
    sent_at: float
    end_at: float
    outcome: Outcome
    first_byte_at: float | None = None
    first_event_at: float | None = None
    first_token_at: float | None = None
    token_times: tuple[float, ...] = ()
    output_tokens: int = 0
    sse_events: int = 0
    status_code: int | None = None
    error_code: str | None = None
    retry_after: float | None = None
    detail: str = ""

    @property
    def ttft(self) -> float | None:
        """Time to first token from sending, or ``None`` if no token came."""
        return None if self.first_token_at is None else self.first_token_at - self.sent_at

    @property
    def e2e(self) -> float:
        """End-to-end latency from sending to the last byte (or the failure)."""
        return self.end_at - self.sent_at


@dataclass(kw_only=True, slots=True)
class RequestTrace:
    """The mutable record of a request in flight. Times are absolute (``trio.current_time()``).

    A client sets ``sent_at`` when it starts, appends to ``token_times``,
    and sets ``outcome`` (and ``end_at``, if the request's useful end came
    before the client returned, as at a terminal event) when the request ends
    on its own.
    """

    index: int
    scheduled_at: float
    sent_at: float | None = None
    first_byte_at: float | None = None
    first_event_at: float | None = None
    first_token_at: float | None = None
    token_times: list[float] = field(default_factory=list)
    end_at: float | None = None
    output_tokens: int | None = None
    sse_events: int = 0
    outcome: Outcome | None = None
    status_code: int | None = None
    error_code: str | None = None
    retry_after: float | None = None
    detail: str = ""

    def fail(self, outcome: Outcome, detail: str = "", *, error_code: str | None = None) -> None:
        """Record a failure (keeps the first one if called twice)."""
        if self.outcome is None:
            self.outcome = outcome
            self.detail = detail[:200]
            if error_code is not None:
                self.error_code = error_code

    def freeze(self, *, origin: float, end_at: float, default: Outcome) -> RequestRecord:
        """The frozen record, times made relative to ``origin``.

        ``end_at`` is used unless the client set its own. ``default`` is the
        outcome when the client set none (the runner passes
        ``timeout`` or ``cancelled`` when it ended the request, else
        ``protocol_error``: the client returned without deciding).
        """

        def rel(t: float | None) -> float | None:
            return None if t is None else t - origin

        if self.end_at is not None:
            end_at = self.end_at
        sent = self.sent_at if self.sent_at is not None else end_at
        tokens = self.output_tokens if self.output_tokens is not None else len(self.token_times)
        return RequestRecord(
            index=self.index,
            scheduled_at=self.scheduled_at - origin,
            sent_at=sent - origin,
            end_at=end_at - origin,
            outcome=self.outcome if self.outcome is not None else default,
            first_byte_at=rel(self.first_byte_at),
            first_event_at=rel(self.first_event_at),
            first_token_at=rel(self.first_token_at),
            token_times=tuple(t - origin for t in self.token_times),
            output_tokens=tokens,
            sse_events=self.sse_events,
            status_code=self.status_code,
            error_code=self.error_code,
            retry_after=self.retry_after,
            detail=self.detail,
        )
