"""Tools for the chat page's agent-mode test: one that answers, one that fails (an error card)."""

from __future__ import annotations

from trio_agent.agent import tool


@tool
def shout(text: str) -> str:
    """The text in capitals.

    Args:
        text: What to shout.
    """
    return text.upper() + "!"


@tool
def explode(reason: str) -> str:
    """Always fails (the page shows an error card).

    Args:
        reason: Why.
    """
    raise RuntimeError(f"exploded: {reason}")
