"""The one place that turns errors into HTTP answers: status codes, JSON bodies, SSE events.

Inner layers raise :class:`~trio_agent.errors.TrioAgentError` subclasses; this
module decides what a client sees. Every error body has the shape::

    {"error": {"code": "overloaded", "message": "...", "retryable": true,
               "request_id": "...", ...extra fields such as "field" or "retry_after"}}

and the OpenAI-compatible routes use OpenAI's ``{"error": {"message", "type",
"code", "param"}}``. An unexpected exception becomes a 500 ``internal_error``
whose message says nothing about the code (never a traceback).
"""

from __future__ import annotations

import math
from typing import Any

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
    UpstreamTimeoutError,
)

__all__ = [
    "as_trio_agent_error",
    "error_headers",
    "error_payload",
    "openai_error_payload",
    "sse_error_data",
    "status_for",
]

Headers = list[tuple[bytes, bytes]]


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
            err = RequestError("request body not received in time", code="body_timeout")
            err.status_code = 408
            return err
        if 400 <= code < 500:
            err = RequestError(exc.description or "bad request", code=f"http_{code}")
            err.status_code = code
            return err
    internal = TrioAgentError("internal server error")
    return internal


def status_for(exc: TrioAgentError) -> int:
    """The HTTP status for an error (before any byte of the response was sent)."""
    if isinstance(exc, (AdmissionError, RequestError)):
        return int(exc.status_code)
    if isinstance(exc, UpstreamStatusError) and exc.status_code is not None:
        # The upstream refused the request itself (bad model, prompt too long):
        # the client's fault, say so; everything else is a bad gateway.
        if 400 <= exc.status_code < 500 and exc.status_code not in (401, 403, 408, 429):
            return 400
    if isinstance(exc, (UpstreamTimeoutError, DeadlineError)):
        return 504
    if isinstance(exc, UpstreamError):
        return 502
    return 500


def _retryable(exc: TrioAgentError) -> bool:
    if isinstance(exc, UpstreamStatusError) and status_for(exc) == 400:
        return False
    return bool(exc.retryable)


def _retry_after(exc: TrioAgentError) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


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
        fields["retry_after"] = math.ceil(retry_after)
    if isinstance(exc, UpstreamError) and exc.status_code is not None:
        fields["upstream_status"] = exc.status_code
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


def error_headers(exc: TrioAgentError) -> Headers:
    """Extra headers: ``Retry-After`` (whole seconds), ``Allow``, ``WWW-Authenticate``."""
    headers: Headers = []
    retry_after = _retry_after(exc)
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
    if isinstance(exc, MethodNotAllowedError) and exc.allowed:
        headers.append((b"allow", ", ".join(sorted(exc.allowed)).encode()))
    if status_for(exc) == 401:
        headers.append((b"www-authenticate", b'Bearer realm="trio_agent"'))
    return headers
