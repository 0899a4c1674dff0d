"""The chat page at GET /, driven in a real Chromium (Debian's package) by Playwright.

The gateway runs as a real `trio-agent serve` subprocess on 127.0.0.1 port 0 with the
built-in mock LLM. Playwright's own browser download does not work here, so the tests
launch /usr/bin/chromium (scripts/test installs it when missing).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _start_gateway(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_agent", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise AssertionError("gateway did not print its URL")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _ask(page: Any, base: str, question: str, *, agent: bool = False) -> None:
    page.goto(base + "/")
    page.fill("#question", question)
    if agent:
        page.check("#agent")
    page.click("#send")


def test_the_page_streams_a_whole_answer(browser: Any, tmp_path: Path) -> None:
    proc, base = _start_gateway("--mock-ttft", "0.2", "--mock-itl", "0.03", "--mock-tokens", "40")
    try:
        page = browser.new_page(viewport={"width": 900, "height": 560})
        _ask(page, base, "What does structured concurrency buy an LLM gateway?")
        # The thinking state shows before the first token arrives.
        page.wait_for_selector(".turn[data-state=thinking]", timeout=5000)
        page.wait_for_selector(".turn[data-state=done]", timeout=15000)
        answer = page.text_content(".turn .a") or ""
        status = page.text_content(".turn .status") or ""
        assert len(answer.split()) == 40
        assert status.startswith("done") and "40 tokens" in status
        # UPDATE_SCREENSHOT=1 refreshes the README's docs/chat.png from this run.
        out = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path
        page.screenshot(path=str(out / "chat.png"))
        assert (out / "chat.png").read_bytes().startswith(b"\x89PNG")
        page.close()
    finally:
        _stop(proc)


def test_stop_aborts_and_the_server_cancels_the_upstream(browser: Any) -> None:
    proc, base = _start_gateway("--mock-ttft", "0.05", "--mock-itl", "0.1", "--mock-tokens", "500")
    try:
        page = browser.new_page()
        _ask(page, base, "a long answer please")
        page.wait_for_selector(".turn[data-state=streaming]", timeout=5000)
        assert _metric(base, "trio_agent_backend_streams_active") == 1
        page.click("#stop")
        page.wait_for_selector(".turn[data-state=stopped]", timeout=5000)
        deadline = time.monotonic() + 5
        while _metric(base, "trio_agent_backend_streams_cancelled_total") < 1:
            assert time.monotonic() < deadline, "the upstream stream was not cancelled"
            time.sleep(0.02)
        assert _metric(base, "trio_agent_backend_streams_active") == 0
        assert _metric(base, "trio_agent_in_flight") == 0
        page.close()
    finally:
        _stop(proc)


def test_overload_shows_the_503_and_its_retry_time(browser: Any) -> None:
    proc, base = _start_gateway(
        "--max-concurrency",
        "1",
        "--max-queued",
        "0",
        "--mock-ttft",
        "0.05",
        "--mock-itl",
        "0.1",
        "--mock-tokens",
        "200",
    )
    holder = None
    try:
        # Another client holds the only slot.
        holder = (
            subprocess.Popen(
                [
                    "curl",
                    "-sN",
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    '{"question": "hold"}',
                    base + "/chat/stream",
                ],
                stdout=subprocess.DEVNULL,
            )
            if shutil.which("curl")
            else None
        )
        if holder is None:
            raise AssertionError("curl is needed to hold the slot")
        deadline = time.monotonic() + 5
        while _metric(base, "trio_agent_in_flight") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        page = browser.new_page()
        _ask(page, base, "am I refused?")
        page.wait_for_selector(".turn[data-state=error]", timeout=5000)
        status = page.text_content(".turn .status") or ""
        assert "HTTP 503" in status and re.search(r"retry in \d+ s", status), status
        page.close()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        _stop(proc)


def test_agent_mode_shows_each_tool_call_as_a_card(browser: Any, tmp_path: Path) -> None:
    # Each step calls shout (a result card) and explode (an error card), twice, then the
    # answer streams.
    proc, base = _start_gateway(
        "--no-example-tools", "--tools", "tests._server_agent_cards_tools",
        "--mock-ttft", "0.05", "--mock-itl", "0.01", "--mock-tool-calls", "2", "--mock-tool-rounds", "2",
    )  # fmt: skip
    try:
        page = browser.new_page(viewport={"width": 900, "height": 700})
        _ask(page, base, "What time is it?", agent=True)
        page.wait_for_selector(".turn[data-state=done]", timeout=15000)
        cards = page.query_selector_all(".turn .tool")
        assert len(cards) == 4
        states = [c.get_attribute("data-state") for c in cards]
        names = [c.query_selector(".name").text_content() for c in cards]  # type: ignore[union-attr]
        assert names == ["shout", "explode", "shout", "explode"]
        assert states == ["result", "error", "result", "error"]
        status = page.text_content(".turn .status") or ""
        assert status.startswith("done") and "3 steps" in status and "4 tool calls" in status
        assert "shout returned" in (page.text_content(".turn .a") or "")
        out = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path
        page.screenshot(path=str(out / "chat-agent.png"))
        page.close()
    finally:
        _stop(proc)


def test_agent_stop_cancels_the_running_tools(browser: Any) -> None:
    proc, base = _start_gateway(
        "--no-example-tools", "--tools", "tests._server_agent_tools",
        "--mock-ttft", "0.05", "--mock-itl", "0.01", "--mock-tool-calls", "2",
    )  # fmt: skip
    try:
        page = browser.new_page()
        _ask(page, base, "think hard", agent=True)
        # shout returns at once; ponder runs for a minute unless cancelled.
        page.wait_for_selector(".tool[data-state=result]", timeout=10000)
        page.wait_for_selector(".tool[data-state=running]", timeout=10000)
        assert _metric(base, "trio_agent_agent_running_tools") == 1
        page.click("#stop")
        page.wait_for_selector(".turn[data-state=stopped]", timeout=5000)
        assert page.get_attribute(".tool:nth-child(2)", "data-state") == "cancelled"
        deadline = time.monotonic() + 5
        while _metric(base, "trio_agent_agent_running_tools") > 0:
            assert time.monotonic() < deadline, "the tool was not cancelled"
            time.sleep(0.02)
        assert _metric(base, "trio_agent_agent_running_runs") == 0
        page.close()
    finally:
        _stop(proc)
