"""A bad flag to a subcommand prints that subcommand's usage, with a "did you mean" for near misses."""

from __future__ import annotations

import pytest

from trio_agent.cli import main


@pytest.mark.parametrize(
    ("argv", "usage", "suggestion"),
    [
        (["serve", "--max-concurency", "3"], "usage: trio-agent serve", "did you mean --max-concurrency?"),
        (["serve", "--uptream-url=http://x"], "usage: trio-agent serve", "did you mean --upstream-url?"),
        (["mock-llm", "--tokns", "3"], "usage: trio-agent mock-llm", "did you mean --tokens?"),
        (["bench", "--url", "http://x", "--concurrenci", "3"], "usage: trio-agent bench",
         "did you mean --concurrency?"),
    ],
)
def test_near_miss_gets_the_subcommand_usage_and_a_suggestion(
    argv: list[str], usage: str, suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage)
    assert "unrecognized arguments" in err
    assert suggestion in err


@pytest.mark.parametrize(
    ("command", "required"), [("serve", []), ("mock-llm", []), ("bench", ["--url", "http://x"])]
)
def test_unknown_flag_without_near_miss(
    command: str, required: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, *required, "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: trio-agent {command}")
    assert "unrecognized arguments: --bogus" in err
    assert "did you mean" not in err


def test_unknown_subcommand_gets_the_top_level_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["srve"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("usage: trio-agent [-h]")
