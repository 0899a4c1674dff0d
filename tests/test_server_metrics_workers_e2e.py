"""``trio-agent serve --workers 2`` in a subprocess: one scrape counts every request of the host.

Each request and each scrape goes on a fresh connection, so the kernel hands
them to either worker; the scrapes go on until both workers have answered
(the ``X-Trio-Agent-Worker`` header), and every answer must add up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from trio_agent.server._metrics_merge import sample_values

pytestmark = pytest.mark.e2e

_CHAT = {"messages": [{"role": "user", "content": "hi"}]}
_DURATION = "gen_ai_client_operation_duration_seconds"
_TOKENS = "gen_ai_client_token_usage"
_MOCK = 'gen_ai_operation_name="chat",gen_ai_request_model="mock-llm"'


@asynccontextmanager
async def _serve_workers(*argv: str) -> AsyncIterator[tuple[str, trio.Process]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_AGENT_")}
    with tempfile.TemporaryFile() as stderr:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_agent", "serve", "--workers", "2", "--host", "127.0.0.1",
             "--port", "0", "--no-access-log", *argv],
            stdout=subprocess.PIPE, stderr=stderr, env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            seen = b""
            while b"listening on http://" not in seen:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, f"the server exited: {_tail(stderr)}"
                seen += chunk
            line = seen.split(b"listening on ", 1)[1].split()[0].decode()
            yield line, proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()


def _tail(f: object) -> str:
    f.seek(0)  # type: ignore[attr-defined]
    return f.read()[-2000:].decode(errors="replace")  # type: ignore[attr-defined]


async def _scrape(url: str) -> tuple[str, dict[str, float]]:
    # A fresh connection per scrape: either worker may take it.
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    return r.headers["x-trio-agent-worker"], sample_values(r.text)


async def _until_both_workers_answer(url: str) -> None:
    for _ in range(200):  # a worker that has not started yet does not answer its peers
        _, values = await _scrape(url)
        if values["trio_agent_workers_reporting"] == 2:
            return
        await trio.sleep(0.05)
    raise AssertionError("the workers never both answered")


def _worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


async def test_one_scrape_counts_every_request_of_the_host_whichever_worker_takes_it() -> None:
    with trio.fail_after(90):
        async with _serve_workers("--mock-tokens", "4", "--mock-itl", "0") as (url, proc):
            await _until_both_workers_answer(url)
            for i in range(20):
                async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                    if i % 2:
                        r = await client.post("/chat", json=_CHAT)
                    else:
                        r = await client.post("/chat/stream", json=_CHAT)
                    assert r.status_code == 200
            answered_by: set[str] = set()
            scrapes = 0
            while scrapes < 6 or len(answered_by) < 2:
                assert scrapes < 60, f"only worker {answered_by} answered 60 scrapes"
                worker, values = await _scrape(url)
                answered_by.add(worker)
                scrapes += 1
                assert values['trio_agent_responses_total{route="/chat",status="200"}'] == 10, worker
                assert values['trio_agent_responses_total{route="/chat/stream",status="200"}'] == 10, worker
                assert values["trio_agent_request_seconds_count"] == 20, worker
                assert values["trio_agent_streams_done_total"] == 10, worker
                assert values['trio_agent_usage_tokens_total{route="/chat/stream",kind="completion"}'] == 40, worker
                assert values["trio_agent_max_concurrency"] == 50  # the host's cap, split in two
                assert values["trio_agent_in_flight"] == 0
                assert values["trio_agent_workers"] == 2 and values["trio_agent_workers_reporting"] == 2
                # The GenAI series add up too: one chat call per request, 4 tokens each.
                assert values[f'{_DURATION}_count{{{_MOCK},outcome="ok"}}'] == 20, worker
                assert values[f'{_TOKENS}_sum{{{_MOCK},gen_ai_token_type="output"}}'] == 80, worker

            # A worker stops (its loop stuck): the other answers within the peer timeout, partial.
            pids = _worker_pids(proc.pid)
            assert len(pids) == 2
            os.kill(pids[1], signal.SIGSTOP)
            with trio.fail_after(10):
                while True:
                    started = trio.current_time()
                    worker, values = await _scrape(url)
                    if values["trio_agent_workers_reporting"] == 1:
                        break
            assert trio.current_time() - started < 6  # the 2 s peer timeout, on a busy machine

            # It dies: the other answers at once, and says whose numbers it holds.
            os.kill(pids[1], signal.SIGKILL)
            with trio.fail_after(5):
                started = trio.current_time()
                worker, values = await _scrape(url)
            assert trio.current_time() - started < 1.5  # refused at once, no timeout to wait
            assert values["trio_agent_workers_reporting"] == 1
            assert values[f'trio_agent_worker_up{{worker="{worker}"}}'] == 1
            assert values[f'trio_agent_worker_up{{worker="{1 - int(worker)}"}}'] == 0
            assert values['trio_agent_responses_total{route="/chat",status="200"}'] <= 10
