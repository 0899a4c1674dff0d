"""What a server built on :mod:`trio_agent.http` is told: its address and its connection limits.

:class:`HTTPConfig` is the whole interface; the Hypercorn ``Config`` it maps
to is built here and never leaves this package, so Hypercorn's silent
acceptance of unknown keys cannot reach the layers above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hypercorn.config import Config as HypercornConfig

from ..errors import ConfigError

__all__ = ["LISTEN_BACKLOG", "HTTPConfig"]

#: Pending connections the kernel queues per listening socket. Hypercorn's default (100)
#: overflows when a thousand clients connect at once: the kernel drops their SYNs and they
#: come back only after TCP's 1 s, 3 s retransmits (docs/decisions/008). The kernel caps it
#: at net.core.somaxconn.
LISTEN_BACKLOG = 4096


@dataclass(frozen=True, kw_only=True, slots=True)
class HTTPConfig:
    """Address and connection limits of one HTTP/1.1 server.

    ``graceful_timeout``: seconds open connections get, once accepting
    stopped, before they are cancelled. ``keep_alive_timeout``: seconds an
    idle connection, or one still sending its request head, stays open (it
    bounds slowloris heads too). ``max_header_bytes``: h11 answers 431 to a
    request head still incomplete past this size (None: Hypercorn's
    default). ``max_connections``: client connections open at once (None:
    unbounded; see :class:`~trio_agent.http.ConnectionCounter`).
    """

    host: str = "127.0.0.1"
    port: int = 0
    backlog: int = LISTEN_BACKLOG
    graceful_timeout: float = 2.0
    keep_alive_timeout: float = 5.0
    max_header_bytes: int | None = None
    max_connections: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.backlog < 1:
            raise ConfigError(f"backlog must be >= 1, got {self.backlog}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {self.max_connections}")


def hypercorn_config(config: HTTPConfig) -> HypercornConfig:
    """The Hypercorn ``Config`` for ``config`` (sockets are bound by :func:`bind_sockets`)."""
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.backlog = config.backlog
    hc.graceful_timeout = config.graceful_timeout
    hc.keep_alive_timeout = config.keep_alive_timeout
    if config.max_header_bytes is not None:
        hc.h11_max_incomplete_size = config.max_header_bytes
    hc.accesslog = None  # the servers above log requests themselves
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc
