"""Outcome: the result of one mapped item, as data.

``map_concurrently`` and ``as_completed`` never turn a failure into a string:
each item ends in exactly one of four states, recorded with its input index and
how long it ran. ``unwrap()`` turns the record back into a value or an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, cast

T = TypeVar("T")

OutcomeStatus = Literal["ok", "error", "timeout", "cancelled"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome(Generic[T]):
    """How one item of a concurrent map ended.

    - ``index``: the item's position in the input.
    - ``status``: ``"ok"`` (``value`` holds the result), ``"error"`` (``fn``
      raised; ``error`` holds the exception), ``"timeout"`` (it ran longer than
      ``item_timeout``; ``error`` is an :class:`~trio_agent.ItemTimeoutError`) or
      ``"cancelled"`` (the map's ``total_timeout`` ran out first; ``error`` is an
      :class:`~trio_agent.ItemCancelledError`).
    - ``duration``: seconds on trio's clock from the call to ``fn`` to its end
      (0.0 for an item that never started). Waits for the limiter and the rate
      limiter are not included.
    """

    index: int
    status: OutcomeStatus
    value: T | None = None
    error: BaseException | None = None
    duration: float = 0.0

    def __post_init__(self) -> None:
        if (self.status == "ok") != (self.error is None):
            raise ValueError("an outcome carries an error exactly when its status is not 'ok'")

    @property
    def ok(self) -> bool:
        """True when the item returned a value."""
        return self.status == "ok"

    def unwrap(self) -> T:
        """Return the value, or raise the error this item ended with."""
        if self.error is not None:
            raise self.error
        return cast(T, self.value)
