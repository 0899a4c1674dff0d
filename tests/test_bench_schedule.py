"""trio_agent.bench._schedule: seeded, reproducible arrivals; shards; even splits."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from trio_agent.bench import arrival_times, ramp_offsets, shard, split_evenly


def take(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    return list(itertools.islice(arrival_times(rate, burstiness, random.Random(seed)), n))


def test_same_seed_same_schedule_and_no_global_random() -> None:
    random.seed(1)
    first = take(100, 10.0, 1.0, seed=42)
    random.seed(2)  # the global generator plays no part
    assert take(100, 10.0, 1.0, seed=42) == first
    assert take(100, 10.0, 1.0, seed=43) != first


def test_arrivals_increase_from_zero() -> None:
    times = take(1000, 50.0, 0.5, seed=0)
    assert times[0] > 0
    assert all(b > a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gaps_have_mean_one_over_rate_and_cv_one_over_sqrt_burstiness(burstiness: float) -> None:
    times = take(20_000, 20.0, burstiness, seed=7)
    gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
    mean = statistics.fmean(gaps)
    cv = statistics.pstdev(gaps) / mean
    # 20,000 gaps: the sample mean and CV are within a few percent of the truth.
    assert mean == pytest.approx(1 / 20.0, rel=0.05)
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.07)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        next(arrival_times(0.0, 1.0, random.Random(0)))
    with pytest.raises(ValueError):
        next(arrival_times(1.0, 0.0, random.Random(0)))


def test_shards_partition_the_one_schedule() -> None:
    full = take(30, 5.0, 1.0, seed=3)
    parts = [list(shard(full, k, 3)) for k in range(3)]
    assert parts[0][:2] == [(0, full[0]), (3, full[3])]
    merged = sorted(item for part in parts for item in part)
    assert merged == list(enumerate(full))
    with pytest.raises(ValueError):
        shard(full, 3, 3)


def test_split_evenly() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 4) == [1, 1, 0, 0]
    assert sum(split_evenly(1001, 7)) == 1001
    with pytest.raises(ValueError):
        split_evenly(1, 0)


def test_ramp_offsets_spread_evenly_and_shards_cover_every_worker() -> None:
    assert ramp_offsets(0.0, 3) == [0.0, 0.0, 0.0]
    assert ramp_offsets(1.0, 4) == [0.0, 0.25, 0.5, 0.75]
    for total, count in ((7, 3), (64, 2), (5, 5), (16, 1)):
        parts = [ramp_offsets(2.0, total, k, count) for k in range(count)]
        assert [len(p) for p in parts] == split_evenly(total, count)
        merged = sorted(t for p in parts for t in p)
        assert merged == pytest.approx([2.0 * k / total for k in range(total)])


def test_ramp_offsets_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        ramp_offsets(-0.1, 4)
    with pytest.raises(ValueError):
        ramp_offsets(1.0, 4, 2, 2)
