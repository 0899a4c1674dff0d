"""MCP servers as tool sources, through the ``mcp`` SDK (anyio, so it runs on trio).

Each server has one supervisor task in :func:`open_agent`'s lifespan nursery.
The supervisor opens the session and closes it in that same task (an anyio
session entered in one task and left in another is the "cancel scope in a
different task" failure other frameworks hit), lists the server's tools, then
watches the session: a call that finds the connection closed, or a liveness
probe that fails (:func:`_probe`), ends it; the supervisor closes it and reconnects with a doubling delay.
While a server is down its tools stay offered and each call is a tool error,
so the model learns it and the run goes on.

Calls come from the runs' tool tasks and share the session. A call cancelled by
its deadline or by its run is abandoned by the SDK, which sends the server
``notifications/cancelled``; the session stays usable. Progress notifications
reach the call's ``tool_progress`` events.

Tool names: a server's tool keeps its name unless it clashes with another tool
(a Python tool or another server's); then it is ``SERVER__tool``. The issue's
``SERVER.tool`` would be clearer, but OpenAI function names must match
``^[a-zA-Z0-9_-]{1,64}$``: a dot is refused.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types
import pydantic_core
import trio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from ..errors import ConfigError
from ..tracing import trace_meta
from ._config import AgentConfig
from ._tools import TOOL_NAME_RE, Tool, ToolRegistry, get_progress_sink

__all__ = ["MCPServerSpec", "MCPServerStatus", "MCPServers", "MCPTool", "MCPToolError"]

_SERVER_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,32}$")
#: Progress reports of one call that may wait for the consumer; more are dropped.
_PROGRESS_BUFFER = 16


class MCPToolError(Exception):
    """An MCP call that gave no result: the server is down, the connection closed, or the tool said is_error."""

    #: The message is shown to the model as it is, without the class name.
    bare_message = True


@dataclass(frozen=True, kw_only=True, slots=True)
class MCPServerSpec:
    """How to reach one MCP server.

    ``target`` is a command line (started as a subprocess speaking stdio, split
    like a shell would) or an ``http://`` / ``https://`` URL (streamable HTTP).
    A stdio server gets the SDK's safe inherited variables (``PATH``, ``HOME``,
    ...) plus ``env``; nothing else of our environment leaks into it.
    """

    target: str
    env: Mapping[str, str] | None = None
    cwd: str | None = None

    @property
    def is_http(self) -> bool:
        return self.target.startswith(("http://", "https://"))

    def client_target(self) -> str | StdioServerParameters:
        if self.is_http:
            return self.target
        argv = shlex.split(self.target)
        if not argv:
            raise ConfigError("an MCP server command is empty")
        return StdioServerParameters(command=argv[0], args=argv[1:], env=dict(self.env or {}), cwd=self.cwd)


@dataclass(frozen=True, kw_only=True, slots=True)
class MCPServerStatus:
    """One MCP server as the agent sees it now."""

    name: str
    up: bool
    tools: tuple[str, ...]
    connects: int
    error: str | None = None


class MCPTool(Tool):
    """One tool of an MCP server; calls go through the server's current session."""

    def __init__(self, connection: _Connection, info: mcp_types.Tool, name: str) -> None:
        self._connection = connection
        self.server = connection.name
        self.remote_name = info.name
        self.name = name
        self.description = info.description or info.title or info.name
        self.parameters = dict(info.input_schema) if info.input_schema else {"type": "object", "properties": {}}
        self.timeout = None
        self.max_concurrency = None

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        # Checked here against the listed schema (jsonschema comes with the mcp SDK), so the
        # model gets an invalid_arguments error at once rather than a server round trip.
        # A schema that is itself invalid is left to the server to enforce.
        from jsonschema import exceptions, validators  # type: ignore[import-untyped]

        try:
            cls = validators.validator_for(self.parameters)
            cls.check_schema(self.parameters)
        except exceptions.SchemaError:
            return dict(arguments)
        errors = sorted(cls(self.parameters).iter_errors(dict(arguments)), key=lambda e: list(e.path))
        if errors:
            raise ValueError(
                "; ".join(f"{'.'.join(map(str, e.path)) or 'arguments'}: {e.message}" for e in errors[:5])
            )
        return dict(arguments)

    async def call(self, arguments: Any, *, thread_limiter: trio.CapacityLimiter) -> Any:
        return await self._connection.call(self.remote_name, arguments)


