"""Settings from the environment: a bad or unknown TRIO_AGENT_* variable is an error naming it."""

from __future__ import annotations

import pytest

from trio_agent.cli import main
from trio_agent.config import ServerConfig, config_from_env, env_name, server_config_from_env
from trio_agent.errors import ConfigError


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRIO_AGENT_MAX_CONCURRENCY": "abc"}, "TRIO_AGENT_MAX_CONCURRENCY: expected an integer, got 'abc'"),
        ({"TRIO_AGENT_MAX_QUEUE_WAIT": "soon"}, "TRIO_AGENT_MAX_QUEUE_WAIT: expected a number, got 'soon'"),
        ({"TRIO_AGENT_ACCESS_LOG": "maybe"}, "TRIO_AGENT_ACCESS_LOG: expected a boolean"),
        ({"TRIO_AGENT_REDIS_ON_ERROR": "panic"}, "TRIO_AGENT_REDIS_ON_ERROR: expected one of"),
        ({"TRIO_AGENT_MOCK_TOKENS": "many"}, "TRIO_AGENT_MOCK_TOKENS: expected an integer, got 'many'"),
        (
            {"TRIO_AGENT_UPSTREAM_URL": "http://x/v1", "TRIO_AGENT_UPSTREAM_MAX_ATTEMPTS": "x"},
            "TRIO_AGENT_UPSTREAM_MAX_ATTEMPTS: expected an integer, got 'x'",
        ),
        ({"TRIO_AGENT_MAX_CONCURRENCY": "0"}, "TRIO_AGENT_MAX_CONCURRENCY: max_concurrency must be >= 1"),
        ({"TRIO_AGENT_UPSTREAM_URL": "ftp://x"}, "TRIO_AGENT_UPSTREAM_URL: base_url must start with http"),
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        server_config_from_env(env)
    assert str(exc.value).startswith(message)


def test_unknown_variable_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"unknown environment variable TRIO_AGENT_NOT_A_SETTING$"):
        server_config_from_env({"TRIO_AGENT_NOT_A_SETTING": "1"})


def test_unknown_variable_near_a_real_one_suggests_it() -> None:
    with pytest.raises(ConfigError) as exc:
        server_config_from_env({"TRIO_AGENT_MAX_CONCURENCY": "4"})
    assert str(exc.value) == (
        "unknown environment variable TRIO_AGENT_MAX_CONCURENCY (did you mean TRIO_AGENT_MAX_CONCURRENCY?)"
    )


def test_flag_wins_and_is_not_blamed_on_the_variable() -> None:
    config = server_config_from_env({"TRIO_AGENT_MAX_CONCURRENCY": "7"}, server={"max_concurrency": 9})
    assert config.max_concurrency == 9
    with pytest.raises(ConfigError) as exc:
        server_config_from_env({"TRIO_AGENT_MAX_CONCURRENCY": "7"}, server={"max_concurrency": 0})
    assert str(exc.value).startswith("max_concurrency must be >= 1")


def test_good_values_parse() -> None:
    config = server_config_from_env(
        {
            "TRIO_AGENT_MAX_CONCURRENCY": "12",
            "TRIO_AGENT_API_KEYS": "a, b",
            "TRIO_AGENT_ACCESS_LOG": "off",
            "TRIO_AGENT_UPSTREAM_URL": "http://127.0.0.1:9/v1",
            "TRIO_AGENT_UPSTREAM_API_KEY": "sk-x",
            "TRIO_AGENT_MOCK_TTFT": "0.5",
            "TRIO_AGENT_VENV": "/elsewhere",
        }
    )
    assert config.max_concurrency == 12 and config.api_keys == frozenset({"a", "b"})
    assert config.access_log is False and config.mock.ttft == 0.5
    assert config.upstream is not None and config.upstream.api_key == "sk-x"


def test_config_from_env_names_the_variable_too() -> None:
    with pytest.raises(ConfigError, match=r"^TRIO_AGENT_PORT: expected an integer, got 'http'$"):
        config_from_env(ServerConfig, {"TRIO_AGENT_PORT": "http"})


def test_env_name() -> None:
    assert env_name(ServerConfig, "max_concurrency") == "TRIO_AGENT_MAX_CONCURRENCY"
    assert env_name(ServerConfig, "upstream") is None


def test_serve_prints_the_variable_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRIO_AGENT_MAX_CONCURRENCY", "abc")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "trio-agent serve: TRIO_AGENT_MAX_CONCURRENCY: expected an integer, got 'abc'\n"
    )
