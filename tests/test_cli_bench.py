"""``trio-agent bench``: argument checks, and real runs against a tiny server subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_agent.cli import main


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "http://127.0.0.1:1"],  # neither --requests nor --duration
        ["--url", "https://127.0.0.1:1", "--requests", "1"],
        ["--url", "http://127.0.0.1:1", "--requests", "1", "--sweep", "workers=1,2"],
        ["--url", "http://127.0.0.1:1", "--requests", "1", "--sweep", "concurrency=1.5"],
        ["--url", "http://127.0.0.1:1", "--requests", "1", "--sweep", "rate=1,-2"],
        [
            "--url",
            "http://127.0.0.1:1",
            "--requests",
            "1",
            "--concurrency",
            "1",
            "--processes",
            "2",
        ],
        ["--url", "http://127.0.0.1:1", "--duration", "0"],
        ["--url", "http://127.0.0.1:1", "--requests", "1", "--ramp-up", "-1"],
        ["--url", "http://127.0.0.1:1", "--requests", "1", "--rate", "5", "--ramp-up", "1"],
        ["--url", "http://127.0.0.1:1", "--requests", "1", "--ramp-up", "9", "--max-duration", "5"],
    ],
)
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *args]) == 2
    assert "trio-agent bench:" in capsys.readouterr().err


@pytest.fixture
def tiny_server() -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests._bench_server", "8"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield line.split()[-1], proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


BOUNDS = ["--request-timeout", "5", "--max-duration", "20", "--no-progress"]


@pytest.mark.e2e
def test_closed_loop_run_writes_json(
    tiny_server: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, pid = tiny_server
    out = tmp_path / "r.json"
    args = [
        "bench",
        "--url",
        url,
        "--concurrency",
        "4",
        "--requests",
        "40",
        "--ramp-up",
        "0.2",
        "--server-pid",
        str(pid),
    ]
    assert main([*args, "--json", str(out), "--slo-ttft", "5", *BOUNDS]) == 0
    assert "trio-agent bench" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    run = doc["runs"][0]
    assert run["metrics"]["ok"] == 40
    assert run["config"]["ramp_up"] == 0.2
    assert run["metrics"]["output_tokens"] == 320
    assert run["metrics"]["good_requests"] == 40
    assert run["metrics"]["peak_concurrency"] <= 4
    assert run["server"]["pid"] == pid
    assert run["server"]["peak_rss_bytes"] > 0
    assert run["client"]["sse_events"] == 40 * 10  # thinking, 8 tokens, done
    assert doc["environment"]["python"]


@pytest.mark.e2e
def test_sweep_and_processes(
    tiny_server: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = tiny_server
    out = tmp_path / "s.json"
    args = [
        "bench",
        "--url",
        url,
        "--requests",
        "12",
        "--rate",
        "200",
        "--concurrency",
        "4",
        "--processes",
        "2",
    ]
    assert main([*args, "--sweep", "rate=100,300", "--json", str(out), *BOUNDS]) == 0
    doc = json.loads(out.read_text())
    assert doc["sweep"] == {"parameter": "rate", "values": [100.0, 300.0]}
    assert [r["config"]["rate"] for r in doc["runs"]] == [100.0, 300.0]
    for run in doc["runs"]:
        assert run["metrics"]["ok"] == 12
        assert run["client"]["processes"] == 2
        assert run["server"] is None
    assert "req/s" in capsys.readouterr().out
