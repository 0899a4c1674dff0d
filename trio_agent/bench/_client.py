"""The one-request clients: send one request, fill in its :class:`RequestTrace`.

:class:`HTTPStreamClient` is the load client. It is deliberately lean, because
the generator must cost far less per event than the server it measures: a
trio socket (read with ``wait_readable`` + one ``recv``), request bytes built once, the incremental
:class:`~trio_agent.bench._http.ResponseParser` for the status line, headers
and chunked framing, then :class:`~trio_agent.sse.SSEDecoder`. Token events
are not JSON-decoded (their arrival time is what matters; the token count
comes from the terminal event's usage). Idle keep-alive connections are
reused; a reused connection that the server closed while idle is retried
once on a fresh one, as every HTTP client does.

:class:`BackendClient` drives any :class:`~trio_agent.llm.ChatBackend`
in-process (no sockets): with :class:`~trio_agent.llm.MockLLM` on trio's
virtual clock it gives exact, deterministic figures to test the load
generator against.

Both implement :class:`RequestClient`. A client only sees the protocol: it
sets ``ok``, ``shed``, ``http_error``, ``upstream_error``,
``protocol_error`` or ``connect_error``. Deadlines and cancellation belong to
the runner, which wraps each call in its own cancel scopes.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import trio

from ..errors import SSEError, TrioAgentError
from ..llm import ChatBackend, ChatRequest
from ..sse import ServerSentEvent, SSEDecoder
from ._http import HTTPProtocolError, ResponseHead, ResponseParser, build_request
from ._records import Outcome, RequestTrace

__all__ = [
    "API_NAMES",
    "BackendClient",
    "HTTPClientStatistics",
    "HTTPStreamClient",
    "RequestClient",
]

API_NAMES = ("trio-agent", "openai")

_RECEIVE_BYTES = 65536
_MAX_ERROR_BODY = 64 * 1024


class RequestClient(Protocol):
    """Sends one request and records what happened in ``trace``.

    ``run`` sets ``trace.sent_at`` first, then times and counts as they
    happen, and ``trace.outcome`` when the request ends by itself. It returns
    normally for every protocol-level failure; it lets ``trio.Cancelled``
    through (the runner records timeouts and cancellations).
    """

    async def run(self, trace: RequestTrace) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class HTTPClientStatistics:
    """Connections of an :class:`HTTPStreamClient`: in use and idle now, opened and reused so far."""

    in_use: int
    idle: int
    connects: int
    reuses: int


class _Stale(Exception):
    """A reused keep-alive connection was closed by the server before answering."""


def _error_fields(body: bytes) -> tuple[str | None, str]:
    """(code, message) from a JSON error body, best effort."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, body[:200].decode("utf-8", "replace")
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            code = err.get("code") or err.get("type")
            message = err.get("message") or err.get("detail") or ""
            return (str(code) if code is not None else None), str(message)
        return None, str(err)
    return None, str(obj)


class _TrioAgentAPI:
    """``POST /chat/stream`` with ``{"question": ...}``: events thinking, token, done | error."""

    path = "/chat/stream"

    @staticmethod
    def body(question: str, max_tokens: int | None, model: str | None) -> bytes:
        obj: dict[str, object] = {"question": question}
        if max_tokens is not None:
            obj["max_tokens"] = max_tokens
        if model is not None:
            obj["model"] = model
        return orjson.dumps(obj)

    @staticmethod
    def on_event(event: ServerSentEvent, trace: RequestTrace, now: float) -> bool:
        kind = event.event
        if kind == "message":
            # No `event:` line: the type is only in the payload.
            try:
                obj = orjson.loads(event.data)
                kind = str(obj.get("type", "message")) if isinstance(obj, dict) else "message"
            except orjson.JSONDecodeError:
                kind = "message"
        if kind == "token":
            if trace.first_token_at is None:
                trace.first_token_at = now
            trace.token_times.append(now)
            return False
        if kind == "done":
            try:
                usage = orjson.loads(event.data).get("usage") or {}
                tokens = usage.get("completion_tokens")
            except (orjson.JSONDecodeError, AttributeError):
                tokens = None
            if isinstance(tokens, int):
                trace.output_tokens = tokens
            trace.outcome = Outcome.OK
            trace.end_at = now
            return True
        if kind == "error":
            code, message = _error_fields(event.data.encode())
            trace.fail(Outcome.UPSTREAM_ERROR, message, error_code=code)
            trace.end_at = now
            return True
        return False


