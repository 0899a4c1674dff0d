"""Serving HTTP/1.1 on Hypercorn and h11: the one home of their private internals.

Both the gateway (:mod:`trio_agent.server`) and the mock LLM server
(:mod:`trio_agent.mock_server`) are built on this package; it knows nothing
of chat, admission or tools. One concept per module:

* :func:`serve_http` (``_serve``): an ASGI app on Hypercorn's trio machinery,
  bound before it starts, reporting ``(host, port)``;
* :class:`HTTPConfig`, :data:`LISTEN_BACKLOG` (``_config``): address and limits;
* :func:`bind_sockets`, :func:`format_address` (``_bind``): listening sockets,
  :class:`~trio_agent.errors.BindError` when the address cannot be used;
* :class:`DrainingListener` (``_listener``): the accept queue drained in one
  pass (docs/decisions/008);
* :class:`LeanTCPServer`, :class:`ConnectionCounter` (``_connection``): the
  per-connection server (docs/decisions/002), with its idle timer (``_idle``),
  and the connection limit (docs/decisions/010);
* :func:`raise_fd_limit`, :class:`FdLimit` (``_fdlimit``): the descriptor limit;
* :data:`EarlyAnswer` (``_early``): whole answers from the request head;
* :class:`DirectBody`, :func:`direct_body`, :func:`write_nowait`,
  :class:`ClientGoneError` (``_direct``): streamed bodies written straight to
  the socket (docs/decisions/001);
* :func:`abort_transport` (``_transport``): close the connection under an ASGI ``send``;
* :func:`quick_receive`, :func:`receive_nowait_of` (``_receive``): request
  bodies without a scheduler pass per piece;
* :func:`watch_signals`, :func:`set_after` (``_signals``): shutdown as one event;
* :func:`gc_threshold` (``_gc``): the collector threshold while serving
  (docs/decisions/005).

The Hypercorn, h11 versions these rely on are pinned in pyproject.toml; each
internal has a contract test in tests/test_http_contracts.py.
"""

from ._bind import bind_sockets, format_address
from ._config import LISTEN_BACKLOG, HTTPConfig
from ._connection import (
    DEFAULT_REFUSAL,
    ConnectionCounter,
    ConnectionStatistics,
    ConnectionVerdict,
    LeanTCPServer,
)
from ._direct import ClientGoneError, DirectBody, direct_body, write_nowait
from ._early import EarlyAnswer
from ._fdlimit import FdLimit, current_fd_limit, raise_fd_limit
from ._gc import gc_threshold
from ._listener import DrainingListener, ListenerStatistics
from ._receive import quick_receive, receive_nowait_of
from ._serve import serve_http
from ._signals import set_after, watch_signals
from ._transport import abort_transport

__all__ = [
    "DEFAULT_REFUSAL",
    "LISTEN_BACKLOG",
    "ClientGoneError",
    "ConnectionCounter",
    "ConnectionStatistics",
    "ConnectionVerdict",
    "FdLimit",
    "DirectBody",
    "DrainingListener",
    "EarlyAnswer",
    "HTTPConfig",
    "LeanTCPServer",
    "ListenerStatistics",
    "abort_transport",
    "bind_sockets",
    "current_fd_limit",
    "direct_body",
    "format_address",
    "gc_threshold",
    "quick_receive",
    "raise_fd_limit",
    "receive_nowait_of",
    "serve_http",
    "set_after",
    "watch_signals",
    "write_nowait",
]
