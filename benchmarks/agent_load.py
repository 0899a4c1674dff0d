"""The agent benchmark's load driver: closed loops of agent runs, and disconnect trials.

Talks to any server with trio_agent's agent route (``POST /agent/stream``, SSE events
``step_start``, ``tool_call``, ``tool_started``, ``tool_result``, ``tool_error``,
``step_end``, then ``done`` or ``error``), so trio_agent and ``benchmarks/baseline_agents``
are measured by the same code. Kept apart as in ``trio_agent.bench``: the one-run client
(:class:`AgentClient`) records what it saw with its arrival times (a :class:`RunRecord`);
:func:`analyze_run` and :func:`agent_metrics` are pure functions of those records.

Modes (``python -m benchmarks.agent_load MODE --help``):

* ``closed``: ``--concurrency`` runs at once, each worker starting its next run when its
  last one ends, for ``--warmup`` plus ``--duration`` seconds (and at most ``--max-runs``
  runs); runs still going are given until ``--max-duration`` to end.
* ``disconnect``: ``--trials`` runs one after another; each is disconnected as soon as
  ``--after-started`` tools have sent ``tool_started`` (so its tools are running), then
  ``--stats-url`` is polled until the server reports no tool running. What the stats URL
  must answer: JSON, where ``--running-key`` is a dotted path to the number of tool bodies
  running now (e.g. ``tools_running``, or ``agent.tools.running``); or Prometheus text,
  where ``--running-key`` is a metric name whose samples (all label sets) are summed;
  several keys, comma-separated, are summed (say running and queued tools). An
  optional ``--completed-key`` (same rules) counts tools that ran to their end: if it grows
  between the disconnect and the zero, a tool finished instead of being cancelled, and the
  trial says so.

Definitions (per run; times are the driver's arrival times of the events):

* a step is one ``step_start`` (one model call); the events after it belong to it, and a
  tool's ``tool_started`` and ``tool_result``/``tool_error`` belong to the step of its call;
* model time of a step: from its ``step_start`` to its last ``tool_call`` (the moment the
  model's last call was complete), or to its ``step_end`` (or the run's end) without calls;
* a tool's duration: its ``tool_result.duration_ms`` when the server gives it (what the
  tool itself took), else its ``tool_started`` to ``tool_result`` arrival times;
* critical path: the sum over steps of model time plus the step's longest tool; the loop
  overhead per step is (latency - critical path) / steps;
* parallel speedup of a step with two or more tools: the sum of its tools' spans (each
  one's ``tool_started`` to its ``tool_result``/``tool_error``) over its tool phase, from its
  last ``tool_call`` (the model has handed over every call; the step now waits on tools only)
  to the last tool's end: what running the tools one after another once the model is done
  would take, over what the step waited. For equal tools started after the model (as the
  Agents SDK does) it is at most their number; a server that starts each tool as soon as its
  call is complete has run part of them before the phase (the figure can then pass the
  number of tools). Also reported: the tool overlap, the same sum over first start to last
  end (how many ran at once while any ran; with calls streamed one after another, tools
  started early overlap less and still finish sooner). All arrival times, one clock.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from trio_agent.bench import (
    HTTPProtocolError,
    ResponseParser,
    Summary,
    build_request,
    percentile,
    process_cpu_self,
    sample_process_tree,
)
from trio_agent.bench._procstat import CPUTimes
from trio_agent.sse import SSEDecoder

__all__ = [
    "AgentMetrics",
    "DisconnectTrial",
    "Event",
    "RunAnalysis",
    "RunRecord",
    "StepAnalysis",
    "agent_metrics",
    "analyze_run",
    "disconnect_summary",
    "read_gauge",
    "read_gauges",
]

TERMINAL = ("done", "error")
DEFAULT_QUESTION = "Plan my trip: check the weather, the news, my order and a stock price."


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One SSE event as the driver saw it: arrival time (s) and the fields the metrics use."""

    t: float
    type: str
    call_id: str | None = None
    duration_ms: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRecord:
    """One agent run: send time, end time, outcome, and its events in arrival order.

    ``outcome`` is ``ok`` (a ``done`` event), ``error`` (an ``error`` event), ``http_status``
    (not 200), ``incomplete`` (the stream ended without a terminal event), ``timeout`` or
    ``transport`` (the connection failed).
    """

    start: float
    end: float
    outcome: str
    events: tuple[Event, ...] = ()
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class StepAnalysis:
    model_time: float
    longest_tool: float
    tool_count: int
    tool_sum: float  # the tools' durations (duration_ms where given)
    tool_spans: float = 0.0  # the sum of each tool's tool_started-to-end arrival span
    tool_wall: float | None = None  # first tool_started to last tool end; None without tools
    tool_phase: float | None = None  # last tool_call to last tool end; None without tools

    @property
    def speedup(self) -> float | None:
        """The tools' spans, summed, over the tool phase: what running them one after another
        once the model is done would take, over what the step waited on them after it.

        The tool phase starts at the step's last ``tool_call`` (from then on the step waits on
        tools only; a server that starts each tool as soon as its call is complete has run
        part of them already) and ends at the last tool's end. All arrival times on the
        driver's clock. Equal tools started after the model: at most their number.
        """
        if self.tool_phase is None or self.tool_phase <= 0:
            return None
        return self.tool_spans / self.tool_phase

    @property
    def overlap(self) -> float | None:
        """The tools' spans, summed, over first start to last end: how many ran at once."""
        if self.tool_wall is None or self.tool_wall <= 0:
            return None
        return self.tool_spans / self.tool_wall


