"""The agent runtime: the tool loop on any LLM backend, Python and MCP tools, limits, deadlines.

::

    from trio_agent.agent import open_agent, tool

    @tool
    async def get_weather(city: str) -> str:
        \"\"\"The weather in a city.

        Args:
            city: The city's name.
        \"\"\"
        ...

    async with open_agent(backend, tools=[get_weather]) as agent:
        async with agent.run("Weather in Paris?") as events:
            async for event in events:
                print(event.type, event.to_json())

One run is one nursery: each tool starts the moment its call's arguments are
complete, parallel calls run together under three levels of
``trio.CapacityLimiter`` (agent-wide, per tool, per MCP server), each call has
its deadline, and a failing tool is that call's ``tool_error``, never the end
of the run. Leaving the run's block cancels everything it started. Knows
nothing of HTTP; the server's ``/agent`` routes are a thin layer over it. The
MCP support needs the ``mcp`` extra (``pip install trio_agent[mcp]``).
"""

import typing

from ..errors import AgentError, ToolDefinitionError, UnknownToolError
from ._agent import Agent, AgentResult, AgentStatistics, LimiterStatistics, open_agent
from ._config import AgentConfig
from ._events import (
    AgentEvent,
    Done,
    StepEnd,
    StepStart,
    Token,
    ToolCallEvent,
    ToolError,
    ToolErrorKind,
    ToolProgress,
    ToolResult,
    ToolStarted,
    UsageTotals,
)
from ._tools import FunctionTool, Tool, ToolRegistry, load_tools, report_progress, tool

if typing.TYPE_CHECKING:
    from ._mcp import MCPServerSpec as MCPServerSpec
    from ._mcp import MCPServerStatus as MCPServerStatus

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentEvent",
    "AgentResult",
    "AgentStatistics",
    "Done",
    "FunctionTool",
    "LimiterStatistics",
    "StepEnd",
    "StepStart",
    "Token",
    "Tool",
    "ToolCallEvent",
    "ToolDefinitionError",
    "ToolError",
    "ToolErrorKind",
    "ToolProgress",
    "ToolRegistry",
    "ToolResult",
    "ToolStarted",
    "UnknownToolError",
    "UsageTotals",
    "load_tools",
    "open_agent",
    "report_progress",
    "tool",
]


def __getattr__(name: str) -> object:
    # The MCP names need the optional ``mcp`` extra: imported on first use only.
    if name in ("MCPServerSpec", "MCPServerStatus"):
        from . import _mcp

        return getattr(_mcp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
