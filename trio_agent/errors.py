"""The one exception tree of trio_agent.

Inner layers raise these; only the HTTP edge (``trio_agent.server``) turns them
into status codes, JSON bodies and SSE ``error`` events::

    TrioAgentError
    ├── ConfigError                      bad or unknown configuration (also a ValueError)
    │   └── BindError                    the address to listen on is in use or not usable
    ├── SSEError                         the SSE codec refused its input (also a ValueError)
    │   ├── SSEFieldError                event/id/retry/comment that cannot be encoded
    │   └── SSEEventTooLargeError        a decoded line or event exceeded max_event_chars
    ├── ConcurrencyError                 the trio helpers in trio_agent.concurrency
    │   ├── QueueFullError               the bounded queue is full; refused at once
    │   ├── QueueTimeoutError            waited longer than max_wait for a worker
    │   ├── QueueClosedError             submitted to a queue that stopped intake
    │   └── ItemCancelledError           a mapped item was cancelled by the map's total_timeout
    ├── DeadlineError                    a deadline on a stream or a stage ran out
    │   ├── ItemTimeoutError             one mapped item ran longer than item_timeout
    │   ├── FirstItemTimeoutError        nothing arrived before first_timeout
    │   ├── IdleTimeoutError             the gap between two items exceeded idle_timeout
    │   └── TotalTimeoutError            the whole stream exceeded total_timeout
    ├── AgentError                       the agent runtime refused its input (a failing tool is not
    │   │                                an exception: it is a tool_error event the model sees)
    │   ├── ToolDefinitionError          a function cannot be a tool, or two tools share a name (also a ValueError)
    │   └── UnknownToolError             a run's allowlist names a tool the agent does not have (also a LookupError)
    ├── AdmissionError                   the gateway refused to start the work (no byte sent yet)
    │   ├── OverloadedError              global capacity and queue full, or queue wait ran out (503)
    │   ├── KeyLimitError                per-API-key concurrency or rate exceeded (429)
    │   └── ShuttingDownError            the server is draining (503)
    ├── RequestError                     the client's request is wrong
    │   ├── RequestValidationError       a field is missing or wrong (400/422), names the field
    │   ├── PayloadTooLargeError         body above the limit (413)
    │   ├── AuthenticationError          missing or wrong API key (401)
    │   ├── NotFoundError                no such path (404)
    │   ├── ModelNotFoundError           no configured upstream serves the model asked for (404)
    │   └── MethodNotAllowedError        the path exists, the method does not (405)
    └── UpstreamError                    the LLM upstream failed
        ├── UpstreamConnectError         could not connect / connection dropped
        ├── UpstreamUnavailableError     every upstream for the request is ejected: fail fast (503)
        ├── UpstreamStatusError          a non-2xx answer (upstream_status, retry_after)
        ├── UpstreamProtocolError        bytes that are not the OpenAI wire format, or no terminal frame
        ├── UpstreamStreamError          an {"error": ...} frame inside the stream
        └── UpstreamTimeoutError         an upstream deadline ran out (also a DeadlineError)
            ├── UpstreamConnectTimeoutError
            ├── UpstreamFirstTokenTimeoutError   (also a FirstItemTimeoutError)
            ├── UpstreamIdleTimeoutError         (also an IdleTimeoutError)
            └── UpstreamTotalTimeoutError        (also a TotalTimeoutError)

Every error carries structured fields rather than only a message: ``code`` (a
stable snake_case identifier used in JSON and SSE error bodies), ``retryable``,
and where relevant ``status_code`` (the HTTP status the gateway answers with;
only on errors of the request itself: admission and request errors),
``upstream_status`` (what an upstream answered, on upstream errors),
``retry_after`` (seconds) or ``waited``. Causes are chained
(``raise X(...) from exc``). How an upstream error maps to the gateway's own
status is decided in one place, ``trio_agent.server``'s error renderer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Self

__all__ = [
    "AdmissionError",
    "AgentError",
    "AuthenticationError",
    "BindError",
    "ConcurrencyError",
    "ConfigError",
    "DeadlineError",
    "FirstItemTimeoutError",
    "IdleTimeoutError",
    "ItemCancelledError",
    "ItemTimeoutError",
    "KeyLimitError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "QueueClosedError",
    "QueueFullError",
    "QueueTimeoutError",
    "RequestError",
    "RequestValidationError",
    "SSEError",
    "SSEEventTooLargeError",
    "SSEFieldError",
    "ShuttingDownError",
    "ToolDefinitionError",
    "TotalTimeoutError",
    "TrioAgentError",
    "UnknownToolError",
    "UpstreamConnectError",
    "UpstreamConnectTimeoutError",
    "UpstreamError",
    "UpstreamFirstTokenTimeoutError",
    "UpstreamIdleTimeoutError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
    "UpstreamTotalTimeoutError",
    "UpstreamUnavailableError",
]


class TrioAgentError(Exception):
    """Root of every error trio_agent raises on purpose.

    ``code`` is a stable identifier for clients; ``retryable`` says whether the
    same request may succeed if sent again later.
    """

    code: str = "internal_error"
    retryable: bool = False

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(TrioAgentError, ValueError):
    """A configuration value is invalid, or a key is unknown."""

    code = "config_error"


class BindError(ConfigError):
    """A server could not listen on ``host:port`` (in use, not this machine's, unresolvable).

    ``str()`` is one line for a person:
    ``cannot listen on 127.0.0.1:8000: address already in use``.
    """

    code = "bind_error"

    def __init__(self, *, host: str, port: int, reason: str) -> None:
        shown = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {shown}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


# -- SSE codec ----------------------------------------------------------------


class SSEError(TrioAgentError, ValueError):
    """The SSE codec (:mod:`trio_agent.sse`) refused its input."""

    code = "sse_error"


class SSEFieldError(SSEError):
    """A field cannot be written to an event stream without changing its meaning.

    ``field`` names it (``event``, ``id``, ``retry`` or ``comment``).
    """

    code = "sse_invalid_field"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class SSEEventTooLargeError(SSEError):
    """The decoder buffered more than ``limit`` characters for one line or event."""

    code = "sse_event_too_large"

    def __init__(self, message: str = "SSE event too large", *, limit: int = 0) -> None:
        super().__init__(message)
        self.limit = limit


# -- trio helpers -----------------------------------------------------------


class ConcurrencyError(TrioAgentError):
    """Base of errors raised by the helpers in :mod:`trio_agent.concurrency`."""

    code = "concurrency_error"


class QueueFullError(ConcurrencyError):
    """The request queue already holds ``max_queued`` items; refused at once."""

    code = "queue_full"
    retryable = True

    def __init__(self, message: str = "request queue is full", *, max_queued: int = 0) -> None:
        super().__init__(message)
        self.max_queued = max_queued


class QueueTimeoutError(ConcurrencyError):
    """A queued item waited longer than ``max_wait`` before a worker took it."""

    code = "queue_timeout"
    retryable = True

    def __init__(self, message: str = "timed out waiting in the queue", *, waited: float = 0.0) -> None:
        super().__init__(message)
        self.waited = waited


class QueueClosedError(ConcurrencyError):
    """The queue stopped taking new items (its block is exiting)."""

    code = "queue_closed"
    retryable = True


class ItemCancelledError(ConcurrencyError):
    """A mapped item was cancelled before it finished (the map's ``total_timeout`` ran out).

    ``index`` is the item's position in the input.
    """

    code = "item_cancelled"
    retryable = True

    def __init__(self, message: str = "item cancelled", *, index: int = -1) -> None:
        super().__init__(message)
        self.index = index


# -- deadlines ----------------------------------------------------------------


class DeadlineError(TrioAgentError):
    """A deadline ran out. ``timeout`` is the configured duration in seconds."""

    code = "timeout"
    retryable = True

    def __init__(
        self,
        message: str = "deadline exceeded",
        *,
        timeout: float | None = None,
        code: str | None = None,
    ) -> None:
        # ``code`` too: UpstreamTimeoutError reaches this through UpstreamError's super().
        super().__init__(message, code=code)
        self.timeout = timeout


class ItemTimeoutError(DeadlineError):
    """One mapped item ran longer than ``item_timeout``; ``index`` is its input position."""

    code = "item_timeout"

    def __init__(
        self, message: str = "item timed out", *, timeout: float | None = None, index: int = -1
    ) -> None:
        super().__init__(message, timeout=timeout)
        self.index = index


class FirstItemTimeoutError(DeadlineError):
    """No first item arrived within ``first_timeout``."""

    code = "first_item_timeout"


class IdleTimeoutError(DeadlineError):
    """The gap between two items exceeded ``idle_timeout``."""

    code = "idle_timeout"


class TotalTimeoutError(DeadlineError):
    """The whole stream took longer than ``total_timeout``."""

    code = "total_timeout"


# -- admission ----------------------------------------------------------------


class AdmissionError(TrioAgentError):
    """The gateway refused to start a request. Nothing was sent upstream.

    ``status_code`` is the HTTP answer; ``retry_after`` the suggested wait in
    seconds (sent as the ``Retry-After`` header, rounded up).
    """

    code = "admission_refused"
    status_code = 503
    retryable = True

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: float | None = None,
        waited: float = 0.0,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.waited = waited


class OverloadedError(AdmissionError):
    """Global capacity is taken and the wait queue is full, or the wait ran out (503)."""

    code = "overloaded"
    status_code = 503


class KeyLimitError(AdmissionError):
    """A per-API-key concurrency or rate limit was exceeded (429)."""

    code = "rate_limited"
    status_code = 429


class ShuttingDownError(AdmissionError):
    """The server is draining and takes no new work (503)."""

    code = "shutting_down"
    status_code = 503


# -- client request -------------------------------------------------------------


class RequestError(TrioAgentError):
    """The client's request cannot be served as sent. ``status_code`` is the HTTP answer."""

    code = "bad_request"
    status_code = 400

    def __init__(
        self, message: str = "", *, code: str | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        if status_code is not None:
            self.status_code = status_code


class RequestValidationError(RequestError):
    """A field of the request is missing or wrong. ``field`` names it (dotted path)."""

    code = "invalid_request"

    def __init__(
        self, message: str, *, field: str | None = None, status_code: int = 422, code: str | None = None
    ) -> None:
        super().__init__(message, code=code, status_code=status_code)
        self.field = field


class PayloadTooLargeError(RequestError):
    """The request body is larger than the configured limit (413)."""

    code = "payload_too_large"
    status_code = 413

    def __init__(self, message: str = "request body too large", *, limit: int = 0) -> None:
        super().__init__(message)
        self.limit = limit


class AuthenticationError(RequestError):
    """Missing or wrong API key (401). Never carries the key itself."""

    code = "unauthorized"
    status_code = 401


class NotFoundError(RequestError):
    """No route matches the path (404)."""

    code = "not_found"
    status_code = 404


class ModelNotFoundError(RequestError):
    """No configured upstream serves the model the request names (404, OpenAI's code).

    Raised by the upstream router before anything is sent upstream; ``model`` names it.
    """

    code = "model_not_found"
    status_code = 404

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message)
        self.model = model


class MethodNotAllowedError(RequestError):
    """The path exists but not with this method (405). ``allowed`` lists the methods."""

    code = "method_not_allowed"
    status_code = 405

    def __init__(self, message: str = "method not allowed", *, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed


# -- upstream ---------------------------------------------------------------------


class UpstreamError(TrioAgentError):
    """The LLM upstream failed. ``upstream_status`` is what it answered, when it answered.

    It has no ``status_code``: the gateway's own answer for an upstream failure
    is decided by the HTTP edge, not by the layer that saw the failure.
    """

    code = "upstream_error"
    retryable = True

    def __init__(
        self,
        message: str = "upstream error",
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.upstream_status = upstream_status
        self.retry_after = retry_after

    def with_detail(self, detail: str) -> Self:
        """The same error (class, code, fields) with ``detail`` added to its message.

        For what a caller learned after the failure, such as a retry the retry
        budget did not allow: that is a detail of this failure, not another one.
        """
        clone = copy.copy(self)
        clone.message = f"{self.message} ({detail})"
        clone.args = (clone.message,)
        return clone


class UpstreamConnectError(UpstreamError):
    """Could not connect to the upstream, or the connection dropped."""

    code = "upstream_unavailable"


class UpstreamUnavailableError(UpstreamError):
    """Every upstream that could serve the request is ejected (outlier detection): nothing was sent.

    The request fails at once instead of waiting for a connect timeout;
    ``retry_after`` is when the first of them may be probed again.
    """

    code = "upstream_unavailable"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-2xx status."""

    code = "upstream_status"


class UpstreamProtocolError(UpstreamError):
    """The upstream's bytes are not the expected wire format, or the stream ended early."""

    code = "upstream_protocol_error"


class UpstreamStreamError(UpstreamError):
    """The upstream sent an ``{"error": ...}`` frame inside the stream."""

    code = "upstream_stream_error"


class UpstreamTimeoutError(UpstreamError, DeadlineError):
    """An upstream deadline ran out."""

    code = "upstream_timeout"

    def __init__(self, message: str = "upstream timed out", *, timeout: float | None = None) -> None:
        UpstreamError.__init__(self, message)
        self.timeout = timeout


class UpstreamConnectTimeoutError(UpstreamTimeoutError):
    """Connecting to the upstream took longer than ``connect_timeout``."""

    code = "upstream_connect_timeout"


class UpstreamFirstTokenTimeoutError(UpstreamTimeoutError, FirstItemTimeoutError):
    """The upstream sent no first token within ``first_token_timeout``."""

    code = "upstream_first_token_timeout"


class UpstreamIdleTimeoutError(UpstreamTimeoutError, IdleTimeoutError):
    """The upstream went quiet for longer than ``idle_timeout`` mid-stream."""

    code = "upstream_idle_timeout"


class UpstreamTotalTimeoutError(UpstreamTimeoutError, TotalTimeoutError):
    """The upstream stream took longer than ``total_timeout`` in all."""

    code = "upstream_total_timeout"


class AgentError(TrioAgentError):
    """The agent runtime refused its input."""

    code = "agent_error"


class ToolDefinitionError(AgentError, ValueError):
    """A function cannot be made a tool, or two tools would share a name."""

    code = "tool_definition_error"


class UnknownToolError(AgentError, LookupError):
    """A run's allowlist names tools the agent does not have; ``names`` lists them."""

    code = "unknown_tool"

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        super().__init__(f"unknown tool(s): {', '.join(self.names)}")
