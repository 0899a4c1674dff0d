"""Soak: does the gateway's memory stay flat over many streamed requests?

    .venv/bin/python benchmarks/soak.py --requests 1000000            # the full million
    .venv/bin/python benchmarks/soak.py --requests 200000 --tracemalloc

Starts ``trio-agent serve`` on the built-in mock with short replies (``--mock-ttft 0
--mock-itl 0 --mock-tokens 8``), then drives a closed loop of ``--concurrency`` streams
with ``trio-agent bench`` in chunks of ``--chunk`` requests until ``--requests`` streamed
requests are done (``--warmup-requests`` of them first), or ``--max-duration`` seconds
passed. Every ``--sample-interval`` seconds it reads the server's RSS (/proc/PID/status)
and its ``streams_done`` counter (/metrics). With ``--tracemalloc`` the server runs with
``TRIO_AGENT_TRACEMALLOC_DIR`` and is sent SIGUSR1 at the end of the warm-up and at the
end; the top growth sites between the two snapshots are reported.

Reports RSS at the end of warm-up and at the end, the growth in percent, and the slope
(least squares of RSS over requests after warm-up) extrapolated to a million requests.
Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def streams_done(base: str) -> int:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^trio_agent_streams_done_total (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


def start_server(args: argparse.Namespace, trace_dir: str | None) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_AGENT_")}
    if trace_dir is not None:
        env["TRIO_AGENT_TRACEMALLOC_DIR"] = trace_dir
    cmd = [
        sys.executable, "-m", "trio_agent", "serve", "--port", "0",
        "--mock-ttft", "0", "--mock-itl", "0", "--mock-tokens", str(args.tokens),
        "--max-concurrency", str(args.concurrency), "--max-queued", str(args.concurrency),
        "--max-loop-lag", "0", "--no-access-log",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the server did not start")


def run_bench(base: str, n: int, concurrency: int, timeout: float) -> None:
    cmd = [
        sys.executable, "-m", "trio_agent", "bench", "--url", base,
        "--concurrency", str(concurrency), "--requests", str(n),
        "--max-duration", str(max(1.0, timeout)), "--no-progress",
    ]  # fmt: skip
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, cwd=ROOT)


def snapshot(proc: subprocess.Popen[str], trace_dir: str, n: int) -> tracemalloc.Snapshot:
    path = Path(trace_dir) / f"snapshot-{n}.tracemalloc"
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    size = -1
    while time.monotonic() < deadline:  # written when its size stops changing
        time.sleep(0.5)
        if path.exists() and path.stat().st_size == size and size > 0:
            return tracemalloc.Snapshot.load(str(path))
        size = path.stat().st_size if path.exists() else -1
    raise RuntimeError(f"no snapshot {path}")


def slope_per_request(points: list[tuple[int, int]]) -> float:
    """Least-squares KiB per request of (requests, rss_kib) points."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000, help="streamed requests in all")
    ap.add_argument("--warmup-requests", type=int, default=50_000)
    ap.add_argument("--chunk", type=int, default=50_000, help="requests per bench run")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--sample-interval", type=float, default=3.0)
    ap.add_argument("--max-duration", type=float, default=3600.0, help="seconds, whole run")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/2026-12-06-soak")
    args = ap.parse_args()

    trace_dir = tempfile.mkdtemp(prefix="soak-trace-") if args.tracemalloc else None
    proc, base = start_server(args, trace_dir)
    start = time.monotonic()
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            try:
                samples.append({
                    "t": round(time.monotonic() - start, 2),
                    "requests": streams_done(base),
                    "rss_kib": rss_kib(proc.pid),
                })  # fmt: skip
            except (OSError, RuntimeError):
                pass
            stop.wait(args.sample_interval)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    snaps: list[tracemalloc.Snapshot] = []
    warm_rss = 0
    try:
        run_bench(base, args.warmup_requests, args.concurrency, args.max_duration)
        time.sleep(args.sample_interval)
        warm_rss = rss_kib(proc.pid)
        warm_at = streams_done(base)
        if trace_dir:
            snaps.append(snapshot(proc, trace_dir, 1))
        done = warm_at
        while done < args.requests and time.monotonic() - start < args.max_duration:
            n = min(args.chunk, args.requests - done)
            run_bench(base, n, args.concurrency, args.max_duration - (time.monotonic() - start))
            done = streams_done(base)
            rate = done / (time.monotonic() - start)
            print(f"{done} requests, {rss_kib(proc.pid) / 1024:.1f} MiB, {rate:.0f}/s", flush=True)
        time.sleep(args.sample_interval)
        end_rss = rss_kib(proc.pid)
        if trace_dir:
            snaps.append(snapshot(proc, trace_dir, 2))
    finally:
        stop.set()
        thread.join(timeout=10)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    elapsed = time.monotonic() - start
    after = [(int(s["requests"]), int(s["rss_kib"])) for s in samples if s["requests"] >= warm_at]
    slope = slope_per_request(after)
    growth = (end_rss - warm_rss) / warm_rss * 100
    top: list[dict[str, Any]] = []
    if len(snaps) == 2:
        filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
        stats = snaps[1].filter_traces(filters).compare_to(snaps[0].filter_traces(filters), "lineno")
        for st in stats[:15]:
            frame = st.traceback[0]
            top.append({"site": f"{frame.filename}:{frame.lineno}", "size_diff_kib": round(st.size_diff / 1024, 1),
                        "count_diff": st.count_diff, "size_kib": round(st.size / 1024, 1)})
    result = {
        "command": " ".join(sys.argv),
        "requests": done,
        "warmup_requests": warm_at,
        "concurrency": args.concurrency,
        "elapsed_s": round(elapsed, 1),
        "rate_per_s": round(done / elapsed, 1),
        "rss_warm_kib": warm_rss,
        "rss_end_kib": end_rss,
        "growth_pct": round(growth, 2),
        "slope_kib_per_100k": round(slope * 100_000, 1),
        "extrapolated_growth_pct_at_1m": round(slope * (1_000_000 - warm_at) / warm_rss * 100, 2),
        "tracemalloc": bool(trace_dir),
        "top_growth": top,
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Soak: streamed requests against `trio-agent serve` (mock, 8 tokens, no delays)", "",
        f"`{result['command']}`", "",
        "| requests | after warm-up | concurrency | time | rate | RSS after warm-up | RSS at end | growth | slope | extrapolated to 1M |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {done:,} | {warm_at:,} | {args.concurrency} | {elapsed:.0f} s | {result['rate_per_s']:.0f}/s "
        f"| {warm_rss / 1024:.1f} MiB | {end_rss / 1024:.1f} MiB | {growth:+.2f}% "
        f"| {slope * 100_000:+.1f} KiB/100k | {result['extrapolated_growth_pct_at_1m']:+.2f}% |",
    ]  # fmt: skip
    if top:
        lines += ["", "Top tracemalloc growth sites (end vs end of warm-up):", "",
                  "| site | growth KiB | blocks | size KiB |", "|---|---|---|---|"]
        lines += [f"| `{t['site']}` | {t['size_diff_kib']:+} | {t['count_diff']:+} | {t['size_kib']} |" for t in top]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
