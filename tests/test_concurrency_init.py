"""trio_agent.concurrency re-exports its private modules, and trio_agent re-exports it."""

import trio_agent
import trio_agent.concurrency as concurrency


def test_every_helper_is_exported_from_the_package_root() -> None:
    assert set(concurrency.__all__) <= set(trio_agent.__all__)
    for name in concurrency.__all__:
        assert getattr(trio_agent, name) is getattr(concurrency, name)


def test_all_is_sorted_and_documented() -> None:
    assert list(concurrency.__all__) == sorted(concurrency.__all__)
    assert all((getattr(concurrency, name).__doc__ or "").strip() for name in concurrency.__all__)
    assert all(getattr(concurrency, name).__module__.startswith("trio_agent.concurrency._") for name in concurrency.__all__)
