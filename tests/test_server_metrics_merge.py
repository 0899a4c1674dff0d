"""Summing workers' exposition texts: counters, histograms and gauges add up; levels take the max."""

from __future__ import annotations

import math

import pytest

from trio_agent.server import AdmissionStatistics, GatewayMetrics
from trio_agent.server._metrics_merge import format_value, merge_expositions, sample_values


def _stats(in_flight: int, admitted: int) -> AdmissionStatistics:
    return AdmissionStatistics(
        in_flight=in_flight, queued=1, max_concurrency=10, max_queued=5, admitted=admitted,
        shed_full=0, shed_timeout=0, shed_key_limit=0, shed_loop_lag=0, keys_in_flight=0,
        mean_service_time=1.0,
    )  # fmt: skip


def test_counters_histograms_and_gauges_of_two_workers_sum() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    for _ in range(3):
        a.count_response("/chat", 200)
    b.count_response("/chat", 200)
    b.count_response("/chat", 503)  # a series only one worker has
    a.total.observe(0.02)
    b.total.observe(0.3)
    b.total.observe(700.0)  # past the last bucket: only +Inf
    a.tokens_streamed, b.tokens_streamed = 1_234_567, 7_654_321  # past six digits
    merged = sample_values(
        merge_expositions(
            [
                a.render(_stats(2, 30), draining=False),
                b.render(_stats(1, 12), draining=True),
            ]
        )
    )
    assert merged['trio_agent_responses_total{route="/chat",status="200"}'] == 4
    assert merged['trio_agent_responses_total{route="/chat",status="503"}'] == 1
    assert merged["trio_agent_in_flight"] == 3
    assert merged["trio_agent_queued"] == 2
    assert merged["trio_agent_max_concurrency"] == 20  # the host's capacity
    assert merged["trio_agent_admitted_total"] == 42
    assert merged["trio_agent_draining"] == 1  # a level: max, not 2
    assert merged["trio_agent_tokens_streamed_total"] == 8_888_888
    assert merged['trio_agent_request_seconds_bucket{le="0.025"}'] == 1
    assert merged['trio_agent_request_seconds_bucket{le="0.5"}'] == 2
    assert merged['trio_agent_request_seconds_bucket{le="300"}'] == 2
    assert merged['trio_agent_request_seconds_bucket{le="+Inf"}'] == 3
    assert merged["trio_agent_request_seconds_count"] == 3
    assert merged["trio_agent_request_seconds_sum"] == pytest.approx(700.32)


def test_merged_text_keeps_one_header_per_family_in_first_seen_order() -> None:
    one = "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n# HELP g G.\n# TYPE g gauge\ng 2\n"
    two = "# HELP y_total Y.\n# TYPE y_total counter\ny_total 5\n# HELP x_total X.\n# TYPE x_total counter\nx_total 4\n"
    text = merge_expositions([one, two])
    assert text.splitlines() == [
        "# HELP x_total X.", "# TYPE x_total counter", "x_total 5",
        "# HELP g G.", "# TYPE g gauge", "g 2",
        "# HELP y_total Y.", "# TYPE y_total counter", "y_total 5",
    ]  # fmt: skip


def test_level_gauges_take_the_largest_worker() -> None:
    text = "# HELP trio_agent_loop_lag_seconds L.\n# TYPE trio_agent_loop_lag_seconds gauge\n"
    merged = sample_values(
        merge_expositions([text + "trio_agent_loop_lag_seconds 0.25\n", text + "trio_agent_loop_lag_seconds 0.5\n"])
    )
    assert merged == {"trio_agent_loop_lag_seconds": 0.5}


def test_label_values_with_spaces_and_escapes_survive() -> None:
    line = 'x_total{model="a b\\"c"} 2\n'
    text = "# TYPE x_total counter\n" + line
    assert sample_values(merge_expositions([text, text])) == {'x_total{model="a b\\"c"}': 4}


def test_a_line_that_is_not_a_sample_is_refused() -> None:
    with pytest.raises(ValueError):
        merge_expositions(["# TYPE x counter\nx_total twelve\n"])
    with pytest.raises(ValueError):
        merge_expositions(["garbage\n"])


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (3.0, "3"), (1_234_567.0, "1234567"), (0.1, "0.1"), (2.0**60, "1.152921504606847e+18"),
     (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN")],
)  # fmt: skip
def test_values_print_without_losing_digits(value: float, text: str) -> None:
    assert format_value(value) == text
    parsed = float(text)
    assert parsed == value or (math.isnan(parsed) and math.isnan(value))
