"""The seed's demo as written: FastAPI's ``StreamingResponse`` of one async generator per request.

``POST /chat/stream`` yields an SSE ``thinking`` event, then one ``token`` event after each
``await asyncio.sleep(itl)``, then ``done``. No validation, no metrics, no admission, no
pacing against deadlines: the plainest asyncio design, the floor the issue measures
trio_agent's CPU per request against. The wire format is trio_agent's (event names, ``type``
in the JSON, incrementing ``id``, ``usage.completion_tokens`` in ``done``), so one load
generator measures every server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

__all__ = ["create_app", "main"]


def create_app(*, ttft: float = 0.0, itl: float = 0.01, tokens: int = 64) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def sse(event_id: int, kind: str, payload: dict[str, Any]) -> str:
        return f"event: {kind}\nid: {event_id}\ndata: {json.dumps({'type': kind, **payload})}\n\n"

    @app.post("/chat/stream")
    async def chat_stream(request: Request) -> StreamingResponse:
        question = str((await request.json()).get("question", ""))

        async def events() -> AsyncIterator[str]:
            yield sse(1, "thinking", {})
            if ttft:  # the seed has no first-token delay; the suite's scenarios may ask one
                await asyncio.sleep(ttft)
            for i in range(tokens):
                await asyncio.sleep(itl)
                yield sse(i + 2, "token", {"content": f" word{i}"})
            prompt = len(question.split())
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": tokens,
                "total_tokens": prompt + tokens,
            }
            yield sse(tokens + 2, "done", {"finish_reason": "stop", "usage": usage})

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# -- the launcher: bind (port 0 works), print the URL once uvicorn accepts, serve ---------------


class Server(uvicorn.Server):
    url = ""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            print(f"seed demo listening on {self.url} (uvicorn, asyncio, h11)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.baseline_seed", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8002, help="0: any free port (the URL is printed)")
    ap.add_argument("--mock-ttft", type=float, default=0.0, help="seconds before the first token")
    ap.add_argument("--mock-itl", type=float, default=0.01, help="the sleep before each token")
    ap.add_argument("--mock-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    host, port = sock.getsockname()[:2]
    app = create_app(ttft=args.mock_ttft, itl=args.mock_itl, tokens=args.mock_tokens)
    # `uvicorn --http h11 --no-access-log`, serving the socket bound above.
    config = uvicorn.Config(app, http="h11", access_log=False, log_level="warning", backlog=4096)
    server = Server(config)
    server.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    asyncio.run(server.serve(sockets=[sock]))
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
