"""Reading a request's JSON body, below Quart and under it, with the same limits and errors."""

from __future__ import annotations

from typing import Any

import trio
from quart import request

from ..errors import PayloadTooLargeError, RequestError
from ..http import quick_receive
from ._router import Call
from ._validation import check_content_type, decode_json

__all__ = ["BodyReader", "view_json_body"]


class BodyReader:
    """Reads a whole JSON body from ASGI messages: 400 (type, JSON), 413 (size), 408 (too slow)."""

    __slots__ = ("_limit", "_timeout")

    def __init__(self, *, max_body_bytes: int, request_timeout: float) -> None:
        self._limit = max_body_bytes
        self._timeout = request_timeout

    async def read_json(self, call: Call) -> tuple[bool, Any]:
        """(client still there, parsed body)."""
        present, raw = await self.read_bytes(call)
        return (True, decode_json(raw)) if present else (False, None)

    async def read_bytes(self, call: Call) -> tuple[bool, bytes]:
        """(client still there, the body's bytes), after the same checks (type, size, time)."""
        headers = call.headers
        check_content_type(headers.get(b"content-type", b"").decode("latin-1"))
        limit = self._limit
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body larger than {limit} bytes", limit=limit)
        body = bytearray()
        # What the server has already received is taken without yielding: under load each
        # yield is a whole scheduler pass before the request is even admitted.
        take = quick_receive(call.receive)
        # A client that dribbles its body gets the request deadline too (408).
        with trio.move_on_after(self._timeout) as scope:
            while True:
                message = await take()
                if message["type"] == "http.disconnect":
                    return False, b""
                if message["type"] != "http.request":
                    continue
                body += message.get("body", b"")
                if len(body) > limit:
                    raise PayloadTooLargeError(f"request body larger than {limit} bytes", limit=limit)
                if not message.get("more_body", False):
                    break
        if scope.cancelled_caught:
            raise RequestError(
                "request body not received within request_timeout",
                code="body_timeout",
                status_code=408,
            )
        return True, bytes(body)


async def view_json_body() -> Any:
    """The JSON body of the request a Quart view is serving (Quart enforces size and time)."""
    check_content_type(request.headers.get("content-type"))
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    return decode_json(raw)
