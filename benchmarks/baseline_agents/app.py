"""The same agent as trio_agent's benchmark agent, on the OpenAI Agents SDK on asyncio.

* the SDK's chat-completions model (``OpenAIChatCompletionsModel``) on an ``AsyncOpenAI``
  client whose ``base_url`` is the mock LLM server's ``/v1`` (``trio-agent mock-llm``);
* four ``@function_tool`` async tools (``asyncio.sleep`` of :data:`TOOL_DELAY`), or the same
  four served by ``benchmarks/agent_tools_mcp.py`` through the SDK's ``MCPServerStdio``
  (``--mcp``), one session opened at start-up and shared by every run;
* ``Runner.run_streamed`` per request, its stream events and run hooks mapped to
  trio_agent's agent SSE events (``thinking``, ``step_start``, ``token``, ``tool_call``,
  ``tool_started``, ``tool_result``, ``tool_error``, ``step_end``, then one ``done`` or
  ``error``), so one load driver (``benchmarks/agent_load.py``) measures both servers;
* FastAPI on uvicorn (asyncio loop, h11), like ``benchmarks/baseline_asyncio``. A client that
  leaves makes Starlette cancel the response; the run is then cancelled with
  ``RunResultStreaming.cancel()``, the SDK's own way.

``GET /healthz`` reports live counts, among them ``tools_running`` (tool bodies executing
now, counted inside the tool functions themselves), which the disconnect trial polls.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
from agents import (
    Agent,
    ModelSettings,
    RunConfig,
    RunHooks,
    Runner,
    RunResultStreaming,
    function_tool,
    set_tracing_disabled,
)
from agents import __version__ as agents_version
from agents.exceptions import MaxTurnsExceeded
from agents.mcp import MCPServerStdio
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.tool_context import ToolContext
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai import AsyncOpenAI
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from benchmarks.baseline_asyncio.app import Server as BaselineServer

__all__ = ["TOOL_DELAY", "Settings", "create_app", "main"]

TOOL_DELAY = 0.1  # seconds each tool sleeps, as in benchmarks/agent_tools.py
EVENTS_BUFFER = 64  # events one run may get ahead of its client
MCP_SCRIPT = Path(__file__).resolve().parent.parent / "agent_tools_mcp.py"
INSTRUCTIONS = "You are a helpful assistant. Use the tools when they help."


@dataclass(frozen=True, kw_only=True)
class Settings:
    upstream_url: str  # the OpenAI-compatible API, e.g. http://127.0.0.1:8100/v1
    upstream_model: str = "mock-llm"
    max_steps: int = 8
    mcp: bool = False  # tools from benchmarks/agent_tools_mcp.py over MCP stdio
    graceful_timeout: float = 3.0


# -- the tools ----------------------------------------------------------------------------


@dataclass
class ToolCounts:
    """Tool bodies executing now, and how each ended (counted in the bodies themselves)."""

    running: int = 0
    started: int = 0
    completed: int = 0
    cancelled: int = 0

    @contextmanager
    def body(self) -> Iterator[None]:
        self.running += 1
        self.started += 1
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        else:
            self.completed += 1
        finally:
            self.running -= 1


TOOLS = ToolCounts()


@function_tool
async def search_web(query: str) -> str:
    """Search the web and return the top result."""
    with TOOLS.body():
        await asyncio.sleep(TOOL_DELAY)
    return f"top result for {query!r}"


@function_tool
async def get_weather(city: str) -> str:
    """Current weather in a city."""
    with TOOLS.body():
        await asyncio.sleep(TOOL_DELAY)
    return f"sunny in {city}, 21 C"


@function_tool
async def lookup_order(order_id: str) -> str:
    """Status of an order by its id."""
    with TOOLS.body():
        await asyncio.sleep(TOOL_DELAY)
    return f"order {order_id}: shipped"


@function_tool
async def fetch_price(symbol: str) -> str:
    """Latest price of a stock symbol."""
    with TOOLS.body():
        await asyncio.sleep(TOOL_DELAY)
    return f"{symbol}: 101.25"


PYTHON_TOOLS = [search_web, get_weather, lookup_order, fetch_price]


# -- request body ---------------------------------------------------------------------------


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class AgentBody(BaseModel):
    """``POST /agent/stream``: ``question`` or ``messages``, as trio_agent's agent route."""

    model_config = ConfigDict(extra="forbid")

    question: str | None = None
    messages: list[Message] | None = None
    tools: list[str] | None = None  # an allowlist of tool names; default all
    max_steps: int | None = Field(default=None, ge=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> AgentBody:
        if (self.question is None) == (self.messages is None):
            raise ValueError("give exactly one of question or messages")
        return self

    def run_input(self) -> str | list[Any]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return self.question or ""


# -- one run -----------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _usage(u: Any) -> dict[str, int]:
    if u is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
    }


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return raw


@dataclass
class RunEmitter:
    """Turns one run's SDK events and hooks into agent SSE events, in wire order.

    Stream events and hooks reach it from different tasks (the consumer of
    ``stream_events()`` and the SDK's run loop), so the first of the two to see a tool call
    emits its ``tool_call``: a ``tool_started`` never precedes the call it starts.
    """

    queue: asyncio.Queue[dict[str, Any] | None]
    step: int = 0
    tool_calls: int = 0
    step_calls: int = 0
    called: set[str] = field(default_factory=set)
    started_at: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(
        default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    )
    t0: float = field(default_factory=time.perf_counter)

    async def emit(self, type_: str, **data: Any) -> None:
        await self.queue.put({"type": type_, **data})

    async def tool_call(self, call_id: str, name: str, arguments: str) -> None:
        if call_id in self.called:
            return
        self.called.add(call_id)
        self.tool_calls += 1
        self.step_calls += 1
        await self.emit("tool_call", call_id=call_id, name=name, arguments=_arguments(arguments))


class EmitterHooks(RunHooks[Any]):
    """The SDK's run hooks: step starts and tool starts and ends, at the moment they happen."""

    def __init__(self, emitter: RunEmitter) -> None:
        self.e = emitter

    async def on_llm_start(
        self, context: Any, agent: Any, system_prompt: Any, input_items: Any
    ) -> None:
        self.e.step += 1
        self.e.step_calls = 0
        await self.e.emit("step_start", step=self.e.step)

    async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
        if not isinstance(context, ToolContext):
            return
        await self.e.tool_call(context.tool_call_id, context.tool_name, context.tool_arguments)
        self.e.started_at[context.tool_call_id] = time.perf_counter()
        await self.e.emit("tool_started", call_id=context.tool_call_id, queued_ms=0.0)

    async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: object) -> None:
        if not isinstance(context, ToolContext):
            return
        began = self.e.started_at.pop(context.tool_call_id, time.perf_counter())
        duration_ms = _ms(time.perf_counter() - began)
        text = str(result)
        # The SDK turns a tool's exception into a result string for the model (its default
        # failure_error_function); report that as the tool_error it is.
        if text.startswith("An error occurred while running the tool"):
            await self.e.emit(
                "tool_error", call_id=context.tool_call_id, name=context.tool_name,
                kind="error", message=text,
            )  # fmt: skip
        else:
            await self.e.emit(
                "tool_result", call_id=context.tool_call_id, name=context.tool_name,
                content=text, duration_ms=duration_ms,
            )  # fmt: skip


async def run_agent(state: AppState, body: AgentBody, emitter: RunEmitter) -> None:
    """One agent run: map the SDK's stream to events on ``emitter``; end with done or error."""
    s = state.settings
    agent = state.agent_for(body)
    # include_usage: the chat-completions model asks for usage in the stream, as trio_agent does.
    settings = ModelSettings(
        max_tokens=body.max_tokens, temperature=body.temperature, include_usage=True
    )
    agent = agent.clone(model_settings=settings)
    run_id = uuid.uuid4().hex
    await emitter.emit("thinking", run_id=run_id)
    result: RunResultStreaming = Runner.run_streamed(
        agent,
        body.run_input(),
        max_turns=body.max_steps or s.max_steps,
        hooks=EmitterHooks(emitter),
        run_config=RunConfig(tracing_disabled=True),
    )
    finish_reason = "stop"
    try:
        async for ev in result.stream_events():
            if ev.type != "raw_response_event":
                continue
            data = ev.data
            if isinstance(data, ResponseTextDeltaEvent):
                await emitter.emit("token", content=data.delta)
            elif isinstance(data, ResponseOutputItemDoneEvent) and isinstance(
                data.item, ResponseFunctionToolCall
            ):
                item = data.item
                await emitter.tool_call(item.call_id, item.name, item.arguments)
            elif isinstance(data, ResponseCompletedEvent):
                usage = _usage(data.response.usage)
                for k in emitter.usage:
                    emitter.usage[k] += usage[k]
                reason = "tool_calls" if emitter.step_calls else "stop"
                await emitter.emit("step_end", step=emitter.step, finish_reason=reason, usage=usage)
    except MaxTurnsExceeded:
        finish_reason = "max_steps"
    except asyncio.CancelledError:
        result.cancel()
        raise
    except Exception as exc:  # the run failed: one error event, as trio_agent does
        result.cancel()
        await emitter.emit("error", code="agent_error", message=f"{type(exc).__name__}: {exc}")
        return
    await emitter.emit(
        "done",
        finish_reason=finish_reason,
        steps=emitter.step,
        tool_calls=emitter.tool_calls,
        usage=emitter.usage,
        timings={"total_ms": _ms(time.perf_counter() - emitter.t0)},
    )


# -- the app ------------------------------------------------------------------------------------


