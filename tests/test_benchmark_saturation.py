"""The suite's check of issue 20's third goal (first tokens at saturation) and its overload runs."""

from __future__ import annotations


def _run(server: str, ttft_p99: float, rps: float) -> dict[str, object]:
    return {
        "scenario": "seed1000",
        "server_name": server,
        "metrics": {"ttft": {"p99": ttft_p99}, "request_throughput": rps},
    }


def test_the_saturation_goal_needs_both_the_ttft_and_the_throughput() -> None:
    from benchmarks import suite

    met = suite.saturation_goal([_run("trio_agent", 0.150, 600.0), _run("seed_demo", 0.170, 342.0)])
    assert any("TTFT p99 150 ms against the seed demo's 170 ms" in line for line in met)
    assert met[-2].endswith("600.0 against 342.0 req/s, 1.75x (goal >= 1.5x): met")
    slow = suite.saturation_goal([_run("trio_agent", 0.446, 982.0), _run("seed_demo", 0.170, 342.0)])
    assert slow[-2].endswith("not met")
    few = suite.saturation_goal([_run("trio_agent", 0.100, 500.0), _run("seed_demo", 0.170, 342.0)])
    assert few[-2].endswith("1.46x (goal >= 1.5x): not met")
    assert suite.saturation_goal([_run("trio_agent", 0.1, 1.0)]) == []  # no demo run: no line


def test_only_the_overload_runs_ask_for_loop_lag_shedding() -> None:
    from benchmarks import suite

    closed = suite.trio_agent_command(suite.ServerArgs())
    assert closed[closed.index("--max-loop-lag") + 1] == "0.0"
    overload = suite.trio_agent_command(suite.ServerArgs(max_loop_lag=suite.OVERLOAD_MAX_LOOP_LAG))
    assert overload[overload.index("--max-loop-lag") + 1] == "0.075"
