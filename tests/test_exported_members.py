"""trio_agent.__all__ lists exactly the public names the package exports."""

import types

import trio_agent


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(trio_agent).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(trio_agent.__all__) == public


def test_all_is_sorted_and_unique() -> None:
    assert list(trio_agent.__all__) == sorted(set(trio_agent.__all__))


def test_every_public_name_has_a_docstring() -> None:
    missing = [
        name
        for name in trio_agent.__all__
        if not (getattr(trio_agent, name).__doc__ or "").strip()
    ]
    assert missing == []