class _OpenAIAPI:
    """``POST /v1/chat/completions`` with ``stream: true``: chunks, then ``data: [DONE]``."""

    path = "/v1/chat/completions"

    @staticmethod
    def body(question: str, max_tokens: int | None, model: str | None) -> bytes:
        obj: dict[str, object] = {
            "model": model or "mock-llm",
            "messages": [{"role": "user", "content": question}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if max_tokens is not None:
            obj["max_tokens"] = max_tokens
        return orjson.dumps(obj)

    @staticmethod
    def on_event(event: ServerSentEvent, trace: RequestTrace, now: float) -> bool:
        data = event.data
        if data == "[DONE]":
            if trace.outcome is None:
                trace.outcome = Outcome.OK
                trace.end_at = now
            return True
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            trace.fail(Outcome.PROTOCOL_ERROR, f"chunk is not JSON: {data[:80]!r}")
            return True
        if not isinstance(obj, dict):
            trace.fail(Outcome.PROTOCOL_ERROR, f"chunk is not an object: {data[:80]!r}")
            return True
        if "error" in obj:
            code, message = _error_fields(data.encode())
            trace.fail(Outcome.UPSTREAM_ERROR, message, error_code=code)
            trace.end_at = now
            return True
        choices = obj.get("choices")
        if choices:
            delta = choices[0].get("delta") or {}
            if delta.get("content") or delta.get("tool_calls"):  # a tool-call piece is output too
                if trace.first_token_at is None:
                    trace.first_token_at = now
                trace.token_times.append(now)
        usage = obj.get("usage")
        if usage and isinstance(usage.get("completion_tokens"), int):
            trace.output_tokens = usage["completion_tokens"]
        return False


_APIS: dict[str, type[_TrioAgentAPI] | type[_OpenAIAPI]] = {
    "trio-agent": _TrioAgentAPI,
    "openai": _OpenAIAPI,
}


class _Connection:
    """One keep-alive connection: a trio stream, and for TCP the socket it reads from directly.

    Reading a TCP socket waits for readability first and then calls ``recv``
    once (``trio.lowlevel.wait_readable``), instead of the try-``recv``-first
    of ``SocketStream.receive_some``, which fails with ``EAGAIN`` on almost
    every read of a stream that arrives event by event: a quarter less
    client CPU per event at low load. Writes and closing go through the trio
    stream.
    """

    __slots__ = ("raw", "stream")

    def __init__(self, stream: trio.abc.Stream, raw: socket.socket | None = None) -> None:
        self.stream = stream
        self.raw = raw

    async def receive(self) -> bytes:
        raw = self.raw
        if raw is None:
            data = await self.stream.receive_some(_RECEIVE_BYTES)
            return data if type(data) is bytes else bytes(data)
        while True:
            await trio.lowlevel.wait_readable(raw)
            try:
                return raw.recv(_RECEIVE_BYTES)
            except BlockingIOError:
                continue

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class HTTPStreamClient:
    """The lean HTTP/1.1 + SSE load client for one server (see the module docstring).

    ``url`` is the server's base URL (``http://host:port``, optionally with a
    path prefix); ``api`` picks the endpoint and event dialect:
    ``"trio-agent"`` (``/chat/stream``) or ``"openai"``
    (``/v1/chat/completions``); ``extra_body``, a JSON object, is merged into
    every request's body. With ``keepalive`` false every request opens
    its own connection and asks the server to close it. At most
    ``max_idle_connections`` idle connections are kept. ``connect``, if
    given, opens a connection instead of TCP to the URL's host and port (tests
    pass in-memory streams).
    """

    def __init__(
        self,
        url: str,
        *,
        api: str = "trio-agent",
        question: str = "Hello",
        max_tokens: int | None = None,
        model: str | None = None,
        extra_body: str = "",
        keepalive: bool = True,
        max_idle_connections: int = 1024,
        connect: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url must be http://host[:port][/prefix], got {url!r}")
        if api not in _APIS:
            raise ValueError(f"api must be one of {API_NAMES}, got {api!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._api = _APIS[api]
        host_header = parts.netloc
        path = parts.path.rstrip("/") + self._api.path
        body = self._api.body(question, max_tokens, model)
        if extra_body:  # a JSON object merged into the body (e.g. tools), built once
            body = orjson.dumps({**orjson.loads(body), **orjson.loads(extra_body)})
        self._request = build_request("POST", host_header, path, body, keepalive=keepalive)
        self._keepalive = keepalive
        self._max_idle = max_idle_connections
        self._connect_stream = connect
        self._address: tuple[Any, ...] | None = None
        self._idle: list[_Connection] = []
        self._connects = 0
        self._reuses = 0
        self._in_use = 0

    def __repr__(self) -> str:
        return (
            f"<HTTPStreamClient {self._host}:{self._port}{self._api.path} in_use={self._in_use} "
            f"idle={len(self._idle)} connects={self._connects} reuses={self._reuses}>"
        )

    def statistics(self) -> HTTPClientStatistics:
        """Connections in use and idle now; connections opened and reused so far."""
        return HTTPClientStatistics(
            in_use=self._in_use, idle=len(self._idle), connects=self._connects, reuses=self._reuses
        )

    async def _open_tcp(self) -> _Connection:
        """Connect to the URL's host; its first address, resolved once (one benchmark target)."""
        if self._address is None:
            infos = await trio.socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"no address for {self._host!r}")
            self._address = infos[0]
        family, kind, proto, _, address = self._address
        raw = socket.socket(family, kind, proto)
        try:
            sock = trio.socket.from_stdlib_socket(raw)
            await sock.connect(address)
            return _Connection(trio.SocketStream(sock), raw)
        except BaseException:
            raw.close()
            raise

    async def aclose(self) -> None:
        """Close the idle keep-alive connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()

    async def run(self, trace: RequestTrace) -> None:
        trace.sent_at = trio.current_time()
        if self._idle:
            conn = self._idle.pop()
            self._reuses += 1
            try:
                await self._exchange(conn, trace, reused=True)
                return
            except _Stale:
                pass
        try:
            if self._connect_stream is not None:
                conn = _Connection(await self._connect_stream())
            else:
                conn = await self._open_tcp()
        except OSError as exc:
            trace.fail(Outcome.CONNECT_ERROR, f"{type(exc).__name__}: {exc}")
            return
        self._connects += 1
        try:
            await self._exchange(conn, trace, reused=False)
        except _Stale:  # pragma: no cover - only raised for reused connections
            trace.fail(Outcome.CONNECT_ERROR, "connection closed before the response")

    async def _exchange(self, conn: _Connection, trace: RequestTrace, *, reused: bool) -> None:
        keep = False
        self._in_use += 1
        try:
            keep = await self._exchange_on(conn, trace, reused=reused)
        finally:
            self._in_use -= 1
            if keep and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                await conn.aclose()

    async def _exchange_on(self, conn: _Connection, trace: RequestTrace, *, reused: bool) -> bool:
        """One request/response on ``conn``; True if the connection may be reused."""
        try:
            await conn.stream.send_all(self._request)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if reused:
                raise _Stale from exc
            trace.fail(Outcome.CONNECT_ERROR, f"send failed: {exc!r}")
            return False
        parser = ResponseParser()
        head: ResponseHead | None = None
        decoder: SSEDecoder | None = None
        error_body: list[bytes] = []
        error_bytes = 0
        terminal = False
        on_event = self._api.on_event
        while not parser.complete:
            try:
                data = await conn.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                if reused and trace.first_byte_at is None:
                    raise _Stale from exc
                trace.fail(Outcome.PROTOCOL_ERROR, f"connection broken mid-response: {exc!r}")
                return False
            now = trio.current_time()
            if not data:
                if reused and trace.first_byte_at is None:
                    raise _Stale
                try:
                    parser.feed_eof()
                except HTTPProtocolError as exc:
                    trace.fail(Outcome.PROTOCOL_ERROR, str(exc))
                    return False
                break
            if trace.first_byte_at is None:
                trace.first_byte_at = now
            try:
                pieces = parser.feed(data)
            except HTTPProtocolError as exc:
                trace.fail(Outcome.PROTOCOL_ERROR, str(exc))
                return False
            if head is None:
                head = parser.head
                if head is None:
                    continue
                trace.status_code = head.status_code
                if head.status_code == 200:
                    ctype = head.headers.get("content-type", "")
                    if not ctype.startswith("text/event-stream"):
                        trace.fail(Outcome.PROTOCOL_ERROR, f"content-type {ctype!r} is not SSE")
                        return False
                    decoder = SSEDecoder()
            if decoder is not None:
                if not pieces:
                    continue
                # One decoder call per read, however many chunks it held.
                try:
                    events = decoder.feed(pieces[0] if len(pieces) == 1 else b"".join(pieces))
                except SSEError as exc:
                    trace.fail(Outcome.PROTOCOL_ERROR, str(exc))
                    return False
                if events:
                    trace.sse_events += len(events)
                    if trace.first_event_at is None:
                        trace.first_event_at = now
                    for event in events:
                        if not terminal:
                            terminal = on_event(event, trace, now)
            else:
                for piece in pieces:
                    if error_bytes < _MAX_ERROR_BODY:
                        error_body.append(piece)
                        error_bytes += len(piece)
        assert head is not None  # the loop ends only once the head is in
        if decoder is not None:
            decoder.close()
            if not terminal:
                trace.fail(Outcome.PROTOCOL_ERROR, "stream ended without a terminal event")
                return False
        else:
            self._record_error_status(trace, head, b"".join(error_body))
        return self._keepalive and parser.complete and head.keep_alive

    @staticmethod
    def _record_error_status(trace: RequestTrace, head: ResponseHead, body: bytes) -> None:
        code, message = _error_fields(body)
        status = head.status_code
        if status in (429, 503):
            raw = head.headers.get("retry-after")
            if raw is not None:
                try:
                    retry_after = float(raw)
                    trace.retry_after = retry_after if math.isfinite(retry_after) else None
                except ValueError:
                    pass
            trace.fail(Outcome.SHED, message or f"HTTP {status}", error_code=code)
        else:
            trace.fail(Outcome.HTTP_ERROR, message or f"HTTP {status}", error_code=code)


class BackendClient:
    """Runs each request against a :class:`~trio_agent.llm.ChatBackend` in-process.

    Every chunk counts as one event; a chunk with text as a token event; the
    last chunk's usage gives the token count. An
    :class:`~trio_agent.errors.TrioAgentError` from the backend is an
    ``upstream_error`` carrying its ``code``.
    """

    def __init__(self, backend: ChatBackend, request: ChatRequest) -> None:
        self._backend = backend
        self._request = request

    def __repr__(self) -> str:
        return f"<BackendClient backend={self._backend!r}>"

    async def aclose(self) -> None:
        """Nothing to close: the backend belongs to the caller."""

    async def run(self, trace: RequestTrace) -> None:
        trace.sent_at = trio.current_time()
        try:
            async with self._backend.stream_chat(self._request) as chunks:
                async for chunk in chunks:
                    now = trio.current_time()
                    trace.sse_events += 1
                    if trace.first_byte_at is None:
                        trace.first_byte_at = trace.first_event_at = now
                    if chunk.delta:
                        if trace.first_token_at is None:
                            trace.first_token_at = now
                        trace.token_times.append(now)
                    if chunk.usage is not None:
                        trace.output_tokens = chunk.usage.completion_tokens
        except TrioAgentError as exc:
            trace.fail(Outcome.UPSTREAM_ERROR, str(exc), error_code=exc.code)
            return
        trace.outcome = Outcome.OK
        trace.end_at = trio.current_time()
