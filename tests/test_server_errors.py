"""The error mapping: one status, one JSON shape, one SSE shape per error; nothing internal leaks."""

from __future__ import annotations

import pytest
from werkzeug.exceptions import BadRequest, MethodNotAllowed, NotFound, RequestEntityTooLarge

from trio_agent.errors import (
    AuthenticationError,
    DeadlineError,
    KeyLimitError,
    MethodNotAllowedError,
    OverloadedError,
    PayloadTooLargeError,
    RequestValidationError,
    ShuttingDownError,
    TrioAgentError,
    UpstreamConnectError,
    UpstreamFirstTokenTimeoutError,
    UpstreamStatusError,
)
from trio_agent.server._errors import (
    as_trio_agent_error,
    error_headers,
    error_payload,
    openai_error_payload,
    sse_error_data,
    status_for,
)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (OverloadedError("x", retry_after=2.0), 503),
        (ShuttingDownError("x"), 503),
        (KeyLimitError("x"), 429),
        (AuthenticationError("x"), 401),
        (RequestValidationError("x", field="f"), 422),
        (RequestValidationError("x", status_code=400), 400),
        (PayloadTooLargeError(), 413),
        (DeadlineError("x"), 504),
        (UpstreamFirstTokenTimeoutError("x"), 504),
        (UpstreamConnectError("x"), 502),
        (UpstreamStatusError("x", upstream_status=500), 502),
        (UpstreamStatusError("x", upstream_status=429), 502),
        (UpstreamStatusError("x", upstream_status=404), 400),
        (TrioAgentError("x"), 500),
    ],
)
def test_status_for(exc: TrioAgentError, status: int) -> None:
    assert status_for(exc) == status


def test_payload_fields_and_retry_after_header() -> None:
    exc = OverloadedError("busy", retry_after=2.2)
    body = error_payload(exc, "rid")
    assert body == {
        "error": {
            "code": "overloaded",
            "message": "busy",
            "retryable": True,
            "request_id": "rid",
            "retry_after": 3,
        }
    }
    assert error_headers(exc) == [(b"retry-after", b"3")]


def test_validation_error_names_its_field_everywhere() -> None:
    exc = RequestValidationError("bad", field="messages.0.role")
    assert error_payload(exc, "r")["error"]["field"] == "messages.0.role"
    assert sse_error_data(exc, "r")["field"] == "messages.0.role"
    assert openai_error_payload(exc, "r")["error"]["param"] == "messages.0.role"


def test_sse_error_data_has_type_error() -> None:
    data = sse_error_data(UpstreamConnectError("down"), "r")
    assert data["type"] == "error" and data["code"] == "upstream_unavailable"
    assert data["retryable"] is True


def test_upstream_client_errors_are_not_retryable() -> None:
    exc = UpstreamStatusError("model not found", upstream_status=404)
    assert error_payload(exc, "r")["error"]["retryable"] is False
    assert error_payload(exc, "r")["error"]["upstream_status"] == 404


@pytest.mark.parametrize(
    ("exc", "type_"),
    [
        (AuthenticationError("x"), "authentication_error"),
        (KeyLimitError("x"), "rate_limit_error"),
        (RequestValidationError("x"), "invalid_request_error"),
        (OverloadedError("x"), "server_error"),
    ],
)
def test_openai_error_types(exc: TrioAgentError, type_: str) -> None:
    err = openai_error_payload(exc, "r")["error"]
    assert err["type"] == type_ and err["code"] == exc.code and err["message"]


def test_http_exceptions_and_unknown_errors_are_translated() -> None:
    assert as_trio_agent_error(NotFound()).code == "not_found"
    not_allowed = as_trio_agent_error(MethodNotAllowed(valid_methods=["POST"]))
    assert isinstance(not_allowed, MethodNotAllowedError)
    assert error_headers(not_allowed) == [(b"allow", b"POST")]
    assert as_trio_agent_error(RequestEntityTooLarge()).code == "payload_too_large"
    bad = as_trio_agent_error(BadRequest())
    assert status_for(bad) == 400
    internal = as_trio_agent_error(RuntimeError("password=hunter2"))
    assert status_for(internal) == 500
    assert "hunter2" not in str(error_payload(internal, "r"))


def test_401_carries_www_authenticate() -> None:
    assert (b"www-authenticate", b'Bearer realm="trio_agent"') in error_headers(AuthenticationError("x"))
