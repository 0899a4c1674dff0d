"""The agent's tool capacity: three levels of ``trio.CapacityLimiter`` and the counts behind statistics().

A call waits for its MCP server's limiter (if it is an MCP tool), then its own
tool's (if the tool declares ``max_concurrency``), then the agent-wide one.
Narrowest first: a call queued behind its own tool's or server's limit holds
no agent-wide slot, so one busy tool cannot starve the others. Sync tools also
get a thread limiter each, which an abandoned thread keeps until it returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import trio

from ._config import AgentConfig
from ._tools import Tool

__all__ = ["AgentStatistics", "LimiterStatistics", "ToolLimits"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LimiterStatistics:
    """One ``trio.CapacityLimiter``: slots in use, its size, and tasks waiting for a slot."""

    borrowed_tokens: int
    total_tokens: float
    tasks_waiting: int

    @classmethod
    def of(cls, limiter: trio.CapacityLimiter) -> LimiterStatistics:
        s = limiter.statistics()
        return cls(borrowed_tokens=s.borrowed_tokens, total_tokens=s.total_tokens, tasks_waiting=s.tasks_waiting)


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentStatistics:
    """What an agent holds right now; every count returns to zero when no run is left.

    ``queued_tools`` wait for a limiter, ``running_tools`` hold theirs;
    ``tools`` is the agent-wide limiter, ``per_tool`` the limiters of tools that
    declare ``max_concurrency``, ``per_mcp_server`` one per MCP server.
    ``worker_threads`` counts sync tools' threads still running, including ones
    abandoned by a cancelled call (a thread cannot be killed; it keeps its
    tool's thread slot until it returns).
    """

    running_runs: int
    queued_tools: int
    running_tools: int
    tools: LimiterStatistics
    per_tool: Mapping[str, LimiterStatistics] = field(default_factory=dict)
    per_mcp_server: Mapping[str, LimiterStatistics] = field(default_factory=dict)
    worker_threads: int = 0


class ToolLimits:
    """The limiters of one agent and the counts of runs and calls in flight."""

    def __init__(self, config: AgentConfig, tools: Iterable[Tool] = (), servers: Iterable[str] = ()) -> None:
        self._config = config
        self._limiter = trio.CapacityLimiter(config.max_tool_concurrency)
        self._tools: dict[str, trio.CapacityLimiter] = {}
        self._threads: dict[str, trio.CapacityLimiter] = {}
        self._servers: dict[str, trio.CapacityLimiter] = {
            name: trio.CapacityLimiter(config.mcp_max_concurrency) for name in servers
        }
        for t in tools:
            self.limiters_for(t)  # per-tool limiters exist from the start, for statistics()
        self.running_runs = 0
        self.queued_tools = 0
        self.running_tools = 0

    def limiters_for(self, t: Tool) -> list[trio.CapacityLimiter]:
        """The limiters a call of ``t`` takes, in the order it takes them."""
        limiters: list[trio.CapacityLimiter] = []
        server = getattr(t, "server", None)
        if isinstance(server, str):
            limiter = self._servers.get(server)
            if limiter is None:
                limiter = self._servers[server] = trio.CapacityLimiter(self._config.mcp_max_concurrency)
            limiters.append(limiter)
        if t.max_concurrency is not None:
            limiter = self._tools.get(t.name)
            if limiter is None:
                limiter = self._tools[t.name] = trio.CapacityLimiter(t.max_concurrency)
            limiters.append(limiter)
        limiters.append(self._limiter)
        return limiters

    def thread_limiter_for(self, t: Tool) -> trio.CapacityLimiter:
        limiter = self._threads.get(t.name)
        if limiter is None:
            size = t.max_concurrency if t.max_concurrency is not None else self._config.max_tool_concurrency
            limiter = self._threads[t.name] = trio.CapacityLimiter(size)
        return limiter

    def statistics(self) -> AgentStatistics:
        return AgentStatistics(
            running_runs=self.running_runs,
            queued_tools=self.queued_tools,
            running_tools=self.running_tools,
            tools=LimiterStatistics.of(self._limiter),
            per_tool={name: LimiterStatistics.of(lim) for name, lim in self._tools.items()},
            per_mcp_server={name: LimiterStatistics.of(lim) for name, lim in self._servers.items()},
            worker_threads=sum(lim.borrowed_tokens for lim in self._threads.values()),
        )
