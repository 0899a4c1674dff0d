"""gc_threshold: the youngest generation's threshold while a server runs, restored on every exit."""

from __future__ import annotations

import gc

import pytest

from trio_agent.http import gc_threshold


def test_sets_and_restores_the_youngest_generations_threshold() -> None:
    before = gc.get_threshold()
    assert before[0] != 12_345
    with gc_threshold(12_345):
        assert gc.get_threshold() == (12_345, *before[1:])
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), gc_threshold(23_456):
        raise RuntimeError("the server failed")
    assert gc.get_threshold() == before
    with gc_threshold(0):  # 0: the collector is left as it is
        assert gc.get_threshold() == before
