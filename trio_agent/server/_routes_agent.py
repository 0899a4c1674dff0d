"""The agent routes: ``POST /agent/stream`` (SSE) and ``POST /agent`` (JSON).

Each reads and validates its body first (400/413/422 as JSON, before any
admission or stream), then hands the run to :class:`~._agent.AgentService`.
"""

from __future__ import annotations

from ..config import ServerConfig
from ._agent import AgentBody, AgentService, parse_agent_body
from ._body import BodyReader
from ._router import AsgiHandler, Call

__all__ = ["agent_json", "agent_stream"]


def agent_stream(body: BodyReader, agents: AgentService, config: ServerConfig) -> AsgiHandler:
    """``POST /agent/stream``: one agent run's events as SSE."""

    async def handle(call: Call) -> None:
        request = await _read_request(call, body, agents, config)
        if request is not None:
            await agents.stream(call.ctx, call.receive, call.send, request)

    return handle


def agent_json(body: BodyReader, agents: AgentService, config: ServerConfig) -> AsgiHandler:
    """``POST /agent``: one agent run's answer and its events as one JSON body."""

    async def handle(call: Call) -> None:
        request = await _read_request(call, body, agents, config)
        if request is not None:
            await agents.complete(call.ctx, call.receive, call.send, request)

    return handle


async def _read_request(call: Call, body: BodyReader, agents: AgentService, config: ServerConfig) -> AgentBody | None:
    """The run's validated request (errors raise as 400/413/422); ``None``: the client left first."""
    present, raw = await body.read_json(call)
    if not present:
        call.ctx.outcome = "disconnect"
        return None
    return parse_agent_body(raw, config, agents.agent.tools)
