"""The standard benchmark suite (run it with ``benchmarks/run``).

Every server runs in its own process with one worker and the built-in mock
LLM (ttft 0.2 s, itl 0.02 s, 128 tokens), or, for the proxy pair, in front
of the mock LLM server in a third process. The load generator
(``trio-agent bench``) runs in its own process and is given the server's pid,
so the server's CPU and memory are measured. Scenarios, in order:

* ``c10``, ``c100``, ``c1000``: closed loop at that concurrency, admission
  wide open (nothing is shed);
* ``seed100``, ``seed1000``: the same with the seed demo's own mock (no ttft,
  itl 0.01 s, 64 tokens), against ``seed_demo`` (``benchmarks/baseline_seed``:
  the seed's FastAPI ``StreamingResponse`` as written) as well: the server CPU
  per completed request and per event, trio_agent against the 20-line design;
* ``saturation``: a closed-loop concurrency sweep; the best goodput seen
  over it and the runs above is the server's capacity;
* ``overload``: open loop (Poisson) at 5x that capacity (the best goodput,
  requests/s within the SLOs), with admission set to the concurrency where
  it was reached: the server must shed the excess quickly and keep the
  admitted streams healthy;
* ``proxy64``: each gateway proxying to the mock LLM server, 64 streams;
* ``proxy100``, ``proxy400``, ``proxy1000``, ``proxy-overload``: goals 1 to 3
  again in proxy mode (the mock LLM server in its own process, shared by
  nothing else): closed loops at 100, 400 and 1000 streams, then 5x the proxy
  capacity (the best goodput of the proxy closed loops) open loop;
* ``proxy-tools100``: trio_agent alone (the baseline does not carry tools)
  passing 100 streams of OpenAI chat completions that offer two function
  tools through to the mock LLM server, which answers each with two streamed
  tool calls (``--mock-tool-calls 2``): the pass-through relay's cost;
* ``agent10``, ``agent100``, ``agent-mcp10``, ``agent-mcp100``: agent runs
  (``POST /agent/stream``) of three steps of four parallel 100 ms tools, then
  a text answer, in a closed loop of 10 and 100 runs, against trio_agent and
  the OpenAI Agents SDK baseline (``benchmarks/baseline_agents``), both calling
  the mock LLM server in its own process; the ``-mcp`` variants take the tools
  from the MCP stdio server ``benchmarks/agent_tools_mcp.py``. Measured by
  ``benchmarks/agent_load.py`` (runs/s, latency against the critical path,
  loop overhead and server CPU per step, parallel speedup);
* ``agent-disconnect``: 200 runs each disconnected while its tools run; the
  server's tool gauge must come back to zero (time to it, tools left running).
  A server without the agent route, or a mock LLM without tool calls, is
  reported as skipped.

Writes ``benchmarks/results/<YYYY-MM-DD>.json`` (every run's full JSON) and
``.md`` (one table), and the servers' and generator's output to a log
directory. Every server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable

MOCK_TTFT = 0.2
MOCK_ITL = 0.02
MOCK_TOKENS = 128
SLO_TTFT = 1.0  # seconds, from the scheduled time
SLO_TPOT = 0.05  # seconds per output token (2.5x the mock's 20 ms)
# Python's youngest-generation GC threshold, trio_agent's default (ServerConfig.gc_threshold);
# the baseline gets the same, so the comparison is of the designs, not of a process setting.
GC_THRESHOLD = 50_000
OPEN_ADMISSION = 4096  # max-concurrency and max-queued when nothing should be shed
STARTUP_TIMEOUT = 30.0
_URL = re.compile(r"https?://[0-9a-zA-Z.\[\]:-]+:(\d+)")


# trio_agent's --max-loop-lag in the overload runs (docs/decisions/007, opt-in since 015).
OVERLOAD_MAX_LOOP_LAG = 0.075
# The seed demo's mock: a token every 10 ms, 64 of them, no first-token delay (issue 20).
SEED_MOCK = (0.0, 0.01, 64)


@dataclass(frozen=True, kw_only=True)
class ServerArgs:
    """How a gateway is started for one scenario."""

    max_concurrency: int = OPEN_ADMISSION
    max_queued: int = OPEN_ADMISSION
    max_queue_wait: float = 30.0
    request_timeout: float = 120.0
    upstream_url: str | None = None
    # trio_agent's CPU-lag shedding (--max-loop-lag): 0 = off, as nothing may be shed when
    # admission is wide open; the overload runs ask for OVERLOAD_MAX_LOOP_LAG; None = the
    # server's default.
    max_loop_lag: float | None = 0.0
    mock: tuple[float, float, int] = (MOCK_TTFT, MOCK_ITL, MOCK_TOKENS)  # ttft, itl, tokens


def _mock_flags(a: ServerArgs) -> list[str]:
    ttft, itl, tokens = a.mock
    return ["--mock-ttft", str(ttft), "--mock-itl", str(itl), "--mock-tokens", str(tokens)]


def trio_agent_command(a: ServerArgs) -> list[str]:
    return [
        PY, "-m", "trio_agent", "serve", "--host", "127.0.0.1", "--port", "0",
        "--max-concurrency", str(a.max_concurrency), "--max-queued", str(a.max_queued),
        "--max-queue-wait", str(a.max_queue_wait), "--request-timeout", str(a.request_timeout),
        *(["--max-loop-lag", str(a.max_loop_lag)] if a.max_loop_lag is not None else []),
        "--gc-threshold", str(GC_THRESHOLD), "--no-access-log", *_mock_flags(a),
        *(["--upstream-url", a.upstream_url] if a.upstream_url else []),
    ]  # fmt: skip


def baseline_command(a: ServerArgs) -> list[str]:
    return [
        PY, "-m", "benchmarks.baseline_asyncio", "--host", "127.0.0.1", "--port", "0",
        "--max-concurrency", str(a.max_concurrency), "--max-queued", str(a.max_queued),
        "--gc-threshold", str(GC_THRESHOLD), *_mock_flags(a),
        *(["--upstream-url", a.upstream_url] if a.upstream_url else []),
    ]  # fmt: skip


def seed_command(a: ServerArgs) -> list[str]:
    # As the seed runs it: no admission, no proxy, Python's own GC settings.
    return [PY, "-m", "benchmarks.baseline_seed", "--host", "127.0.0.1", "--port", "0",
            *_mock_flags(a)]  # fmt: skip


def mock_llm_command(*extra: str) -> list[str]:
    return [
        PY, "-m", "trio_agent", "mock-llm", "--host", "127.0.0.1", "--port", "0",
        "--ttft", str(MOCK_TTFT), "--itl", str(MOCK_ITL), "--tokens", str(MOCK_TOKENS),
        "--seed", "0", "--max-concurrency", str(OPEN_ADMISSION), *extra,
    ]  # fmt: skip


# The tools every request of proxy-tools100 offers (the mock calls both, one after the other).
TOOLS_BODY = json.dumps(
    {
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"},
                                                 "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"]}}},
            {"type": "function", "function": {"name": "search_docs", "parameters": {
                "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query", "limit"]}}},
        ]
    }
)  # fmt: skip


# -- the agent scenarios ---------------------------------------------------------------------

AGENT_TOOL_CALLS = 4  # tools called in parallel per step
AGENT_TOOL_ROUNDS = 3  # steps with tool calls before the text answer
# Text replies not following a tool result; the final answer (after tool results) is the
# mock's reply quoting them, whatever this says. Tool-call arguments stream at the mock's pace.
AGENT_MOCK_TOKENS = 32
AGENT_DISCONNECT_TRIALS = 200
AGENT_OPEN = 4096  # trio_agent's tool limits, wide open as admission is: nothing waits on them
MCP_SCRIPT = ROOT / "benchmarks" / "agent_tools_mcp.py"
# Where each server reports its running tools for the disconnect trial: (stats path, gauge
# key, completed-tools key or None); benchmarks/agent_load.py says what the keys mean.
# trio_agent's: its agent statistics' running and queued tools (AgentStatistics) as /metrics
# gauges; the names must match the server's /metrics (the trial is skipped when they do not).
AGENT_STATS: dict[str, tuple[str, str, str | None]] = {
    "trio_agent": (
        "/metrics", "trio_agent_agent_running_tools,trio_agent_agent_queued_tools", None
    ),
    "agents_baseline": ("/healthz", "tools_running", "tools_completed"),
}


@dataclass(frozen=True, kw_only=True)
class AgentArgs:
    upstream_url: str
    mcp: bool = False


def _help(command: list[str]) -> str:
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    return done.stdout


def _has_flag(help_text: str, flag: str) -> bool:
    """Whether ``flag`` itself is in a --help text (``--mcp`` is not ``--mcp-max-concurrency``)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def agent_mock_llm_command() -> list[str] | str:
    """The mock LLM server answering with tool calls, or why it cannot (the reason)."""
    base = [
        PY, "-m", "trio_agent", "mock-llm", "--host", "127.0.0.1", "--port", "0",
        "--ttft", str(MOCK_TTFT), "--itl", str(MOCK_ITL), "--tokens", str(AGENT_MOCK_TOKENS),
        "--seed", "0", "--max-concurrency", str(OPEN_ADMISSION),
    ]  # fmt: skip
    text = _help(base[:4])
    # The mock's flags: call N of the offered tools per answer, for R assistant turns, then
    # answer in text.
    for calls, rounds in (("--tool-calls", "--tool-rounds"), ("--mock-tool-calls", "--mock-tool-rounds")):
        if _has_flag(text, calls) and _has_flag(text, rounds):
            return [*base, calls, str(AGENT_TOOL_CALLS), rounds, str(AGENT_TOOL_ROUNDS)]
    return "trio-agent mock-llm has no --tool-calls/--tool-rounds (tool-call answers for 3 rounds)"


