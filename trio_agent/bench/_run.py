"""One benchmark run, end to end: load generator process(es), server sampling, figures.

:func:`run_bench` builds the HTTP load client, runs the
:class:`~trio_agent.bench.LoadGenerator` (in this process, or split over
``config.processes`` child processes that start together and send their
records back), samples the server's process tree if given its pid, and
returns a :class:`BenchResult` with the metrics computed. :func:`run_sweep`
repeats it over a list of concurrencies or rates.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from ..config import BenchConfig
from ..errors import ConfigError
from ._client import HTTPStreamClient
from ._load import LoadGenerator, LoadResult
from ._metrics import SLO, BenchMetrics, compute_metrics
from ._procstat import CPUTimes, ProcessTreeSample, process_cpu_self, sample_process_tree
from ._records import RequestRecord

__all__ = [
    "BenchResult",
    "ClientFigures",
    "ServerFigures",
    "environment",
    "make_client",
    "run_bench",
    "run_sweep",
    "sweep_point",
]

_SAMPLE_INTERVAL = 0.5
_PROGRESS_INTERVAL = 0.5
_START_DELAY = 1.0  # child processes import and get ready in this time, then start together

ProgressCallback = Callable[[int | None, int | None, float], None]
"""``(done or None if unknown, total or None, elapsed seconds)``, called about twice a second."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerFigures:
    """The server's process tree over the measurement window (after warm-up)."""

    pid: int
    processes: int
    cpu: CPUTimes
    peak_rss_bytes: int
    cpu_ms_per_1k_tokens_user: float | None
    cpu_ms_per_1k_tokens_total: float | None
    cpu_ms_per_request_user: float | None
    cpu_ms_per_request_total: float | None
    cpu_utilization: float
    """CPU seconds per second of the window (1.0 = one core busy)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientFigures:
    """The load generator's own cost over the whole run (warm-up included)."""

    processes: int
    cpu: CPUTimes
    wall: float
    sse_events: int
    us_per_event: float | None
    events_per_second: float
    max_process_utilization: float
    """The busiest generator process's CPU seconds per second; near 1.0 it is the bottleneck."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchResult:
    """One run: its config, every record, the metrics, and the cost on both sides."""

    config: BenchConfig
    started_at: str
    duration: float
    records: tuple[RequestRecord, ...]
    metrics: BenchMetrics
    client: ClientFigures
    server: ServerFigures | None


def make_client(config: BenchConfig) -> HTTPStreamClient:
    """The HTTP load client for ``config``."""
    return HTTPStreamClient(
        config.url,
        api=config.api,
        question=config.question,
        max_tokens=config.max_tokens,
        model=config.model,
        extra_body=config.extra_body,
        keepalive=config.keepalive,
        max_idle_connections=config.concurrency,
    )


def slo_of(config: BenchConfig) -> SLO:
    """The goodput objectives of ``config``."""
    return SLO(ttft=config.slo_ttft, tpot=config.slo_tpot, e2e=config.slo_e2e)


def environment() -> dict[str, Any]:
    """Where the benchmark ran: machine, Python, trio, git commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "trio": trio.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": commit or None,
    }


