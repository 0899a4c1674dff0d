"""Faults the mock LLM server injects: the ``X-Mock-Fault`` grammar and the seeded random draw.

The header holds one or more directives separated by commas (spaces ignored)::

    X-Mock-Fault: 503                     answer 503 at once (no stream)
    X-Mock-Fault: 500                     answer 500 at once
    X-Mock-Fault: 429;retry-after=2       answer 429 with Retry-After: 2 (default 1)
    X-Mock-Fault: stall-after=5           send 5 tokens, then nothing, forever
    X-Mock-Fault: drop-after=5            send 5 tokens, then cut the connection (no clean end)
    X-Mock-Fault: error-after=5           send 5 tokens, then data: {"error": {...}} and end
    X-Mock-Fault: ttft=3.0                the first token comes 3.0 s after the request
    X-Mock-Fault: slow-bytes              send the stream one byte at a time, with small delays
    X-Mock-Fault: ttft=1.5, drop-after=3  directives combine

Any status (``429``, ``500``, ``503``, or another 4xx/5xx) takes ``;retry-after=SECONDS``.
A header that does not parse is answered 400, naming the bad directive.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from ..config import MOCK_FAULT_KINDS, MockServerConfig
from ..errors import RequestValidationError

__all__ = ["Fault", "draw_fault", "parse_fault_header"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Fault:
    """What to do wrong for one request; the default does nothing wrong."""

    status: int | None = None
    retry_after: float | None = None
    stall_after: int | None = None
    drop_after: int | None = None
    error_after: int | None = None
    ttft: float | None = None
    slow_bytes: bool = False

    @property
    def injected(self) -> bool:
        """Whether anything is wrong at all."""
        return self != _NONE


_NONE = Fault()


def _bad(directive: str, why: str) -> RequestValidationError:
    return RequestValidationError(
        f"bad X-Mock-Fault directive {directive!r}: {why}", field="X-Mock-Fault", status_code=400
    )


def _count(directive: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise _bad(directive, "expected a token count") from None
    if value < 0:
        raise _bad(directive, "the token count must be >= 0")
    return value


def _seconds(directive: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _bad(directive, "expected seconds") from None
    if not value >= 0 or value == float("inf"):
        raise _bad(directive, "seconds must be finite and >= 0")
    return value


def parse_fault_header(value: str) -> Fault:
    """Parse an ``X-Mock-Fault`` header (grammar in the module docstring).

    Raises :class:`~trio_agent.RequestValidationError` (status 400) on a bad directive.
    """
    fault = _NONE
    for raw in value.split(","):
        directive = raw.strip()
        if not directive:
            continue
        head, _, params = directive.partition(";")
        name, eq, arg = (s.strip() for s in head.partition("="))
        if name.isdigit():
            status = int(name)
            if eq or not 400 <= status <= 599:
                raise _bad(directive, "a status must be 4xx or 5xx")
            retry_after: float | None = None
            for param in filter(None, (p.strip() for p in params.split(";"))):
                pname, peq, parg = (s.strip() for s in param.partition("="))
                if pname != "retry-after" or not peq:
                    raise _bad(directive, "the only parameter is retry-after=SECONDS")
                retry_after = _seconds(directive, parg)
            fault = replace(fault, status=status, retry_after=retry_after)
            continue
        if params:
            raise _bad(directive, "only a status takes ;parameters")
        if name == "slow-bytes" and not eq:
            fault = replace(fault, slow_bytes=True)
        elif name == "stall-after" and eq:
            fault = replace(fault, stall_after=_count(directive, arg))
        elif name == "drop-after" and eq:
            fault = replace(fault, drop_after=_count(directive, arg))
        elif name == "error-after" and eq:
            fault = replace(fault, error_after=_count(directive, arg))
        elif name == "ttft" and eq:
            fault = replace(fault, ttft=_seconds(directive, arg))
        else:
            raise _bad(
                directive,
                "expected 429|500|503[;retry-after=S], stall-after=N, drop-after=N, "
                "error-after=N, ttft=S or slow-bytes",
            )
    return fault


def draw_fault(config: MockServerConfig, rng: random.Random) -> Fault:
    """At most one random fault, by the configured rates (one RNG draw per call)."""
    rates = config.fault_rates()
    if not rates:
        return _NONE
    x = rng.random()
    k = config.fault_after_tokens
    for kind in MOCK_FAULT_KINDS:
        rate = rates.get(kind, 0.0)
        if x < rate:
            if kind == "stall":
                return Fault(stall_after=k)
            if kind == "drop":
                return Fault(drop_after=k)
            if kind == "error":
                return Fault(error_after=k)
            return Fault(status=int(kind))
        x -= rate
    return _NONE
