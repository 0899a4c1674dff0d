"""A tools module for the tracing tests (``ServerConfig(tools=("tests._tracing_tools",))``)."""

from __future__ import annotations

import trio

from trio_agent.agent import tool


@tool
async def nap(seconds: float, tag: str) -> str:
    """Sleep, then answer with the tag.

    Args:
        seconds: How long to sleep.
        tag: What to answer.
    """
    await trio.sleep(seconds)
    return tag