def _content_text(result: mcp_types.CallToolResult) -> str:
    texts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            texts.append(block.text)
        else:
            texts.append(pydantic_core.to_json(block.model_dump(mode="json", by_alias=True)).decode())
    if not texts and result.structured_content is not None:
        return pydantic_core.to_json(result.structured_content).decode()
    return "\n".join(texts)


class _Connection:
    """One MCP server: its supervisor task, its current client, its state."""

    def __init__(self, name: str, spec: MCPServerSpec, config: AgentConfig) -> None:
        self.name = name
        self.spec = spec
        self.config = config
        self.client: Client | None = None
        self.listed: list[mcp_types.Tool] = []
        self.tool_names: list[str] = []
        self.connects = 0
        self.error: str | None = None
        self.listing_changed: Any = None  # set by MCPServers: called after each (re)listing
        self._broken = trio.Event()

    def status(self) -> MCPServerStatus:
        return MCPServerStatus(
            name=self.name,
            up=self.client is not None,
            tools=tuple(self.tool_names),
            connects=self.connects,
            error=self.error,
        )

    async def call(self, remote_name: str, arguments: dict[str, Any]) -> str:
        client = self.client
        if client is None:
            raise MCPToolError(f"MCP server {self.name!r} is down" + (f": {self.error}" if self.error else ""))
        sink = get_progress_sink()
        # The SDK calls the progress callback in a task it spawns per notification, which must
        # never wait on our consumer; a small buffer takes the reports there and this call's
        # own relay task forwards them as events, in order, with the run's backpressure.
        send, receive = trio.open_memory_channel[tuple[float, float | None, str | None]](_PROGRESS_BUFFER)

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            try:
                send.send_nowait((progress, total, message))
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass  # more than the buffer behind, or the call is over: this report is dropped

        async def relay() -> None:
            async with receive:
                async for report in receive:
                    if sink is not None:
                        await sink.send(*report)

        result: mcp_types.CallToolResult | None = None
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay)
            with send:
                # Kept and raised after the nursery, so the caller sees the error itself rather
                # than an exception group around it.
                try:
                    # The W3C trace context of the calling tool's span, in the request's _meta
                    # (None with tracing off): the MCP server's own spans join the trace.
                    result = await client.call_tool(
                        remote_name, arguments, progress_callback=progress, meta=trace_meta()  # type: ignore[arg-type]
                    )
                except MCPError as exc:
                    if exc.code == mcp_types.CONNECTION_CLOSED:
                        self.broken()
                        failure = MCPToolError(f"MCP server {self.name!r} closed the connection")
                    else:
                        failure = MCPToolError(f"MCP server {self.name!r}: {exc}")
                    failure.__cause__ = exc
                except Exception as exc:
                    failure = exc
        if failure is not None:
            raise failure
        assert result is not None
        text = _content_text(result)
        if result.is_error:
            raise MCPToolError(text or f"MCP tool {remote_name!r} failed")
        return text

    def broken(self) -> None:
        self._broken.set()

    async def supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, list, watch; on any failure close and reconnect after a doubling delay. Runs until cancelled."""
        delay = self.config.mcp_reconnect_delay
        reported = False
        # Bounded per attempt by the connect deadline and the session's life; between attempts
        # by the delay.
        while True:
            # The connect deadline covers the spawn, the handshake and the listing. It is one
            # scope around the whole session (the SDK's task groups open inside it, so they must
            # close inside it too), lifted once the server is up.
            attempt = trio.CancelScope(deadline=trio.current_time() + self.config.mcp_connect_timeout)
            try:
                with attempt:
                    async with Client(self.spec.client_target()) as client:
                        self.listed = await _list_all(client)
                        attempt.deadline = math.inf
                        self._broken = trio.Event()
                        self.client = client
                        self.connects += 1
                        self.error = None
                        delay = self.config.mcp_reconnect_delay
                        if self.listing_changed is not None:
                            self.listing_changed(self)
                        if not reported:
                            reported = True
                            task_status.started()
                        try:
                            await self._watch(client)
                        finally:
                            self.client = None
                        self.error = "connection lost"
                if attempt.cancelled_caught:
                    self.error = f"no answer within {self.config.mcp_connect_timeout:g} s"
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.client = None
            if not reported:
                reported = True
                task_status.started()
            await trio.sleep(delay)
            delay = min(delay * 2, self.config.mcp_max_reconnect_delay)

    async def _watch(self, client: Client) -> None:
        """Returns when the session is no longer usable."""
        # Bounded by the session's life: each round either sees the session broken or pings it.
        while True:
            with trio.move_on_after(self.config.mcp_ping_interval):
                await self._broken.wait()
                return
            try:
                with trio.fail_after(self.config.mcp_connect_timeout):
                    await _probe(client)
            except Exception:
                return


async def _probe(client: Client) -> None:
    """One liveness round trip on the session; raises if the server does not answer it.

    The 2026-07-28 protocol removed ``ping`` (a modern server answers it "Method
    not found", which would end a healthy session at every round):
    ``server/discover`` at the negotiated version is its cheapest request. A
    session that made the initialize handshake speaks a version with ``ping``.
    """
    version = client.protocol_version
    if version in HANDSHAKE_PROTOCOL_VERSIONS:
        await client.session.send_ping()  # the session's method: the Client's warns it is legacy
    else:
        await client.session.send_discover(version)


async def _list_all(client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(1000):  # bounded: a server that pages forever is cut off
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _safe(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "tool"


class MCPServers:
    """The MCP servers of one agent, their supervisors and their tools in the agent's registry."""

    def __init__(
        self,
        servers: Mapping[str, str | MCPServerSpec],
        *,
        registry: ToolRegistry,
        config: AgentConfig,
    ) -> None:
        self._registry = registry
        self._connections: dict[str, _Connection] = {}
        self._started = False
        for name, value in servers.items():
            if not _SERVER_NAME_RE.fullmatch(name):
                raise ConfigError(f"MCP server name {name!r} must match {_SERVER_NAME_RE.pattern}")
            spec = value if isinstance(value, MCPServerSpec) else MCPServerSpec(target=value)
            spec.client_target()  # a bad command line is refused now, not in the background
            connection = _Connection(name, spec, config)
            connection.listing_changed = self._listed
            self._connections[name] = connection

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every supervisor and wait for each one's first attempt (up or down), all at once."""
        async with trio.open_nursery() as starting:
            for connection in self._connections.values():
                starting.start_soon(nursery.start, connection.supervise)
        self._started = True
        self._register_first()

    def status(self) -> dict[str, MCPServerStatus]:
        return {name: c.status() for name, c in self._connections.items()}

    def _listed(self, connection: _Connection) -> None:
        # Before start() returns, names are decided once for all servers together so that a
        # clash renames every side; afterwards a server that (re)connects adds what is new.
        if self._started:
            self._register(connection)

    def _register_first(self) -> None:
        count: dict[str, int] = {t.name: 1 for t in self._registry}
        for connection in self._connections.values():
            for info in connection.listed:
                count[_safe(info.name)] = count.get(_safe(info.name), 0) + 1
        for connection in self._connections.values():
            self._register(connection, clashes={n for n, k in count.items() if k > 1})

    def _register(self, connection: _Connection, clashes: set[str] | None = None) -> None:
        known = {t.remote_name: t for t in self._registry if isinstance(t, MCPTool) and t.server == connection.name}
        for info in connection.listed:
            existing = known.get(info.name)
            if existing is not None:
                # A reconnect: the tool keeps its name; its description and schema are refreshed.
                existing.description = info.description or info.title or info.name
                existing.parameters = dict(info.input_schema) if info.input_schema else existing.parameters
                continue
            name = _safe(info.name)
            if name in self._registry or (clashes is not None and name in clashes):
                name = _safe(f"{connection.name}__{info.name}")
            if name in self._registry or not TOOL_NAME_RE.fullmatch(name):
                continue  # no name left that OpenAI accepts and that is free: not offered
            self._registry.add(MCPTool(connection, info, name))
            connection.tool_names.append(name)

