"""The agent's limits: :class:`~trio_agent.config.AgentConfig`, re-exported here.

It lives in ``trio_agent.config`` with every other config object (the only
reader of environment variables); the agent package re-exports it.
"""

from __future__ import annotations

from ..config import AgentConfig

__all__ = ["AgentConfig"]
