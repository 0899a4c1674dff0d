"""The gateway ASGI application: a thin front in front of a Quart-Trio app.

:class:`Gateway` is the ASGI callable. For every HTTP request it first does
what all routes share: assign the request id (``X-Request-ID``), answer CORS
preflights, check the API key (401 before any queue slot or upstream call),
and write one access-log line at the end. Then it routes:

* the streamed endpoints (``POST /chat/stream``, ``POST /v1/chat/completions``
  and ``POST /chat/batch`` with ``Accept: text/event-stream``) are served
  right here (see :mod:`._stream`): one nursery per request, writes bounded
  by ``write_timeout``, no Quart per-chunk overhead and no Quart response
  timeout;
* everything else goes to the Quart app: ``POST /chat``, ``POST /chat/batch``
  (JSON), ``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics``,
  ``/openapi.json`` (the OpenAPI 3.1 description, :mod:`._openapi`), and the
  JSON 404/405 answers.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.resources
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..concurrency import LoopLag
from ..config import ServerConfig
from ..errors import (
    AuthenticationError,
    PayloadTooLargeError,
    RequestError,
    TrioAgentError,
)
from ..llm import ChatBackend
from ._admission import Admission, Limits
from ._chat import complete, run_batch
from ._drain import Drain
from ._errors import (
    as_trio_agent_error,
    error_headers,
    error_payload,
    openai_error_payload,
    status_for,
)
from ._listen import ConnectionCounter, DrainingListener, quick_receive
from ._metrics import GatewayMetrics
from ._openapi import OPENAPI
from ._stream import (
    NativeFormat,
    OpenAIFormat,
    error_response,
    send_error,
    send_json,
    serve_batch_stream,
    serve_stream,
)
from ._validation import (
    check_content_type,
    decode_json,
    parse_batch_body,
    parse_chat_body,
    parse_openai_body,
)

__all__ = ["Gateway", "RequestInfo", "create_app"]

logger = logging.getLogger("trio_agent.server")
access_logger = logging.getLogger("trio_agent.access")

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_ROUTES = frozenset(
    {
        "/",
        "/chat",
        "/chat/stream",
        "/chat/batch",
        "/v1/chat/completions",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
)
# Probes, scrapes and the API description answer without an API key (they reveal no data).
_PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/openapi.json"})
_CORS_METHODS = b"GET, POST, OPTIONS"
_CORS_HEADERS = b"Authorization, Content-Type, Accept, X-Request-ID"
_CORS_EXPOSE = b"X-Request-ID, Retry-After"
INFO_KEY = "trio_agent.request"


class RequestInfo:
    """What the front knows about one request; handlers fill in status and outcome."""

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

    def __init__(self, *, request_id: str, method: str, path: str, started_at: float) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.started_at = started_at
        self.key_id: str | None = None
        self.status = 0
        self.outcome: str | None = None
        self.response_headers: Headers = [(b"x-request-id", request_id.encode())]

    def __repr__(self) -> str:
        return f"<RequestInfo {self.request_id} {self.method} {self.path} status={self.status}>"


class Gateway:
    """The gateway as an ASGI app; holds the backend, admission, drain switch and metrics.

    Build it with :func:`create_app`. App-lifetime resources (the backend and
    its connection pool) belong to whoever created them (``serve()``).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        backend: ChatBackend,
        limits: Limits | None = None,
        metrics: GatewayMetrics | None = None,
        loop_lag: LoopLag | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        # Measures the scheduler only while someone runs it (serve() does).
        self.loop_lag = loop_lag or LoopLag()
        self.limits: Limits = limits or Admission.from_config(config, loop_lag=self.loop_lag)
        self.metrics = metrics or GatewayMetrics()
        self.drain = Drain()
        # Set by the server that runs the app: closes the connection under an
        # ASGI ``send`` whose write stalled (see _stream._Responder.watchdog).
        self.abort_transport: Callable[[Send], bool] | None = None
        # The listeners serve() accepts through (see _listen.py), for statistics.
        self.listeners: list[DrainingListener] = []
        # The connections serve() serves (see _listen.LeanTCPServer), for statistics.
        self.connections = ConnectionCounter()
        self._key_digests = tuple(hashlib.sha256(k.encode()).digest() for k in config.api_keys)
        self._cors_any = "*" in config.cors_origins
        self._cors = frozenset(o.encode() for o in config.cors_origins if o != "*")
        self.quart = _build_quart(self)
        self._quart_asgi: Callable[[Scope, Receive, Send], Awaitable[None]] = cast(Any, self.quart)

    def __repr__(self) -> str:
        return f"<Gateway limits={self.limits!r} drain={self.drain!r}>"

    # -- the front ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._quart_asgi(scope, receive, send)
            return
        headers, header_bytes = _read_head(scope["headers"])
        path = scope["path"]
        info = self._open_request(scope["method"], path, headers)
        request_id = info.request_id
        scope[INFO_KEY] = info
        try:
            if header_bytes > self.config.max_header_bytes:
                # Hypercorn (h11) refuses a head over this size only while it is still
                # incomplete; one that arrived whole in a single read gets here.
                err = RequestError(
                    f"request headers larger than {self.config.max_header_bytes} bytes",
                    code="headers_too_large",
                )
                err.status_code = 431
                await send_error(send, err, info, openai=path.startswith("/v1/"))
                return
            await self._route(scope, receive, send, headers, info)
        except Exception:
            logger.exception("unhandled error (request_id=%s)", request_id)
            if info.status == 0:
                await send_json(
                    send,
                    500,
                    error_payload(TrioAgentError("internal server error"), request_id),
                    info,
                )
            info.outcome = "internal_error"
        finally:
            self._close_request(info)

    def _open_request(self, method: str, path: str, headers: dict[bytes, bytes]) -> RequestInfo:
        """The request's info: its id (the client's ``x-request-id`` if valid), CORS headers."""
        rid = headers.get(b"x-request-id")
        request_id = (
            rid.decode() if rid is not None and _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
        )
        info = RequestInfo(
            request_id=request_id, method=method, path=path, started_at=trio.current_time()
        )
        origin = headers.get(b"origin")
        if origin is not None and (self._cors or self._cors_any):
            info.response_headers.extend(self._cors_headers(origin))
        return info

    def _close_request(self, info: RequestInfo) -> None:
        """Count the response and write the access log line."""
        route = info.path if info.path in _ROUTES else "other"
        self.metrics.count_response(route, info.status)
        if self.config.access_log:
            self._access_log(info)

    def early_refusal(
        self, method: bytes, target: bytes, raw_headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, Headers, bytes] | None:
        """The whole 503/429 for a streamed chat request that admission refuses now, from its head.

        Called by the server (``LeanTCPServer``) before it would start the app for
        the request: under overload most requests are refusals, and without the
        app task, the ASGI messages and the body's parsing a refusal costs a
        fraction. ``None`` (the usual case) means: run the app. Only what the app
        would also answer with this refusal is answered here: a POST to
        ``/chat/stream`` or ``/v1/chat/completions`` with a ``Content-Length``
        body within ``max_body_bytes``, a head within ``max_header_bytes``, the
        right API key (auth on), the gateway not draining. The body is not read
        for it (the server drops it). Counted and logged as the app would.
        """
        if method != b"POST" or self.drain.draining:
            return None
        path = target.partition(b"?")[0]
        if path == b"/chat/stream":
            openai = False
        elif path == b"/v1/chat/completions":
            openai = True
        else:
            return None
        headers, header_bytes = _read_head(raw_headers)
        length = headers.get(b"content-length")
        if (
            header_bytes > self.config.max_header_bytes
            or length is None
            or not length.isdigit()
            or int(length) > self.config.max_body_bytes
        ):
            return None
        try:
            key_id = self._authenticate(headers)
        except AuthenticationError:
            return None
        refusal = self.limits.refuse_nowait(key_id)
        if refusal is None:
            return None
        info = self._open_request("POST", path.decode(), headers)
        info.key_id = key_id
        answer = error_response(refusal, info, openai=openai)
        self._close_request(info)
        return answer

    def _cors_headers(self, origin: bytes) -> Headers:
        if self._cors_any:
            return [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", _CORS_EXPOSE)]
        if origin in self._cors:
            return [
                (b"access-control-allow-origin", origin),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers", _CORS_EXPOSE),
            ]
        return []

    def _authenticate(self, headers: dict[bytes, bytes]) -> str | None:
        """The key's id (a hash prefix, safe to log), or None when auth is off; 401 if wrong."""
        if not self._key_digests:
            return None
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
        digest = hashlib.sha256(token).digest()
        ok = False
        for known in self._key_digests:  # no early exit: constant time over all keys
            ok |= hmac.compare_digest(digest, known)
        if not ok:
            raise AuthenticationError("invalid API key")
        return digest.hex()[:16]

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], info: RequestInfo
    ) -> None:
        method, path = info.method, info.path
        openai = path.startswith("/v1/")
        if method == "OPTIONS" and b"access-control-request-method" in headers and (
            self._cors or self._cors_any
        ):
            info.status = 204
            info.outcome = "preflight"
            extra: Headers = []
            if any(name == b"access-control-allow-origin" for name, _ in info.response_headers):
                extra = [
                    (b"access-control-allow-methods", _CORS_METHODS),
                    (b"access-control-allow-headers", _CORS_HEADERS),
                    (b"access-control-max-age", b"600"),
                ]
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [*info.response_headers, *extra],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if path not in _PUBLIC_PATHS:
            try:
                info.key_id = self._authenticate(headers)
            except AuthenticationError as exc:
                await send_error(send, exc, info, openai=openai)
                return
        if method == "POST":
            if path == "/chat/stream":
                await self._chat_stream(scope, receive, send, headers, info)
                return
            if path == "/v1/chat/completions":
                await self._openai_chat(scope, receive, send, headers, info)
                return
            if path == "/chat/batch" and b"text/event-stream" in headers.get(b"accept", b""):
                await self._batch_stream(scope, receive, send, headers, info)
                return
        await self._quart_asgi(scope, receive, self._quart_send(send, info))

    def _quart_send(self, send: Send, info: RequestInfo) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = int(message["status"])
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), *info.response_headers],
                }
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # The last body message makes Hypercorn recycle the connection and
                # start its keep-alive timer, and also makes it send http.disconnect
                # to the app, on which quart-trio cancels this very send. Cancelled
                # half-way, the keep-alive timer never starts: the idle connection
                # would then outlive keep_alive_timeout and hold up a graceful
                # shutdown until graceful_timeout. Hypercorn shields the socket
                # write itself, so shielding here adds no new way to block.
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        return wrapped

    async def _read_json(
        self, receive: Receive, headers: dict[bytes, bytes]
    ) -> tuple[bool, Any]:
        """(client still there, parsed body). Raises 400/413 errors."""
        check_content_type(headers.get(b"content-type", b"").decode("latin-1"))
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body larger than {limit} bytes", limit=limit)
        body = bytearray()
        # What the server has already received is taken without yielding: under load each
        # yield is a whole scheduler pass before the request is even admitted.
        take = quick_receive(receive)
        # A client that dribbles its body gets the request deadline too (408).
        with trio.move_on_after(self.config.request_timeout) as scope:
            while True:
                message = await take()
                if message["type"] == "http.disconnect":
                    return False, None
                if message["type"] != "http.request":
                    continue
                body += message.get("body", b"")
                if len(body) > limit:
                    raise PayloadTooLargeError(f"request body larger than {limit} bytes", limit=limit)
                if not message.get("more_body", False):
                    break
        if scope.cancelled_caught:
            err = RequestError("request body not received within request_timeout", code="body_timeout")
            err.status_code = 408
            raise err
        return True, decode_json(bytes(body))

    async def _chat_stream(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], info: RequestInfo
    ) -> None:
        try:
            present, body = await self._read_json(receive, headers)
            if not present:
                info.outcome = "disconnect"
                return
            chat = parse_chat_body(body, self.config)
        except TrioAgentError as exc:
            await send_error(send, exc, info, openai=False)
            return
        await serve_stream(self, info, receive, send, chat, NativeFormat(info.request_id))

    async def _openai_chat(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], info: RequestInfo
    ) -> None:
        try:
            present, body = await self._read_json(receive, headers)
            if not present:
                info.outcome = "disconnect"
                return
            parsed = parse_openai_body(body, self.config)
        except TrioAgentError as exc:
            await send_error(send, exc, info, openai=True)
            return
        model = parsed.request.model or self.backend.model
        if parsed.stream:
            fmt = OpenAIFormat(info.request_id, model, include_usage=parsed.include_usage)
            await serve_stream(self, info, receive, send, parsed.request, fmt)
            return
        try:
            result = await complete(self, parsed.request, info)
        except TrioAgentError as exc:
            await send_error(send, exc, info, openai=True)
            return
        info.outcome = "done"
        fmt_body = {
            "id": f"chatcmpl-{info.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.content},
                    "finish_reason": result.finish_reason or "stop",
                }
            ],
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "total_tokens": result.usage.total_tokens,
            },
        }
        await send_json(send, 200, fmt_body, info)

    async def _batch_stream(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], info: RequestInfo
    ) -> None:
        try:
            present, body = await self._read_json(receive, headers)
            if not present:
                info.outcome = "disconnect"
                return
            batch = parse_batch_body(body, self.config)
        except TrioAgentError as exc:
            await send_error(send, exc, info, openai=False)
            return
        await serve_batch_stream(self, info, receive, send, batch.requests)

    def _access_log(self, info: RequestInfo) -> None:
        duration_ms = (trio.current_time() - info.started_at) * 1000.0
        outcome = info.outcome or ("ok" if 0 < info.status < 400 else "error")
        access_logger.info(
            orjson.dumps(
                {
                    "request_id": info.request_id,
                    "method": info.method,
                    "path": info.path,
                    "status": info.status,
                    "duration_ms": round(duration_ms, 3),
                    "outcome": outcome,
                    "key_id": info.key_id,
                }
            ).decode()
        )


