"""The gateway ASGI app: the front every request passes, and the router table.

:class:`Gateway` builds the collaborators (each with one job) and is the ASGI
callable. For every HTTP request the front does what all routes share, in
this order: open the :class:`~._context.RequestContext` (request id, CORS
headers), refuse a head over ``max_header_bytes`` (431), answer a CORS
preflight, check the API key (401 before any queue slot or upstream call;
public routes excepted), find the route (JSON 404/405), run the handler, and
at the end count the response and write the access-log line. Any error a
handler raises before its response head is rendered here, by the one error
renderer (:mod:`._errors`).

The routes (:func:`routes`) are served below Quart when streamed (one nursery
per request, no per-chunk framework layer, see :mod:`._stream`) and by the
Quart-Trio app otherwise.

To add a route: one entry in :func:`routes` and one handler factory in a
``_routes_*`` module (``asgi_route`` for a handler that writes its own
response, ``view_route`` for one that returns a Quart response).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import trio

from ..agent import Agent
from ..concurrency import LoopLag
from ..config import ServerConfig
from ..errors import AuthenticationError, RequestError, TrioAgentError
from ..http import ConnectionCounter, DrainingListener
from ..llm import ChatBackend, upstream_unavailable
from ..tracing import current_tracer
from . import _routes_agent as agent_routes
from . import _routes_chat as chat_routes
from . import _routes_info as info_routes
from . import _routes_openai as openai_routes
from ._access import AccessLog
from ._admission import Admission, Limits
from ._agent import AgentService, plain_agent
from ._auth import ApiKeys, Cors
from ._body import BodyReader
from ._chat import ChatService
from ._context import CONTEXT_KEY, Headers, RequestContext, read_head
from ._drain import Drain
from ._errors import error_response, internal_error, send_error
from ._metrics import GatewayMetrics
from ._quart import build_quart
from ._relay import RelayService
from ._router import Call, Route, Router, asgi_route, view_route
from ._stream import StreamService

if TYPE_CHECKING:
    from ..tracing._tracer import GatewayTracer, TraceSpan

__all__ = ["Gateway", "create_app", "routes"]

logger = logging.getLogger("trio_agent.server")

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SSE = b"text/event-stream"
#: The OpenAI routes relayed as bytes (``backend.open_relay``), below ``/v1``.
RELAYED_PATHS = ("/embeddings", "/completions", "/responses")
# The routes whose refusal the server may answer from the request head (see early_refusal).
_EARLY_REFUSAL_PATHS = frozenset(
    {b"/chat/stream", b"/v1/chat/completions", *(b"/v1" + p.encode() for p in RELAYED_PATHS)}
)


def routes(gw: Gateway) -> list[Route]:
    """The router table: every route the gateway answers, and who serves it."""
    body = BodyReader(
        max_body_bytes=gw.config.max_body_bytes, request_timeout=gw.config.request_timeout
    )
    cfg = gw.config
    return [
        asgi_route("POST", "/chat/stream", chat_routes.chat_stream(body, gw.streams, cfg)),
        asgi_route(
            "POST",
            "/v1/chat/completions",
            openai_routes.openai_chat(body, gw.streams, gw.chat, gw.backend, cfg),
        ),
        *(
            asgi_route("POST", f"/v1{path}", openai_routes.relay(path, body, gw.relays, gw.backend, cfg))
            for path in RELAYED_PATHS
        ),
        asgi_route(
            "POST",
            "/chat/batch",
            chat_routes.chat_batch_stream(body, gw.streams, cfg),
            accept=_SSE,
        ),
        view_route("POST", "/chat/batch", chat_routes.chat_batch(gw.chat, cfg)),
        view_route("POST", "/chat", chat_routes.chat(gw.chat, gw.metrics, cfg)),
        asgi_route("POST", "/agent/stream", agent_routes.agent_stream(body, gw.agents, cfg)),
        asgi_route("POST", "/agent", agent_routes.agent_json(body, gw.agents, cfg)),
        view_route("GET", "/v1/models", info_routes.models(gw.backend)),
        view_route("GET", "/", info_routes.chat_page(), public=True),
        view_route("GET", "/healthz", info_routes.healthz(), public=True),
        view_route(
            "GET",
            "/readyz",
            info_routes.readyz(
                gw.drain,
                gw.limits,
                gw.agents,
                upstreams=gw.backend if cfg.ready_requires_upstream else None,
            ),
            public=True,
        ),
        view_route(
            "GET",
            "/metrics",
            info_routes.metrics(
                gw.metrics, gw.limits, gw.drain, gw.backend, gw.loop_lag, gw.connections, gw.agents
            ),
            public=True,
        ),
        view_route("GET", "/openapi.json", info_routes.openapi(gw.agents), public=True),
    ]


class Gateway:
    """The gateway as an ASGI app: the front, over the router table's handlers.

    Build it with :func:`create_app`. App-lifetime resources (the backend and
    its connection pool) belong to whoever created them (``serve()``). The
    public attributes are the collaborators, for the server that runs the
    app and for statistics: ``limits``, ``drain``, ``metrics``, ``backend``,
    ``loop_lag``, ``connections``, ``listeners``.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        backend: ChatBackend,
        limits: Limits | None = None,
        metrics: GatewayMetrics | None = None,
        loop_lag: LoopLag | None = None,
        agent: Agent | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        # Measures the scheduler only while someone runs it (serve() does).
        self.loop_lag = loop_lag or LoopLag()
        self.limits: Limits = limits or Admission.from_config(config, loop_lag=self.loop_lag)
        self.metrics = metrics or GatewayMetrics()
        self.drain = Drain()
        # The listeners serve() accepts through (trio_agent.http.DrainingListener), for statistics.
        self.listeners: list[DrainingListener] = []
        # The connections serve() serves (trio_agent.http.LeanTCPServer), for statistics.
        self.connections = ConnectionCounter()
        self.chat = ChatService(
            backend=backend,
            limits=self.limits,
            metrics=self.metrics,
            drain=self.drain,
            request_timeout=config.request_timeout,
            batch_concurrency=config.batch_concurrency,
        )
        self.streams = StreamService(
            config=config,
            backend=backend,
            limits=self.limits,
            metrics=self.metrics,
            drain=self.drain,
            chat=self.chat,
        )
        self.relays = RelayService(self.streams, backend)
        # The agent the /agent routes run (serve() opens it, MCP sessions and all, in its
        # lifespan); an app built without one gets the configured Python tools only.
        self.agents = AgentService(
            config=config,
            agent=agent if agent is not None else plain_agent(config, backend),
            limits=self.limits,
            drain=self.drain,
            streams=self.streams,
            metrics=self.metrics,
        )
        self.router = Router(routes(self))
        self._keys = ApiKeys(config.api_keys)
        self._cors = Cors(config.cors_origins)
        self._access = AccessLog(self.metrics, self.router.paths, enabled=config.access_log)
        self.quart = build_quart(
            self.router,
            max_body_bytes=config.max_body_bytes,
            body_timeout=config.request_timeout,
        )
        self._quart_asgi: Callable[[Scope, Receive, Send], Awaitable[None]] = cast(Any, self.quart)

    @property
    def abort_transport(self) -> Callable[[Send], bool] | None:
        """Set by the server that runs the app: closes the connection under a stalled ``send``."""
        return self.streams.abort_transport

    @abort_transport.setter
    def abort_transport(self, abort: Callable[[Send], bool] | None) -> None:
        self.streams.abort_transport = abort

    def __repr__(self) -> str:
        return f"<Gateway limits={self.limits!r} drain={self.drain!r}>"

    # -- the front ---------------------------------------------------------------

    def _open(self, method: str, path: str, headers: dict[bytes, bytes]) -> RequestContext:
        ctx = RequestContext.from_head(method, path, headers, started_at=trio.current_time())
        ctx.response_headers.extend(self._cors.headers_for(headers.get(b"origin")))
        return ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._quart_asgi(scope, receive, send)
            return
        headers, header_bytes = read_head(scope["headers"])
        ctx = self._open(scope["method"], scope["path"], headers)
        scope[CONTEXT_KEY] = ctx
        tracer = current_tracer()
        span = None if tracer is None else self._server_span(tracer, ctx, headers)
        try:
            if header_bytes > self.config.max_header_bytes:
                # Hypercorn (h11) refuses a head over this size only while it is still
                # incomplete; one that arrived whole in a single read gets here.
                raise RequestError(
                    f"request headers larger than {self.config.max_header_bytes} bytes",
                    code="headers_too_large",
                    status_code=431,
                )
            await self._serve(scope, receive, send, headers, ctx)
        except TrioAgentError as exc:
            # A handler raised before its response head: the one error path.
            if not ctx.responded:
                await send_error(send, exc, ctx)
            else:
                # A handler owns its terminal answer once the head is out; one that
                # raises instead has a bug: log it, the connection ends the body.
                logger.exception("error after the response started (request_id=%s)", ctx.request_id)
                ctx.outcome = "internal_error"
        except Exception:
            logger.exception("unhandled error (request_id=%s)", ctx.request_id)
            if not ctx.responded:
                await send_error(send, internal_error(), ctx)
            ctx.outcome = "internal_error"
        finally:
            self._access.close(ctx)
            if span is not None:
                assert tracer is not None
                tracer.end_server(span, status=ctx.status, outcome=ctx.outcome)

    def _server_span(self, tracer: GatewayTracer, ctx: RequestContext, headers: dict[bytes, bytes]) -> TraceSpan:
        route = ctx.path if ctx.path in self.router.paths else None
        return tracer.start_server(
            method=ctx.method, path=ctx.path, route=route, request_id=ctx.request_id, headers=headers
        )

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], ctx: RequestContext
    ) -> None:
        if self._cors.is_preflight(ctx.method, headers):
            await self._preflight(send, ctx)
            return
        # Auth comes before routing, so an unknown path says nothing to a caller without a key.
        if ctx.path not in self.router.public_paths:
            ctx.key_id = self._keys.authenticate(headers)
        route = self.router.match(ctx.method, ctx.path, headers)
        if route.asgi is not None:
            await route.asgi(Call(ctx, scope, receive, send, headers))
        else:
            await self._quart_asgi(scope, receive, _noting_send(send, ctx))

    async def _preflight(self, send: Send, ctx: RequestContext) -> None:
        ctx.status = 204
        ctx.outcome = "preflight"
        allowed = any(name == b"access-control-allow-origin" for name, _ in ctx.response_headers)
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [*ctx.response_headers, *Cors.preflight_headers(allowed)],
            }
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def early_refusal(
        self, method: bytes, target: bytes, raw_headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, Headers, bytes] | None:
        """The whole 503/429 for a streamed chat request that admission refuses now, from its head.

        Called by the server (``LeanTCPServer``) before it would start the app for
        the request: under overload most requests are refusals, and without the
        app task, the ASGI messages and the body's parsing a refusal costs a
        fraction. ``None`` (the usual case) means: run the app. Only what the app
        would also answer with this refusal is answered here: a POST to
        ``/chat/stream``, ``/v1/chat/completions`` or a relayed ``/v1`` route with a ``Content-Length``
        body within ``max_body_bytes``, a head within ``max_header_bytes``, the
        right API key (auth on), the gateway not draining. The body is not read
        for it (the server drops it). Counted and logged as the app would.
        """
        if method != b"POST" or self.drain.draining:
            return None
        path = target.partition(b"?")[0]
        if path not in _EARLY_REFUSAL_PATHS:
            return None
        headers, header_bytes = read_head(raw_headers)
        length = headers.get(b"content-length")
        if (
            header_bytes > self.config.max_header_bytes
            or length is None
            or not length.isdigit()
            or int(length) > self.config.max_body_bytes
        ):
            return None
        try:
            key_id = self._keys.authenticate(headers)
        except AuthenticationError:
            return None
        refusal = self.limits.refuse_nowait(key_id) or upstream_unavailable(self.backend)
        if refusal is None:
            return None
        ctx = self._open("POST", path.decode(), headers)
        ctx.key_id = key_id
        answer = error_response(refusal, ctx)
        self.metrics.early_refusals += 1
        self._access.close(ctx)
        tracer = current_tracer()
        if tracer is not None:
            tracer.refused_early(
                method="POST", path=ctx.path, request_id=ctx.request_id, headers=headers,
                status=answer[0], code=refusal.code,
            )  # fmt: skip
        return answer