@dataclass(frozen=True, kw_only=True, slots=True)
class RunAnalysis:
    latency: float
    steps: tuple[StepAnalysis, ...]

    @property
    def critical_path(self) -> float:
        return math.fsum(s.model_time + s.longest_tool for s in self.steps)

    @property
    def overhead_per_step(self) -> float | None:
        if not self.steps:
            return None
        return (self.latency - self.critical_path) / len(self.steps)


@dataclass
class _Step:
    start: float
    last_call: float | None = None
    end: float | None = None
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    duration: dict[str, float] = field(default_factory=dict)


def analyze_run(record: RunRecord) -> RunAnalysis:
    """The steps of one run, their model times, tool durations and tool phases."""
    steps: list[_Step] = []
    step_of: dict[str, _Step] = {}
    for ev in record.events:
        if ev.type == "step_start":
            steps.append(_Step(start=ev.t))
            continue
        if not steps:
            continue  # nothing of a step comes before the first step_start
        current = steps[-1]
        if ev.type == "tool_call" and ev.call_id is not None:
            current.last_call = ev.t
            step_of[ev.call_id] = current
        elif ev.type == "step_end":
            current.end = ev.t
        elif ev.type == "tool_started" and ev.call_id is not None:
            step_of.get(ev.call_id, current).started[ev.call_id] = ev.t
        elif ev.type in ("tool_result", "tool_error") and ev.call_id is not None:
            step = step_of.get(ev.call_id, current)
            step.ended[ev.call_id] = ev.t
            if ev.duration_ms is not None:
                step.duration[ev.call_id] = ev.duration_ms / 1000
    out = []
    for s in steps:
        durations = []
        for call_id, ended in s.ended.items():
            if call_id in s.duration:
                durations.append(s.duration[call_id])
            elif call_id in s.started:
                durations.append(ended - s.started[call_id])
        model_end = (
            s.last_call if s.last_call is not None else (s.end if s.end is not None else record.end)
        )
        wall = phase = None
        if s.started and s.ended:
            last_end = max(s.ended.values())
            wall = last_end - min(s.started.values())
            phase = last_end - (s.last_call if s.last_call is not None else min(s.started.values()))
        spans = math.fsum(
            ended - s.started[call_id] for call_id, ended in s.ended.items() if call_id in s.started
        )
        out.append(
            StepAnalysis(
                model_time=model_end - s.start,
                longest_tool=max(durations, default=0.0),
                tool_count=len(durations),
                tool_sum=math.fsum(durations),
                tool_spans=spans,
                tool_wall=wall,
                tool_phase=phase,
            )
        )
    return RunAnalysis(latency=record.end - record.start, steps=tuple(out))


