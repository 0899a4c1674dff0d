"""Reports of benchmark results: a terminal table, a JSON document, PNG plots.

Plots need matplotlib (the ``bench`` extra); it is imported only when plots
are asked for, so the rest of trio_agent does not depend on it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ._metrics import Summary
from ._records import Outcome, RequestRecord
from ._run import BenchResult

__all__ = [
    "ProgressLine",
    "cdf_points",
    "format_result",
    "format_sweep",
    "result_to_json",
    "write_plots",
]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _describe_load(result: BenchResult) -> str:
    cfg = result.config
    if cfg.rate is None:
        mode = f"closed loop, concurrency {cfg.concurrency}"
        if cfg.ramp_up:
            mode += f", ramp-up {cfg.ramp_up:g} s"
    else:
        mode = (
            f"open loop, rate {cfg.rate:g}/s, burstiness {cfg.burstiness:g}, "
            f"max concurrency {cfg.concurrency}"
        )
    bound = []
    if cfg.requests is not None:
        bound.append(f"{cfg.requests} requests")
    if cfg.duration is not None:
        bound.append(f"{cfg.duration:g} s")
    return f"{mode}; {' or '.join(bound)}; warm-up {cfg.warmup:g} s"


def format_result(result: BenchResult) -> str:
    """A readable multi-line report of one run."""
    m = result.metrics
    cfg = result.config
    title = f" trio-agent bench{': ' + cfg.label if cfg.label else ''} "
    lines = [
        title.center(72, "="),
        f"target       {cfg.url} ({cfg.api})",
        f"load         {_describe_load(result)}",
        f"window       {m.window:.2f} s measured ({result.duration:.2f} s run)",
        "outcomes     "
        + ", ".join(f"{k} {v}" for k, v in m.outcomes.items() if v)
        + (f" (+{m.warmup_requests} warm-up)" if m.warmup_requests else ""),
        f"throughput   {m.request_throughput:.2f} req/s ({m.completed} ended in the window), "
        f"{m.output_token_throughput:.1f} output tok/s delivered",
        "goodput      "
        + (
            "-"
            if m.goodput is None
            else f"{m.goodput:.2f} req/s ({m.good_requests} of {m.completed} ended ok)"
        ),
        f"shed rate    {m.shed_rate:.1%}    peak concurrency {m.peak_concurrency}",
        "",
        f"{'latency (ms)':<22}{'mean':>8}{'p50':>8}{'p90':>8}{'p95':>8}{'p99':>8}{'max':>9}{'n':>8}",
    ]
    rows: list[tuple[str, Summary]] = [
        ("TTFT", m.ttft),
        ("TTFT from scheduled", m.ttft_from_scheduled),
        ("ITL", m.itl),
        ("TPOT", m.tpot),
        ("E2E", m.e2e),
    ]
    for name, s in rows:
        lines.append(
            f"{name:<22}{_ms(s.mean):>8}{_ms(s.p50):>8}{_ms(s.p90):>8}{_ms(s.p95):>8}"
            f"{_ms(s.p99):>8}{_ms(s.max):>9}{s.n:>8}"
        )
    lines.append("")
    srv = result.server
    if srv is not None:
        lines.append(
            f"server       pid {srv.pid} ({srv.processes} process{'es' if srv.processes != 1 else ''}): "
            f"CPU user {srv.cpu.user:.2f} s + sys {srv.cpu.system:.2f} s "
            f"({srv.cpu_utilization:.0%} of a core), peak RSS {_mb(srv.peak_rss_bytes)} MiB"
        )
        lines.append(
            f"             CPU ms per 1000 tokens: user {_num(srv.cpu_ms_per_1k_tokens_user)}, "
            f"total {_num(srv.cpu_ms_per_1k_tokens_total)}; per request: user "
            f"{_num(srv.cpu_ms_per_request_user, '.2f')}, total {_num(srv.cpu_ms_per_request_total, '.2f')}"
        )
    c = result.client
    lines.append(
        f"client       {c.processes} process{'es' if c.processes != 1 else ''}: CPU user "
        f"{c.cpu.user:.2f} s + sys {c.cpu.system:.2f} s, {c.sse_events} events, "
        f"{c.events_per_second:.0f} events/s, {_num(c.us_per_event)} µs CPU per event, "
        f"busiest process {c.max_process_utilization:.0%} of a core"
    )
    errors = _error_summary(result.records)
    if errors:
        lines.append("errors       " + "; ".join(f"{k} x{v}" for k, v in errors.items()))
    lines.append("=" * 72)
    return "\n".join(lines)


def format_sweep(parameter: str, results: Sequence[BenchResult]) -> str:
    """One line per sweep point: throughput, latency percentiles, shed rate, server CPU."""
    header = (
        f"{parameter:>12}{'req/s':>9}{'tok/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'ITL p99':>9}{'E2E p99':>9}{'shed':>7}{'goodput':>9}{'srv ms/1k':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        m = r.metrics
        value = r.config.concurrency if parameter == "concurrency" else r.config.rate
        srv = r.server.cpu_ms_per_1k_tokens_total if r.server is not None else None
        lines.append(
            f"{value:>12g}{m.request_throughput:>9.1f}{m.output_token_throughput:>10.0f}"
            f"{_ms(m.ttft.p50):>10}{_ms(m.ttft.p99):>10}{_ms(m.itl.p99):>9}{_ms(m.e2e.p99):>9}"
            f"{m.shed_rate:>7.1%}{_num(m.goodput):>9}{_num(srv):>10}"
        )
    return "\n".join(lines)


def _error_summary(records: Sequence[RequestRecord], limit: int = 5) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if r.outcome is not Outcome.OK:
            key = f"{r.outcome.value}" + (f"/{r.status_code}" if r.status_code else "")
            key += (
                f"/{r.error_code}" if r.error_code else (f": {r.detail[:60]}" if r.detail else "")
            )
            counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return dict(top)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def result_to_json(result: BenchResult) -> dict[str, Any]:
    """The run as JSON-ready data: config, metrics, server and client figures, a records summary.

    The per-request records are summarized (counts by outcome, status and
    error code, the first errors), not listed.
    """
    by_status: dict[str, int] = {}
    for r in result.records:
        key = str(r.status_code) if r.status_code is not None else "none"
        by_status[key] = by_status.get(key, 0) + 1
    return {
        "label": result.config.label,
        "started_at": result.started_at,
        "duration": result.duration,
        "config": _jsonable(result.config),
        "metrics": _jsonable(result.metrics),
        "server": _jsonable(result.server),
        "client": _jsonable(result.client),
        "records": {
            "count": len(result.records),
            "by_status": by_status,
            "errors": _error_summary(result.records, limit=20),
        },
    }


def cdf_points(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(sorted values, cumulative fraction)`` for an empirical CDF plot."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def _latencies(result: BenchResult) -> dict[str, list[float]]:
    ok = [
        r
        for r in result.records
        if r.outcome is Outcome.OK and r.scheduled_at >= result.config.warmup
    ]
    return {
        "TTFT": [r.first_token_at - r.sent_at for r in ok if r.first_token_at is not None],
        "ITL": [b - a for r in ok for a, b in zip(r.token_times, r.token_times[1:], strict=False)],
        "E2E": [r.end_at - r.sent_at for r in ok],
    }


def write_plots(
    results: Sequence[BenchResult], directory: Path, *, sweep: str | None = None
) -> list[Path]:
    """Latency CDFs (TTFT, ITL, E2E), and for a sweep throughput and p99 TTFT against it.

    Returns the PNG files written. Needs matplotlib (``pip install
    trio_agent[bench]``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for r in results:
        name = r.config.label or (
            f"{sweep}={r.config.concurrency if sweep == 'concurrency' else r.config.rate}"
            if sweep
            else "run"
        )
        for ax, values in zip(axes, _latencies(r).values(), strict=True):
            if values:
                xs, ys = cdf_points([v * 1000 for v in values])
                ax.plot(xs, ys, label=name)
    for ax, metric in zip(axes, ("TTFT", "ITL", "E2E"), strict=True):
        ax.set_title(f"{metric} CDF")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if metric != "ITL" else "fraction of gaps")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    path = directory / "latency_cdf.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    if sweep is not None and len(results) > 1:
        xs = [
            float(r.config.concurrency if sweep == "concurrency" else (r.config.rate or 0))
            for r in results
        ]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        series = [
            ("output tokens/s", [r.metrics.output_token_throughput for r in results]),
            ("requests/s (ok)", [r.metrics.request_throughput for r in results]),
            ("p99 TTFT, ms", [(r.metrics.ttft.p99 or 0.0) * 1000 for r in results]),
        ]
        for ax, (name, ys) in zip(axes, series, strict=True):
            ax.plot(xs, ys, marker="o")
            ax.set_xlabel(sweep)
            ax.set_title(f"{name} vs {sweep}")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            if sweep == "concurrency" and max(xs) / max(min(xs), 1) >= 20:
                ax.set_xscale("log")
        fig.tight_layout()
        path = directory / f"sweep_{sweep}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


class ProgressLine:
    """A one-line progress display on a terminal stream, rewritten in place.

    Call it with ``(done, total, elapsed)`` (``done`` is ``None`` when the
    count is not known, as with several generator processes); :meth:`finish`
    ends the line.
    """

    def __init__(self, stream: TextIO, label: str = "") -> None:
        self._stream = stream
        self._label = f"[{label}] " if label else ""
        self._shown = False

    def __call__(self, done: int | None, total: int | None, elapsed: float) -> None:
        if done is None:
            count = "running"
        else:
            count = (f"{done}/{total}" if total is not None else f"{done}") + " requests done"
        self._stream.write(f"\r{self._label}{count}, {elapsed:.1f} s elapsed   ")
        self._stream.flush()
        self._shown = True

    def finish(self) -> None:
        """Move past the progress line, if one was written."""
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = False
