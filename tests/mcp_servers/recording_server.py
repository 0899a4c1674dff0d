"""An MCP stdio server for the agent tests, written with the mcp SDK.

Every cancellation it receives (``notifications/cancelled`` interrupts the
tool's handler) is appended as one line, ``cancelled <tool> <tag>``, to the file
named by ``RECORD_FILE``; each call's start is recorded as ``started <tool> <tag>``.
Run with the argument ``http`` it serves streamable HTTP instead of stdio.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("recording", log_level="CRITICAL")


def _record(line: str) -> None:
    path = os.environ.get("RECORD_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@server.tool()
def traceparent(ctx: Context) -> str:
    """The W3C traceparent this call's request carried in its _meta ("" if none)."""
    meta = ctx.request_context.meta or {}
    return str(meta.get("traceparent", ""))


@server.tool()
def fail(message: str) -> str:
    """Always fails with the message."""
    raise ToolError(message)


@server.tool()
async def slow(seconds: float, tag: str, ctx: Context) -> str:
    """Report progress, then sleep; records its start and its cancellation."""
    _record(f"started slow {tag}")
    try:
        await ctx.report_progress(0, seconds, "started")
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _record(f"cancelled slow {tag}")
        raise
    return f"slept {seconds}"


def serve_http() -> None:
    """Streamable HTTP on 127.0.0.1, a port the OS picks; the port is the first line of stdout."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    print(sock.getsockname()[1], flush=True)
    http = uvicorn.Server(uvicorn.Config(server.streamable_http_app(), log_level="critical"))
    anyio.run(lambda: http.serve(sockets=[sock]))


if __name__ == "__main__":
    if sys.argv[1:] == ["http"]:
        serve_http()
    else:
        server.run("stdio")
