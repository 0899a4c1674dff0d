"""The agent's limits, one frozen keyword-only record."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["AgentConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConfig:
    """Limits of an :class:`~trio_agent.agent.Agent` and of each run.

    ``tool_timeout`` is each call's deadline (a tool may declare its own);
    ``max_tool_concurrency`` bounds the tool calls running at once in the whole
    agent, ``mcp_max_concurrency`` those on one MCP server; ``max_agent_steps``
    is how many model calls of a run may call tools (one more, with
    ``tool_choice: "none"``, then gives the answer), ``max_tool_calls`` the calls
    one run may make; a tool's output longer than ``max_tool_output_bytes`` is
    cut, with a marker, before the model sees it. ``mcp_reconnect_delay`` is the
    first wait before reconnecting a dead MCP server (doubling up to
    ``mcp_max_reconnect_delay``); ``mcp_ping_interval`` how often a quiet
    server is checked.
    """

    tool_timeout: float = 30.0
    max_tool_concurrency: int = 32
    mcp_max_concurrency: int = 8
    max_agent_steps: int = 8
    max_tool_calls: int = 32
    max_tool_output_bytes: int = 64 * 1024
    mcp_connect_timeout: float = 30.0
    mcp_reconnect_delay: float = 0.5
    mcp_max_reconnect_delay: float = 30.0
    mcp_ping_interval: float = 10.0

    def __post_init__(self) -> None:
        for name in ("tool_timeout", "mcp_connect_timeout", "mcp_reconnect_delay",
                     "mcp_max_reconnect_delay", "mcp_ping_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_tool_concurrency", "mcp_max_concurrency", "max_agent_steps",
                     "max_tool_calls", "max_tool_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
