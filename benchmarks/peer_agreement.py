"""Does ``trio-agent bench`` agree with AIPerf 0.13 and GuideLLM 0.8.1? Run all three, compare.

    .venv/bin/python -m benchmarks.peer_agreement            # c = 1, 16, 64; 3 repeats; ramp-up 0 and 0.75 s

Starts GuideLLM's mock server (TTFT 100 ms, ITL 10 ms, 64 output tokens), then for every
ramp-up, concurrency and repeat runs the three tools one after the other against it (the
order rotates between repeats), each a count-bounded closed loop of ``--per-stream``
requests per stream with a prompt of about 64 tokens and 64 output tokens, no warm-up. It
prints, per figure, each tool's median over the repeats with its spread and bench's
difference from each peer (``!`` past ``--tolerance``), then two diagnostics read from every
tool's per-request records (and each tool's CPU time): how many other requests were sent within 20 ms of a request
(median; ``c - 1`` means every wave goes out at once and stays in phase), and the time from
a request's end to the next send (the closed loop's re-dispatch; rank-matched: the k-th end
frees the slot of the (c+k)-th send).

Figures compared (docs/benchmarks.md, "Agreement with AIPerf and GuideLLM"): request
throughput; TTFT p50; ITL p50 in the peers' sense, ``(e2e - TTFT) / (tokens - 1)`` per
request, which is bench's TPOT (bench's own ITL, the gaps between token events, is printed
beside it); E2E p50.

The peers live in their own virtual environments, outside the project (``--peer PREFIX``,
default ``$PEER`` or ``/tmp/peer``: ``PREFIX_aiperf``, ``PREFIX_guidellm``, the tokenizer in
``PREFIX/tok``, built by ``benchmarks/peer_tokenizer.py`` when missing). Without them the
script says how to install them and exits 0 having run nothing. Every tool run is bounded
(``--run-timeout``) and the whole session too (``--max-minutes``: no run starts after it).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from trio_agent.bench import Outcome, run_bench
from trio_agent.config import BenchConfig

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("bench", "aiperf", "guidellm")
MODEL = "mock-model"
TTFT_MS, ITL_MS, OUTPUT_TOKENS = 100, 10, 64
# About 64 tokens for the mock server's tokenizer (a word and a space are a token each).
PROMPT = " ".join(["word"] * 32)
FIGURES = (
    ("req_s", "req/s"),
    ("ttft_p50", "TTFT p50 ms"),
    ("itl_p50", "ITL p50 ms (per request)"),
    ("e2e_p50", "E2E p50 ms"),
)
SYNC_WINDOW = 0.020

INSTALL = """\
AIPerf and GuideLLM are not installed under {prefix}_aiperf / {prefix}_guidellm; nothing was run.
Install them (outside the project; GuideLLM pulls in torch, a few GB):
    python3 -m venv {prefix}_aiperf   && {prefix}_aiperf/bin/pip install aiperf==0.13.0
    python3 -m venv {prefix}_guidellm && {prefix}_guidellm/bin/pip install guidellm==0.8.1
