"""Errors of the agent runtime.

A tool that fails is not an exception of the run: it is a ``tool_error`` event
and a result the model sees. These are the errors a caller gets::

    TrioAgentError
    └── AgentError                   the agent runtime refused its input
        ├── ToolDefinitionError      a function cannot be a tool, or two tools share a name (also a ValueError)
        └── UnknownToolError         a run's allowlist names a tool the agent does not have (also a LookupError)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import TrioAgentError

__all__ = ["AgentError", "ToolDefinitionError", "UnknownToolError"]


class AgentError(TrioAgentError):
    """The agent runtime refused its input."""

    code = "agent_error"


class ToolDefinitionError(AgentError, ValueError):
    """A function cannot be made a tool, or two tools would share a name."""

    code = "tool_definition_error"


class UnknownToolError(AgentError, LookupError):
    """A run's allowlist names tools the agent does not have; ``names`` lists them."""

    code = "unknown_tool"

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        super().__init__(f"unknown tool(s): {', '.join(self.names)}")
