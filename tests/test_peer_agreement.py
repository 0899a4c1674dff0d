"""benchmarks/peer_agreement.py: its diagnostics, its table, and a clean skip without the peer tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import peer_agreement as pa


def test_sync_neighbours_tells_a_wave_in_phase_from_spread_sends() -> None:
    in_phase = [w * 0.75 + i * 0.0001 for w in range(3) for i in range(8)]
    assert pa.sync_neighbours(in_phase) == 7  # each send has the other 7 of its wave beside it
    spread = [i * 0.1 for i in range(24)]
    assert pa.sync_neighbours(spread) == 0
    assert pa.sync_neighbours([]) == 0


def test_redispatch_matches_the_kth_end_to_the_next_send() -> None:
    # Two streams; each request lasts 1 s and the next goes out 5 ms after an end.
    starts = [0.0, 0.5, 1.005, 1.505, 2.01, 2.51]
    ends = [s + 1.0 for s in starts]
    assert pa.redispatch_ms(starts, ends, 2) == pytest.approx(5.0)
    assert pa.redispatch_ms(starts[:2], ends[:2], 2) is None


def test_table_gives_median_spread_and_flags_differences_past_the_tolerance() -> None:
    runs = [
        {"tool": t, "c": 16, "ramp_up": 0.0, "repeat": k, "req_s": 20.0, "ttft_p50": v,
         "itl_p50": 11.0, "e2e_p50": 760.0, "gap_itl_p50": 10.4, "sync20": 15.0, "redispatch_ms": 0.1}
        for t, vals in (("bench", (113.0, 112.0, 115.0)), ("aiperf", (107.0,) * 3), ("guidellm", (106.0,) * 3))
        for k, v in enumerate(vals)
    ]  # fmt: skip
    runs.append({"tool": "aiperf", "c": 16, "ramp_up": 0.0, "repeat": 3, "error": "boom"})
    text = pa.format_tables(runs, tolerance=5.0)
    ttft = next(line for line in text.splitlines() if "TTFT" in line)
    assert "113.0 (112.0-115.0)" in ttft
    assert "+5.6% !" in ttft and "+6.6% !" in ttft
    req = next(line for line in text.splitlines() if "req/s" in line)
    assert "+0.0%" in req and "!" not in req
    assert "failed: aiperf c=16 repeat 3: boom" in text


def test_without_the_peer_tools_it_says_how_to_install_them_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pa.main(["--peer", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "nothing was run" in out and "pip install aiperf==0.13.0" in out
