"""Summing the Prometheus texts of several worker processes into one host view.

Each worker renders its own exposition text (``/metrics`` of one process);
:func:`merge_expositions` adds them up, series by series, so one scrape of any
worker reports the whole host (docs/decisions/013). The rule per family comes
from its ``# TYPE``:

- ``counter`` and ``histogram``: summed (every bucket, ``_sum`` and ``_count``);
  the cumulative buckets of a sum stay cumulative.
- ``gauge``: summed (in flight, queued, capacity, open connections are the
  host's totals), except the few in :data:`MAX_GAUGES` that are a level, not
  an amount (scheduler lag, draining), which take the largest value. A 0/1
  state gauge (an upstream's state, an MCP server up, Redis healthy) sums to
  the number of workers in that state.

A family or a series that only some workers have (an upstream error kind one
worker saw) appears once, with the sum of the workers that have it. Series
keep the order of their first appearance, so the merged text reads like one
worker's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["MAX_GAUGES", "format_value", "merge_expositions", "sample_values"]

#: Gauges that are a level of each process rather than an amount of work: the host's
#: value is the worst (largest) worker's.
MAX_GAUGES = frozenset(
    {
        "trio_agent_loop_lag_seconds",
        "trio_agent_loop_lag_peak_seconds",
        "trio_agent_draining",
    }
)

# Exact integers in a float: beyond this a count would lose units when printed as an int.
_EXACT = 2.0**53


def format_value(value: float) -> str:
    """A sample value with no precision lost: integers in full, other floats as ``repr``.

    (``f"{v:g}"`` keeps six digits, so a counter past a million would print
    rounded and a sum across workers would not add up.)
    """
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < _EXACT:
        return str(int(value))
    return repr(value)


class _Family:
    __slots__ = ("help", "kind", "name", "samples")

    def __init__(self, name: str) -> None:
        self.name = name
        self.help: str | None = None
        self.kind: str | None = None
        # "name{labels}" -> value, in first-seen order
        self.samples: dict[str, float] = {}


def _parse_value(text: str) -> float:
    return float(text)  # float() reads NaN, +Inf and -Inf as Prometheus writes them


def merge_expositions(texts: Iterable[str]) -> str:
    """One exposition text whose every series is the workers' series combined (see the module).

    Raises ``ValueError`` on a sample line whose value is not a number (a
    worker sends only what it rendered itself, so that is a bug, not input).
    """
    families: dict[str, _Family] = {}
    for text in texts:
        current: _Family | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    current = families.get(name)
                    if current is None:
                        current = families[name] = _Family(name)
                    rest = parts[3] if len(parts) == 4 else ""
                    if parts[1] == "HELP":
                        current.help = rest
                    else:
                        current.kind = rest
                continue
            key, _, raw = line.rpartition(" ")
            if not key:
                raise ValueError(f"not a sample line: {line!r}")
            value = _parse_value(raw)
            if current is None:
                # A sample without a family header: a family of its own, untyped.
                name = key.partition("{")[0]
                current = families.get(name) or families.setdefault(name, _Family(name))
            samples = current.samples
            old = samples.get(key)
            if old is None:
                samples[key] = value
            elif current.kind == "gauge" and current.name in MAX_GAUGES:
                samples[key] = max(old, value)
            else:
                samples[key] = old + value
    return _render(families.values())


def _render(families: Iterable[_Family]) -> str:
    lines: list[str] = []
    for fam in families:
        if fam.help is not None:
            lines.append(f"# HELP {fam.name} {fam.help}")
        if fam.kind is not None:
            lines.append(f"# TYPE {fam.name} {fam.kind}")
        lines.extend(f"{key} {format_value(value)}" for key, value in fam.samples.items())
    lines.append("")
    return "\n".join(lines)


def sample_values(text: str) -> dict[str, float]:
    """Every sample of an exposition text, ``"name{labels}" -> value`` (for tests and tools)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, raw = line.rpartition(" ")
            out[key] = _parse_value(raw)
    return out
