"""The agent benchmark's pure metrics (benchmarks/agent_load.py), on synthetic event records.

Times are binary fractions, so every figure is exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.agent_load import (
    DisconnectTrial,
    Event,
    RunRecord,
    agent_metrics,
    analyze_run,
    disconnect_summary,
    read_gauge,
    read_gauges,
)
from trio_agent.bench import CPUTimes


def ev(t: float, type_: str, call_id: str | None = None, ms: float | None = None) -> Event:
    return Event(t=t, type=type_, call_id=call_id, duration_ms=ms)


def two_step_run(start: float = 0.0, *, outcome: str = "ok") -> RunRecord:
    """Step 1 calls a and b; step 2 answers in text. Latency 2, critical path 1.5."""
    s = start
    return RunRecord(
        start=s,
        end=s + 2.0,
        outcome=outcome,
        events=(
            ev(s + 0.125, "thinking"),
            ev(s + 0.25, "step_start"),
            ev(s + 0.5, "tool_call", "a"),
            ev(s + 0.5, "tool_started", "a"),
            ev(s + 0.75, "tool_call", "b"),
            ev(s + 0.75, "tool_started", "b"),
            ev(s + 0.875, "step_end"),
            ev(s + 1.0, "tool_result", "a", 500.0),
            ev(s + 1.0, "tool_result", "b", 250.0),
            ev(s + 1.25, "step_start"),
            ev(s + 1.5, "token"),
            ev(s + 1.75, "step_end"),
            ev(s + 2.0, "done" if outcome == "ok" else "error"),
        ),
    )


def test_a_run_s_steps_critical_path_overhead_and_speedup() -> None:
    a = analyze_run(two_step_run())
    assert a.latency == 2.0
    first, second = a.steps
    # Model time runs to the last tool_call; the longest tool is the server's duration_ms.
    assert (first.model_time, first.longest_tool, first.tool_count) == (0.5, 0.5, 2)
    # From arrival times: spans a 0.5 + b 0.25; the tool phase runs from the last call (0.75)
    # to the last end (1.0); a started with its call, before the phase, so the speedup passes
    # the tool count; the overlap is over first start to last end.
    assert (first.tool_sum, first.tool_spans) == (0.75, 0.75)
    assert (first.tool_phase, first.speedup) == (0.25, 3.0)
    assert (first.tool_wall, first.overlap) == (0.5, 1.5)
    # Without calls, model time runs to step_end, and there is no tool phase.
    assert (second.model_time, second.longest_tool, second.tool_count) == (0.5, 0.0, 0)
    assert second.tool_phase is None and second.speedup is None and second.overlap is None
    assert a.critical_path == 1.5
    assert a.overhead_per_step == 0.25


def test_durations_fall_back_to_arrival_times_and_errors_end_a_tool() -> None:
    record = RunRecord(
        start=0.0,
        end=1.0,
        outcome="ok",
        events=(
            ev(0.0, "step_start"),
            ev(0.25, "tool_call", "x"),
            ev(0.25, "tool_call", "y"),
            ev(0.25, "tool_started", "x"),
            ev(0.375, "tool_started", "y"),
            ev(0.5, "tool_result", "x"),  # no duration_ms: 0.5 - 0.25
            ev(0.875, "tool_error", "y"),  # an error ends its tool too: 0.875 - 0.375
            ev(1.0, "done"),
        ),
    )
    (step,) = analyze_run(record).steps
    # No step_end: the model time still ends at the last call.
    assert (step.model_time, step.longest_tool, step.tool_sum) == (0.25, 0.5, 0.75)
    assert step.tool_phase == step.tool_wall == 0.625
    assert step.speedup == step.overlap == 0.75 / 0.625
    assert analyze_run(record).overhead_per_step == 1.0 - 0.75


def test_speedup_uses_arrival_times_only() -> None:
    # The server says each tool took 0.5 s, but their events arrived 0.25 s apart, in a
    # 0.375 s phase: the client's clock alone gives the speedup, never above the tool count.
    record = RunRecord(
        start=0.0,
        end=1.0,
        outcome="ok",
        events=(
            ev(0.0, "step_start"),
            ev(0.125, "tool_call", "x"),
            ev(0.125, "tool_call", "y"),
            ev(0.125, "tool_started", "x"),
            ev(0.25, "tool_started", "y"),
            ev(0.375, "tool_result", "x", 500.0),
            ev(0.5, "tool_result", "y", 500.0),
            ev(1.0, "done"),
        ),
    )
    (step,) = analyze_run(record).steps
    assert (step.tool_sum, step.longest_tool) == (1.0, 0.5)
    assert (step.tool_spans, step.tool_phase) == (0.5, 0.375)
    assert step.speedup == 0.5 / 0.375


def test_tools_started_with_their_calls_against_tools_started_after_the_model() -> None:
    # Two tools of 0.25 s; calls complete at 0.25 and 0.5. Early start: each starts with its
    # call. After the model: both start at the last call. Each server waits 0.25 s on tools
    # after the model; the early one's tools overlap less, as they were handed over apart.
    def run(starts: tuple[float, float]) -> RunRecord:
        return RunRecord(
            start=0.0,
            end=1.0,
            outcome="ok",
            events=(
                ev(0.0, "step_start"),
                ev(0.25, "tool_call", "a"),
                ev(starts[0], "tool_started", "a"),
                ev(0.5, "tool_call", "b"),
                ev(starts[1], "tool_started", "b"),
                ev(starts[0] + 0.25, "tool_result", "a"),
                ev(starts[1] + 0.25, "tool_result", "b"),
                ev(1.0, "done"),
            ),
        )

    (early,) = analyze_run(run((0.25, 0.5))).steps
    (late,) = analyze_run(run((0.5, 0.5))).steps
    assert early.tool_phase == late.tool_phase == 0.25
    assert early.speedup == late.speedup == 2.0
    assert (early.overlap, late.overlap) == (1.0, 2.0)


def test_tool_events_belong_to_the_step_of_their_call() -> None:
    # A slow tool's result arrives after the next step started (a server that streams the
    # next step before every result is in); it still counts for the step that called it.
    record = RunRecord(
        start=0.0,
        end=2.0,
        outcome="ok",
        events=(
            ev(0.0, "step_start"),
            ev(0.25, "tool_call", "a"),
            ev(0.25, "tool_started", "a"),
            ev(0.5, "step_start"),
            ev(0.75, "tool_result", "a", 500.0),
            ev(1.0, "step_end"),
            ev(2.0, "done"),
        ),
    )
    first, second = analyze_run(record).steps
    assert (first.tool_count, first.longest_tool, first.tool_phase) == (1, 0.5, 0.5)
    assert (second.tool_count, second.model_time) == (0, 0.5)


def test_a_run_without_steps_has_no_overhead() -> None:
    a = analyze_run(RunRecord(start=0.0, end=0.5, outcome="error", events=(ev(0.5, "error"),)))
    assert a.steps == () and a.critical_path == 0.0 and a.overhead_per_step is None


def test_closed_loop_metrics_over_the_window() -> None:
    records = [
        two_step_run(0.0),  # sent in the warm-up, ends at 2.0 in the window: counted, not measured
        two_step_run(1.0),  # measured, ends at 3.0
        two_step_run(2.0),  # measured, ends at 4.0
        two_step_run(3.0),  # measured, ends at 5.0 after the window: latency only
        two_step_run(1.5, outcome="error"),
    ]
    m = agent_metrics(
        records, window_start=1.0, window_end=4.0, server_cpu=CPUTimes(user=0.018, system=0.006)
    )
    assert m.window == 3.0
    assert m.outcomes == {"ok": 4, "error": 1}
    assert (m.runs_started, m.runs_measured) == (5, 3)
    assert m.runs_per_second == 1.0  # three ok runs ended in [1, 4]
    # step_start events in [1, 4) of every run: 1 + 2 + 2 + 1 + 2 (the failed run's too).
    assert m.steps_per_second == 8 / 3
    assert m.steps_per_run == 2.0 and m.tool_calls_per_run == 2.0
    assert (m.latency.n, m.latency.p50, m.latency.max) == (3, 2.0, 2.0)
    assert m.critical_path.p50 == 1.5
    assert (m.overhead_per_step.n, m.overhead_per_step.p99) == (3, 0.25)
    assert (m.parallel_speedup.n, m.parallel_speedup.mean, m.parallel_speedup_min) == (3, 3.0, 3.0)
    assert (m.tool_overlap.n, m.tool_overlap.mean) == (3, 1.5)
    # 24 ms of CPU over the 8 steps started in the window.
    assert m.server_cpu_ms_per_step_user == pytest.approx(2.25)
    assert m.server_cpu_ms_per_step_total == pytest.approx(3.0)


def test_metrics_of_nothing() -> None:
    m = agent_metrics([], window_start=0.0, window_end=1.0, server_cpu=CPUTimes(user=1, system=0))
    assert m.runs_per_second == 0.0 and m.steps_per_run is None and m.tool_calls_per_run is None
    assert m.latency.n == 0 and m.server_cpu_ms_per_step_total is None


def test_parallel_speedup_counts_only_steps_with_two_or_more_tools() -> None:
    one_tool = RunRecord(
        start=0.0,
        end=1.0,
        outcome="ok",
        events=(
            ev(0.0, "step_start"),
            ev(0.25, "tool_call", "a"),
            ev(0.25, "tool_started", "a"),
            ev(0.5, "tool_result", "a", 250.0),
            ev(1.0, "done"),
        ),
    )
    m = agent_metrics([one_tool], window_start=0.0, window_end=1.0)
    assert m.parallel_speedup.n == 0 and m.parallel_speedup_min is None
    assert m.tool_overlap.n == 0
    assert m.server_cpu_ms_per_step_user is None


def test_disconnect_summary() -> None:
    trials = [DisconnectTrial(ok=True, cancel_time=t / 1000, finished=0.0) for t in range(1, 100)]
    trials.append(DisconnectTrial(ok=True, cancel_time=None, left_running=2.0, finished=1.0))
    trials.append(DisconnectTrial(ok=False, error="incomplete before 4 tools started"))
    s = disconnect_summary(trials)
    assert (s["trials"], s["disconnected"], s["failed"]) == (101, 100, 1)
    assert s["trials_with_tools_left_running"] == 1
    assert s["trials_with_tools_finished"] == 1
    assert s["cancel_time"]["n"] == 99 and s["cancel_time"]["max"] == 0.099
    assert s["cancel_time_p99"] == pytest.approx(0.09802)


def test_read_gauge_from_json_by_dotted_path() -> None:
    body = b'{"tools_running": 3, "agent": {"tools": {"running": 0, "ok": true}}}'
    assert read_gauge(body, "application/json", "tools_running") == 3.0
    assert read_gauge(body, "application/json; charset=utf-8", "agent.tools.running") == 0.0
    for missing in ("nope", "agent.tools.nope", "tools_running.x", "agent.tools.ok"):
        with pytest.raises(KeyError):
            read_gauge(body, "application/json", missing)


def test_read_gauge_sums_a_prometheus_metric_over_its_labels() -> None:
    body = (
        b"# HELP trio_agent_tools_running Tool calls running now.\n"
        b"# TYPE trio_agent_tools_running gauge\n"
        b'trio_agent_tools_running{tool="search_web"} 2\n'
        b'trio_agent_tools_running{tool="get_weather"} 1\n'
        b"trio_agent_tools_running_total 40\n"
        b"trio_agent_tools 7\n"
    )
    assert read_gauge(body, "text/plain; version=0.0.4", "trio_agent_tools_running") == 3.0
    assert read_gauge(body, "text/plain", "trio_agent_tools") == 7.0
    with pytest.raises(KeyError):
        read_gauge(body, "text/plain", "trio_agent_tools_cancelled")


def test_read_gauges_sums_comma_separated_keys() -> None:
    body = b"trio_agent_agent_running_tools 3\ntrio_agent_agent_queued_tools 2\n"
    keys = "trio_agent_agent_running_tools, trio_agent_agent_queued_tools"
    assert read_gauges(body, "text/plain", keys) == 5.0
    assert read_gauges(b'{"a": 1, "b": {"c": 2}}', "application/json", "a,b.c") == 3.0
    with pytest.raises(KeyError):
        read_gauges(body, "text/plain", "trio_agent_agent_running_tools,nope")


def test_the_suite_skips_every_agent_scenario_without_a_tool_calling_mock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import suite

    monkeypatch.setattr(suite, "agent_mock_llm_command", lambda: "no tool calls")
    s = suite.Suite(["trio_agent", "agents_baseline"], suite.QUICK, tmp_path, None)
    s.run_agent(10)
    s.run_agent(None)
    assert [(r["scenario"], r["server_name"], r["skipped"]) for r in s.agent_results] == [
        ("agent10", "trio_agent", "no tool calls"),
        ("agent10", "agents_baseline", "no tool calls"),
        ("agent-disconnect", "trio_agent", "no tool calls"),
        ("agent-disconnect", "agents_baseline", "no tool calls"),
    ]


def test_the_suite_checks_the_goals_against_the_baseline() -> None:
    from dataclasses import asdict

    from benchmarks import suite

    def closed(server: str, cpu_ms: float, overhead: float) -> dict[str, object]:
        # One run's latency sets the overhead: critical path 1.5 over 2 steps.
        run = two_step_run()
        run = RunRecord(start=0.0, end=1.5 + 2 * overhead, outcome="ok", events=run.events)
        m = agent_metrics(
            [run], window_start=0.0, window_end=4.0, server_cpu=CPUTimes(user=0, system=cpu_ms / 500)
        )
        return {"scenario": "agent100", "server_name": server, "mode": "closed",
                "config": {"concurrency": 100}, "metrics": asdict(m)}  # fmt: skip

    disconnect = {
        "scenario": "agent-disconnect", "server_name": "trio_agent", "mode": "disconnect",
        "summary": disconnect_summary([DisconnectTrial(ok=True, cancel_time=0.004)] * 200),
    }  # fmt: skip
    results = [closed("trio_agent", 1.0, 0.25), closed("agents_baseline", 4.0, 1.0), disconnect]
    goals = suite.agent_goals(results)
    # Overhead 0.25 s against 1.0 s per step; CPU 1 ms against 4 ms per step (2 steps each).
    assert "overhead per step p50 0.25x the baseline's" in goals[2]
    assert "CPU per step 0.25x" in goals[2]
    assert goals[3] == "* agent-mcp100: not measured for both servers"
    assert "tools left running in 0 of 200 trials" in goals[4]
    assert "p99 to every tool cancelled 4.0 ms" in goals[4]
    table = "\n".join(suite.agent_markdown(results))
    assert "| agent100 | trio_agent | c=100 | 0.25 | 2.0 |" in table
    assert "| agent-disconnect | trio_agent | 200 | 200 | 0 | 0 | 4.0 | 4.0 | 4.0 |" in table