def _read_head(raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[dict[bytes, bytes], int]:
    """The request's headers by lower-cased name, and the head's size in bytes."""
    headers: dict[bytes, bytes] = {}
    size = 0
    for name, value in raw_headers:
        headers[name.lower()] = value
        size += len(name) + len(value) + 4
    return headers, size


# -- the Quart side ------------------------------------------------------------------------


def _json_response(
    body: Any, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = ()
) -> Response:
    response = Response(orjson.dumps(body), status=status, content_type="application/json")
    for name, value in headers:
        response.headers[name.decode()] = value.decode()
    return response


def _info() -> RequestInfo:
    scope = cast(dict[str, Any], request.scope)
    info = scope.get(INFO_KEY)
    if isinstance(info, RequestInfo):
        return info
    # Reached only when the Quart app is called without the Gateway front (tests).
    info = RequestInfo(
        request_id=uuid.uuid4().hex,
        method=request.method,
        path=request.path,
        started_at=trio.current_time(),
    )
    scope[INFO_KEY] = info
    return info


async def _json_body() -> Any:
    check_content_type(request.headers.get("content-type"))
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    return decode_json(raw)


def _build_quart(gw: Gateway) -> QuartTrio:
    app = QuartTrio("trio_agent")
    app.config["MAX_CONTENT_LENGTH"] = gw.config.max_body_bytes
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = gw.config.request_timeout

    def error_response(exc: TrioAgentError) -> Response:
        info = _info()
        info.outcome = exc.code
        if request.path.startswith("/v1/"):
            body = openai_error_payload(exc, info.request_id)
        else:
            body = error_payload(exc, info.request_id)
        return _json_response(body, status_for(exc), error_headers(exc))

    @app.errorhandler(TrioAgentError)
    async def _our_error(exc: TrioAgentError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        return error_response(as_trio_agent_error(exc))

    @app.errorhandler(Exception)
    async def _any_error(exc: Exception) -> Response:
        logger.error("unhandled error (request_id=%s)", _info().request_id, exc_info=exc)
        return error_response(as_trio_agent_error(exc))

    @app.post("/chat")
    async def chat() -> Response:
        req = parse_chat_body(await _json_body(), gw.config)
        info = _info()
        try:
            result = await complete(gw, req, info)
        except trio.Cancelled:
            gw.metrics.disconnects += 1
            info.outcome = "disconnect"
            raise
        info.outcome = "done"
        return _json_response(result.payload())

    @app.post("/chat/batch")
    async def chat_batch() -> Response:
        batch = parse_batch_body(await _json_body(), gw.config)
        info = _info()
        results = await run_batch(gw, batch.requests, info)
        info.outcome = "done"
        return _json_response({"request_id": info.request_id, "results": results})

    @app.post("/chat/stream")
    async def chat_stream() -> Response:  # the Gateway front serves POST; this gives GET a 405
        raise TrioAgentError("streaming is served by the gateway front")

    @app.post("/v1/chat/completions")
    async def openai_chat() -> Response:  # as above
        raise TrioAgentError("streaming is served by the gateway front")

    @app.get("/v1/models")
    async def openai_models() -> Response:
        models = await gw.backend.list_models()
        return _json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "trio_agent"}
                    for m in models
                ],
            }
        )

    @app.get("/")
    async def chat_page() -> Response:
        return Response(
            _chat_page(),
            content_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json_response({"status": "ok"})

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return _json_response(OPENAPI)

    @app.get("/readyz")
    async def readyz() -> Response:
        if gw.drain.draining:
            return _json_response({"status": "shutting_down"}, 503)
        status = getattr(gw.limits, "status", None)
        limits = status() if callable(status) else None
        if limits is not None and not getattr(gw.limits, "ready", True):
            return _json_response({"status": "limits_unavailable", "limits": limits}, 503)
        return _json_response({"status": "ready", **({"limits": limits} if limits else {})})

    @app.get("/metrics")
    async def metrics() -> Response:
        stats_fn = getattr(gw.backend, "statistics", None)
        backend_stats = stats_fn() if callable(stats_fn) else None
        limits_status_fn = getattr(gw.limits, "status", None)
        text = gw.metrics.render(
            gw.limits.statistics(),
            draining=gw.drain.draining,
            backend_statistics=backend_stats,
            limits_status=limits_status_fn() if callable(limits_status_fn) else None,
            loop_lag=gw.loop_lag.statistics(),
            connections=gw.connections,
        )
        return Response(text, content_type="text/plain; version=0.0.4; charset=utf-8")

    return app


@functools.cache
def _chat_page() -> bytes:
    """The one-file chat page (trio_agent/web/chat.html), read once."""
    return importlib.resources.files("trio_agent.web").joinpath("chat.html").read_bytes()


def create_app(
    config: ServerConfig,
    *,
    backend: ChatBackend,
    limits: Limits | None = None,
    metrics: GatewayMetrics | None = None,
    loop_lag: LoopLag | None = None,
) -> Gateway:
    """Build the gateway ASGI app around an open ``backend``.

    ``limits`` defaults to an in-process :class:`Admission` sized from
    ``config``; pass another :class:`Limits` (for example one shared across
    processes) to replace it. The caller owns the backend's lifetime.
    """
    return Gateway(config, backend=backend, limits=limits, metrics=metrics, loop_lag=loop_lag)
