"""trio_agent.bench re-exports its private modules' public names, documented."""

import types

import trio_agent.bench as bench


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(bench).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(bench.__all__) == public


def test_all_is_sorted_and_documented() -> None:
    assert list(bench.__all__) == sorted(bench.__all__)
    assert all((getattr(bench, name).__doc__ or "").strip() for name in bench.__all__)
    assert all(getattr(bench, name).__module__.startswith("trio_agent.bench._") for name in bench.__all__)

