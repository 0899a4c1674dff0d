"""What tracing costs the gateway: CPU per streamed request at 100 streams, tracing off, on, and before.

    python -m benchmarks.tracing_cost [--together] [--repeats 3] [--concurrency 100]
        [--arms off,on,unsampled,base] [--base-tree DIR] [--variant NAME=DIR ...] [--proxied]

Arms, interleaved in each repeat (order reversed every other repeat, so a
machine that gets busier or quieter over the run moves every arm alike), or
with ``--together`` all running at once in each repeat, each server under its
own ``bench`` in the same window: what else the machine does in that window
falls on every arm alike, and the paired figure (each arm against the same
repeat's ``off``) is far steadier than between runs one after another
(benchmarks/results/2026-12-07-tracing-cost-summary.md has both):

* ``off``: ``trio-agent serve`` as the suite starts it (``benchmarks/suite.py``);
* ``on``: the same with ``--otlp-endpoint`` at a sink in this process that
  answers every OTLP/HTTP export with 200, and ``OTEL_TRACES_SAMPLER=always_on``
  (every request sampled: server, admission and chat spans, exported);
* ``unsampled``: ``on`` with ``OTEL_TRACES_SAMPLER=always_off`` (tracing on, no
  span recorded): what tracing's mere presence costs;
* ``base`` (with ``--base-tree``): the same command run from another source
  tree, such as the commit before tracing, to show that ``off`` costs nothing
  (or the same tree: an A/A control, the method's own noise);
* ``NAME`` (``--variant NAME=DIR``): ``on`` run from another source tree, to
  measure a change to the tracing against this tree's.

``--in-process`` measures instead, in this process, what tracing adds to one
streamed request's path without the server around it: a server span, a
``chat`` span around a mock stream of 128 tokens read as the server reads it
(``observe=False`` and ``record_chat``), and the OTLP encoding of both spans
(the SDK's encoder, as the exporter runs it), against the same path with no
tracer; CPU (process time, every thread) per request, median of interleaved
rounds. It is far less sensitive to a busy machine than the server A/B.

Each run is ``trio-agent bench`` in its own process against the server's pid
(closed loop, the suite's mock: ttft 0.2 s, itl 0.02 s, 128 tokens; with
``--proxied`` the server proxies to the mock LLM server in its own process,
so every model call also carries a ``traceparent``). The figure is the
server's CPU (user + system) per request over the measured window; reported
per arm as the median of the repeats with min and max, each arm's median
against ``off``'s, and the median (min, max) of each repeat's arm against
that repeat's ``off``. Writes ``benchmarks/results/<date>-tracing-cost[-together]-<arms>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.suite import (
    PY,
    RESULTS,
    ROOT,
    SLO_TPOT,
    SLO_TTFT,
    ServerArgs,
    Suite,
    _stop,
    mock_llm_command,
    trio_agent_command,
)


class _Sink:
    """An OTLP/HTTP collector that accepts everything: counts exports and bytes, decodes nothing."""

    def __init__(self) -> None:
        sink = self
        self.exports = 0
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                sink.exports += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @contextmanager
    def running(self) -> Iterator[_Sink]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


@contextmanager
def _process(
    command: list[str], cwd: Path, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )  # fmt: skip
        try:
            yield Suite._wait_for_url(proc, log_path), proc.pid
        finally:
            _stop(proc)


def _bench(url: str, pid: int, concurrency: int, warmup: float, duration: float, out: Path) -> dict[str, Any]:
    command = [
        PY, "-m", "trio_agent", "bench", "--url", url, "--api", "trio-agent", "--server-pid", str(pid),
        "--warmup", str(warmup), "--duration", str(duration), "--max-duration", str(warmup + duration + 60),
        "--request-timeout", "60", "--slo-ttft", str(SLO_TTFT), "--slo-tpot", str(SLO_TPOT),
        "--concurrency", str(concurrency), "--json", str(out), "--no-progress",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=warmup + duration + 120)
    run: dict[str, Any] = json.loads(out.read_text())["runs"][0]
    return run


def _arm_command(
    arm: str, sink: _Sink, upstream: str | None, base_tree: Path | None, variants: dict[str, Path] | None = None
) -> tuple[list[str], Path, dict[str, str] | None]:
    """The server command of ``arm``, the tree it runs from and its environment."""
    command = trio_agent_command(ServerArgs(upstream_url=upstream))
    traced = [*command, "--otlp-endpoint", sink.url]
    if variants and arm in variants:
        # Tracing on, from another tree: a change to the tracing measured against main's.
        return traced, variants[arm], None
    if arm == "on":
        return traced, ROOT, None
    if arm == "unsampled":
        # Tracing on, no span recorded: what tracing's mere presence costs.
        return traced, ROOT, {"OTEL_TRACES_SAMPLER": "always_off"}
    if arm == "base":
        assert base_tree is not None
        return command, base_tree, None
    return command, ROOT, None


def _entry(arm: str, repeat: int, run: dict[str, Any], exports: int | None) -> dict[str, Any]:
    server = run["server"]
    entry = {
        "arm": arm,
        "repeat": repeat,
        "cpu_ms_per_request_total": server["cpu_ms_per_request_total"],
        "cpu_ms_per_request_user": server["cpu_ms_per_request_user"],
        "requests_per_s": run["metrics"]["request_throughput"],
        "ttft_p99_s": run["metrics"]["ttft"]["p99"],
        "exports": exports,
    }
    print(
        f"{arm}-{repeat:<4} {entry['cpu_ms_per_request_total']:.3f} ms CPU/request "
        f"{entry['requests_per_s']:.1f} req/s exports {exports if exports is not None else '-'}",
        flush=True,
    )
    return entry


def _round_together(
    order: list[str], r: int, sink: _Sink, upstream: str | None, args: argparse.Namespace, log_dir: Path
) -> list[dict[str, Any]]:
    """One repeat with every arm's server up and loaded at the same time.

    Each arm has its own server and its own ``bench`` process, and the windows
    coincide, so whatever else the machine does in that window (another
    tenant, a frequency change) falls on every arm alike: the paired
    difference is far steadier than between arms run one after another.
    Exports are counted for the sink as a whole (``None`` per arm).
    """
    with ExitStack() as stack:
        servers = []
        for arm in order:
            command, cwd, env = _arm_command(arm, sink, upstream, args.base_tree, args.variants)
            servers.append(stack.enter_context(_process(command, cwd, log_dir / f"{arm}-{r}.log", env)))

        def bench(arm: str, server: tuple[str, int]) -> dict[str, Any]:
            url, pid = server
            return _bench(url, pid, args.concurrency, args.warmup, args.duration, log_dir / f"{arm}-{r}.json")

        # One thread per arm, all at once; map re-raises a bench's failure here.
        with ThreadPoolExecutor(max_workers=len(order)) as pool:
            runs = list(pool.map(bench, order, servers))
    return [_entry(arm, r, run, None) for arm, run in zip(order, runs, strict=True)]


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--base-tree", type=Path, help="a source tree to run as the 'base' arm")
    parser.add_argument("--proxied", action="store_true", help="proxy to the mock LLM server")
    parser.add_argument(
        "--arms", help="comma-separated subset of off,on,unsampled,base (default: off,on and base if given)"
    )
    parser.add_argument(
        "--together", action="store_true", help="run the arms at the same time in each repeat (steadier pairs)"
    )
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=DIR",
        help="an arm NAME: tracing on, run from source tree DIR (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--in-process", action="store_true", help="the in-process measurement instead")
    args = parser.parse_args()
    if args.in_process:
        import trio

        trio.run(_in_process)
        return
    # Every request sampled (the SDK's default samples every root span too; said explicitly).
    os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    log_dir = Path(tempfile.mkdtemp(prefix="tracing-cost-"))
    arms = ["off", "on", *(["base"] if args.base_tree else [])]
    if args.arms:
        known = ["off", "on", "unsampled", "base"]
        arms = [a for a in known if a in args.arms.split(",")]
        if "base" in arms and not args.base_tree:
            parser.error("the base arm needs --base-tree")
    args.variants = {}
    for spec in args.variant:
        name, sep, tree = spec.partition("=")
        if not sep or name in ("off", "on", "unsampled", "base") or not Path(tree, "trio_agent").is_dir():
            parser.error(f"--variant {spec!r}: expected NAME=DIR, DIR a source tree, NAME a new arm")
        args.variants[name] = Path(tree).resolve()
        arms.append(name)
    if "off" not in arms:
        parser.error("the arms must include off (the reference)")
    runs: list[dict[str, Any]] = []
    with _Sink().running() as sink, _upstream(args.proxied, log_dir) as upstream:
        for r in range(args.repeats):
            order = arms if r % 2 == 0 else list(reversed(arms))
            if args.together:
                runs.extend(_round_together(order, r, sink, upstream, args, log_dir))
                continue
            for arm in order:
                command, cwd, env = _arm_command(arm, sink, upstream, args.base_tree, args.variants)
                name = f"{arm}-{r}"
                exports0 = sink.exports
                with _process(command, cwd, log_dir / f"{name}.log", env) as (url, pid):
                    run = _bench(url, pid, args.concurrency, args.warmup, args.duration, log_dir / f"{name}.json")
                runs.append(_entry(arm, r, run, sink.exports - exports0))
    per_arm = {arm: _summary([e["cpu_ms_per_request_total"] for e in runs if e["arm"] == arm]) for arm in arms}
    off = per_arm["off"]["median"]
    # Each repeat's arm against the same repeat's off: with --together, the steady figure.
    by_repeat = {(e["arm"], e["repeat"]): e["cpu_ms_per_request_total"] for e in runs}
    paired = {
        arm: _summary([by_repeat[arm, r] / by_repeat["off", r] - 1.0 for r in range(args.repeats)])
        for arm in arms
        if arm != "off"
    }
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "concurrency": args.concurrency,
        "proxied": args.proxied,
        "repeats": args.repeats,
        "window_s": args.duration,
        "base_tree": str(args.base_tree) if args.base_tree else None,
        "loadavg_at_end": os.getloadavg(),
        "cpu_ms_per_request_total": per_arm,
        "vs_off": {arm: per_arm[arm]["median"] / off - 1.0 for arm in arms if arm != "off"},
        "paired_vs_off": paired,
        "together": args.together,
        "runs": runs,
    }
    stem = (
        f"{datetime.now(UTC):%Y-%m-%d}-tracing-cost{'-proxied' if args.proxied else ''}"
        f"{'-together' if args.together else ''}-{'-'.join(arms)}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Tracing cost: server CPU per streamed request, {args.concurrency} streams"
        f"{' (proxied)' if args.proxied else ''}",
        "",
        f"`python -m benchmarks.tracing_cost{' --together' if args.together else ''}` (see its docstring); "
        f"median of {args.repeats} {'simultaneous' if args.together else 'interleaved'} repeats, "
        f"{args.duration:g} s windows.",
        "",
        "| arm | CPU ms/request (median) | min | max | vs off (medians) | vs off, paired per repeat: median (min, max) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        s = per_arm[arm]
        vs = "" if arm == "off" else f"{result['vs_off'][arm]:+.1%}"
        pv = "" if arm == "off" else (
            f"{paired[arm]['median']:+.1%} ({paired[arm]['min']:+.1%}, {paired[arm]['max']:+.1%})"
        )
        lines.append(f"| {arm} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {vs} | {pv} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"logs: {log_dir}")


async def _in_process(rounds: int = 10, requests: int = 400) -> None:
    import trio
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from trio_agent.config import MockLLMConfig
    from trio_agent.llm import ChatRequest, MockLLM, record_chat, stream_chat_traced
    from trio_agent.tracing import current_tracer, open_tracing

    class Encoding(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            encode_spans(spans).SerializePartialToString()
            return SpanExportResult.SUCCESS

    head = {b"content-type": b"application/json", b"host": b"127.0.0.1:8000"}
    mock = MockLLM(MockLLMConfig(ttft=0, itl=0, tokens=128))
    request = ChatRequest.from_question("hello")

    async def one() -> None:
        tracer = current_tracer()
        span = None if tracer is None else tracer.start_server(
            method="POST", path="/chat/stream", route="/chat/stream", request_id="0" * 32, headers=head
        )
        try:
            call = stream_chat_traced(mock, request, observe=False)
            async with call as chunks:
                ready = getattr(chunks, "receive_nowait", None)
                usage = finish = None
                async for chunk in chunks:
                    batch = [chunk]
                    try:
                        while ready is not None:
                            batch.append(ready())
                    except trio.WouldBlock:
                        pass
                    for c in batch:
                        usage = c.usage or usage
                        finish = c.finish_reason or finish
                record_chat(call, usage=usage, finish_reason=finish, first_token_at=trio.current_time())
        finally:
            if tracer is not None and span is not None:
                tracer.end_server(span, status=200, outcome="done")

    async def measure(traced: bool) -> float:
        t0 = time.process_time()
        if traced:
            async with open_tracing(endpoint="http://127.0.0.1:9", exporter=Encoding()):
                for _ in range(requests):
                    await one()
        else:
            for _ in range(requests):
                await one()
        return (time.process_time() - t0) / requests * 1e6

    results: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for traced in (False, True) if r % 2 == 0 else (True, False):
            results[traced].append(await measure(traced))
    off, on = statistics.median(results[False]), statistics.median(results[True])
    deltas = [b - a for a, b in zip(results[False], results[True], strict=True)]
    print(f"per request: off {off:.0f} us, on {on:.0f} us; added {statistics.median(deltas):.0f} us "
          f"(paired median; min {min(deltas):.0f}, max {max(deltas):.0f}) over {rounds} rounds of {requests}")


@contextmanager
def _upstream(proxied: bool, log_dir: Path) -> Iterator[str | None]:
    """The mock LLM server's ``/v1`` URL, in its own process, when ``proxied``; else None."""
    if not proxied:
        yield None
        return
    with _process(mock_llm_command(), ROOT, log_dir / "mock-llm.log") as (url, _pid):
        yield f"{url}/v1"


if __name__ == "__main__":
    main()
