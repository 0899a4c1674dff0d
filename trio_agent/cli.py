"""The ``trio-agent`` command line: flags and environment -> config objects -> calls.

No logic lives here. Subcommands:

* ``serve``     run the gateway (trio_agent.server)
* ``mock-llm``  run the OpenAI-compatible mock LLM server (trio_agent.mock_server)
* ``bench``     run the load benchmark (trio_agent.bench)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway (mock LLM by default)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    print("trio-agent serve: not built yet", file=sys.stderr)
    return 2


def _add_mock_llm(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mock-llm", help="run the OpenAI-compatible mock LLM server")
    p.set_defaults(func=_run_mock_llm)


def _run_mock_llm(args: argparse.Namespace) -> int:
    print("trio-agent mock-llm: not built yet", file=sys.stderr)
    return 2


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pathlib import Path

    p = sub.add_parser(
        "bench",
        help="run the load benchmark",
        description="Measure throughput and latency of streamed replies under load.",
    )
    p.add_argument("--url", required=True, help="server base URL, http://HOST:PORT")
    p.add_argument("--api", choices=("trio-agent", "openai"), default="trio-agent",
                   help="trio-agent: POST /chat/stream; openai: POST /v1/chat/completions")
    p.add_argument("--concurrency", type=int, default=10,
                   help="closed loop: workers; open loop: most requests in flight (default 10)")
    p.add_argument("--requests", type=int, help="measured requests to send")
    p.add_argument("--duration", type=float, help="seconds to send for, after the warm-up")
    p.add_argument("--rate", type=float, help="open loop: arrivals per second (default: closed loop)")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="open loop: gamma shape of the gaps; 1 = Poisson, <1 burstier (default 1)")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of warm-up left out of the results")
    p.add_argument("--seed", type=int, default=0, help="seed of the open-loop schedule (default 0)")
    p.add_argument("--max-tokens", type=int, help="max_tokens sent with every request")
    p.add_argument("--question", help="the prompt sent with every request")
    p.add_argument("--model", help="model name sent with every request")
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="client-side deadline per request, seconds (default 60)")
    p.add_argument("--max-duration", type=float, default=900.0,
                   help="hard cap on one run, seconds; requests still in flight are cancelled (default 900)")
    p.add_argument("--max-requests", type=int, default=1_000_000,
                   help="hard cap on requests sent in one run (default 1000000)")
    p.add_argument("--processes", type=int, default=1, help="load generator processes (default 1)")
    p.add_argument("--no-keepalive", action="store_true", help="one TCP connection per request")
    p.add_argument("--slo-ttft", type=float, help="goodput SLO: TTFT from scheduled, seconds")
    p.add_argument("--slo-tpot", type=float, help="goodput SLO: time per output token, seconds")
    p.add_argument("--slo-e2e", type=float, help="goodput SLO: end to end from scheduled, seconds")
    p.add_argument("--sweep", help="concurrency=10,100,1000 or rate=5,10,20: one run per value")
    p.add_argument("--server-pid", type=int, help="measure this process tree's CPU and memory")
    p.add_argument("--label", default="", help="a name for this run in reports")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    p.add_argument("--plot-dir", type=Path, help="write PNG plots here (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=_run_bench)


def _parse_sweep(spec: str) -> tuple[str, list[float]]:
    name, eq, raw = spec.partition("=")
    name = name.strip()
    if not eq or name not in ("concurrency", "rate"):
        raise ValueError(f"--sweep must be concurrency=A,B,... or rate=A,B,..., got {spec!r}")
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep values must be numbers, got {raw!r}") from None
    if not values:
        raise ValueError(f"--sweep needs at least one value, got {spec!r}")
    return name, values


def _run_bench(args: argparse.Namespace) -> int:
    import json
    from functools import partial

    import trio

    from . import bench
    from .config import BenchConfig
    from .errors import ConfigError

    try:
        sweep = _parse_sweep(args.sweep) if args.sweep else None
        extra = {"question": args.question} if args.question else {}
        config = BenchConfig(
            url=args.url,
            api=args.api,
            concurrency=args.concurrency,
            requests=args.requests,
            duration=args.duration,
            rate=args.rate,
            burstiness=args.burstiness,
            warmup=args.warmup,
            seed=args.seed,
            max_tokens=args.max_tokens,
            model=args.model,
            request_timeout=args.request_timeout,
            max_requests=args.max_requests,
            max_duration=args.max_duration,
            keepalive=not args.no_keepalive,
            processes=args.processes,
            slo_ttft=args.slo_ttft,
            slo_tpot=args.slo_tpot,
            slo_e2e=args.slo_e2e,
            label=args.label,
            **extra,
        )
        if sweep is not None:
            # Validate every point before running any.
            for value in sweep[1]:
                bench.sweep_point(config, sweep[0], value)
    except (ConfigError, ValueError) as exc:
        print(f"trio-agent bench: {exc}", file=sys.stderr)
        return 2
    progress = (
        bench.ProgressLine(sys.stderr, args.label)
        if not args.no_progress and sys.stderr.isatty()
        else None
    )
    try:
        if sweep is None:
            results = [trio.run(partial(bench.run_bench, config, server_pid=args.server_pid, progress=progress))]
        else:
            results = trio.run(
                partial(bench.run_sweep, config, sweep[0], sweep[1], server_pid=args.server_pid, progress=progress)
            )
    finally:
        if progress is not None:
            progress.finish()
    if sweep is None:
        print(bench.format_result(results[0]))
    else:
        for result in results:
            print(bench.format_result(result))
        print(bench.format_sweep(sweep[0], results))
    if args.json is not None:
        doc = {
            "environment": bench.environment(),
            "sweep": {"parameter": sweep[0], "values": sweep[1]} if sweep else None,
            "runs": [bench.result_to_json(r) for r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    if args.plot_dir is not None:
        try:
            paths = bench.write_plots(results, args.plot_dir, sweep=sweep[0] if sweep else None)
        except ImportError:
            print("trio-agent bench: plots need matplotlib: pip install 'trio_agent[bench]'", file=sys.stderr)
            return 1
        print("plots written: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_mock_llm(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