def _mcp_command() -> str:
    return f"{shlex.quote(PY)} {shlex.quote(str(MCP_SCRIPT))}"


def trio_agent_agent_command(a: AgentArgs) -> list[str] | str:
    text = _help([PY, "-m", "trio_agent", "serve"])
    tools = ["--mcp", f"tools={_mcp_command()}"] if a.mcp else ["--tools", "benchmarks.agent_tools"]
    if not _has_flag(text, tools[0]):
        return f"trio-agent serve has no {tools[0]} yet"
    limits = [
        f for flag in ("--max-tool-concurrency", "--mcp-max-concurrency") if _has_flag(text, flag)
        for f in (flag, str(AGENT_OPEN))
    ]  # fmt: skip
    # Only the scenario's four tools: serve's example tools would be called too otherwise.
    limits += [flag for flag in ("--no-example-tools",) if _has_flag(text, flag)]
    return [
        PY, "-m", "trio_agent", "serve", "--host", "127.0.0.1", "--port", "0",
        "--max-concurrency", str(OPEN_ADMISSION), "--max-queued", str(OPEN_ADMISSION),
        "--request-timeout", "120", "--max-loop-lag", "0", "--gc-threshold", str(GC_THRESHOLD),
        "--no-access-log", "--upstream-url", a.upstream_url, *limits, *tools,
    ]  # fmt: skip


