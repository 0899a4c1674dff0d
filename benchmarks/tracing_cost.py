"""What tracing costs the gateway: CPU per streamed request at 100 streams, tracing off, on, and before.

    python -m benchmarks.tracing_cost [--repeats 3] [--concurrency 100] [--base-tree DIR] [--proxied]

Arms, interleaved in each repeat (order reversed every other repeat, so a
machine that gets busier or quieter over the run moves every arm alike):

* ``off``: ``trio-agent serve`` as the suite starts it (``benchmarks/suite.py``);
* ``on``: the same with ``--otlp-endpoint`` at a sink in this process that
  answers every OTLP/HTTP export with 200, and ``OTEL_TRACES_SAMPLER=always_on``
  (every request sampled: server, admission and chat spans, exported);
* ``base`` (with ``--base-tree``): the same command run from another source
  tree, such as the commit before tracing, to show that ``off`` costs nothing.

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
per arm as the median of the repeats with min and max, and ``on``'s and
``base``'s medians against ``off``'s. Writes
``benchmarks/results/<date>-tracing-cost.json`` and ``.md``.
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
from contextlib import contextmanager
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
def _process(command: list[str], cwd: Path, log_path: Path) -> Iterator[tuple[str, int]]:
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
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
    parser.add_argument("--arms", help="comma-separated subset of off,on,base (default: all given)")
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
        arms = [a for a in arms if a in args.arms.split(",")]
    if "off" not in arms:
        parser.error("the arms must include off (the reference)")
    runs: list[dict[str, Any]] = []
    with _Sink().running() as sink, _upstream(args.proxied, log_dir) as upstream:
        for r in range(args.repeats):
            for arm in arms if r % 2 == 0 else list(reversed(arms)):
                command = trio_agent_command(ServerArgs(upstream_url=upstream))
                cwd = ROOT
                if arm == "on":
                    command += ["--otlp-endpoint", sink.url]
                elif arm == "base":
                    cwd = args.base_tree
                name = f"{arm}-{r}"
                exports0 = sink.exports
                with _process(command, cwd, log_dir / f"{name}.log") as (url, pid):
                    run = _bench(url, pid, args.concurrency, args.warmup, args.duration, log_dir / f"{name}.json")
                server = run["server"]
                entry = {
                    "arm": arm,
                    "repeat": r,
                    "cpu_ms_per_request_total": server["cpu_ms_per_request_total"],
                    "cpu_ms_per_request_user": server["cpu_ms_per_request_user"],
                    "requests_per_s": run["metrics"]["request_throughput"],
                    "ttft_p99_s": run["metrics"]["ttft"]["p99"],
                    "exports": sink.exports - exports0,
                }
                runs.append(entry)
                print(
                    f"{name:<8} {entry['cpu_ms_per_request_total']:.3f} ms CPU/request "
                    f"{entry['requests_per_s']:.1f} req/s exports {entry['exports']}",
                    flush=True,
                )
    per_arm = {arm: _summary([e["cpu_ms_per_request_total"] for e in runs if e["arm"] == arm]) for arm in arms}
    off = per_arm["off"]["median"]
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
        "runs": runs,
    }
    stem = f"{datetime.now(UTC):%Y-%m-%d}-tracing-cost{'-proxied' if args.proxied else ''}-{'-'.join(arms)}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Tracing cost: server CPU per streamed request, {args.concurrency} streams"
        f"{' (proxied)' if args.proxied else ''}",
        "",
        "`python -m benchmarks.tracing_cost` (see its docstring); median of "
        f"{args.repeats} interleaved repeats, {args.duration:g} s windows.",
        "",
        "| arm | CPU ms/request (median) | min | max | vs off |",
        "|---|---|---|---|---|",
    ]
    for arm in arms:
        s = per_arm[arm]
        vs = "" if arm == "off" else f"{result['vs_off'][arm]:+.1%}"
        lines.append(f"| {arm} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {vs} |")
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
