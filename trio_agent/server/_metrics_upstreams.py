"""Per-upstream metrics, read from the router's ``statistics()`` at scrape time.

One series per upstream (label ``upstream``: its base URL, which carries no
key): calls in flight, attempts, errors by kind, ejections, the state as a
one-hot gauge (``up``, ``ejected``, ``probing``); and the router's fast
failures and failovers. A backend without ``upstreams`` in its statistics
(the built-in mock) renders nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._metrics_merge import format_value

__all__ = ["upstream_metric_lines"]

_STATES = ("up", "ejected", "probing")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def upstream_metric_lines(backend_statistics: Any) -> Iterator[str]:
    """Prometheus text lines for the router's upstreams (nothing for another backend)."""
    upstreams = getattr(backend_statistics, "upstreams", None)
    if not isinstance(upstreams, tuple) or not upstreams:
        return

    def metric(name: str, kind: str, help: str, samples: Iterable[tuple[str, float]]) -> Iterator[str]:
        yield f"# HELP {name} {help}"
        yield f"# TYPE {name} {kind}"
        for labels, value in samples:
            yield f"{name}{labels} {format_value(value)}"

    names = [(f'upstream="{_escape(u.name)}"', u) for u in upstreams]
    yield from metric("trio_agent_upstream_in_flight", "gauge", "Calls open on each upstream now.",
                      [(f"{{{lb}}}", u.in_flight) for lb, u in names])
    yield from metric("trio_agent_upstream_attempts_total", "counter",
                      "Attempts sent to each upstream (retries and probes included).",
                      [(f"{{{lb}}}", u.attempts) for lb, u in names])
    yield from metric("trio_agent_upstream_attempt_errors_total", "counter",
                      "Failed attempts on each upstream, by kind (the error code).",
                      [(f'{{{lb},kind="{_escape(code)}"}}', n)
                       for lb, u in names for code, n in sorted(u.errors.items())])
    yield from metric("trio_agent_upstream_ejections_total", "counter",
                      "Times each upstream was ejected by outlier detection.",
                      [(f"{{{lb}}}", u.ejections) for lb, u in names])
    yield from metric("trio_agent_upstream_state", "gauge",
                      "Each upstream's state: 1 for the state it is in (up, ejected, probing).",
                      [(f'{{{lb},state="{s}"}}', 1 if u.state == s else 0)
                       for lb, u in names for s in _STATES])
    for field, name, help in (
        ("fast_failures", "trio_agent_upstream_fast_failures_total",
         "Calls failed at once (503) because every upstream for them was ejected."),
        ("failovers", "trio_agent_upstream_failovers_total",
         "Calls sent at once to another upstream after a failure before the first byte."),
    ):
        value = getattr(backend_statistics, field, None)
        if isinstance(value, int):
            yield from metric(name, "counter", help, [("", value)])
