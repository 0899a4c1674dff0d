"""trio_agent.bench._report: the terminal table, the JSON document, CDF data, progress line."""

from __future__ import annotations

import dataclasses
import io
import json

from trio_agent.bench import (
    BenchResult,
    ClientFigures,
    CPUTimes,
    Outcome,
    ProgressLine,
    RequestRecord,
    ServerFigures,
    cdf_points,
    compute_metrics,
    format_result,
    format_sweep,
    result_to_json,
)
from trio_agent.config import BenchConfig


def make_result(concurrency: int = 2) -> BenchResult:
    records = (
        RequestRecord(
            index=0,
            scheduled_at=0.0,
            sent_at=0.0,
            end_at=1.0,
            outcome=Outcome.OK,
            first_token_at=0.5,
            token_times=(0.5, 0.75, 1.0),
            output_tokens=3,
            sse_events=5,
            status_code=200,
        ),
        RequestRecord(
            index=1,
            scheduled_at=0.0,
            sent_at=0.0,
            end_at=0.01,
            outcome=Outcome.SHED,
            status_code=503,
            error_code="overloaded",
            retry_after=1.0,
        ),
    )
    config = BenchConfig(
        url="http://127.0.0.1:1", concurrency=concurrency, requests=2, label="unit", slo_ttft=1.0
    )
    metrics = compute_metrics(records, duration=2.0)
    return BenchResult(
        config=config,
        started_at="2026-01-01T00:00:00+00:00",
        duration=2.0,
        records=records,
        metrics=metrics,
        client=ClientFigures(
            processes=1,
            cpu=CPUTimes(user=0.5, system=0.25),
            wall=2.0,
            sse_events=5,
            us_per_event=150000.0,
            events_per_second=2.5,
            max_process_utilization=0.375,
        ),
        server=ServerFigures(
            pid=42,
            processes=2,
            cpu=CPUTimes(user=1.0, system=0.5),
            peak_rss_bytes=50 * 2**20,
            cpu_ms_per_1k_tokens_user=333.3,
            cpu_ms_per_1k_tokens_total=500.0,
            cpu_ms_per_request_user=1000.0,
            cpu_ms_per_request_total=1500.0,
            cpu_utilization=0.75,
        ),
    )


def test_format_result_shows_the_figures() -> None:
    text = format_result(make_result())
    assert "trio-agent bench: unit" in text
    assert "ok 1, shed 1" in text
    assert "0.50 req/s (1 ended in the window), 1.5 output tok/s delivered" in text
    assert "shed rate    50.0%" in text
    assert "TTFT" in text and "500.0" in text
    assert "pid 42 (2 processes)" in text and "peak RSS 50.0 MiB" in text
    assert "user 333.3, total 500.0" in text
    assert "150000.0 µs CPU per event" in text
    assert "shed/503/overloaded x1" in text


def test_format_result_names_the_ramp_up_of_a_closed_loop() -> None:
    result = make_result()
    assert "ramp-up" not in format_result(result)
    ramped = dataclasses.replace(result, config=dataclasses.replace(result.config, ramp_up=0.75))
    assert "closed loop, concurrency 2, ramp-up 0.75 s" in format_result(ramped)


def test_json_document_round_trips() -> None:
    doc = json.loads(json.dumps(result_to_json(make_result())))
    assert doc["label"] == "unit"
    assert doc["config"]["concurrency"] == 2
    assert doc["metrics"]["ok"] == 1
    assert doc["metrics"]["ttft"]["p50"] == 0.5
    assert doc["metrics"]["outcomes"]["shed"] == 1
    assert doc["server"]["cpu"] == {"user": 1.0, "system": 0.5}
    assert doc["client"]["us_per_event"] == 150000.0
    assert doc["records"] == {
        "count": 2,
        "by_status": {"200": 1, "503": 1},
        "errors": {"shed/503/overloaded": 1},
    }


def test_format_sweep_has_a_row_per_point() -> None:
    text = format_sweep("concurrency", [make_result(2), make_result(20)])
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[2].split()[:2] == ["2", "0.5"]
    assert lines[3].split()[0] == "20"
    assert lines[3].split()[-1] == "500.0"


def test_cdf_points() -> None:
    assert cdf_points([3.0, 1.0, 2.0, 2.0]) == ([1.0, 2.0, 2.0, 3.0], [0.25, 0.5, 0.75, 1.0])


def test_progress_line() -> None:
    out = io.StringIO()
    line = ProgressLine(out, "x")
    line.finish()
    assert out.getvalue() == ""
    line(3, 10, 1.25)
    line(4, None, 2.5)
    line(None, None, 3.0)
    line.finish()
    assert out.getvalue() == (
        "\r[x] 3/10 requests done, 1.2 s elapsed   \r[x] 4 requests done, 2.5 s elapsed   "
        "\r[x] running, 3.0 s elapsed   \n"
    )
