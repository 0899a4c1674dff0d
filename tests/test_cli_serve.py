"""`trio-agent serve`: every setting has a flag, flags win over env, bad settings exit 2."""

from __future__ import annotations

import pytest

from trio_agent.cli import build_parser, main


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--host", "--port", "--workers", "--upstream-url", "--upstream-model",
        "--max-concurrency", "--max-queued", "--max-queue-wait", "--request-timeout",
        "--keepalive-interval", "--write-timeout", "--drain-timeout", "--api-key",
        "--per-key-max-concurrency", "--cors-origin", "--mock-ttft", "--mock-itl",
        "--mock-tokens", "--access-log", "--no-access-log", "--max-loop-lag", "--gc-threshold",
        "--queue-lifo-after", "--otlp-endpoint", "--trace-content", "--trace-queue-size",
        "--trace-export-interval", "--trace-export-timeout",
        "TRIO_AGENT_UPSTREAM_API_KEY",
    ):
        assert flag in out, flag


def test_upstream_key_is_never_shown_in_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_AGENT_UPSTREAM_API_KEY", "sk-do-not-print")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    assert "sk-do-not-print" not in capsys.readouterr().out


def test_repeatable_flags_parse() -> None:
    args = build_parser().parse_args(
        ["serve", "--api-key", "a", "--api-key", "b", "--cors-origin", "https://x", "--no-access-log"]
    )
    assert args.api_keys == ["a", "b"] and args.cors_origins == ["https://x"]
    assert args.access_log is False


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["serve", "--max-concurrency", "0"], {}),
        (["serve", "--queue-lifo-after", "-1"], {}),
        (["serve"], {"TRIO_AGENT_NOT_A_SETTING": "1"}),
        (["serve", "--upstream-model", "m"], {}),
        (["serve", "--otlp-endpoint", "localhost:4318"], {}),
        (["serve", "--trace-queue-size", "0"], {}),
    ],
)
def test_bad_settings_exit_2(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 2
    assert "trio-agent serve:" in capsys.readouterr().err


def test_tracing_without_opentelemetry_installed_exits_2_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("trio_agent.tracing.otel_missing", lambda: "opentelemetry-sdk")
    assert main(["serve", "--otlp-endpoint", "http://127.0.0.1:4318"]) == 2
    err = capsys.readouterr().err
    assert "opentelemetry-sdk" in err and "pip install 'trio_agent[otel]'" in err
