"""The default connection limit leaves descriptors for the upstream pool, Redis and a reserve."""

from __future__ import annotations

from trio_agent.config import ServerConfig, UpstreamConfig, parse_upstream_urls
from trio_agent.server._connections import REFUSAL, default_max_connections, max_connections_for
from trio_agent.server._serve import http_config


def test_the_default_leaves_room_for_the_upstream_pool_redis_and_a_reserve() -> None:
    assert default_max_connections(ServerConfig(), 20000) == 20000 - 2000  # the mock: no pool
    up = UpstreamConfig(base_url="http://u")
    assert default_max_connections(ServerConfig(upstream=up, max_concurrency=300), 20000) == 17700
    sized = UpstreamConfig(base_url="http://u", max_connections=500)
    assert default_max_connections(ServerConfig(upstream=sized), 20000) == 17500
    url, targets = parse_upstream_urls("http://a http://b")
    two = UpstreamConfig(base_url=url, targets=targets)  # a pool each
    assert default_max_connections(ServerConfig(upstream=two, max_concurrency=300), 20000) == 17400
    redis = ServerConfig(redis_url="redis://r")
    assert default_max_connections(redis, 20000) == 20000 - 64 - 2000
    assert default_max_connections(ServerConfig(), 1024) == 1024 - 192  # the reserve's floor
    assert default_max_connections(ServerConfig(), 100) == 16  # never below 16


def test_an_explicit_limit_wins_and_reaches_the_http_layer() -> None:
    assert max_connections_for(ServerConfig(max_connections=7), 20000) == 7
    assert http_config(ServerConfig(max_connections=7)).max_connections == 7
    assert http_config(ServerConfig(), nofile=4096).max_connections == 4096 - 409


def test_the_refusal_is_one_whole_closing_503() -> None:
    head, body = REFUSAL.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in head and b"connection: close" in head
    assert f"content-length: {len(body)}".encode() in head
    assert b'"too_many_connections"' in body