def agents_baseline_command(a: AgentArgs) -> list[str] | str:
    return [
        PY, "-m", "benchmarks.baseline_agents", "--host", "127.0.0.1", "--port", "0",
        "--upstream-url", a.upstream_url, "--gc-threshold", str(GC_THRESHOLD),
        *(["--mcp"] if a.mcp else []),
    ]  # fmt: skip


# The agent servers: name -> command builder (a command, or why the server cannot run it).
AGENT_SERVERS: dict[str, Callable[[AgentArgs], list[str] | str]] = {
    "trio_agent": trio_agent_agent_command,
    "agents_baseline": agents_baseline_command,
}


# The servers under test: name -> (command builder, --api of the bench). Adding one is a line.
SERVERS: dict[str, tuple[Callable[[ServerArgs], list[str]], str]] = {
    "trio_agent": (trio_agent_command, "trio-agent"),
    "asyncio_baseline": (baseline_command, "trio-agent"),
    "seed_demo": (seed_command, "trio-agent"),
}
# Servers that only stream from their own mock with admission wide open: the closed loops
# (c*, seed*, saturation) only, not overload (no admission to set) nor proxy.
MOCK_ONLY = {"seed_demo"}


@dataclass(frozen=True, kw_only=True)
class Timing:
    warmup: float
    duration: float
    sweep: tuple[int, ...]

    @property
    def max_duration(self) -> float:
        return self.warmup + self.duration + 60.0


FULL = Timing(warmup=3.0, duration=12.0, sweep=(50, 200, 400, 800))
QUICK = Timing(warmup=1.0, duration=3.0, sweep=(50, 400))