# -- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentMetrics:
    """A closed loop's figures. Durations in seconds; CPU in milliseconds per step."""

    window: float
    runs_started: int
    runs_measured: int  # runs started after the warm-up that ended: latencies are over these
    outcomes: dict[str, int]
    runs_per_second: float  # ok runs that ended within the window, per second
    steps_per_second: float  # step_start events within the window, per second
    steps_per_run: float | None
    tool_calls_per_run: float | None
    latency: Summary
    critical_path: Summary
    overhead_per_step: Summary
    parallel_speedup: Summary  # over the steps with two or more tools
    parallel_speedup_min: float | None
    tool_overlap: Summary  # over the same steps: tools running at once while any ran
    server_cpu_ms_per_step_user: float | None
    server_cpu_ms_per_step_total: float | None


def agent_metrics(
    records: Sequence[RunRecord],
    *,
    window_start: float,
    window_end: float,
    server_cpu: CPUTimes | None = None,
) -> AgentMetrics:
    """Figures of a closed loop whose measured window is ``[window_start, window_end]``.

    Runs per second counts the ``ok`` runs that ended within the window; steps per second
    the ``step_start`` events within it (of any run); ``server_cpu`` is the server's CPU over
    the same window, divided by those steps.
    Latencies, critical paths, overheads and speedups are over the ``ok`` runs sent at or
    after ``window_start``.
    """
    window = window_end - window_start
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    ok = [r for r in records if r.outcome == "ok"]
    in_window = [r for r in ok if window_start <= r.end <= window_end]
    # Steps are counted where they start, over every run: they are short next to the window,
    # so the count follows the server's work closely where whole runs (seconds long, started
    # together by a closed loop) would count it in lumps.
    window_steps = sum(
        1
        for r in records
        for e in r.events
        if e.type == "step_start" and window_start <= e.t < window_end
    )
    measured = [analyze_run(r) for r in ok if r.start >= window_start]
    speedups = [
        s.speedup for a in measured for s in a.steps if s.tool_count >= 2 and s.speedup is not None
    ]
    overheads = [a.overhead_per_step for a in measured if a.overhead_per_step is not None]
    measured_ok = [r for r in ok if r.start >= window_start]
    tool_calls = [sum(1 for e in r.events if e.type == "tool_call") for r in measured_ok]

    def per_step(cpu: float) -> float | None:
        return cpu * 1000 / window_steps if window_steps else None

    return AgentMetrics(
        window=window,
        runs_started=len(records),
        runs_measured=len(measured),
        outcomes=outcomes,
        runs_per_second=len(in_window) / window if window > 0 else 0.0,
        steps_per_second=window_steps / window if window > 0 else 0.0,
        steps_per_run=math.fsum(len(a.steps) for a in measured) / len(measured)
        if measured
        else None,
        tool_calls_per_run=math.fsum(tool_calls) / len(tool_calls) if tool_calls else None,
        latency=Summary.of(a.latency for a in measured),
        critical_path=Summary.of(a.critical_path for a in measured),
        overhead_per_step=Summary.of(overheads),
        parallel_speedup=Summary.of(speedups),
        parallel_speedup_min=min(speedups, default=None),
        tool_overlap=Summary.of(
            s.overlap
            for a in measured
            for s in a.steps
            if s.tool_count >= 2 and s.overlap is not None
        ),
        server_cpu_ms_per_step_user=per_step(server_cpu.user) if server_cpu else None,
        server_cpu_ms_per_step_total=per_step(server_cpu.total) if server_cpu else None,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class DisconnectTrial:
    """One disconnect: how long until no tool ran, and whether any was left running.

    ``cancel_time`` is from the disconnect to the first poll that read zero tools running
    (``None`` if none did within the trial's bound); ``left_running`` is what the last poll
    read; ``finished`` is how many tools ran to their end after the disconnect (``None``
    without a completed key).
    """

    ok: bool
    cancel_time: float | None = None
    left_running: float = 0.0
    finished: float | None = None
    error: str | None = None


def disconnect_summary(trials: Sequence[DisconnectTrial]) -> dict[str, Any]:
    """Trials run, those that reached zero, tools left running, and the cancel time's spread."""
    done = [t for t in trials if t.ok]
    times = sorted(t.cancel_time for t in done if t.cancel_time is not None)
    return {
        "trials": len(trials),
        "disconnected": len(done),
        "failed": len(trials) - len(done),
        "trials_with_tools_left_running": sum(1 for t in done if t.left_running > 0),
        "trials_with_tools_finished": sum(1 for t in done if t.finished),
        "cancel_time": asdict(Summary.of(times)),
        "cancel_time_p99": percentile(times, 99) if times else None,
    }


def read_gauge(body: bytes, content_type: str, key: str) -> float:
    """The value of ``key`` in a stats answer: a dotted path into JSON, or a Prometheus metric.

    Prometheus text: the samples of metric ``key`` (``key value`` or ``key{labels} value``)
    are summed. Raises ``KeyError`` when the key is absent.
    """
    if "json" in content_type:
        node: Any = json.loads(body)
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(key)
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, int | float):
            raise KeyError(key)
        return float(node)
    total = 0.0
    found = False
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith(key):
            continue
        rest = line[len(key) :]
        if rest.startswith("{"):
            rest = rest[rest.index("}") + 1 :]
        elif not rest.startswith(" "):
            continue  # another metric whose name starts with this one
        total += float(rest.split()[0])
        found = True
    if not found:
        raise KeyError(key)
    return total


