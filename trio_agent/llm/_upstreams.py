"""Which of several upstreams takes the next call: weighted least in-flight picking and outlier ejection.

Each upstream is in one of three states::

    up ──(eject_after_failures consecutive failures)──> ejected
    ejected ──(its delay passed; the next call that picks it)──> probing
    probing ──(the probe got an answer)──> up
    probing ──(the probe failed: ejected again, for twice as long, capped)──> ejected
    probing ──(the probe was abandoned before an answer: due again at once)──> ejected

A *failure* is a connection failure (refused, dropped, connect timeout) or
a 5xx answer, before the first byte; anything the upstream answered
otherwise (200, a 4xx, a 429) resets the count. An ejected upstream takes no
call until its delay has passed; then exactly one call (the probe) goes to
it, and the others keep away until the probe has its answer. The delay
starts at ``eject_delay`` and doubles on each ejection in a row, up to
``eject_max_delay``; an upstream that stays up for ``eject_max_delay``
after rejoining starts again from ``eject_delay`` (as Envoy's outlier
detection decays its ejection multiplier).

Picking, among the upstreams that serve the model and have room under
their own cap: a probe that is due first; else the lowest
``in_flight / weight`` (least in-flight, weighted), ties broken by smooth
weighted round-robin (nginx's), so that sequential calls on an idle set
spread in proportion to the weights and concurrent ones keep each
upstream's calls in flight in proportion to its weight.

Times come from trio's clock. Nothing here does I/O: the router
(``_router.py``) calls, and reports each outcome back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import trio

from ..errors import (
    ModelNotFoundError,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamUnavailableError,
)

__all__ = [
    "Pick",
    "Upstream",
    "UpstreamSet",
    "UpstreamState",
    "UpstreamStatistics",
    "is_outlier_failure",
]

logger = logging.getLogger("trio_agent.llm")

B = TypeVar("B")
UpstreamState = Literal["up", "ejected", "probing"]


def is_outlier_failure(exc: UpstreamError) -> bool:
    """A failure that counts towards ejection: no connection, or a 5xx answer."""
    if isinstance(exc, UpstreamConnectError | UpstreamConnectTimeoutError):
        return True
    status = exc.upstream_status if isinstance(exc, UpstreamStatusError) else None
    return status is not None and 500 <= status <= 599


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamStatistics:
    """One upstream's state: ``in_flight`` returns to 0 when idle; the counts only grow."""

    name: str
    state: UpstreamState
    weight: float
    max_concurrency: int | None
    models: tuple[str, ...]
    in_flight: int
    attempts: int
    errors: dict[str, int]
    consecutive_failures: int
    ejections: int
    #: Seconds until an ejected upstream may be probed (0 when not ejected, or due).
    ejected_for: float


class Upstream(Generic[B]):
    """One upstream: its backend, its share (``weight``), its models, its cap, its state."""

    __slots__ = (
        "_current",
        "attempts",
        "backend",
        "ejected_until",
        "ejections",
        "errors",
        "failures",
        "in_flight",
        "max_concurrency",
        "models",
        "name",
        "state",
        "streak",
        "up_since",
        "weight",
    )

    def __init__(
        self,
        *,
        name: str,
        backend: B,
        weight: float = 1.0,
        models: Iterable[str] = (),
        max_concurrency: int | None = None,
    ) -> None:
        if weight <= 0:
            raise ValueError("weight must be > 0")
        self.name = name
        self.backend = backend
        self.weight = weight
        self.models = tuple(models)
        self.max_concurrency = max_concurrency
        self.state: UpstreamState = "up"
        self.in_flight = 0
        self.attempts = 0
        self.errors: dict[str, int] = {}
        self.failures = 0  # consecutive, while up
        self.ejections = 0
        self.streak = 0  # ejections in a row (the delay doubles with each)
        self.ejected_until = 0.0
        self.up_since: float | None = None  # when a probe last brought it back
        self._current = 0.0  # smooth weighted round-robin

    def serves(self, model: str | None) -> bool:
        """Whether a call for ``model`` may go here (an upstream without a model list serves any)."""
        return not self.models or model in self.models

    @property
    def has_room(self) -> bool:
        cap = self.max_concurrency
        return cap is None or self.in_flight < cap

    def note_error(self, exc: UpstreamError) -> None:
        """Count a failure of a call here by its code (``upstream_unavailable``, ...)."""
        self.errors[exc.code] = self.errors.get(exc.code, 0) + 1

    def statistics(self) -> UpstreamStatistics:
        """A snapshot."""
        ejected_for = 0.0
        if self.state == "ejected":
            ejected_for = max(0.0, self.ejected_until - trio.current_time())
        return UpstreamStatistics(
            name=self.name,
            state=self.state,
            weight=self.weight,
            max_concurrency=self.max_concurrency,
            models=self.models,
            in_flight=self.in_flight,
            attempts=self.attempts,
            errors=dict(self.errors),
            consecutive_failures=self.failures,
            ejections=self.ejections,
            ejected_for=ejected_for,
        )

    def __repr__(self) -> str:
        return f"<Upstream {self.name} {self.state} in_flight={self.in_flight} weight={self.weight:g}>"