class Suite:
    def __init__(
        self, servers: Sequence[str], timing: Timing, log_dir: Path, only: set[str] | None,
        pin: int = 0,
    ) -> None:
        self.servers = servers
        self.pin = pin  # CPUs to pin over (server on 0, generator on the rest); 0 = no pinning
        self.timing = timing
        self.log_dir = log_dir
        self.only = only
        self.results: list[dict[str, Any]] = []
        self.capacity: dict[str, tuple[float, int]] = {}  # server -> (req/s, at concurrency)
        self.proxy_capacity: dict[str, tuple[float, int]] = {}  # the same, proxying
        self.agent_results: list[dict[str, Any]] = []

    # -- processes ---------------------------------------------------------------

    @contextmanager
    def process(self, name: str, command: list[str]) -> Iterator[tuple[str, int]]:
        """Start a server, wait for its URL in its output; always stop it."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
            try:
                url = self._wait_for_url(proc, log_path)
                yield url, proc.pid
            finally:
                _stop(proc)

    @staticmethod
    def _wait_for_url(proc: subprocess.Popen[bytes], log_path: Path) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            match = _URL.search(text)
            if match:
                return f"http://127.0.0.1:{match.group(1)}"
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {proc.returncode}; see {log_path}:\n{text[-2000:]}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"server printed no URL within {STARTUP_TIMEOUT} s; see {log_path}")

    def bench(
        self, name: str, url: str, api: str, pid: int, args: list[str], points: int = 1,
        pin: bool = False,
    ) -> list[dict[str, Any]]:
        """Run ``trio-agent bench`` in its own process; return its runs."""
        t = self.timing
        out = self.log_dir / f"{name}.json"
        command = [
            PY, "-m", "trio_agent", "bench", "--url", url, "--api", api, "--server-pid", str(pid),
            "--warmup", str(t.warmup), "--duration", str(t.duration), "--max-duration", str(t.max_duration),
            "--request-timeout", "60", "--slo-ttft", str(SLO_TTFT), "--slo-tpot", str(SLO_TPOT),
            "--label", name, "--json", str(out), "--no-progress", *args,
        ]  # fmt: skip
        if pin:
            command = self.pinned(command, generator=True)
        log_path = self.log_dir / f"{name}.bench.txt"
        with open(log_path, "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=True,
                           timeout=points * (t.max_duration + 30))  # fmt: skip
        runs: list[dict[str, Any]] = json.loads(out.read_text())["runs"]
        return runs

    # -- scenarios ---------------------------------------------------------------

    def wanted(self, scenario: str) -> bool:
        return self.only is None or scenario in self.only

    def record(self, scenario: str, server: str, runs: list[dict[str, Any]], **extra: Any) -> None:
        for run in runs:
            m = run["metrics"]
            print(
                f"  {scenario:<12} {server:<18} c={run['config']['concurrency']:<5} "
                f"rate={run['config']['rate'] or '-':<8} {m['request_throughput']:8.1f} req/s "
                f"{m['output_token_throughput']:9.0f} tok/s  TTFT p99 {_ms(m['ttft']['p99'])} ms  "
                f"shed {m['shed_rate']:.1%}",
                flush=True,
            )
            self.results.append({"scenario": scenario, "server_name": server, **extra, **run})
            # Capacity is what a server serves *within the SLOs* (goodput), and the
            # admission cap of the overload run is the concurrency where it did: that
            # is how an operator sizes admission. Raw req/s peaks where most requests
            # already miss their SLOs.
            if scenario in ("c10", "c100", "c1000", "saturation"):
                capacity: dict[str, tuple[float, int]] | None = self.capacity
            elif scenario.startswith("proxy") and scenario[5:].isdigit():
                capacity = self.proxy_capacity
            else:
                capacity = None
            if capacity is not None:
                best = capacity.get(server, (0.0, 0))
                good = m["goodput"] or 0.0
                if good > best[0]:
                    capacity[server] = (good, run["config"]["concurrency"])

    def run_closed(self, concurrency: int, *, seed: bool = False) -> None:
        scenario = f"{'seed' if seed else 'c'}{concurrency}"
        if not self.wanted(scenario):
            return
        args = ServerArgs(mock=SEED_MOCK) if seed else ServerArgs()
        for server in self.chat_servers(mock_only=True):
            build, api = SERVERS[server]
            with self.process(f"{scenario}-{server}", self.pinned(build(args))) as (url, pid):
                runs = self.bench(
                    f"{scenario}-{server}", url, api, pid, ["--concurrency", str(concurrency)],
                    pin=True,
                )
            self.record(scenario, server, runs)

    def run_saturation(self) -> None:
        if not self.wanted("saturation"):
            return
        sweep = ",".join(str(c) for c in self.timing.sweep)
        for server in self.chat_servers(mock_only=True):
            build, api = SERVERS[server]
            name = f"saturation-{server}"
            with self.process(name, self.pinned(build(ServerArgs()))) as (url, pid):
                plots = self.log_dir / "plots" / name
                args = ["--sweep", f"concurrency={sweep}", "--plot-dir", str(plots)]
                runs = self.bench(name, url, api, pid, args, points=len(self.timing.sweep), pin=True)
            self.record("saturation", server, runs)

    @contextmanager
    def upstream(self, name: str, proxied: bool) -> Iterator[str | None]:
        """The mock LLM server's ``/v1`` URL in its own process when ``proxied``, else None."""
        if not proxied:
            yield None
            return
        with self.process(f"{name}-mock-llm", mock_llm_command()) as (mock_url, _pid):
            yield f"{mock_url}/v1"

    def run_overload(self, *, proxied: bool = False) -> None:
        scenario = "proxy-overload" if proxied else "overload"
        if not self.wanted(scenario):
            return
        measured = self.proxy_capacity if proxied else self.capacity
        for server in self.chat_servers():
            if server not in measured:
                print(f"  {scenario:<12} {server:<18} skipped: no capacity measured (run the closed loops)")
                continue
            capacity, knee = measured[server]
            admit = max(16, min(knee, 1024))
            rate = round(5 * capacity, 1)
            build, api = SERVERS[server]
            name = f"{scenario}-{server}"
            with self.upstream(name, proxied) as upstream_url:
                args = ServerArgs(
                    max_concurrency=admit,
                    max_queued=max(1, admit // 2),
                    max_queue_wait=1.0,
                    request_timeout=30.0,
                    # Open-loop overload is what loop-lag shedding is for; it is opt-in
                    # (docs/decisions/015), so this run asks for it.
                    max_loop_lag=OVERLOAD_MAX_LOOP_LAG,
                    upstream_url=upstream_url,
                )
                with self.process(name, build(args)) as (url, pid):
                    runs = self.bench(
                        name, url, api, pid, ["--rate", str(rate), "--concurrency", "4000"]
                    )
            self.record(
                scenario, server, runs, capacity_rps=capacity, admission=dataclasses.asdict(args)
            )

    def run_proxy(self, streams: int) -> None:
        scenario = f"proxy{streams}"
        if not self.wanted(scenario):
            return
        for server in self.chat_servers():
            build, api = SERVERS[server]
            name = f"{scenario}-{server}"
            with self.upstream(name, True) as upstream_url:
                args = ServerArgs(upstream_url=upstream_url)
                with self.process(name, build(args)) as (url, pid):
                    runs = self.bench(name, url, api, pid, ["--concurrency", str(streams)])
            self.record(scenario, server, runs)

    # -- agent scenarios -------------------------------------------------------------------

    def chat_servers(self, *, mock_only: bool = False) -> list[str]:
        """The chat servers asked for; those in MOCK_ONLY only when ``mock_only`` scenarios."""
        return [s for s in self.servers if s in SERVERS and (mock_only or s not in MOCK_ONLY)]

    def pinned(self, command: list[str], generator: bool = False) -> list[str]:
        """``command`` under ``taskset`` with ``--pin``: the server on CPU 0, the generator on
        the others, so neither takes the other's core (the CPU figures stay comparable)."""
        if not self.pin:
            return command
        cpus = f"1-{self.pin - 1}" if generator else "0"
        return ["taskset", "-c", cpus, *command]

    def agent_servers(self) -> list[str]:
        return [s for s in self.servers if s in AGENT_SERVERS]

    def agent_skip(self, scenario: str, server: str, reason: str) -> None:
        print(f"  {scenario:<12} {server:<18} skipped: {reason}", flush=True)
        self.agent_results.append({"scenario": scenario, "server_name": server, "skipped": reason})

    def agent_load(self, name: str, args: list[str]) -> dict[str, Any]:
        """Run ``benchmarks/agent_load.py`` in its own process; return its result."""
        out = self.log_dir / f"{name}.json"
        command = [PY, "-m", "benchmarks.agent_load", *args, "--label", name, "--json", str(out)]
        log_path = self.log_dir / f"{name}.load.txt"
        with open(log_path, "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=True,
                           timeout=self.timing.max_duration + 600)  # fmt: skip
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def run_agent(self, concurrency: int | None, *, mcp: bool = False) -> None:
        """One agent scenario: a closed loop at ``concurrency``, or the disconnect trials."""
        if concurrency is None:
            scenario = "agent-disconnect"
        else:
            scenario = f"agent{'-mcp' if mcp else ''}{concurrency}"
        if not self.wanted(scenario):
            return
        mock = agent_mock_llm_command()
        for server in self.agent_servers():
            if isinstance(mock, str):
                self.agent_skip(scenario, server, mock)
                continue
            build = AGENT_SERVERS[server]
            unable = build(AgentArgs(upstream_url="", mcp=mcp))
            if isinstance(unable, str):
                self.agent_skip(scenario, server, unable)
                continue
            name = f"{scenario}-{server}"
            with self.process(f"{name}-mock-llm", mock) as (mock_url, _pid):
                command = build(AgentArgs(upstream_url=f"{mock_url}/v1", mcp=mcp))
                assert not isinstance(command, str)
                with self.process(name, command) as (url, pid):
                    if concurrency is None:
                        path, running, completed = AGENT_STATS[server]
                        args = [
                            "disconnect", "--url", url, "--trials", str(self.agent_trials),
                            "--stats-url", url + path, "--running-key", running,
                            *(["--completed-key", completed] if completed else []),
                        ]  # fmt: skip
                    else:
                        t = self.timing
                        args = [
                            "closed", "--url", url, "--server-pid", str(pid),
                            "--concurrency", str(concurrency), "--warmup", str(t.warmup),
                            "--duration", str(t.duration), "--max-duration", str(t.max_duration),
                        ]  # fmt: skip
                    result = self.agent_load(name, args)
            if "skipped" in result:
                self.agent_skip(scenario, server, result["skipped"])
                continue
            print(f"  {scenario:<12} {server:<18} {_agent_line(result)}", flush=True)
            self.agent_results.append({"scenario": scenario, "server_name": server, **result})

    @property
    def agent_trials(self) -> int:
        return AGENT_DISCONNECT_TRIALS if self.timing is FULL else 20


    def run_proxy_tools(self, streams: int) -> None:
        scenario = f"proxy-tools{streams}"
        server = "trio_agent"
        if not self.wanted(scenario) or server not in self.servers:
            return
        build, _ = SERVERS[server]
        name = f"{scenario}-{server}"
        with self.process(f"{name}-mock-llm", mock_llm_command("--mock-tool-calls", "2")) as (mock_url, _pid):
            args = ServerArgs(upstream_url=f"{mock_url}/v1")
            with self.process(name, build(args)) as (url, pid):
                runs = self.bench(
                    name, url, "openai", pid,
                    ["--concurrency", str(streams), "--extra-body", TOOLS_BODY],
                )  # fmt: skip
        self.record(scenario, server, runs)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _agent_line(result: dict[str, Any]) -> str:
    if result["mode"] == "disconnect":
        d = result["summary"]
        return (
            f"{d['disconnected']}/{d['trials']} disconnected, tools left running in "
            f"{d['trials_with_tools_left_running']}, cancel p50 {_ms(d['cancel_time']['p50'])} ms "
            f"p99 {_ms(d['cancel_time_p99'])} ms"
        )
    m = result["metrics"]
    return (
        f"c={result['config']['concurrency']:<5} {m['runs_per_second']:6.2f} runs/s  latency p50 "
        f"{_ms(m['latency']['p50'])} ms (critical path {_ms(m['critical_path']['p50'])})  "
        f"overhead/step p50 {_ms(m['overhead_per_step']['p50'])} ms  CPU/step "
        f"{_num(m['server_cpu_ms_per_step_total'])} ms  speedup {_num(m['parallel_speedup']['mean'], '.2f')}"
    )


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def agent_markdown(results: list[dict[str, Any]]) -> list[str]:
    """The agent scenarios' tables and the goals of issue 19 checked against them."""
    if not results:
        return []
    lines = [
        "",
        "## Agent runs",
        "",
        f"Each run: {AGENT_TOOL_ROUNDS} steps of {AGENT_TOOL_CALLS} parallel tools (100 ms sleeps), then a "
        f"text answer (the mock's reply quoting the tool results), from the mock LLM server (ttft "
        f"{MOCK_TTFT} s, itl {MOCK_ITL} s) in its own process. Measured by `benchmarks/agent_load.py`.",
        "",
        "| scenario | server | load | runs/s | steps/run | latency p50 ms | latency p99 ms | critical path p50 ms "
        "| overhead/step p50 ms | overhead/step p99 ms | srv CPU ms/step user | srv CPU ms/step total "
        "| speedup mean | speedup min | tool overlap mean | outcomes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    disconnects = []
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['scenario']} | {r['server_name']} | skipped: {r['skipped']} |"
                         + " |" * 13)  # fmt: skip
            continue
        if r["mode"] == "disconnect":
            disconnects.append(r)
            continue
        m = r["metrics"]
        sp = m["parallel_speedup"]
        lines.append(
            f"| {r['scenario']} | {r['server_name']} | c={r['config']['concurrency']} "
            f"| {m['runs_per_second']:.2f} | {_num(m['steps_per_run'], '.1f')} "
            f"| {_ms(m['latency']['p50'])} | {_ms(m['latency']['p99'])} | {_ms(m['critical_path']['p50'])} "
            f"| {_num(_scaled(m['overhead_per_step']['p50']))} | {_num(_scaled(m['overhead_per_step']['p99']))} "
            f"| {_num(m['server_cpu_ms_per_step_user'], '.2f')} | {_num(m['server_cpu_ms_per_step_total'], '.2f')} "
            f"| {_num(sp['mean'], '.2f')} | {_num(m['parallel_speedup_min'], '.2f')} "
            f"| {_num(m['tool_overlap']['mean'], '.2f')} | {m['outcomes']} |"
        )
    if disconnects:
        lines += [
            "",
            "| scenario | server | trials | disconnected | tools left running | tools finished instead "
            "of cancelled | cancel p50 ms | cancel p99 ms | cancel max ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in disconnects:
            d = r["summary"]
            lines.append(
                f"| {r['scenario']} | {r['server_name']} | {d['trials']} | {d['disconnected']} "
                f"| {d['trials_with_tools_left_running']} | {d['trials_with_tools_finished']} "
                f"| {_num(_scaled(d['cancel_time']['p50']))} | {_num(_scaled(d['cancel_time_p99']))} "
                f"| {_num(_scaled(d['cancel_time']['max']))} |"
            )
    lines += ["", *agent_goals(results), ""]
    return lines


def _scaled(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def agent_goals(results: list[dict[str, Any]]) -> list[str]:
    """Issue 19's goals: at 100 concurrent runs, trio_agent's overhead and CPU per step at
    most half the baseline's, parallel speedup at least 3.5; after disconnects, no tool left
    running in 200 trials and p99 from disconnect to every tool cancelled under 50 ms."""
    by = {(r["scenario"], r["server_name"]): r for r in results if "skipped" not in r}
    lines = ["Goals (issue 19):", ""]
    for scenario in ("agent100", "agent-mcp100"):
        ours, base = by.get((scenario, "trio_agent")), by.get((scenario, "agents_baseline"))
        if ours is None or base is None:
            lines.append(f"* {scenario}: not measured for both servers")
            continue
        om, bm = ours["metrics"], base["metrics"]
        over = _ratio(om["overhead_per_step"]["p50"], bm["overhead_per_step"]["p50"])
        cpu = _ratio(om["server_cpu_ms_per_step_total"], bm["server_cpu_ms_per_step_total"])
        lines.append(
            f"* {scenario}: overhead per step p50 {over}x the baseline's (goal <= 0.5), CPU per step "
            f"{cpu}x (goal <= 0.5), parallel speedup {_num(om['parallel_speedup']['mean'], '.2f')} "
            "(goal >= 3.5; the tools' spans over the tool phase after the last call; the tool "
            f"overlap, over first start to last end, is {_num(om['tool_overlap']['mean'], '.2f')})"
        )
    ours = by.get(("agent-disconnect", "trio_agent"))
    if ours is None:
        lines.append("* agent-disconnect: not measured for trio_agent")
    else:
        d = ours["summary"]
        lines.append(
            f"* agent-disconnect: tools left running in {d['trials_with_tools_left_running']} of "
            f"{d['trials']} trials (goal 0 of 200), p99 to every tool cancelled "
            f"{_num(_scaled(d['cancel_time_p99']))} ms (goal < 50)"
        )
    return lines


def server_cpu_per_event(r: dict[str, Any]) -> float | None:
    """Server CPU µs per SSE event in the window: a token event each, and per completed
    request its ``thinking`` and ``done`` (every server here sends one event per token)."""
    m, srv = r["metrics"], r["server"] or {}
    cpu = srv.get("cpu") or {}
    total = (cpu.get("user") or 0.0) + (cpu.get("system") or 0.0)
    events = m["delivered_tokens"] + 2 * m["completed"]
    return total * 1e6 / events if srv and events else None


def cpu_markdown(results: list[dict[str, Any]]) -> list[str]:
    """Server CPU per completed request and per event in the closed loops, each server against
    ``seed_demo`` in the same scenario (issue 20: trio_agent at most 1.0x)."""
    closed = [r for r in results if re.fullmatch(r"(c|seed)\d+", r["scenario"])]
    if not closed:
        return []
    seed = {r["scenario"]: r for r in closed if r["server_name"] == "seed_demo"}
    lines = [
        "",
        "## Server CPU per completed request (closed loops)",
        "",
        "| scenario | server | load | req/s | srv CPU µs/request | srv CPU µs/event | x seed_demo |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in closed:
        srv = r["server"] or {}
        per_request = srv.get("cpu_ms_per_request_total")
        us = None if per_request is None else per_request * 1000
        base = seed.get(r["scenario"])
        base_ms = (base["server"] or {}).get("cpu_ms_per_request_total") if base else None
        lines.append(
            f"| {r['scenario']} | {r['server_name']} | c={r['config']['concurrency']} "
            f"| {r['metrics']['request_throughput']:.1f} | {_num(us, '.0f')} "
            f"| {_num(server_cpu_per_event(r))} | {_ratio(per_request, base_ms)} |"
        )
    lines += [
        "",
        "µs/event counts a token event per delivered token and the `thinking` and `done` of "
        "each completed request; `seed*` scenarios use the seed demo's mock (no ttft, itl "
        f"{SEED_MOCK[1]} s, {SEED_MOCK[2]} tokens).",
        "",
    ]
    return lines


def saturation_goal(results: list[dict[str, Any]]) -> list[str]:
    """Issue 20's third goal, at ``seed1000``: trio_agent's TTFT p99 at most the seed demo's
    while it completes at least 1.5x the demo's requests per second."""
    runs = {r["server_name"]: r for r in results if r["scenario"] == "seed1000"}
    ours, seed = runs.get("trio_agent"), runs.get("seed_demo")
    if ours is None or seed is None:
        return []
    p99, seed_p99 = ours["metrics"]["ttft"]["p99"], seed["metrics"]["ttft"]["p99"]
    rps, seed_rps = ours["metrics"]["request_throughput"], seed["metrics"]["request_throughput"]
    met = p99 is not None and seed_p99 is not None and p99 <= seed_p99 and rps >= 1.5 * seed_rps
    return [
        "",
        "## First tokens at saturation (seed1000)",
        "",
        f"* TTFT p99 {_ms(p99)} ms against the seed demo's {_ms(seed_p99)} ms (goal: at most it), "
        f"{rps:.1f} against {seed_rps:.1f} req/s, {_ratio(rps, seed_rps)}x (goal >= 1.5x): "
        f"{'met' if met else 'not met'}",
        "",
    ]


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark results {meta['date']}",
        "",
        f"Machine: {meta['environment']['platform']}, {meta['environment']['cpu_count']} CPUs, "
        f"Python {meta['environment']['python']}, trio {meta['environment']['trio']}, "
        f"commit {meta['environment']['git_commit']}. Mock LLM: ttft {MOCK_TTFT} s, itl {MOCK_ITL} s, "
        f"{MOCK_TOKENS} tokens. Warm-up {meta['timing']['warmup']} s, measured {meta['timing']['duration']} s "
        f"per run. Goodput SLOs: TTFT <= {SLO_TTFT} s from the scheduled time, TPOT <= {SLO_TPOT * 1000:.0f} ms.",
        "",
        "| scenario | server | load | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| E2E p99 ms | goodput req/s | shed | srv CPU ms/1k tok user | srv CPU ms/1k tok total | srv peak RSS MiB "
        "| client µs/event | client CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m, cfg, srv, cli = r["metrics"], r["config"], r["server"] or {}, r["client"]
        load = f"c={cfg['concurrency']}" if cfg["rate"] is None else f"{cfg['rate']:g}/s open"
        lines.append(
            f"| {r['scenario']} | {r['server_name']} | {load} | {m['request_throughput']:.1f} "
            f"| {m['output_token_throughput']:.0f} | {_ms(m['ttft']['p50'])} | {_ms(m['ttft']['p99'])} "
            f"| {_ms(m['itl']['p50'])} | {_ms(m['itl']['p99'])} | {_ms(m['e2e']['p99'])} "
            f"| {_num(m['goodput'])} | {m['shed_rate']:.1%} "
            f"| {_num(srv.get('cpu_ms_per_1k_tokens_user'), '.0f')} | {_num(srv.get('cpu_ms_per_1k_tokens_total'), '.0f')} "
            f"| {_num((srv.get('peak_rss_bytes') or 0) / 2**20 if srv else None)} "
            f"| {_num(cli['us_per_event'])} | {cli['max_process_utilization']:.0%} |"
        )
    lines += [
        "",
        "Columns: the measured window is the send window after the warm-up; req/s = `ok` requests that ended "
        "in it, tok/s = output tokens delivered in it (all requests, so a saturated closed loop whose requests "
        "outlive the window still counts what it delivered); latencies over the requests scheduled after the "
        "warm-up, TTFT from sending; "
        "ITL between token events; shed = 503/429 share; server CPU over the measured window of the server's "
        "process tree, per 1000 output tokens; client CPU = the load generator's CPU per SSE event and its "
        "busiest process's share of a core (near 100% would make the generator the bottleneck).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    known = list(dict.fromkeys([*SERVERS, *AGENT_SERVERS]))
    parser.add_argument(
        "--servers", default=",".join(known), help=f"comma-separated, from {', '.join(known)} "
        f"(chat scenarios: {', '.join(SERVERS)}; agent scenarios: {', '.join(AGENT_SERVERS)})",
    )
    parser.add_argument(
        "--only", help="comma-separated scenarios: c10,c100,c1000,seed100,seed1000,saturation,overload,"
        "proxy64,proxy100,proxy400,proxy1000,proxy-overload,proxy-tools100,agent10,agent100,agent-mcp10,"
        "agent-mcp100,agent-disconnect"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs, for a smoke test of the suite"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--pin", action="store_true", help="closed loops: each server on CPU 0 and the load "
        "generator on the other CPUs (taskset; needs 2 CPUs or more)",
    )
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in known]
    if unknown:
        parser.error(f"unknown servers {unknown}; known: {known}")
    timing = QUICK if args.quick else FULL
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    log_dir = Path(tempfile.mkdtemp(prefix=f"trio-agent-bench-{date}-"))
    only = {s.strip() for s in args.only.split(",")} if args.only else None
    pin = 0
    if args.pin:
        if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
            parser.error("--pin needs taskset and at least 2 CPUs")
        pin = os.cpu_count() or 1
    suite = Suite(servers, timing, log_dir, only, pin)
    started = time.monotonic()
    print(f"benchmark suite: servers {', '.join(servers)}; logs in {log_dir}", flush=True)
    try:
        for c in (10, 100, 1000):
            suite.run_closed(c)
        for c in (100, 1000):
            suite.run_closed(c, seed=True)
        suite.run_saturation()
        suite.run_overload()
        for streams in (64, 100, 400, 1000):
            suite.run_proxy(streams)
        suite.run_overload(proxied=True)
        suite.run_proxy_tools(100)
        for mcp in (False, True):
            for c in (10, 100):
                suite.run_agent(c, mcp=mcp)
        suite.run_agent(None)
    finally:
        sys.path.insert(0, str(ROOT))
        from trio_agent.bench import environment

        meta = {
            "date": date,
            "environment": environment(),
            "timing": dataclasses.asdict(timing),
            "servers": servers,
            "mock": {"ttft": MOCK_TTFT, "itl": MOCK_ITL, "tokens": MOCK_TOKENS},
            "slo": {"ttft": SLO_TTFT, "tpot": SLO_TPOT},
            "capacity": {k: {"rps": v[0], "concurrency": v[1]} for k, v in suite.capacity.items()},
            "elapsed": time.monotonic() - started,
            "logs": str(log_dir),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / f"{date}.json"
        md_path = args.out / f"{date}.md"
        json_path.write_text(
            json.dumps(
                {**meta, "results": suite.results, "agent_results": suite.agent_results}, indent=2
            )
            + "\n"
        )
        md_path.write_text(
            markdown(suite.results, meta)
            + "\n".join(cpu_markdown(suite.results))
            + "\n".join(saturation_goal(suite.results))
            + "\n".join(agent_markdown(suite.agent_results))
        )
        print(
            f"\nsuite took {meta['elapsed']:.0f} s\nresults: {json_path}\n         {md_path}\nlogs:    {log_dir}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