then run this script again (--peer {prefix} if that is not the default)."""


# -- per-request diagnostics ---------------------------------------------------------


def sync_neighbours(starts: Sequence[float], window: float = SYNC_WINDOW) -> float:
    """Median over requests of how many *other* requests were sent within ``window`` seconds."""
    s = sorted(starts)
    counts = [bisect.bisect_right(s, t + window) - bisect.bisect_left(s, t - window) - 1 for t in s]
    return statistics.median(counts) if counts else 0.0


def redispatch_ms(starts: Sequence[float], ends: Sequence[float], streams: int) -> float | None:
    """Median gap between the k-th end and the (streams+k)-th send, in ms (closed loop)."""
    s, e = sorted(starts), sorted(ends)
    gaps = [s[streams + k] - e[k] for k in range(len(s) - streams)]
    return 1000 * statistics.median(gaps) if gaps else None


def _diagnostics(starts: list[float], ends: list[float], streams: int) -> dict[str, Any]:
    return {
        "sync20": sync_neighbours(starts),
        "redispatch_ms": redispatch_ms(starts, ends, streams),
    }


# -- the three tools -------------------------------------------------------------------


def run_trio_bench(url: str, streams: int, per_stream: int, ramp_up: float, _: Path) -> dict[str, Any]:
    config = BenchConfig(
        url=url,
        api="openai",
        model=MODEL,
        question=PROMPT,
        max_tokens=OUTPUT_TOKENS,
        concurrency=streams,
        requests=streams * per_stream,
        ramp_up=ramp_up,
        max_duration=600.0,
    )
    result = trio.run(run_bench, config)
    m = result.metrics
    ok = [r for r in result.records if r.outcome is Outcome.OK]

    def ms(value: float | None) -> float | None:
        return None if value is None else 1000 * value

    return {
        "ok": m.ok,
        "errors": m.requests - m.ok,
        "req_s": m.request_throughput,
        "ttft_p50": ms(m.ttft.p50),
        "itl_p50": ms(m.tpot.p50),
        "gap_itl_p50": ms(m.itl.p50),
        "e2e_p50": ms(m.e2e.p50),
        "client_cpu_s": result.client.cpu.total,
        **_diagnostics([r.sent_at for r in ok], [r.end_at for r in ok], streams),
    }


def _peer_env(prefix: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TMPDIR"] = os.path.join(prefix, "tmp")  # both leave work files there
    os.makedirs(env["TMPDIR"], exist_ok=True)
    env.update(extra)
    return env


def _run_peer(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> float:
    """Run a peer tool; return the CPU seconds of its process tree (start-up included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_aiperf(
    prefix: str, url: str, streams: int, per_stream: int, ramp_up: float, out: Path, timeout: float
) -> dict[str, Any]:
    cmd = [
        f"{prefix}_aiperf/bin/aiperf", "profile",
        "--model", MODEL, "--url", url, "--endpoint-type", "chat", "--streaming",
        "--tokenizer", os.path.join(prefix, "tok"), "--use-server-token-count",
        "--concurrency", str(streams), "--request-count", str(streams * per_stream),
        "--isl", "64", "--osl", str(OUTPUT_TOKENS), "--extra-inputs", "ignore_eos:true",
        "--ui", "none", "--no-server-metrics", "--no-gpu-telemetry", "--artifact-dir", str(out),
    ]  # fmt: skip
    if ramp_up > 0:
        cmd += ["--concurrency-ramp-duration", str(ramp_up)]
    env = _peer_env(prefix)
    # With HF_HUB_OFFLINE set, aiperf 0.13 takes a local tokenizer path for a hub id and aborts.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    cpu = _run_peer(cmd, env, out.with_suffix(".log"), timeout)
    with (out / "profile_export_aiperf.json").open() as f:
        d = json.load(f)

    def stat(tag: str, key: str = "avg") -> float | None:
        v = d.get(tag)
        return v.get(key) if isinstance(v, dict) else None

    starts, ends = [], []
    with (out / "profile_export.jsonl").open() as f:
        for line in f:
            meta = json.loads(line)["metadata"]
            if meta.get("benchmark_phase", "profiling") == "profiling":
                starts.append(meta["request_start_ns"] / 1e9)
                ends.append(meta["request_end_ns"] / 1e9)
    count = stat("request_count") or 0
    return {
        "ok": int(count),
        "errors": int(stat("error_request_count") or 0),
        "req_s": stat("request_throughput"),
        "ttft_p50": stat("time_to_first_token", "p50"),
        "itl_p50": stat("inter_token_latency", "p50"),
        "gap_itl_p50": stat("inter_chunk_latency", "p50"),
        "e2e_p50": stat("request_latency", "p50"),
        "client_cpu_s": cpu,
        **_diagnostics(starts, ends, streams),
    }


def run_guidellm(
    prefix: str, url: str, streams: int, per_stream: int, ramp_up: float, out: Path, timeout: float
) -> dict[str, Any]:
    profile = f"kind=concurrent,streams={streams}"
    if ramp_up > 0:
        profile += f",rampup_duration={ramp_up}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        f"{prefix}_guidellm/bin/guidellm", "run",
        "--backend", f"kind=openai_http,target={url},model={MODEL}",
        "--profile", profile,
        "--constraint", f"kind=max_requests,count={streams * per_stream}",
        "--tokenizer", f"kind=huggingface_auto,model={os.path.join(prefix, 'tok')}",
        "--data", f"kind=synthetic_text,prompt_tokens=64,output_tokens={OUTPUT_TOKENS}",
        "--output", f"kind=json,path={out / 'benchmarks.json'}",
        "--disable-console-interactive",
    ]  # fmt: skip
    env = _peer_env(
        prefix,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        GUIDELLM__MAX_WORKER_PROCESSES="10",  # the tool's default, pinned
    )
    cpu = _run_peer(cmd, env, out.with_suffix(".log"), timeout)
    with (out / "benchmarks.json").open() as f:
        b = json.load(f)["benchmarks"][0]
    metrics = b["metrics"]

    def p50(name: str, scale: float = 1.0) -> float | None:
        v = (((metrics.get(name) or {}).get("successful") or {}).get("percentiles") or {}).get("p50")
        return None if v is None else v * scale

    totals = metrics["request_totals"]
    starts, ends = [], []
    for r in (b.get("requests") or {}).get("successful") or []:
        t = r["info"]["timings"]
        starts.append(t["request_start"])
        ends.append(t["request_end"])
    return {
        "ok": totals["successful"],
        "errors": totals["errored"] + totals["incomplete"],
        "req_s": totals["successful"] / b["duration"] if b.get("duration") else None,
        "ttft_p50": p50("time_to_first_token_ms"),
        "itl_p50": p50("inter_token_latency_ms"),
        "gap_itl_p50": None,
        "e2e_p50": p50("request_latency", 1000.0),
        "client_cpu_s": cpu,
        **_diagnostics(starts, ends, streams),
    }