def read_gauges(body: bytes, content_type: str, keys: str) -> float:
    """The sum of :func:`read_gauge` over the comma-separated ``keys``."""
    return math.fsum(read_gauge(body, content_type, key.strip()) for key in keys.split(","))


# -- the one-run client -------------------------------------------------------------------


class SkipError(Exception):
    """The server cannot be measured: no agent route, or no tool gauge at the stats URL."""


class RouteMissingError(SkipError):
    """The server answered 404 or 405 to ``POST /agent/stream``: it has no agent route."""


def _event(t: float, name: str, data: str) -> Event:
    if name in ("tool_call", "tool_started", "tool_result", "tool_error"):
        payload = json.loads(data)
        duration = payload.get("duration_ms") if name != "tool_started" else None
        return Event(t=t, type=name, call_id=payload.get("call_id"), duration_ms=duration)
    return Event(t=t, type=name)  # token events are not decoded: their arrival is what counts


@dataclass
class _Reading:
    """What one exchange has read so far."""

    events: list[Event] = field(default_factory=list)
    outcome: str = "incomplete"
    error: str | None = None
    got_bytes: bool = False
    reusable: bool = False


class AgentClient:
    """One connection at a time to ``POST /agent/stream``, kept alive between runs.

    Lean for the same reason as ``trio_agent.bench``'s load client (benchmarks/README.md:
    httpx costs as much CPU per SSE event as the servers being measured): a trio stream,
    request bytes built once, :class:`~trio_agent.bench.ResponseParser` and
    :class:`~trio_agent.sse.SSEDecoder`; only tool events are JSON-decoded.
    """

    def __init__(self, url: str, body: dict[str, Any], timeout: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self.request = build_request(
            "POST", f"{self.host}:{self.port}", "/agent/stream", json.dumps(body).encode()
        )
        self._idle: trio.abc.Stream | None = None

    async def aclose(self) -> None:
        if self._idle is not None:
            await self._idle.aclose()
            self._idle = None

    async def run(
        self, t0: float, *, stop_when: Callable[[list[Event]], bool] | None = None
    ) -> RunRecord:
        """Send one run, read its events until the terminal one (or ``stop_when`` says so).

        Times are ``trio.current_time() - t0``. Stopping early closes the connection: that
        is the disconnect of the disconnect trial.
        """
        start = trio.current_time() - t0
        if self._idle is not None:
            stream, self._idle = self._idle, None
            reading = await self._exchange(stream, t0, stop_when)
            if not (reading.outcome == "transport" and not reading.got_bytes):
                return self._record(start, t0, reading)
            # The server closed the idle connection before reading this request: retry once
            # on a fresh one, as every HTTP client does.
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            return self._record(start, t0, _Reading(outcome="transport", error=repr(exc)))
        return self._record(start, t0, await self._exchange(stream, t0, stop_when))

    @staticmethod
    def _record(start: float, t0: float, reading: _Reading) -> RunRecord:
        return RunRecord(
            start=start,
            end=trio.current_time() - t0,
            outcome=reading.outcome,
            events=tuple(reading.events),
            error=reading.error,
        )

    async def _exchange(
        self,
        stream: trio.abc.Stream,
        t0: float,
        stop_when: Callable[[list[Event]], bool] | None,
    ) -> _Reading:
        """One request and response on ``stream``; keeps the stream idle if it is reusable."""
        reading = _Reading()
        try:
            with trio.move_on_after(self.timeout) as scope:
                try:
                    await self._read(stream, t0, reading, stop_when)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    reading.reusable = False
                    if reading.outcome == "incomplete":
                        reading.outcome, reading.error = "transport", repr(exc)
                except HTTPProtocolError as exc:
                    reading.reusable = False
                    if reading.outcome == "incomplete":
                        reading.outcome, reading.error = "transport", str(exc)
            # A run whose terminal event came in keeps its outcome, whatever the framing after.
            if scope.cancelled_caught and reading.outcome == "incomplete":
                reading.outcome = "timeout"
                reading.error = f"no terminal event within {self.timeout} s"
        finally:
            if reading.reusable:
                self._idle = stream
            else:
                await stream.aclose()
        return reading

    async def _read(
        self,
        stream: trio.abc.Stream,
        t0: float,
        reading: _Reading,
        stop_when: Callable[[list[Event]], bool] | None,
    ) -> None:
        await stream.send_all(self.request)
        parser = ResponseParser()
        decoder: SSEDecoder | None = None
        body: list[bytes] = []
        while not parser.complete:
            data = await stream.receive_some(65536)
            now = trio.current_time() - t0
            if not data:
                if not reading.got_bytes:
                    reading.outcome = "transport"
                    reading.error = "connection closed before the response"
                    return
                parser.feed_eof()
                break
            reading.got_bytes = True
            pieces = parser.feed(data)
            head = parser.head
            if head is None:
                continue
            if head.status_code in (404, 405):
                raise RouteMissingError(
                    f"{self.host}:{self.port} answered {head.status_code} to POST /agent/stream"
                )
            if head.status_code != 200:
                body.extend(pieces)
                continue
            if decoder is None:
                decoder = SSEDecoder()
            if not pieces:
                continue
            for sse in decoder.feed(b"".join(pieces)):
                ev = _event(now, sse.event, sse.data)
                reading.events.append(ev)
                if ev.type in TERMINAL:
                    reading.outcome = "ok" if ev.type == "done" else "error"
                    if ev.type == "error":
                        reading.error = sse.data[:300]
            if (
                reading.outcome == "incomplete"
                and stop_when is not None
                and stop_when(reading.events)
            ):
                return  # leave now: the exchange closes the connection
        head = parser.head
        if head is not None and head.status_code != 200:
            text = b"".join(body)[:300].decode("utf-8", "replace")
            reading.outcome, reading.error = "http_status", f"{head.status_code}: {text}"
        reading.reusable = parser.complete and head is not None and head.keep_alive


# -- closed loop -------------------------------------------------------------------------------


async def closed_loop(args: argparse.Namespace) -> dict[str, Any]:
    body = _body(args)
    records: list[RunRecord] = []
    cpu: dict[str, Any] = {}
    started = 0
    t0 = trio.current_time()
    window_start, window_end = args.warmup, args.warmup + args.duration

    async def sample(at: float, key: str) -> None:
        await trio.sleep_until(t0 + at)
        if args.server_pid:
            cpu[key] = sample_process_tree(args.server_pid)
        cpu[key + "_self"] = process_cpu_self()

    # A probe run first: a server without the route is told apart from a failing one.
    probe_client = AgentClient(args.url, body, args.request_timeout)
    probe = await probe_client.run(trio.current_time())
    await probe_client.aclose()
    if probe.outcome != "ok":
        raise SystemExit(f"probe run failed ({probe.outcome}): {probe.error}")
    t0 = trio.current_time()

    async def worker(delay: float) -> None:
        nonlocal started
        # Workers start spread over the ramp, so a closed loop's runs do not move in lockstep
        # batches (all starting and ending together) that the window would count in lumps.
        await trio.sleep_until(t0 + delay)
        client = AgentClient(args.url, body, args.request_timeout)
        try:
            while trio.current_time() - t0 < window_end and started < args.max_runs:
                started += 1
                records.append(await client.run(t0))
        finally:
            await client.aclose()

    with trio.move_on_after(args.max_duration):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample, window_start, "begin")
            nursery.start_soon(sample, window_end, "end")
            ramp = args.warmup if args.ramp is None else args.ramp
            for i in range(args.concurrency):
                nursery.start_soon(worker, ramp * i / args.concurrency)
    server_cpu = None
    if "begin" in cpu and "end" in cpu:
        server_cpu = cpu["end"].cpu - cpu["begin"].cpu
    metrics = agent_metrics(
        records, window_start=window_start, window_end=window_end, server_cpu=server_cpu
    )
    client_cpu = None
    if "begin_self" in cpu and "end_self" in cpu:
        client_cpu = (cpu["end_self"] - cpu["begin_self"]).total / args.duration
    errors = sorted({r.error for r in records if r.error})[:5]
    return {
        "mode": "closed",
        "label": args.label,
        "config": {
            "url": args.url,
            "concurrency": args.concurrency,
            "warmup": args.warmup,
            "duration": args.duration,
            "ramp": args.ramp,
            "max_runs": args.max_runs,
            "body": body,
        },
        "metrics": asdict(metrics),
        "client": {"cpu_share": client_cpu},
        "server": {"peak_rss_bytes": cpu["end"].rss_bytes} if "end" in cpu else None,
        "errors": errors,
    }


