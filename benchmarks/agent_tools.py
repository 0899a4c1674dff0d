"""The agent benchmark's four tools as trio_agent Python tools.

``trio-agent serve --tools benchmarks.agent_tools`` registers them. Each sleeps
:data:`TOOL_DELAY` seconds and returns a short string, so a step that calls all four in
parallel takes one delay, not four. The same four tools, with the same names, arguments,
descriptions and delay, are served over MCP stdio by ``benchmarks/agent_tools_mcp.py`` and
given to the OpenAI Agents SDK baseline in ``benchmarks/baseline_agents/app.py``: keep the
three in step.
"""

from __future__ import annotations

import trio

from trio_agent.agent import tool

__all__ = ["TOOL_DELAY", "fetch_price", "get_weather", "lookup_order", "search_web"]

TOOL_DELAY = 0.1  # seconds each tool sleeps


@tool
async def search_web(query: str) -> str:
    """Search the web and return the top result."""
    await trio.sleep(TOOL_DELAY)
    return f"top result for {query!r}"


@tool
async def get_weather(city: str) -> str:
    """Current weather in a city."""
    await trio.sleep(TOOL_DELAY)
    return f"sunny in {city}, 21 C"


@tool
async def lookup_order(order_id: str) -> str:
    """Status of an order by its id."""
    await trio.sleep(TOOL_DELAY)
    return f"order {order_id}: shipped"


@tool
async def fetch_price(symbol: str) -> str:
    """Latest price of a stock symbol."""
    await trio.sleep(TOOL_DELAY)
    return f"{symbol}: 101.25"
