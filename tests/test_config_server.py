"""server_config_from_env: explicit names for three config objects, flags over env, typos refused."""

from __future__ import annotations

import pytest

from trio_agent.config import server_config_from_env
from trio_agent.errors import ConfigError


def test_defaults_without_environment() -> None:
    config = server_config_from_env({})
    assert (config.host, config.port, config.upstream) == ("127.0.0.1", 8000, None)


def test_every_object_reads_its_own_names() -> None:
    config = server_config_from_env(
        {
            "TRIO_AGENT_PORT": "9000",
            "TRIO_AGENT_MAX_QUEUE_WAIT": "2.5",
            "TRIO_AGENT_GC_THRESHOLD": "0",
            "TRIO_AGENT_QUEUE_LIFO_AFTER": "0.25",
            "TRIO_AGENT_API_KEYS": "k1, k2",
            "TRIO_AGENT_CORS_ORIGINS": "https://a.example",
            "TRIO_AGENT_ACCESS_LOG": "false",
            "TRIO_AGENT_UPSTREAM_URL": "http://127.0.0.1:9999/v1",
            "TRIO_AGENT_UPSTREAM_API_KEY": "sk-upstream",
            "TRIO_AGENT_UPSTREAM_IDLE_TIMEOUT": "7",
            "TRIO_AGENT_MOCK_TOKENS": "3",
            "TRIO_AGENT_VENV": "/somewhere",  # read by scripts/, not a setting
            "OTHER": "ignored",
        }
    )
    assert (config.port, config.max_queue_wait, config.access_log) == (9000, 2.5, False)
    assert config.gc_threshold == 0
    assert config.queue_lifo_after == 0.25
    assert config.api_keys == frozenset({"k1", "k2"})
    assert config.cors_origins == ("https://a.example",)
    assert config.upstream is not None
    assert config.upstream.base_url == "http://127.0.0.1:9999/v1"
    assert config.upstream.api_key == "sk-upstream" and config.upstream.idle_timeout == 7.0
    assert config.mock.tokens == 3
    assert "sk-upstream" not in repr(config) and "k1" not in repr(config)


def test_overrides_win_over_the_environment() -> None:
    config = server_config_from_env(
        {"TRIO_AGENT_PORT": "9000", "TRIO_AGENT_MOCK_TTFT": "1"},
        server={"port": 1234},
        mock={"ttft": 0.5},
    )
    assert (config.port, config.mock.ttft) == (1234, 0.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRIO_AGENT_PROT": "1"}, "TRIO_AGENT_PROT"),
        ({"TRIO_AGENT_UPSTREAM_MODLE": "x"}, "TRIO_AGENT_UPSTREAM_MODLE"),
        ({"TRIO_AGENT_UPSTREAM_BASE_URL": "http://x"}, "TRIO_AGENT_UPSTREAM_BASE_URL"),
        ({"TRIO_AGENT_UPSTREAM_MODEL": "gpt"}, "upstream URL"),
        ({"TRIO_AGENT_PORT": "eighty"}, "TRIO_AGENT_PORT: expected an integer, got 'eighty'"),
        ({"TRIO_AGENT_MAX_CONCURRENCY": "0"}, "max_concurrency"),
        ({"TRIO_AGENT_GC_THRESHOLD": "-1"}, "gc_threshold"),
        ({"TRIO_AGENT_QUEUE_LIFO_AFTER": "-0.1"}, "queue_lifo_after"),
    ],
)
def test_mistakes_are_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        server_config_from_env(env)
