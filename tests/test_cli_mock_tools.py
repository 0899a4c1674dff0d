"""The mock's tool-call flags on `trio-agent serve` and `trio-agent mock-llm`, and their variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_agent.cli import build_parser, main
from trio_agent.config import server_config_from_env


@pytest.mark.parametrize("command", ["serve", "mock-llm"])
def test_flags_parse(command: str) -> None:
    args = build_parser().parse_args([command, "--mock-tool-calls", "3", "--mock-script", "t.jsonl"])
    assert (args.mock_tool_calls, args.mock_script) == (3, "t.jsonl")


@pytest.mark.parametrize("command", ["serve", "mock-llm"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mock-tool-calls", "-1"], "tool_calls must be >= 0"),
        (["--mock-script", "/nonexistent/turns.jsonl"], "cannot read the mock script"),
        (["--mock-script", "BAD"], "mock script line 1"),
    ],
)
def test_bad_values_exit_2_with_a_message(
    command: str, flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": 1}\n')
    argv = [command, *(str(bad) if f == "BAD" else f for f in flags)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"trio-agent {command}:" in err and message in err


def test_environment_variables_reach_the_mock_config(tmp_path: Path) -> None:
    script = tmp_path / "t.jsonl"
    config = server_config_from_env(
        {"TRIO_AGENT_MOCK_TOOL_CALLS": "0", "TRIO_AGENT_MOCK_SCRIPT": str(script)}
    )
    assert (config.mock.tool_calls, config.mock.script) == (0, str(script))