# -- disconnect trials ---------------------------------------------------------------------------


async def _gauge(client: httpx.AsyncClient, url: str, keys: str) -> float:
    """The sum of the comma-separated ``keys`` in one answer of ``url``."""
    resp = await client.get(url)
    resp.raise_for_status()
    return read_gauges(resp.content, resp.headers.get("content-type", ""), keys)


async def _trials(
    args: argparse.Namespace,
    client: AgentClient,
    trials: list[DisconnectTrial],
    tools_running: Callable[[list[Event]], bool],
) -> None:
    async with httpx.AsyncClient(timeout=10.0) as stats:
        try:
            await _gauge(stats, args.stats_url, args.running_key)
        except (KeyError, httpx.HTTPStatusError) as exc:
            raise SkipError(f"{args.stats_url} gives no {args.running_key!r} ({exc!r})") from None
        for _ in range(args.trials):
            with trio.move_on_after(args.settle_timeout):
                while await _gauge(stats, args.stats_url, args.running_key) > 0:  # noqa: ASYNC110 (a gauge in another process: only polling sees it)
                    await trio.sleep(args.poll_interval)
            completed0 = (
                await _gauge(stats, args.stats_url, args.completed_key)
                if args.completed_key
                else None
            )
            t0 = trio.current_time()
            record = await client.run(t0, stop_when=tools_running)
            if not tools_running(list(record.events)):
                trials.append(
                    DisconnectTrial(
                        ok=False,
                        error=f"{record.outcome} before {args.after_started} "
                        f"tools started: {record.error}",
                    )
                )
                continue
            gone = trio.current_time()  # the response is closed: the client has left
            running = await _gauge(stats, args.stats_url, args.running_key)
            cancel_time = None
            with trio.move_on_after(args.cancel_timeout):
                while running > 0:
                    await trio.sleep(args.poll_interval)
                    running = await _gauge(stats, args.stats_url, args.running_key)
            if running == 0:
                cancel_time = trio.current_time() - gone
            finished = None
            if args.completed_key and completed0 is not None:
                finished = await _gauge(stats, args.stats_url, args.completed_key) - completed0
            trials.append(
                DisconnectTrial(
                    ok=True, cancel_time=cancel_time, left_running=running, finished=finished
                )
            )


