"""Outcome: one mapped item's end, as data."""

import pytest

from trio_agent import ItemCancelledError, ItemTimeoutError, Outcome


def test_unwrap_ok_returns_the_value() -> None:
    outcome = Outcome(index=3, status="ok", value="x", duration=1.5)
    assert outcome.ok
    assert outcome.unwrap() == "x"


def test_unwrap_error_raises_the_original_exception() -> None:
    error = ValueError("boom")
    outcome: Outcome[str] = Outcome(index=0, status="error", error=error)
    assert not outcome.ok
    with pytest.raises(ValueError) as info:
        outcome.unwrap()
    assert info.value is error


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("timeout", ItemTimeoutError("slow", timeout=2.0, index=1)),
        ("cancelled", ItemCancelledError("cut", index=1)),
    ],
)
def test_unwrap_timeout_and_cancelled_raise_typed_errors(
    status: str, error: Exception
) -> None:
    outcome: Outcome[int] = Outcome(index=1, status=status, error=error)  # type: ignore[arg-type]
    with pytest.raises(type(error)):
        outcome.unwrap()


def test_error_present_exactly_when_not_ok() -> None:
    with pytest.raises(ValueError):
        Outcome(index=0, status="ok", error=ValueError())
    with pytest.raises(ValueError):
        Outcome(index=0, status="error")


def test_outcome_is_frozen() -> None:
    outcome = Outcome(index=0, status="ok", value=1)
    with pytest.raises(AttributeError):
        outcome.index = 2  # type: ignore[misc]
