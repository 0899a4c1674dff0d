"""The routes that describe the gateway: probes, metrics, models, the chat page, the API.

``/healthz`` (the process is up), ``/readyz`` (it takes work: not draining,
limits available, and with ``ready_requires_upstream`` an upstream not
ejected), ``/metrics`` (Prometheus text), ``/v1/models``, ``/`` (the
one-file chat page) and ``/openapi.json``.
"""

from __future__ import annotations

import functools
import importlib.resources
import math

from quart import Response

from ..concurrency import LoopLag
from ..http import ConnectionCounter
from ..llm import ChatBackend, upstream_unavailable
from ._admission import Limits
from ._agent import AgentService, mcp_readiness
from ._context import RequestContext
from ._drain import Drain
from ._metrics import GatewayMetrics
from ._openapi import OPENAPI, openapi_for
from ._router import ViewHandler
from ._routes_chat import json_view

__all__ = ["chat_page", "healthz", "metrics", "models", "openapi", "readyz", "render_metrics"]


def healthz() -> ViewHandler:
    async def handle(ctx: RequestContext) -> Response:
        return json_view({"status": "ok"})

    return handle


def readyz(
    drain: Drain,
    limits: Limits,
    agents: AgentService | None = None,
    *,
    upstreams: ChatBackend | None = None,
) -> ViewHandler:
    """Ready unless draining, the limits are unavailable, or (``upstreams`` given: the gateway runs
    with ``ready_requires_upstream``) every upstream is ejected.

    An MCP server that is down does not make the gateway unready (chat and
    the other tools still serve, and the agent reconnects it): the body names
    it under ``mcp_down`` and ``mcp``, with a 200.
    """

    async def handle(ctx: RequestContext) -> Response:
        if drain.draining:
            return json_view({"status": "shutting_down"}, 503)
        status = limits.status()
        if not limits.ready:
            return json_view({"status": "limits_unavailable", "limits": status}, 503)
        down = upstream_unavailable(upstreams) if upstreams is not None else None
        if down is not None:
            wait = math.ceil(down.retry_after or 0)
            response = json_view(
                {"status": "upstream_unavailable", "reason": down.message, "retry_after": wait}, 503
            )
            response.headers["Retry-After"] = str(max(1, wait))
            return response
        body: dict[str, object] = {"status": "ready", **({"limits": status} if status else {})}
        mcp = agents.agent.mcp_status() if agents is not None else {}
        if mcp:
            body["mcp"] = mcp_readiness(mcp)
            body["mcp_down"] = agents.mcp_down() if agents is not None else []
        return json_view(body)

    return handle


def render_metrics(
    gateway_metrics: GatewayMetrics,
    limits: Limits,
    drain: Drain,
    backend: ChatBackend,
    loop_lag: LoopLag,
    connections: ConnectionCounter,
    agents: AgentService | None = None,
) -> str:
    """This process's own Prometheus text (with ``--workers``, one worker's share of the host)."""
    text = gateway_metrics.render(
        limits.statistics(),
        draining=drain.draining,
        backend_statistics=backend.statistics(),
        limits_status=limits.status(),
        loop_lag=loop_lag.statistics(),
        connections=connections,
    )
    if agents is not None:
        text += agents.metrics.render(agents.agent)
    return text


def metrics(
    gateway_metrics: GatewayMetrics,
    limits: Limits,
    drain: Drain,
    backend: ChatBackend,
    loop_lag: LoopLag,
    connections: ConnectionCounter,
    agents: AgentService | None = None,
) -> ViewHandler:
    """``/metrics``: this process's text, or the whole host's when it is one of several workers
    (``gateway_metrics.host``, set by ``run_workers``' workers; docs/decisions/013)."""
    render = functools.partial(
        render_metrics, gateway_metrics, limits, drain, backend, loop_lag, connections, agents
    )

    async def handle(ctx: RequestContext) -> Response:
        host = gateway_metrics.host
        text = render() if host is None else await host.scrape()
        response = Response(text, content_type="text/plain; version=0.0.4; charset=utf-8")
        if host is not None:
            # Which worker summed this answer (the sums are the same whichever did).
            response.headers["X-Trio-Agent-Worker"] = str(host.peers.index)
        return response

    return handle


def models(backend: ChatBackend) -> ViewHandler:
    async def handle(ctx: RequestContext) -> Response:
        names = await backend.list_models()
        return json_view(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "trio_agent"}
                    for m in names
                ],
            }
        )

    return handle


def chat_page() -> ViewHandler:
    async def handle(ctx: RequestContext) -> Response:
        return Response(
            _chat_page(),
            content_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return handle


def openapi(agents: AgentService | None = None) -> ViewHandler:
    # The agent body's tool names are this gateway's (they are fixed once it is built).
    document = OPENAPI if agents is None else openapi_for(list(agents.agent.tools.names()))

    async def handle(ctx: RequestContext) -> Response:
        return json_view(document)

    return handle


@functools.cache
def _chat_page() -> bytes:
    """The one-file chat page (trio_agent/web/chat.html), read once."""
    return importlib.resources.files("trio_agent.web").joinpath("chat.html").read_bytes()
