"""The typical asyncio LLM gateway, written plainly and competently, as the benchmark baseline.

* ``asyncio.Semaphore(max_concurrency)`` caps concurrent upstream calls;
* an ``asyncio.Queue(maxsize=max_queued)`` of jobs drained by worker coroutines; a full queue
  answers 503 "Service busy" at once, before the response starts;
* each job runs as its own task, feeding a small bounded ``asyncio.Queue`` of events that the
  response generator turns into SSE (Starlette's ``StreamingResponse``); a client that leaves
  cancels that task, which closes the upstream response;
* upstream: a built-in asyncio mock (``asyncio.sleep`` against absolute deadlines), or a shared
  pooled ``httpx.AsyncClient`` reading an OpenAI-compatible stream with ``aiter_lines()`` and
  ``json.loads`` per ``data:`` line.

The wire format is trio_agent's (``POST /chat/stream``: events ``thinking``, ``token``, then one
``done`` or ``error``, JSON data carrying ``type``, incrementing ``id``), plus OpenAI's
``POST /v1/chat/completions`` with ``data: [DONE]``, so one load generator measures both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Settings", "create_app", "main"]

FILLER = (
    "the quick brown fox jumps over a lazy dog while an event loop runs every coroutine "
    "and a semaphore guards the upstream so the service stays up under load"
).split()
EVENTS_BUFFER = 64  # events one job may run ahead of its client
UPSTREAM_MAX_CONNECTIONS = 1000  # the shared httpx pool: sized for 1000 concurrent streams


@dataclass(frozen=True, kw_only=True)
class Settings:
    max_concurrency: int = 50
    max_queued: int = 100
    queue_workers: int = 0  # worker coroutines draining the queue; 0 = max_concurrency
    mock_ttft: float = 0.2
    mock_itl: float = 0.02
    mock_tokens: int = 128
    upstream_url: str | None = None
    upstream_model: str = "mock-llm"
    upstream_timeout: float = 60.0
    graceful_timeout: float = 3.0


# -- request bodies (pydantic, the FastAPI way) --------------------------------------------


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str


class ChatBody(BaseModel):
    """``POST /chat/stream``: ``question`` or ``messages``."""

    model_config = ConfigDict(extra="forbid")

    question: str | None = None
    messages: list[Message] | None = None
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> ChatBody:
        if (self.question is None) == (self.messages is None):
            raise ValueError("give exactly one of question or messages")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.question or ""}]


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionsBody(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; unknown OpenAI fields are ignored."""

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None


