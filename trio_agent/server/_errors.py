"""The error renderer: the one place that turns errors into HTTP answers.

Inner layers raise :class:`~trio_agent.errors.TrioAgentError` subclasses; this
module decides what a client sees, for every route: the status, the JSON body,
the headers (``Retry-After``, ``Allow``, ``WWW-Authenticate``) and the data of
a terminal SSE ``error`` event. The front (streamed routes, early refusals)
and the Quart handlers both render through :func:`render_error`.

Every error body has the shape::

    {"error": {"code": "overloaded", "message": "...", "retryable": true,
               "request_id": "...", ...extra fields such as "field" or "retry_after"}}

and the OpenAI-compatible routes (``/v1/...``) use OpenAI's ``{"error":
{"message", "type", "code", "param"}}``. An unexpected exception becomes a 500
``internal_error`` whose message says nothing about the code (never a
traceback).

Statuses: admission and request errors carry their own ``status_code`` (our
answer, fixed by the error's class or constructor). Upstream errors carry what
the upstream answered (``upstream_status``) and are mapped here: an upstream
4xx that blames the request (bad model, prompt too long) is our 400; a
deadline is 504; anything else, ``upstream_unavailable`` (connection refused,
dropped, not retried because the retry budget is spent) included, is 502: the
gateway itself is up and would serve another upstream, so 503 (which says
"this instance is overloaded or draining", and makes a load balancer take it
out) would be wrong. The exception is
:class:`~trio_agent.errors.UpstreamUnavailableError` (same code): every
upstream is ejected, the call failed fast without trying, and 503 with
``Retry-After`` (the time until the next probe) is the truth for this
instance until one rejoins.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from werkzeug.exceptions import HTTPException

from ..errors import (
    AdmissionError,
    DeadlineError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    RequestValidationError,
    TrioAgentError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamUnavailableError,
)
from ._context import Headers, RequestContext

__all__ = [
    "Rendered",
    "as_trio_agent_error",
    "error_fields",
    "error_headers",
    "error_response",
    "error_payload",
    "internal_error",
    "json_response",
    "openai_error_payload",
    "render_error",
    "send_error",
    "send_json",
    "sse_error_data",
    "status_for",
]

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

# Upstream 4xx answers that say nothing about the request itself: our key, our
# rate or the upstream's own time ran out. They stay a bad gateway (502).
_UPSTREAM_NOT_CLIENTS_FAULT = frozenset({401, 403, 408, 429})
_RETRY_AFTER_HEADER_MIN = 1


def internal_error() -> TrioAgentError:
    return TrioAgentError("internal server error")


def as_trio_agent_error(exc: BaseException) -> TrioAgentError:
    """Our own errors pass through; Quart/werkzeug HTTP errors and the rest are translated."""
    if isinstance(exc, TrioAgentError):
        return exc
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        if code == 404:
            return NotFoundError("no such path")
        if code == 405:
            allowed = tuple(getattr(exc, "valid_methods", None) or ())
            return MethodNotAllowedError("method not allowed", allowed=allowed)
        if code == 413:
            return PayloadTooLargeError("request body too large")
        if code == 408:
            return RequestError(
                "request body not received in time", code="body_timeout", status_code=408
            )
        if 400 <= code < 500:
            return RequestError(
                exc.description or "bad request", code=f"http_{code}", status_code=code
            )
    return internal_error()


def status_for(exc: TrioAgentError) -> int:
    """Our HTTP status for an error (before any byte of the response was sent)."""
    if isinstance(exc, (AdmissionError, RequestError)):
        return int(exc.status_code)
    if (
        isinstance(exc, UpstreamStatusError)
        and exc.upstream_status is not None
        and 400 <= exc.upstream_status < 500
        and exc.upstream_status not in _UPSTREAM_NOT_CLIENTS_FAULT
    ):
        return 400
    if isinstance(exc, UpstreamUnavailableError):  # every upstream ejected: this instance cannot serve
        return 503
    if isinstance(exc, DeadlineError):  # UpstreamTimeoutError is one too
        return 504
    if isinstance(exc, UpstreamError):
        return 502
    return 500


def _retryable(exc: TrioAgentError) -> bool:
    if isinstance(exc, UpstreamStatusError) and status_for(exc) == 400:
        return False
    return bool(exc.retryable)


def _retry_after(exc: TrioAgentError) -> int | None:
    """Whole seconds to wait before a retry (rounded up, at least 1), if the error says."""
    value = getattr(exc, "retry_after", None)
    if not isinstance(value, (int, float)):
        return None
    return max(_RETRY_AFTER_HEADER_MIN, math.ceil(value))


def error_fields(exc: TrioAgentError, request_id: str) -> dict[str, Any]:
    """The fields every error representation shares."""
    fields: dict[str, Any] = {
        "code": exc.code,
        "message": exc.message or exc.code,
        "retryable": _retryable(exc),
        "request_id": request_id,
    }
    if isinstance(exc, RequestValidationError) and exc.field is not None:
        fields["field"] = exc.field
    if isinstance(exc, PayloadTooLargeError) and exc.limit:
        fields["limit_bytes"] = exc.limit
    retry_after = _retry_after(exc)
    if retry_after is not None:
        fields["retry_after"] = retry_after
    if isinstance(exc, UpstreamError) and exc.upstream_status is not None:
        fields["upstream_status"] = exc.upstream_status
    return fields


def error_payload(exc: TrioAgentError, request_id: str) -> dict[str, Any]:
    """The JSON body: ``{"error": {...}}``."""
    return {"error": error_fields(exc, request_id)}


def sse_error_data(exc: TrioAgentError, request_id: str) -> dict[str, Any]:
    """The data of a terminal SSE ``error`` event: ``{"type": "error", ...}``."""
    return {"type": "error", **error_fields(exc, request_id)}


_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def openai_error_payload(exc: TrioAgentError, request_id: str) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "code", "param"}}``."""
    status = status_for(exc)
    kind = _OPENAI_TYPES.get(status)
    if kind is None:
        kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    param = exc.field if isinstance(exc, RequestValidationError) else None
    return {
        "error": {
            "message": exc.message or exc.code,
            "type": kind,
            "code": exc.code,
            "param": param,
            "request_id": request_id,
        }
    }