class _ServerSampler:
    """Samples a server's process tree: CPU at the window's start and end, RSS all along."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start: ProcessTreeSample | None = None
        self.end: ProcessTreeSample | None = None
        self.last: ProcessTreeSample | None = None
        self.peak_rss = 0
        self.processes = 0

    def sample(self) -> ProcessTreeSample | None:
        try:
            s = sample_process_tree(self.pid)
        except ProcessLookupError:
            return None
        self.last = s
        self.peak_rss = max(self.peak_rss, s.rss_bytes, s.root_hwm_bytes)
        self.processes = max(self.processes, len(s.pids))
        return s

    async def run(self, window_start: float, window_end: float | None = None) -> None:
        """CPU at the window's start and end (``None``: the run's end); RSS all along."""
        self.start = self.sample()
        if window_start > trio.current_time():
            await trio.sleep_until(window_start)
            self.start = self.sample()
        while True:
            now = trio.current_time()
            if window_end is not None and self.end is None and now >= window_end:
                self.end = self.sample()
            wake = now + _SAMPLE_INTERVAL
            if window_end is not None and self.end is None:
                wake = min(wake, window_end)
            await trio.sleep_until(wake)
            self.sample()

    def figures(self, metrics: BenchMetrics) -> ServerFigures | None:
        """Server CPU over the window, per delivered token and per request ended in it."""
        end = self.end or self.sample() or self.last
        if self.start is None or end is None:
            return None
        cpu = end.cpu - self.start.cpu
        tokens = metrics.delivered_tokens
        requests = metrics.completed

        def per(value: float, count: float, scale: float) -> float | None:
            return value * 1000 * scale / count if count else None

        return ServerFigures(
            pid=self.pid,
            processes=self.processes,
            cpu=cpu,
            peak_rss_bytes=self.peak_rss,
            cpu_ms_per_1k_tokens_user=per(cpu.user, tokens, 1000),
            cpu_ms_per_1k_tokens_total=per(cpu.total, tokens, 1000),
            cpu_ms_per_request_user=per(cpu.user, requests, 1),
            cpu_ms_per_request_total=per(cpu.total, requests, 1),
            cpu_utilization=cpu.total / metrics.window if metrics.window > 0 else 0.0,
        )


async def _progress_loop(
    callback: ProgressCallback, done: Callable[[], int | None], total: int | None, origin: float
) -> None:
    while True:
        callback(done(), total, trio.current_time() - origin)
        await trio.sleep(_PROGRESS_INTERVAL)


@dataclass(frozen=True, kw_only=True, slots=True)
class _WorkerJob:
    config: BenchConfig
    shard_index: int
    shard_count: int
    start_wall: float
    out_path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class _WorkerOutput:
    load: LoadResult
    cpu: CPUTimes
    wall: float


async def _worker_main(job: _WorkerJob) -> _WorkerOutput:
    """One generator process's share of the load (runs in the child)."""
    client = make_client(job.config)
    gen = LoadGenerator(
        client, job.config, shard_index=job.shard_index, shard_count=job.shard_count
    )
    origin = trio.current_time() + (job.start_wall - time.time())
    await trio.sleep_until(origin)
    cpu0, wall0 = process_cpu_self(), time.perf_counter()
    try:
        load = await gen.run(origin=origin)
    finally:
        await client.aclose()
    return _WorkerOutput(load=load, cpu=process_cpu_self() - cpu0, wall=time.perf_counter() - wall0)


def worker_entry(job_path: str) -> None:
    """Entry point of a generator child process: read the job, run it, write the output."""
    with open(job_path, "rb") as f:
        job: _WorkerJob = pickle.load(f)
    output = trio.run(_worker_main, job)
    with open(job.out_path, "wb") as f:
        pickle.dump(output, f, protocol=pickle.HIGHEST_PROTOCOL)


async def _run_in_children(
    config: BenchConfig, origin_wall: float, tmpdir: str
) -> tuple[list[_WorkerOutput], float]:
    outputs: list[_WorkerOutput] = []
    paths: list[tuple[str, str]] = []
    for k in range(config.processes):
        job_path = os.path.join(tmpdir, f"job{k}.pickle")
        out_path = os.path.join(tmpdir, f"out{k}.pickle")
        job = _WorkerJob(
            config=config,
            shard_index=k,
            shard_count=config.processes,
            start_wall=origin_wall,
            out_path=out_path,
        )
        with open(job_path, "wb") as f:  # noqa: ASYNC230 - a small local file, before any load
            pickle.dump(job, f)
        paths.append((job_path, out_path))
    code = "import sys; from trio_agent.bench._run import worker_entry; worker_entry(sys.argv[1])"
    async with trio.open_nursery() as nursery:
        for job_path, _ in paths:
            nursery.start_soon(trio.run_process, [sys.executable, "-c", code, job_path])
    for _, out_path in paths:
        with open(out_path, "rb") as f:  # noqa: ASYNC230 - read after the load ended
            outputs.append(pickle.load(f))
    wall = max(o.wall for o in outputs)
    return outputs, wall


