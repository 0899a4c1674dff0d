"""Several upstreams in configuration: the spec syntax, the flag, the variable, the mistakes."""

from __future__ import annotations

import pytest

from trio_agent.cli import build_parser, main
from trio_agent.config import UpstreamTarget, parse_upstream_urls, server_config_from_env
from trio_agent.errors import ConfigError


def test_a_spec_with_every_option() -> None:
    t = UpstreamTarget.parse(
        "http://a:8000/v1,weight=2.5,models=llama-3|qwen,max_concurrency=64,api_key_env=KEY_A",
        {"KEY_A": "sk-a"},
    )
    assert (t.url, t.weight, t.models, t.max_concurrency, t.api_key) == (
        "http://a:8000/v1", 2.5, ("llama-3", "qwen"), 64, "sk-a"
    )
    assert "sk-a" not in repr(t)


def test_one_plain_url_needs_no_targets_and_several_make_a_list() -> None:
    assert parse_upstream_urls("http://a/v1") == ("http://a/v1", ())
    url, targets = parse_upstream_urls("http://a/v1,weight=2  http://b/v1")
    assert url == "http://a/v1" and [(t.url, t.weight) for t in targets] == [("http://a/v1", 2.0), ("http://b/v1", 1.0)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("http://a/v1,weight=0", "weight must be > 0"),
        ("http://a/v1,weight=heavy", "expected a number"),
        ("http://a/v1,colour=red", "unknown option 'colour'"),
        ("http://a/v1,weight", "expected key=value"),
        ("http://a/v1,api_key_env=NOT_SET_ANYWHERE", "NOT_SET_ANYWHERE is not set"),
        ("ftp://a,weight=1", "must start with http"),
        ("http://a/v1,max_concurrency=0", "max_concurrency must be > 0"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UpstreamTarget.parse(spec, {})


def test_the_variable_lists_several_upstreams_and_the_ejection_settings() -> None:
    config = server_config_from_env(
        {
            "TRIO_AGENT_UPSTREAM_URL": "http://a/v1 http://b/v1,weight=3",
            "TRIO_AGENT_UPSTREAM_EJECT_DELAY": "2",
            "TRIO_AGENT_READY_REQUIRES_UPSTREAM": "true",
        }
    )
    assert config.upstream is not None and config.ready_requires_upstream
    assert [t.url for t in config.upstream.upstream_targets] == ["http://a/v1", "http://b/v1"]
    assert config.upstream.eject_delay == 2.0 and config.upstream.base_url == "http://a/v1"


def test_the_flag_repeats(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["serve", "--upstream-url", "http://a/v1", "--upstream-url", "http://b/v1,models=m",
         "--ready-requires-upstream", "--upstream-eject-after-failures", "5"]
    )
    assert args.upstream_url == ["http://a/v1", "http://b/v1,models=m"]
    assert args.ready_requires_upstream is True and args.upstream_eject_after_failures == 5
    assert main(["serve", "--upstream-url", "http://a/v1", "--upstream-url", "http://b/v1,bad"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="eject_max_delay must be >= eject_delay"):
        server_config_from_env({"TRIO_AGENT_UPSTREAM_URL": "http://a/v1", "TRIO_AGENT_UPSTREAM_EJECT_DELAY": "100"})