def _error_headers(exc: TrioAgentError, status: int) -> Headers:
    headers: Headers = []
    retry_after = _retry_after(exc)
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if isinstance(exc, MethodNotAllowedError) and exc.allowed:
        headers.append((b"allow", ", ".join(sorted(exc.allowed)).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="trio_agent"'))
    return headers


def error_headers(exc: TrioAgentError) -> Headers:
    """Extra headers: ``Retry-After`` (whole seconds), ``Allow``, ``WWW-Authenticate``."""
    return _error_headers(exc, status_for(exc))


@dataclass(frozen=True, slots=True)
class Rendered:
    """An error as an HTTP answer: status, the error's own headers, the JSON body."""

    status: int
    headers: Headers
    body: dict[str, Any]


def render_error(exc: TrioAgentError, ctx: RequestContext) -> Rendered:
    """The answer for ``exc`` on this request (our shape or OpenAI's); notes the outcome."""
    ctx.outcome = exc.code
    status = status_for(exc)
    if ctx.openai:
        body = openai_error_payload(exc, ctx.request_id)
        if isinstance(exc, NotFoundError):  # OpenAI's words for a path it does not serve
            body["error"]["message"] = f"Invalid URL ({ctx.method} {ctx.path})"
    else:
        body = error_payload(exc, ctx.request_id)
    return Rendered(status, _error_headers(exc, status), body)


def json_response(
    status: int, body: Any, ctx: RequestContext, headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[int, Headers, bytes]:
    """A whole JSON response as ``(status, headers, body)``; notes the status in ``ctx``."""
    data = orjson.dumps(body)
    ctx.status = status
    return (
        status,
        [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            *ctx.response_headers,
            *headers,
        ],
        data,
    )


def error_response(exc: TrioAgentError, ctx: RequestContext) -> tuple[int, Headers, bytes]:
    """The whole error answer as ``(status, headers, body)``, for the front and early refusals."""
    rendered = render_error(exc, ctx)
    return json_response(rendered.status, rendered.body, ctx, rendered.headers)


async def _send_whole(send: Send, status: int, headers: Headers, data: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def send_json(
    send: Send,
    status: int,
    body: Any,
    ctx: RequestContext,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """A whole JSON response over ASGI."""
    await _send_whole(send, *json_response(status, body, ctx, headers))


async def send_error(send: Send, exc: TrioAgentError, ctx: RequestContext) -> None:
    """The whole error answer over ASGI (only before any byte of the response was sent)."""
    await _send_whole(send, *error_response(exc, ctx))
