"""The typical asyncio LLM gateway, written plainly and competently, as the benchmark baseline.

* ``asyncio.Semaphore(max_concurrency)`` caps concurrent upstream calls;
* an ``asyncio.Queue(maxsize=max_queued)`` with worker coroutines admits requests, and a
  full queue answers 503 "Service busy" at once;
* SSE through Starlette's ``StreamingResponse`` (the generator is cancelled when the client
  disconnects, and ``async with client.stream(...)`` then closes the upstream response);
* upstream: a built-in asyncio mock (``asyncio.sleep`` against absolute deadlines), or a
  shared pooled ``httpx.AsyncClient`` reading an OpenAI-compatible stream line by line.

The wire format is trio_agent's (events ``thinking``, ``token``, ``done``, ``error`` with
JSON data carrying ``type``), plus ``/v1/chat/completions`` streaming, so one load
generator measures both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

FILLER = (
    "the quick brown fox jumps over a lazy dog while an event loop runs every coroutine "
    "and a semaphore guards the upstream so the service stays up under load"
).split()


@dataclass
class Settings:
    max_concurrency: int = 50
    max_queued: int = 100
    workers: int = 0  # queue worker coroutines; 0 = max_concurrency
    mock_ttft: float = 0.2
    mock_itl: float = 0.02
    mock_tokens: int = 128
    upstream_url: str | None = None
    upstream_model: str = "mock-llm"


class Upstream:
    """Either the built-in mock or a proxied OpenAI-compatible stream: an async iterator of deltas."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None
        if settings.upstream_url:
            self.client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000),
                timeout=httpx.Timeout(60.0, connect=5.0),
            )

    async def stream(self, question: str, max_tokens: int | None) -> AsyncIterator[str]:
        s = self.settings
        n = s.mock_tokens if max_tokens is None else min(max_tokens, s.mock_tokens)
        if self.client is None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            offset = random.randrange(len(FILLER))
            for i in range(n):
                delay = start + s.mock_ttft + i * s.mock_itl - loop.time()
                await asyncio.sleep(max(0.0, delay))
                word = FILLER[(offset + i) % len(FILLER)]
                yield word if i == 0 else " " + word
            return
        body = {
            "model": s.upstream_model,
            "messages": [{"role": "user", "content": question}],
            "stream": True,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        async with self.client.stream(
            "POST", f"{s.upstream_url}/chat/completions", json=body
        ) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(chunk["error"].get("message", "upstream error"))
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


@dataclass
class Job:
    question: str
    max_tokens: int | None
    out: asyncio.Queue[bytes | None]
    abandoned: bool = False  # the client left: stop generating


def create_app(settings: Settings) -> FastAPI:
    upstream = Upstream(settings)
    semaphore = asyncio.Semaphore(settings.max_concurrency)
    queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.max_queued)
    workers: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        n = settings.workers or settings.max_concurrency
        workers.extend(asyncio.create_task(worker()) for _ in range(n))
        try:
            yield
        finally:
            for w in workers:
                w.cancel()
            if upstream.client is not None:
                await upstream.client.aclose()

    app = FastAPI(lifespan=lifespan)

    async def run_job(job: Job) -> None:
        tokens = 0
        start = time.perf_counter()
        try:
            async with semaphore:
                async for delta in upstream.stream(job.question, job.max_tokens):
                    if job.abandoned:
                        return  # leaving the async for closes the upstream stream
                    tokens += 1
                    await job.out.put(sse("token", {"type": "token", "content": delta}))
            usage = {"prompt_tokens": len(job.question.split()), "completion_tokens": tokens}
            usage["total_tokens"] = usage["prompt_tokens"] + tokens
            total_ms = (time.perf_counter() - start) * 1000
            await job.out.put(
                sse("done", {"type": "done", "usage": usage, "timings": {"total_ms": total_ms}})
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the typical catch-all, reported as an error event
            await job.out.put(
                sse("error", {"type": "error", "code": "upstream_error", "message": str(exc)})
            )
        finally:
            await job.out.put(None)

    async def worker() -> None:
        while True:
            job = await queue.get()
            try:
                await run_job(job)
            finally:
                queue.task_done()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chat/stream", response_model=None)
    async def chat_stream(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        question = body.get("question") or (body.get("messages") or [{}])[-1].get("content", "")
        job = Job(
            question=question, max_tokens=body.get("max_tokens"), out=asyncio.Queue(maxsize=64)
        )
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            return JSONResponse(
                {"error": "Service busy"}, status_code=503, headers={"Retry-After": "1"}
            )

        async def events() -> AsyncIterator[bytes]:
            try:
                yield sse("thinking", {"type": "thinking"})
                while True:
                    item = await job.out.get()
                    if item is None:
                        return
                    yield item
            finally:
                # Starlette cancels this generator when the client disconnects: tell the worker,
                # and make room so a worker blocked on a full queue sees it.
                job.abandoned = True
                while not job.out.empty():
                    job.out.get_nowait()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def openai_chat(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        question = (body.get("messages") or [{}])[-1].get("content", "")
        if semaphore.locked() and len(semaphore._waiters or ()) >= settings.max_queued:
            return JSONResponse({"error": {"message": "Service busy"}}, status_code=503)
        cid = f"chatcmpl-{uuid.uuid4().hex}"

        async def chunks() -> AsyncIterator[bytes]:
            async with semaphore:
                async for delta in upstream.stream(question, body.get("max_tokens")):
                    frame = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "model": settings.upstream_model,
                        "choices": [
                            {"index": 0, "delta": {"content": delta}, "finish_reason": None}
                        ],
                    }
                    yield f"data: {json.dumps(frame)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline_asyncio", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--max-concurrency", type=int, default=50)
    ap.add_argument("--max-queued", type=int, default=100)
    ap.add_argument("--queue-workers", type=int, default=0)
    ap.add_argument("--mock-ttft", type=float, default=0.2)
    ap.add_argument("--mock-itl", type=float, default=0.02)
    ap.add_argument("--mock-tokens", type=int, default=128)
    ap.add_argument("--upstream-url", default=None)
    ap.add_argument("--upstream-model", default="mock-llm")
    args = ap.parse_args(argv)
    settings = Settings(
        max_concurrency=args.max_concurrency,
        max_queued=args.max_queued,
        workers=args.queue_workers,
        mock_ttft=args.mock_ttft,
        mock_itl=args.mock_itl,
        mock_tokens=args.mock_tokens,
        upstream_url=args.upstream_url.rstrip("/") if args.upstream_url else None,
        upstream_model=args.upstream_model,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        # The socket already listens: connections wait in its backlog until uvicorn accepts.
        print(f"listening on http://{host}:{port}", flush=True)
        await server.serve(sockets=[sock])

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
