"""Binding listening sockets, with one typed error when the address cannot be used.

:func:`bind_sockets` binds and listens before any task starts, so a port in
use or an address that does not resolve surfaces as one
:class:`~trio_agent.errors.BindError` (a message for a person), not as an
``OSError`` deep inside the server's nurseries. The socket options are
Hypercorn's (``TCP_NODELAY``, ``SO_REUSEADDR``), so a restarted server binds
at once.
"""

from __future__ import annotations

import socket

from ..errors import BindError
from ._config import HTTPConfig

__all__ = ["bind_sockets", "format_address"]


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_sockets(config: HTTPConfig) -> list[socket.socket]:
    """Listening, non-blocking, inheritable sockets for ``config.host``/``config.port``.

    Raises :class:`~trio_agent.errors.BindError` (nothing left open) when the
    address is in use, not this machine's, or does not resolve.
    """
    host, port = config.host, config.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(config.backlog)
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = (getattr(exc, "strerror", None) or str(exc)).lower()
        raise BindError(host=host, port=port, reason=reason) from exc
    sock.setblocking(False)
    sock.set_inheritable(True)
    return [sock]