@dataclass
class AppState:
    settings: Settings
    client: AsyncOpenAI
    mcp_server: MCPServerStdio | None = None
    runs_in_flight: int = 0
    runs_completed: int = 0
    runs_abandoned: int = 0
    _agent: Agent[Any] | None = None

    def agent_for(self, body: AgentBody) -> Agent[Any]:
        if self._agent is None:
            model = OpenAIChatCompletionsModel(
                model=self.settings.upstream_model, openai_client=self.client
            )
            if self.mcp_server is not None:
                self._agent = Agent(
                    name="bench",
                    instructions=INSTRUCTIONS,
                    model=model,
                    mcp_servers=[self.mcp_server],
                )
            else:
                self._agent = Agent(
                    name="bench", instructions=INSTRUCTIONS, model=model, tools=list(PYTHON_TOOLS)
                )
        agent = self._agent
        if body.model is not None:
            model = OpenAIChatCompletionsModel(model=body.model, openai_client=self.client)
            agent = agent.clone(model=model)
        if body.tools is not None and self.mcp_server is None:
            allowed = set(body.tools)
            agent = agent.clone(tools=[t for t in PYTHON_TOOLS if t.name in allowed])
        return agent


class CancellingStreamingResponse(StreamingResponse):
    """Cancels the run's task when the response ends early (the client left)."""

    def __init__(
        self, content: AsyncIterator[bytes], task: asyncio.Task[None], state: AppState
    ) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.task = task
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.task.done():
                self.state.runs_abandoned += 1
                self.task.cancel()


def create_app(settings: Settings) -> FastAPI:
    set_tracing_disabled(True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = AsyncOpenAI(base_url=settings.upstream_url, api_key="unused")
        state = AppState(settings=settings, client=client)
        if settings.mcp:
            server = MCPServerStdio(
                params={"command": sys.executable, "args": [str(MCP_SCRIPT)]},
                cache_tools_list=True,
                client_session_timeout_seconds=60,
            )
            await server.connect()
            state.mcp_server = server
        app.state.agent = state
        try:
            yield
        finally:
            if state.mcp_server is not None:
                await state.mcp_server.cleanup()
            await client.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        st: AppState = app.state.agent
        return {
            "status": "ok",
            "runs_in_flight": st.runs_in_flight,
            "runs_completed": st.runs_completed,
            "runs_abandoned": st.runs_abandoned,
            "tools_running": TOOLS.running,
            "tools_started": TOOLS.started,
            "tools_completed": TOOLS.completed,
            "tools_cancelled": TOOLS.cancelled,
        }

    @app.post("/agent/stream", response_model=None)
    async def agent_stream(body: AgentBody) -> Response:
        st: AppState = app.state.agent
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(EVENTS_BUFFER)
        emitter = RunEmitter(queue=queue)

        async def job() -> None:
            st.runs_in_flight += 1
            try:
                await run_agent(st, body, emitter)
                st.runs_completed += 1
            finally:
                st.runs_in_flight -= 1
                try:
                    queue.put_nowait(None)
                except asyncio.QueueFull:
                    pass  # the client is gone or the response generator is closing

        task = asyncio.create_task(job())

        async def sse() -> AsyncIterator[bytes]:
            n = 0
            while True:
                item = await queue.get()
                if item is None:
                    return
                n += 1
                payload = json.dumps(item, separators=(",", ":"))
                yield f"event: {item['type']}\nid: {n}\ndata: {payload}\n\n".encode()
                if item["type"] in ("done", "error"):
                    return

        return CancellingStreamingResponse(sse(), task, st)

    @app.exception_handler(json.JSONDecodeError)
    async def bad_json(request: Any, exc: json.JSONDecodeError) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": "invalid_json", "message": str(exc)}}, status_code=400
        )

    return app


class Server(BaselineServer):
    """The asyncio baseline's uvicorn Server (exit 0 on SIGTERM), with this server's banner."""

    banner = ""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await uvicorn.Server.startup(self, sockets)
        if not self.should_exit:
            print(self.banner, flush=True)


# -- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline_agents",
        description="The benchmark agent on the OpenAI Agents SDK (asyncio, FastAPI, uvicorn).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument(
        "--upstream-url", required=True, help="OpenAI-compatible /v1 URL (the mock LLM)"
    )
    parser.add_argument("--upstream-model", default="mock-llm")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument(
        "--mcp", action="store_true", help="tools over MCP stdio (agent_tools_mcp.py)"
    )
    parser.add_argument("--graceful-timeout", type=float, default=3.0)
    parser.add_argument(
        "--gc-threshold", type=int, default=0, help="gen-0 GC threshold (0: Python's)"
    )
    args = parser.parse_args(argv)
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    settings = Settings(
        upstream_url=args.upstream_url,
        upstream_model=args.upstream_model,
        max_steps=args.max_steps,
        mcp=args.mcp,
        graceful_timeout=args.graceful_timeout,
    )
    # Bind the socket here so port 0 works and the real port is known; uvicorn serves it.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        create_app(settings),
        http="h11",  # what a plain `pip install uvicorn` runs (no httptools)
        lifespan="on",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=settings.graceful_timeout,
    )
    server = Server(config)
    tools = "MCP stdio tools" if settings.mcp else "Python function tools"
    server.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    server.banner = f"agents baseline listening on {server.url} (openai-agents {agents_version}, {tools}, uvicorn {uvicorn.__version__}, asyncio event loop, h11)"
    # A plain asyncio loop, as uvicorn picks without uvloop installed.
    asyncio.run(server.serve(sockets=[sock]))
    sock.close()
    return 0
