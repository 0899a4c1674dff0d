"""A port in use or an address that cannot be used: one line on stderr and exit 2, for both servers.

Run as a new user would, in a subprocess (`python -m trio_agent ...`), each bounded by a timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.e2e


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "trio_agent", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture
def port_in_use() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize(
    "command", [["serve"], ["serve", "--workers", "2"], ["mock-llm"]], ids=["serve", "serve-workers", "mock-llm"]
)
def test_a_port_in_use_is_one_line_and_exit_2(command: list[str], port_in_use: int) -> None:
    done = run_cli(*command, "--host", "127.0.0.1", "--port", str(port_in_use))
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"trio-agent: cannot listen on 127.0.0.1:{port_in_use}: address already in use\n"
    assert "listening" not in done.stdout


@pytest.mark.parametrize("command", ["serve", "mock-llm"])
@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
def test_a_bad_host_is_one_line_and_exit_2(command: str, host: str) -> None:
    done = run_cli(command, "--host", host, "--port", "0")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"trio-agent: cannot listen on {host}:0: "), done.stderr
    assert "Traceback" not in done.stderr
