"""The end of every request: one response count and one access-log line (JSON)."""

from __future__ import annotations

import logging

import orjson
import trio

from ._context import RequestContext
from ._metrics import GatewayMetrics

__all__ = ["AccessLog"]

access_logger = logging.getLogger("trio_agent.access")


class AccessLog:
    """Counts each response by route and status; logs it when ``enabled``.

    Paths that are not routes count as ``other``, so a scan of random paths
    cannot grow the metrics without bound.
    """

    __slots__ = ("_enabled", "_metrics", "_routes")

    def __init__(self, metrics: GatewayMetrics, routes: frozenset[str], *, enabled: bool) -> None:
        self._metrics = metrics
        self._routes = routes
        self._enabled = enabled

    def close(self, ctx: RequestContext) -> None:
        route = ctx.path if ctx.path in self._routes else "other"
        self._metrics.count_response(route, ctx.status)
        if self._enabled:
            duration_ms = (trio.current_time() - ctx.started_at) * 1000.0
            outcome = ctx.outcome or ("ok" if 0 < ctx.status < 400 else "error")
            access_logger.info(
                orjson.dumps(
                    {
                        "request_id": ctx.request_id,
                        "method": ctx.method,
                        "path": ctx.path,
                        "status": ctx.status,
                        "duration_ms": round(duration_ms, 3),
                        "outcome": outcome,
                        "key_id": ctx.key_id,
                    }
                ).decode()
            )
