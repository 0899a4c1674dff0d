"""`python -m tests._serve_fake DRAIN_TIMEOUT`: serve() over a FakeLLM in its own process, with
signal handling, printing its URL like `trio-agent serve` does (for the SIGTERM tests)."""

from __future__ import annotations

import sys

import trio

from tests._fakes import FakeLLM
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.server import serve


async def main(drain_timeout: float) -> None:
    llm = FakeLLM(MockLLMConfig(ttft=0.05, itl=0.05, tokens=1000))
    config = ServerConfig(port=0, drain_timeout=drain_timeout, access_log=False, max_loop_lag=0)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(lambda task_status: serve(config, task_status=task_status, backend=llm))
        print(f"trio_agent gateway listening on http://{host}:{port} (fake)", flush=True)


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]))