async def disconnect_trials(args: argparse.Namespace) -> dict[str, Any]:
    body = _body(args)
    trials: list[DisconnectTrial] = []

    def tools_running(events: list[Event]) -> bool:
        return sum(1 for e in events if e.type == "tool_started") >= args.after_started

    client = AgentClient(args.url, body, args.request_timeout)
    try:
        await _trials(args, client, trials, tools_running)
    finally:
        await client.aclose()
    return {
        "mode": "disconnect",
        "label": args.label,
        "config": {
            "url": args.url,
            "stats_url": args.stats_url,
            "running_key": args.running_key,
            "completed_key": args.completed_key,
            "trials": args.trials,
            "after_started": args.after_started,
            "poll_interval": args.poll_interval,
        },
        "summary": disconnect_summary(trials),
        "errors": sorted({t.error for t in trials if t.error})[:5],
    }


# -- command line ---------------------------------------------------------------------------------


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"question": args.question}
    if args.max_steps:
        body["max_steps"] = args.max_steps
    return body


def _summary_ms(s: dict[str, Any], key: str = "p50") -> str:
    v = s.get(key)
    return "-" if v is None else f"{v * 1000:.1f}"


def format_closed(result: dict[str, Any]) -> str:
    m = result["metrics"]
    cpu = m["server_cpu_ms_per_step_total"]
    speed = m["parallel_speedup"]["mean"]
    return (
        f"{result['label']}: c={result['config']['concurrency']} {m['runs_per_second']:.2f} runs/s, "
        f"{m['steps_per_run'] or 0:.2f} steps/run, latency p50 {_summary_ms(m['latency'])} ms "
        f"(critical path p50 {_summary_ms(m['critical_path'])} ms), overhead/step p50 "
        f"{_summary_ms(m['overhead_per_step'])} ms p99 {_summary_ms(m['overhead_per_step'], 'p99')} ms, "
        f"server CPU/step {'-' if cpu is None else f'{cpu:.2f}'} ms, speedup "
        f"{'-' if speed is None else f'{speed:.2f}'}, outcomes {m['outcomes']}"
    )


