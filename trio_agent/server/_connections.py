"""How many client connections the gateway keeps open, and what the one past the limit gets.

The descriptor limit (raised to the hard limit at start, see
:func:`~trio_agent.http.raise_fd_limit`) is shared by everything the process
opens, so the default client-connection limit leaves room for the rest
(docs/decisions/010)::

    max_connections = nofile - upstream pool - Redis - reserve
      upstream pool = UpstreamConfig.max_connections, else max_concurrency, per upstream
                      (each has its own pool; 0 with the mock)
      Redis         = 64 when redis_url is set (its client's pool and pub/sub), else 0
      reserve       = max(192, nofile // 10)  (connections accepted in one pass before they
                                              are counted (64), refused ones lingering for
                                              their 503 (64), listening sockets, stdio, logs,
                                              MCP servers' pipes and connections, a margin)

and never below 16. A connection past the limit, when no idle connection can
be closed to make room, gets :data:`REFUSAL`: a whole 503 written without
reading the request, ``Retry-After`` and ``Connection: close``.
"""

from __future__ import annotations

import orjson

from ..config import ServerConfig

__all__ = ["REFUSAL", "default_max_connections", "max_connections_for"]

_REDIS_FDS = 64
_RESERVE_MIN = 192
_FLOOR = 16

_BODY = orjson.dumps({
    "error": {
        "code": "too_many_connections",
        "message": "the server is at its connection limit; retry shortly",
        "retryable": True,
    }
})  # fmt: skip

#: The whole answer to a connection past ``max_connections``.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: " + str(len(_BODY)).encode()
    + b"\r\n\r\n" + _BODY
)  # fmt: skip


def default_max_connections(config: ServerConfig, nofile: int) -> int:
    """Client connections ``nofile`` descriptors leave room for (the module's formula)."""
    upstream = config.upstream
    pool = 0
    if upstream is not None:
        pool = (upstream.max_connections or config.max_concurrency) * len(
            upstream.upstream_targets
        )
    redis = _REDIS_FDS if config.redis_url is not None else 0
    reserve = max(_RESERVE_MIN, nofile // 10)
    return max(_FLOOR, nofile - pool - redis - reserve)


def max_connections_for(config: ServerConfig, nofile: int) -> int:
    """``config.max_connections``, or the default for ``nofile`` when it is None."""
    if config.max_connections is not None:
        return config.max_connections
    return default_max_connections(config, nofile)
