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
    args = parser.parse_args()
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