def _noting_send(send: Send, ctx: RequestContext) -> Send:
    """Quart's ``send``, noting the status and adding the request's own headers."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            ctx.status = int(message["status"])
            message = {**message, "headers": [*message.get("headers", ()), *ctx.response_headers]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            # The last body message makes Hypercorn recycle the connection and start
            # its keep-alive timer, and makes it send http.disconnect to the app, on
            # which quart-trio cancels this very send. Cancelled half-way, the timer
            # never starts and the idle connection outlives keep_alive_timeout,
            # holding up a graceful shutdown. Hypercorn shields the socket write
            # itself, so shielding here adds no new way to block.
            with trio.CancelScope(shield=True):
                await send(message)
            return
        await send(message)

    return wrapped


def create_app(
    config: ServerConfig,
    *,
    backend: ChatBackend,
    limits: Limits | None = None,
    metrics: GatewayMetrics | None = None,
    loop_lag: LoopLag | None = None,
    agent: Agent | None = None,
) -> Gateway:
    """Build the gateway ASGI app around an open ``backend``.

    ``limits`` defaults to an in-process :class:`Admission` sized from
    ``config``; pass another :class:`Limits` (for example one shared across
    processes) to replace it. The caller owns the backend's lifetime, and the
    ``agent``'s (default: one with the configured Python tools, no MCP).
    """
    return Gateway(config, backend=backend, limits=limits, metrics=metrics, loop_lag=loop_lag, agent=agent)