# -- upstream ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    """One upstream chunk: some text, or the end (finish reason, usage)."""

    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class UpstreamError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Upstream:
    """The built-in mock, or one pooled httpx client to an OpenAI-compatible API."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None
        if settings.upstream_url:
            self.client = httpx.AsyncClient(
                base_url=settings.upstream_url,
                limits=httpx.Limits(
                    max_connections=UPSTREAM_MAX_CONNECTIONS,
                    max_keepalive_connections=UPSTREAM_MAX_CONNECTIONS,
                ),
                timeout=httpx.Timeout(settings.upstream_timeout, connect=5.0),
            )

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int | None
    ) -> AsyncIterator[Piece]:
        if self.client is None:
            return self._mock(messages, max_tokens)
        return self._proxy(self.client, messages, max_tokens)

    async def _mock(
        self, messages: list[dict[str, str]], max_tokens: int | None
    ) -> AsyncIterator[Piece]:
        s = self.settings
        n = s.mock_tokens if max_tokens is None else min(max_tokens, s.mock_tokens)
        loop = asyncio.get_running_loop()
        start = loop.time()
        offset = random.randrange(len(FILLER))
        for i in range(n):
            # Absolute deadlines: token i is due at start + ttft + i * itl, whatever the lag.
            await asyncio.sleep(max(0.0, start + s.mock_ttft + i * s.mock_itl - loop.time()))
            word = FILLER[(offset + i) % len(FILLER)]
            yield Piece(content=word if i == 0 else " " + word)
        prompt = max(1, len(messages[-1]["content"].split()))
        yield Piece(
            finish_reason="length" if n < s.mock_tokens else "stop",
            usage={"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
        )

    async def _proxy(
        self, client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int | None
    ) -> AsyncIterator[Piece]:
        body: dict[str, Any] = {
            "model": self.settings.upstream_model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        # Yielding inside `async with` is the ordinary asyncio idiom; the caller closes this
        # generator with contextlib.aclosing, so the response is closed when it stops early.
        async with client.stream("POST", "/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise UpstreamError("upstream_status", f"upstream answered {resp.status_code}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    err = chunk["error"]
                    raise UpstreamError("upstream_error", str(err.get("message", err)))
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        yield Piece(content=delta["content"])
                    if choice.get("finish_reason"):
                        yield Piece(finish_reason=choice["finish_reason"])
                if chunk.get("usage"):
                    yield Piece(usage=chunk["usage"])
        raise UpstreamError("upstream_stream", "upstream stream ended without [DONE]")


# -- jobs, queue and workers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    queued_ms: float


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str


Event = Started | Piece | Failed | None  # None: the job is over


@dataclass(eq=False)
class Job:
    messages: list[dict[str, str]]
    max_tokens: int | None
    events: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(EVENTS_BUFFER))
    enqueued_at: float = field(default_factory=time.perf_counter)
    task: asyncio.Task[None] | None = None
    abandoned: bool = False

    def abandon(self) -> None:
        """The client is gone: skip the job if still queued, else cancel its task."""
        self.abandoned = True
        if self.task is not None:
            self.task.cancel()


@dataclass
class Stats:
    in_flight: int = 0
    admitted: int = 0
    shed: int = 0
    completed: int = 0
    failed: int = 0
    abandoned: int = 0


class Gateway:
    """The semaphore, the job queue and its workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstream = Upstream(settings)
        self.semaphore = asyncio.Semaphore(settings.max_concurrency)
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.max_queued)
        self.stats = Stats()
        self._workers: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        n = self.settings.queue_workers or self.settings.max_concurrency
        self._workers = [asyncio.create_task(self._worker()) for _ in range(n)]

    async def stop(self) -> None:
        tasks = [*self._workers, *self._running]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.upstream.aclose()

    def submit_nowait(self, job: Job) -> bool:
        """Queue the job, or False when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.shed += 1
            return False
        self.stats.admitted += 1
        return True

    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                if job.abandoned:
                    self.stats.abandoned += 1
                    continue
                job.task = asyncio.create_task(self._run(job))
                self._running.add(job.task)
                # wait() rather than await: the job's cancellation must not end the worker.
                await asyncio.wait({job.task})
                self._running.discard(job.task)
            finally:
                self.queue.task_done()

    async def _run(self, job: Job) -> None:
        async with self.semaphore:
            self.stats.in_flight += 1
            try:
                queued_ms = (time.perf_counter() - job.enqueued_at) * 1000
                await job.events.put(Started(queued_ms=queued_ms))
                async with aclosing(self.upstream.stream(job.messages, job.max_tokens)) as pieces:
                    async for piece in pieces:
                        await job.events.put(piece)
                self.stats.completed += 1
            except asyncio.CancelledError:
                self.stats.abandoned += 1
                raise  # the client left (or shutdown): nobody reads the events any more
            except UpstreamError as exc:
                self.stats.failed += 1
                await job.events.put(Failed(exc.code, str(exc)))
            except httpx.TimeoutException as exc:
                self.stats.failed += 1
                await job.events.put(Failed("timeout", f"upstream timed out: {exc!r}"))
            except Exception as exc:  # the usual catch-all at the edge: report, don't crash
                self.stats.failed += 1
                await job.events.put(Failed("upstream_error", f"{type(exc).__name__}: {exc}"))
            finally:
                self.stats.in_flight -= 1
            await job.events.put(None)


class JobResponse(StreamingResponse):
    """A StreamingResponse that abandons its job however the response ends.

    Starlette cancels the body generator when the client disconnects, but a generator that
    never started has no ``finally`` to run; this covers every path.
    """

    def __init__(self, job: Job, content: AsyncIterator[bytes]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.job = job

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.abandon()


# -- wire formats -----------------------------------------------------------------------------


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def busy(openai: bool) -> JSONResponse:
    message = "Service busy: all workers busy and the queue is full"
    if openai:
        error: dict[str, Any] = {
            "message": message, "type": "overloaded", "code": "overloaded", "param": None,
        }  # fmt: skip
    else:
        error = {"code": "overloaded", "message": message, "retryable": True, "retry_after": 1}
    return JSONResponse({"error": error}, status_code=503, headers={"Retry-After": "1"})


async def gateway_events(job: Job) -> AsyncIterator[bytes]:
    """trio_agent's SSE format: thinking, token..., then done or error."""
    event_id = 0

    def sse(kind: str, payload: dict[str, Any]) -> bytes:
        nonlocal event_id
        event_id += 1
        return (
            f"event: {kind}\nid: {event_id}\ndata: {dumps({'type': kind, **payload})}\n\n".encode()
        )

    tokens = 0
    finish_reason = "stop"
    usage: dict[str, int] | None = None
    started = time.perf_counter()
    queued_ms = 0.0
    ttft_ms: float | None = None
    while (item := await job.events.get()) is not None:
        if isinstance(item, Started):
            queued_ms = item.queued_ms
            yield sse("thinking", {"queued_ms": round(queued_ms, 3)})
        elif isinstance(item, Failed):
            yield sse("error", {"code": item.code, "message": item.message, "retryable": True})
            return
        else:
            if item.content:
                tokens += 1
                if ttft_ms is None:
                    ttft_ms = (time.perf_counter() - started) * 1000
                yield sse("token", {"content": item.content})
            finish_reason = item.finish_reason or finish_reason
            usage = item.usage or usage
    if usage is None:
        usage = {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}
    timings = {
        "queued_ms": round(queued_ms, 3),
        "ttft_ms": None if ttft_ms is None else round(ttft_ms, 3),
        "total_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    yield sse("done", {"finish_reason": finish_reason, "usage": usage, "timings": timings})


async def openai_chunks(job: Job, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI's ``chat.completion.chunk`` frames, then ``data: [DONE]``."""
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def frame(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk = {
            "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }  # fmt: skip
        return f"data: {dumps(chunk)}\n\n".encode()

    while (item := await job.events.get()) is not None:
        if isinstance(item, Started):
            yield frame({"role": "assistant", "content": ""})
        elif isinstance(item, Failed):
            yield f"data: {dumps({'error': {'message': item.message, 'type': item.code, 'code': item.code, 'param': None}})}\n\n".encode()
            return
        else:
            if item.content:
                yield frame({"content": item.content})
            if item.finish_reason is not None:
                yield frame({}, item.finish_reason)
            if item.usage is not None and include_usage:
                usage_chunk = {
                    "id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": item.usage,
                }  # fmt: skip
                yield f"data: {dumps(usage_chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


async def openai_completion(job: Job, model: str) -> JSONResponse:
    """``stream: false``: the whole answer as one ``chat.completion``."""
    parts: list[str] = []
    finish_reason = "stop"
    usage: dict[str, int] | None = None
    try:
        while (item := await job.events.get()) is not None:
            if isinstance(item, Failed):
                error = {
                    "message": item.message,
                    "type": item.code,
                    "code": item.code,
                    "param": None,
                }
                return JSONResponse({"error": error}, status_code=502)
            if isinstance(item, Piece):
                parts.append(item.content)
                finish_reason = item.finish_reason or finish_reason
                usage = item.usage or usage
    finally:
        job.abandon()
    return JSONResponse(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
    )


# -- the app ----------------------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    gateway: Gateway | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal gateway
        gateway = Gateway(settings)  # asyncio objects are made inside the running loop
        gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def gw() -> Gateway:
        assert gateway is not None, "lifespan not started"
        return gateway

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        g = gw()
        return {"status": "ok", "queued": g.queue.qsize(), **g.stats.__dict__}

    @app.post("/chat/stream", response_model=None)
    async def chat_stream(body: ChatBody) -> Response:
        job = Job(messages=body.chat_messages(), max_tokens=body.max_tokens)
        if not gw().submit_nowait(job):
            return busy(openai=False)
        return JobResponse(job, gateway_events(job))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: CompletionsBody) -> Response:
        messages = [m.model_dump() for m in body.messages]
        job = Job(messages=messages, max_tokens=body.max_tokens)
        if not gw().submit_nowait(job):
            return busy(openai=True)
        model = body.model or settings.upstream_model
        if not body.stream:
            return await openai_completion(job, model)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return JobResponse(job, openai_chunks(job, model, include_usage))

    return app


# -- process ----------------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn's Server, announcing its URL once it accepts, exiting 0 on SIGTERM/SIGINT.

    uvicorn's own signal capture re-raises the signal after shutdown (so the process would die
    of it); here the loop's handlers call the same ``handle_exit`` and nothing is re-raised.
    """

    url = ""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            print(
                f"asyncio baseline listening on {self.url} "
                f"(uvicorn {uvicorn.__version__}, asyncio event loop, h11)",
                flush=True,
            )


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline_asyncio",
        description="The asyncio baseline: FastAPI on uvicorn with a Semaphore and a Queue.",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001, help="0: any free port (the URL is printed)")
    ap.add_argument("--max-concurrency", type=int, default=50, help="concurrent upstream calls")
    ap.add_argument("--max-queued", type=int, default=100, help="jobs waiting past the cap")
    ap.add_argument("--queue-workers", type=int, default=0, help="0: one per concurrency slot")
    ap.add_argument("--mock-ttft", type=float, default=0.2)
    ap.add_argument("--mock-itl", type=float, default=0.02)
    ap.add_argument("--mock-tokens", type=int, default=128)
    ap.add_argument("--upstream-url", default=None, help="OpenAI-compatible base URL (…/v1)")
    ap.add_argument("--upstream-model", default="mock-llm")
    ap.add_argument("--upstream-timeout", type=float, default=60.0)
    ap.add_argument("--graceful-timeout", type=float, default=3.0)
    ap.add_argument(
        "--gc-threshold", type=int, default=0,
        help="Python's youngest-generation GC threshold (0: Python's own); the suite gives both "
        "servers trio_agent's default",
    )
    args = ap.parse_args(argv)
    if args.max_concurrency < 1 or args.max_queued < 0 or args.queue_workers < 0:
        ap.error("--max-concurrency must be >= 1, --max-queued and --queue-workers >= 0")
    settings = Settings(
        max_concurrency=args.max_concurrency,
        max_queued=args.max_queued,
        queue_workers=args.queue_workers,
        mock_ttft=args.mock_ttft,
        mock_itl=args.mock_itl,
        mock_tokens=args.mock_tokens,
        upstream_url=args.upstream_url.rstrip("/") if args.upstream_url else None,
        upstream_model=args.upstream_model,
        upstream_timeout=args.upstream_timeout,
        graceful_timeout=args.graceful_timeout,
    )
    return args, settings


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
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
    server.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    # A plain asyncio loop, as uvicorn picks without uvloop installed.
    asyncio.run(server.serve(sockets=[sock]))
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