class Pick(Generic[B]):
    """One call's hold on an upstream, from :meth:`UpstreamSet.pick_nowait` to :meth:`UpstreamSet.release`."""

    __slots__ = ("probe", "released", "settled", "upstream")

    def __init__(self, upstream: Upstream[B], *, probe: bool) -> None:
        self.upstream = upstream
        self.probe = probe
        self.settled = False  # the call got its answer, or failed before it
        self.released = False

    def __repr__(self) -> str:
        return f"<Pick {self.upstream.name}{' probe' if self.probe else ''}>"


class UpstreamSet(Generic[B]):
    """The upstreams of one router and their states (see the module docstring)."""

    def __init__(
        self,
        upstreams: Sequence[Upstream[B]],
        *,
        eject_after_failures: int = 3,
        eject_delay: float = 5.0,
        eject_max_delay: float = 60.0,
    ) -> None:
        if not upstreams:
            raise ValueError("an UpstreamSet needs at least one upstream")
        if eject_after_failures < 1 or eject_delay <= 0 or eject_max_delay < eject_delay:
            raise ValueError("eject_after_failures >= 1, eject_delay > 0, eject_max_delay >= eject_delay")
        self.upstreams = tuple(upstreams)
        self.eject_after_failures = eject_after_failures
        self.eject_delay = eject_delay
        self.eject_max_delay = eject_max_delay
        self._room = trio.lowlevel.ParkingLot()  # calls waiting for room under a per-upstream cap

    def __repr__(self) -> str:
        return f"<UpstreamSet {list(self.upstreams)}>"

    def serving(self, model: str | None) -> list[Upstream[B]]:
        """The upstreams that serve ``model``; :class:`ModelNotFoundError` when none does."""
        found = [u for u in self.upstreams if u.serves(model)]
        if not found:
            served = sorted({m for u in self.upstreams for m in u.models})
            raise ModelNotFoundError(
                f"The model {model!r} is not served by any upstream of this gateway "
                f"(served: {', '.join(served)})",
                model=str(model),
            )
        return found

    # -- picking ------------------------------------------------------------------

    def _probe_due(self, u: Upstream[B], now: float) -> bool:
        return u.state == "ejected" and now >= u.ejected_until

    def unavailable(self, candidates: Iterable[Upstream[B]]) -> UpstreamUnavailableError | None:
        """The error to fail at once with when none of ``candidates`` may take a call now, else None.

        An upstream that is up (with or without room) or due for its probe
        may; one ejected, or being probed, may not. ``retry_after`` is the
        time until the first ejected one is due (0 when only probes are out).
        """
        now = trio.current_time()
        waits: list[float] = []
        for u in candidates:
            if u.state == "up" or self._probe_due(u, now):
                return None
            waits.append(max(0.0, u.ejected_until - now) if u.state == "ejected" else 0.0)
        return UpstreamUnavailableError(
            "every upstream is ejected after failing (outlier detection); not sent",
            retry_after=min(waits) if waits else self.eject_delay,
        )

    def pick_nowait(
        self, candidates: Sequence[Upstream[B]], *, avoid: Iterable[Upstream[B]] = ()
    ) -> Pick[B]:
        """Take a slot on the best of ``candidates`` for one call; :meth:`release` it after.

        Upstreams in ``avoid`` (tried already by this call) are taken only
        when no other may take the call. Raises :class:`UpstreamUnavailableError`
        when none may (all ejected or being probed), and :class:`trio.WouldBlock`
        when those that may are all at their cap.
        """
        now = trio.current_time()
        avoided = set(avoid)
        usable = [u for u in candidates if u.state == "up" or self._probe_due(u, now)]
        if not usable:
            error = self.unavailable(candidates)
            assert error is not None
            raise error
        fresh = [u for u in usable if u not in avoided and u.has_room]
        pool = fresh or [u for u in usable if u.has_room]
        if not pool:
            raise trio.WouldBlock
        for u in pool:
            if u.state == "ejected":  # a due probe goes first: one call risked to bring it back
                u.state = "probing"
                logger.info("upstream %s: probing with one request", u.name)
                return self._take(u, probe=True)
        best = min(u.in_flight / u.weight for u in pool)
        tied = [u for u in pool if u.in_flight / u.weight == best]
        chosen = tied[0]
        if len(tied) > 1:
            total = 0.0
            for u in tied:
                u._current += u.weight
                total += u.weight
                if u._current > chosen._current:
                    chosen = u
            chosen._current -= total
        return self._take(chosen, probe=False)

    async def pick(
        self, candidates: Sequence[Upstream[B]], *, avoid: Iterable[Upstream[B]] = ()
    ) -> Pick[B]:
        """As :meth:`pick_nowait`, waiting (under the caller's deadline) while all are at their cap."""
        avoid = tuple(avoid)
        while True:
            try:
                return self.pick_nowait(candidates, avoid=avoid)
            except trio.WouldBlock:
                await self._room.park()

    def _take(self, u: Upstream[B], *, probe: bool) -> Pick[B]:
        u.in_flight += 1
        u.attempts += 1
        return Pick(u, probe=probe)

    # -- outcomes -----------------------------------------------------------------

    def answered(self, pick: Pick[B]) -> None:
        """The call got an answer (its first byte, or a status that is not a failure)."""
        if pick.settled:
            return
        pick.settled = True
        u = pick.upstream
        u.failures = 0
        if pick.probe and u.state == "probing":
            u.state = "up"
            u.up_since = trio.current_time()
            logger.warning("upstream %s: the probe was answered; taking traffic again", u.name)

    def failed(self, pick: Pick[B], exc: UpstreamError) -> None:
        """The call failed before its first byte with ``exc``.

        A probe that fails for any reason ejects its upstream again; another
        call counts only a connection failure or a 5xx (:func:`is_outlier_failure`).
        """
        if pick.settled:
            return
        pick.settled = True
        u = pick.upstream
        u.note_error(exc)
        if pick.probe:
            if u.state == "probing":
                self._eject(u, f"the probe failed ({exc.code})")
            return
        if u.state != "up" or not is_outlier_failure(exc):
            return
        u.failures += 1
        if u.failures >= self.eject_after_failures:
            self._eject(u, f"{u.failures} consecutive failures (last: {exc.code})")

    def release(self, pick: Pick[B]) -> None:
        """The call is over (its response closed): give its slot back. Idempotent."""
        if pick.released:
            return
        pick.released = True
        u = pick.upstream
        u.in_flight -= 1
        if pick.probe and not pick.settled and u.state == "probing":
            u.state = "ejected"  # abandoned before an answer: the next call probes at once
            u.ejected_until = trio.current_time()
        self._room.unpark_all()

    def _eject(self, u: Upstream[B], why: str) -> None:
        now = trio.current_time()
        if u.streak and u.up_since is not None and now - u.up_since >= self.eject_max_delay:
            u.streak = 0  # it stayed up long enough: the delay starts over
        delay = min(self.eject_delay * 2**u.streak, self.eject_max_delay)
        u.streak += 1
        u.ejections += 1
        u.failures = 0
        u.state = "ejected"
        u.ejected_until = now + delay
        logger.warning("upstream %s ejected for %gs: %s", u.name, delay, why)
        self._room.unpark_all()  # waiters for its room must look elsewhere