def format_disconnect(result: dict[str, Any]) -> str:
    s = result["summary"]
    p99 = s["cancel_time_p99"]
    return (
        f"{result['label']}: {s['disconnected']}/{s['trials']} disconnected, "
        f"left running in {s['trials_with_tools_left_running']}, finished instead of cancelled in "
        f"{s['trials_with_tools_finished']}, cancel time p50 {_summary_ms(s['cancel_time'])} ms "
        f"p99 {'-' if p99 is None else f'{p99 * 1000:.1f}'} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.agent_load", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("closed", "disconnect"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True, help="the server's base URL")
        p.add_argument("--question", default=DEFAULT_QUESTION)
        p.add_argument("--max-steps", type=int, default=0, help="max_steps in the body (0: none)")
        p.add_argument("--request-timeout", type=float, default=60.0)
        p.add_argument("--label", default=name)
        p.add_argument("--json", type=Path, help="write the result here")
    closed = sub.choices["closed"]
    closed.add_argument("--concurrency", type=int, default=10)
    closed.add_argument("--warmup", type=float, default=3.0)
    closed.add_argument("--duration", type=float, default=12.0)
    closed.add_argument("--max-runs", type=int, default=100_000)
    closed.add_argument(
        "--ramp", type=float, help="spread the workers' first runs over this (default: --warmup)"
    )
    closed.add_argument("--max-duration", type=float, default=90.0)
    closed.add_argument("--server-pid", type=int, default=0)
    disc = sub.choices["disconnect"]
    disc.add_argument("--trials", type=int, default=200)
    disc.add_argument("--stats-url", required=True, help="GET: JSON or Prometheus text")
    disc.add_argument(
        "--running-key", required=True, help="tools running now: JSON path or metric (a,b: summed)"
    )
    disc.add_argument("--completed-key", help="tools that ran to their end: JSON path or metric")
    disc.add_argument(
        "--after-started", type=int, default=4, help="disconnect after this many tool_started"
    )
    disc.add_argument("--poll-interval", type=float, default=0.002)
    disc.add_argument(
        "--cancel-timeout", type=float, default=2.0, help="bound on the wait for zero"
    )
    disc.add_argument(
        "--settle-timeout", type=float, default=5.0, help="bound on the wait before a trial"
    )
    args = parser.parse_args(argv)
    try:
        if args.mode == "closed":
            result = trio.run(closed_loop, args)
            line = format_closed(result)
        else:
            result = trio.run(disconnect_trials, args)
            line = format_disconnect(result)
    except SkipError as exc:
        result = {"mode": args.mode, "label": args.label, "skipped": str(exc)}
        line = f"{args.label}: skipped: {exc}"
    print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