async def run_bench(
    config: BenchConfig,
    *,
    server_pid: int | None = None,
    progress: ProgressCallback | None = None,
) -> BenchResult:
    """Run the load of ``config`` against its URL and measure both sides."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    sampler = _ServerSampler(server_pid) if server_pid is not None else None
    total = config.requests
    # A run bounded by duration is measured over its send window; one bounded by count, to its end.
    measure_end = None if config.duration is None else config.warmup + config.duration

    def window_end(origin: float) -> float | None:
        return None if measure_end is None else origin + measure_end
    async with trio.open_nursery() as nursery:
        if config.processes == 1:
            client = make_client(config)
            gen = LoadGenerator(client, config)
            origin = trio.current_time()
            if sampler is not None:
                nursery.start_soon(sampler.run, origin + config.warmup, window_end(origin))
            if progress is not None:
                nursery.start_soon(
                    _progress_loop, progress, lambda: gen.statistics().done, total, origin
                )
            cpu0, wall0 = process_cpu_self(), time.perf_counter()
            try:
                load = await gen.run(origin=origin)
            finally:
                await client.aclose()
            cpu = process_cpu_self() - cpu0
            wall = time.perf_counter() - wall0
            utilization = cpu.total / wall if wall > 0 else 0.0
            records, duration = load.records, load.duration
        else:
            origin_wall = time.time() + _START_DELAY
            origin = trio.current_time() + _START_DELAY
            if sampler is not None:
                nursery.start_soon(sampler.run, origin + config.warmup, window_end(origin))
            if progress is not None:
                nursery.start_soon(_progress_loop, progress, lambda: None, None, origin)
            with tempfile.TemporaryDirectory(prefix="trio-agent-bench-") as tmpdir:
                outputs, wall = await _run_in_children(config, origin_wall, tmpdir)
            cpu = CPUTimes(
                user=sum(o.cpu.user for o in outputs), system=sum(o.cpu.system for o in outputs)
            )
            utilization = max(o.cpu.total / o.wall if o.wall > 0 else 0.0 for o in outputs)
            merged = [r for o in outputs for r in o.load.records]
            records = tuple(sorted(merged, key=lambda r: r.index))
            duration = max(o.load.duration for o in outputs)
        nursery.cancel_scope.cancel()
    metrics = compute_metrics(
        records,
        duration=duration,
        warmup=config.warmup,
        slo=slo_of(config),
        measure_end=None if measure_end is None else min(measure_end, duration),
    )
    events = sum(r.sse_events for r in records)
    client_figures = ClientFigures(
        processes=config.processes,
        cpu=cpu,
        wall=wall,
        sse_events=events,
        us_per_event=cpu.total * 1e6 / events if events else None,
        events_per_second=events / duration if duration > 0 else 0.0,
        max_process_utilization=utilization,
    )
    return BenchResult(
        config=config,
        started_at=started_at,
        duration=duration,
        records=records,
        metrics=metrics,
        client=client_figures,
        server=sampler.figures(metrics) if sampler is not None else None,
    )


SWEEP_PARAMETERS = ("concurrency", "rate")


async def run_sweep(
    config: BenchConfig,
    parameter: str,
    values: Sequence[float],
    *,
    server_pid: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[BenchResult]:
    """One :func:`run_bench` per value of ``parameter`` (``concurrency`` or ``rate``), in order."""
    points = [sweep_point(config, parameter, value) for value in values]
    results = []
    for point in points:
        results.append(await run_bench(point, server_pid=server_pid, progress=progress))
    return results


def sweep_point(config: BenchConfig, parameter: str, value: float) -> BenchConfig:
    """``config`` with ``parameter`` (``concurrency`` or ``rate``) set to ``value``.

    Raises :class:`~trio_agent.errors.ConfigError` if the point is invalid.
    """
    if parameter == "concurrency":
        if value != int(value):
            raise ConfigError(f"a concurrency sweep needs whole numbers, got {value!r}")
        return dataclasses.replace(config, concurrency=int(value))
    if parameter == "rate":
        return dataclasses.replace(config, rate=float(value))
    raise ConfigError(f"sweep parameter must be one of {SWEEP_PARAMETERS}, got {parameter!r}")