# -- the mock server ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    import urllib.request

    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the mock server exited at start")
        try:
            req = urllib.request.Request(
                url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the mock server did not answer within {timeout} s")


def start_mock(prefix: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [
        f"{prefix}_guidellm/bin/guidellm", "mock-server", "--host", "127.0.0.1", "--port", str(port),
        "--model", MODEL, "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS),
        "--output-tokens", str(OUTPUT_TOKENS),
    ]  # fmt: skip
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=_peer_env(prefix, HF_HUB_OFFLINE="1"), stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


# -- the table ---------------------------------------------------------------------


def _median_spread(values: list[float]) -> tuple[float, float, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def _cell(values: list[float], digits: int = 1) -> str:
    m = _median_spread(values)
    if m is None:
        return "n/a"
    med, lo, hi = m
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})" if len(values) > 1 else f"{med:.{digits}f}"


def _diff(a: list[float], b: list[float], tolerance: float) -> str:
    ma, mb = _median_spread(a), _median_spread(b)
    if ma is None or mb is None or mb[0] == 0:
        return "n/a"
    d = 100 * (ma[0] - mb[0]) / mb[0]
    return f"{d:+.1f}%{' !' if abs(d) > tolerance else ''}"


def format_tables(runs: list[dict[str, Any]], tolerance: float) -> str:
    """Markdown: per ramp-up, the figures (median, spread, bench's difference) and the diagnostics."""
    lines: list[str] = []
    for ramp in sorted({r["ramp_up"] for r in runs}):
        at = [r for r in runs if r["ramp_up"] == ramp and "error" not in r]
        reps = max((r["repeat"] for r in at), default=-1) + 1
        lines += [
            f"### Ramp-up {ramp:g} s (median of {reps}, min-max in brackets)",
            "",
            "| c | figure | trio-agent bench | AIPerf | GuideLLM | bench vs AIPerf | bench vs GuideLLM |",
            "|---|---|---|---|---|---|---|",
        ]

        def values(tool: str, c: int, key: str, at: list[dict[str, Any]] = at) -> list[float]:
            return [r[key] for r in at if r["tool"] == tool and r["c"] == c and r.get(key) is not None]

        streams = sorted({r["c"] for r in at})
        for c in streams:
            for key, label in FIGURES:
                b, a, g = (values(t, c, key) for t in TOOLS)
                digits = 2 if key in ("itl_p50", "req_s") else 1
                lines.append(
                    f"| {c} | {label} | {_cell(b, digits)} | {_cell(a, digits)} | {_cell(g, digits)} "
                    f"| {_diff(b, a, tolerance)} | {_diff(b, g, tolerance)} |"
                )
        lines += [
            "",
            "| c | diagnostic | trio-agent bench | AIPerf | GuideLLM |",
            "|---|---|---|---|---|",
        ]
        for c in streams:
            for key, label, digits in (
                ("gap_itl_p50", "ITL p50 ms, gaps between chunks", 2),
                ("sync20", "other sends within 20 ms (median)", 0),
                ("redispatch_ms", "end -> next send p50 ms", 2),
                ("client_cpu_s", "client CPU s (peers: with start-up)", 1),
            ):
                cells = [_cell(values(t, c, key), digits) for t in TOOLS]
                lines.append(f"| {c} | {label} | " + " | ".join(cells) + " |")
        failed = [r for r in runs if r["ramp_up"] == ramp and "error" in r]
        for r in failed:
            lines.append(f"\nfailed: {r['tool']} c={r['c']} repeat {r['repeat']}: {r['error']}")
        lines.append("")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", default=os.environ.get("PEER", "/tmp/peer"),
                   help="prefix of the peer venvs: PREFIX_aiperf, PREFIX_guidellm (default $PEER or /tmp/peer)")
    p.add_argument("--concurrency", default="1,16,64", help="streams, comma-separated (default 1,16,64)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each tool per point (default 3)")
    p.add_argument("--per-stream", type=int, default=20, help="requests per stream (default 20)")
    p.add_argument("--ramp-up", default="0,0.75",
                   help="closed-loop ramp-ups to compare, seconds, given to all three tools (default 0,0.75)")
    p.add_argument("--tolerance", type=float, default=5.0, help="percent; larger differences get '!' (default 5)")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds per tool run (default 300)")
    p.add_argument("--max-minutes", type=float, default=90.0, help="start no run after this (default 90)")
    p.add_argument("--nice", type=int, default=0,
                   help="add this to the scheduling priority of the mock server and all three tools "
                        "(negative needs root; on a shared machine it keeps other load from skewing them)")
    p.add_argument("--json", type=Path, help="write every run's figures here")
    p.add_argument("--out", type=Path, help="write the markdown tables here")
    p.add_argument("--keep", type=Path, help="keep the tools' result folders here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    prefix = args.peer.rstrip("/")
    streams_list = [int(v) for v in _floats(args.concurrency)]
    ramps = _floats(args.ramp_up)
    if args.repeats < 1 or args.per_stream < 1 or any(c < 1 for c in streams_list) or any(r < 0 for r in ramps):
        p.error("repeats, per-stream and concurrency must be >= 1, ramp-ups >= 0")

    if not all(os.access(f"{prefix}_{t}/bin/{t}", os.X_OK) for t in ("aiperf", "guidellm")):
        print(INSTALL.format(prefix=prefix))
        return 0
    tok = os.path.join(prefix, "tok")
    if not os.path.isfile(os.path.join(tok, "tokenizer.json")):
        subprocess.run(
            [f"{prefix}_guidellm/bin/python", str(ROOT / "benchmarks" / "peer_tokenizer.py"), tok],
            check=True, timeout=300, env={**os.environ, "AIPERF_VENV": f"{prefix}_aiperf"},
        )  # fmt: skip

    if args.nice:
        os.nice(args.nice)  # inherited by the mock server and the peers' processes
    work = args.keep or Path(tempfile.mkdtemp(prefix="peer-agreement-"))
    work.mkdir(parents=True, exist_ok=True)
    mock, url = start_mock(prefix, work / "mock-server.log")
    print(f"mock server {url} (pid {mock.pid}); tool output in {work}", file=sys.stderr)
    runners: dict[str, Callable[[int, float, Path], dict[str, Any]]] = {
        "bench": lambda c, r, out: run_trio_bench(url, c, args.per_stream, r, out),
        "aiperf": lambda c, r, out: run_aiperf(prefix, url, c, args.per_stream, r, out, args.run_timeout),
        "guidellm": lambda c, r, out: run_guidellm(prefix, url, c, args.per_stream, r, out, args.run_timeout),
    }
    runs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60 * args.max_minutes
    load_before = os.getloadavg()
    try:
        for ramp in ramps:
            for c in streams_list:
                if c == 1 and ramp > 0:
                    continue  # one stream has nothing to spread
                for rep in range(args.repeats):
                    order = TOOLS[rep % 3 :] + TOOLS[: rep % 3]  # rotate who goes first
                    for tool in order:
                        if time.monotonic() > deadline:
                            print("--max-minutes reached: stopping", file=sys.stderr)
                            raise StopIteration
                        out = work / f"{tool}-c{c}-r{ramp:g}-{rep}"
                        row: dict[str, Any] = {"tool": tool, "c": c, "ramp_up": ramp, "repeat": rep}
                        t0 = time.monotonic()
                        try:
                            row.update(runners[tool](c, ramp, out))
                        except (RuntimeError, OSError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
                            row["error"] = f"{type(exc).__name__}: {exc}"
                        row["wall_s"] = time.monotonic() - t0
                        row["loadavg1"] = os.getloadavg()[0]
                        runs.append(row)
                        brief = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
                        print(json.dumps(brief), file=sys.stderr)
    except StopIteration:
        pass
    finally:
        mock.terminate()
        try:
            mock.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mock.kill()
            mock.wait()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    tables = format_tables(runs, args.tolerance)
    header = (
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
        f"({os.cpu_count()} CPUs); {args.per_stream} requests per stream; nice {args.nice:+d}\n\n"
    )
    print(header + tables)
    if args.out:
        args.out.write_text(header + tables)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None, "out": None, "keep": None},
                                         "runs": runs}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
