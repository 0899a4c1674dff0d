"""One request's context: its id, the caller's key id, timing, status and outcome.

Every route fills in the same :class:`RequestContext`; the access log, the
response counters and every error body read it, so a request id or an
outcome means the same thing on every route.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

__all__ = ["CONTEXT_KEY", "Headers", "RequestContext", "read_head"]

Headers = list[tuple[bytes, bytes]]

# Where the front leaves the context in the ASGI scope for the Quart handlers.
CONTEXT_KEY = "trio_agent.request"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


class RequestContext:
    """What the gateway knows about one request; handlers fill in ``status`` and ``outcome``.

    ``status`` stays 0 until the response head is sent: a handler that raises
    while it is 0 gets its error rendered by the front, one that raises later
    has already chosen its terminal answer (an SSE ``error`` event).
    ``response_headers`` go out with every response of the request (the id,
    CORS).
    """

    __slots__ = (
        "key_id",
        "method",
        "outcome",
        "path",
        "request_id",
        "response_headers",
        "started_at",
        "status",
    )

    def __init__(
        self,
        *,
        method: str,
        path: str,
        started_at: float,
        request_id: str | None = None,
    ) -> None:
        self.request_id = request_id or uuid.uuid4().hex
        self.method = method
        self.path = path
        self.started_at = started_at
        self.key_id: str | None = None
        self.status = 0
        self.outcome: str | None = None
        self.response_headers: Headers = [(b"x-request-id", self.request_id.encode())]

    @classmethod
    def from_head(
        cls, method: str, path: str, headers: dict[bytes, bytes], *, started_at: float
    ) -> RequestContext:
        """The context of a request from its head: the client's ``X-Request-ID`` when valid."""
        rid = headers.get(b"x-request-id")
        request_id = rid.decode() if rid is not None and _REQUEST_ID.fullmatch(rid) else None
        return cls(method=method, path=path, started_at=started_at, request_id=request_id)

    @property
    def openai(self) -> bool:
        """The OpenAI-compatible routes answer errors in OpenAI's shape."""
        return self.path.startswith("/v1/")

    @property
    def responded(self) -> bool:
        return self.status != 0

    def __repr__(self) -> str:
        return f"<RequestContext {self.request_id} {self.method} {self.path} status={self.status}>"


def read_head(raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[dict[bytes, bytes], int]:
    """The request's headers by lower-cased name, and the head's size in bytes."""
    headers: dict[bytes, bytes] = {}
    size = 0
    for name, value in raw_headers:
        headers[name.lower()] = value
        size += len(name) + len(value) + 4
    return headers, size

