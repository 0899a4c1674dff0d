"""A tools module for ``trio-agent serve --tools tests._server_agent_tools`` in the e2e tests."""

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
async def ponder() -> str:
    """Think for a minute (a long-running tool, for cancellation tests)."""
    import trio

    await trio.sleep(60)
    return "thought"
