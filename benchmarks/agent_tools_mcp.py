"""The agent benchmark's four tools served over MCP stdio (the ``mcp`` SDK's ``MCPServer``).

Run as a script (``python benchmarks/agent_tools_mcp.py``): it speaks MCP on stdin/stdout
until stdin closes. trio_agent starts it with ``--mcp tools="PYTHON benchmarks/agent_tools_mcp.py"``
and the OpenAI Agents SDK baseline with ``MCPServerStdio`` on the same command, so both call
the same server code. The tools mirror ``benchmarks/agent_tools.py`` (names, arguments,
descriptions, :data:`TOOL_DELAY`); ``anyio.sleep`` is cancelled by the SDK when the client
sends ``notifications/cancelled``.
"""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer

TOOL_DELAY = 0.1  # seconds each tool sleeps

server = MCPServer("bench-tools")


@server.tool()
async def search_web(query: str) -> str:
    """Search the web and return the top result."""
    await anyio.sleep(TOOL_DELAY)
    return f"top result for {query!r}"


@server.tool()
async def get_weather(city: str) -> str:
    """Current weather in a city."""
    await anyio.sleep(TOOL_DELAY)
    return f"sunny in {city}, 21 C"


@server.tool()
async def lookup_order(order_id: str) -> str:
    """Status of an order by its id."""
    await anyio.sleep(TOOL_DELAY)
    return f"order {order_id}: shipped"


@server.tool()
async def fetch_price(symbol: str) -> str:
    """Latest price of a stock symbol."""
    await anyio.sleep(TOOL_DELAY)
    return f"{symbol}: 101.25"


if __name__ == "__main__":
    server.run("stdio")
