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
from typing import Any

__all__ = ["build_parser", "main"]


_SERVE_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("host", str, "address to listen on"),
    ("port", int, "port to listen on (0: any free port)"),
    ("workers", int, "worker processes sharing the socket; admission limits are split between them"),
    ("max_concurrency", int, "concurrent upstream calls (the admission cap)"),
    ("max_queued", int, "requests that may wait for admission past the cap"),
    ("max_queue_wait", float, "seconds a request may wait for admission before 503"),
    ("queue_lifo_after", float, "seconds the queue stays non-empty before the newest waiter goes first (0: FIFO)"),
    ("max_loop_lag", float, "seconds the scheduler may run behind before new requests get 503, "
     "free slots or not (0: off; opt-in, e.g. 0.075)"),
    ("gc_threshold", int, "Python's youngest-generation GC threshold while serving (0: Python's own)"),
    ("request_timeout", float, "seconds for a whole request: queue wait and upstream"),
    ("keepalive_interval", float, "seconds of stream silence before an SSE keepalive comment"),
    ("write_timeout", float, "seconds a write to a client may stall before the stream ends"),
    ("drain_timeout", float, "seconds in-flight streams get to finish on SIGTERM/SIGINT"),
    ("keep_alive_timeout", float, "seconds an idle connection, or one still sending its headers, stays open"),
    ("max_connections", int, "client connections open at once (503 past it; default: from the descriptor limit)"),
    ("tracemalloc_dir", str, "diagnostics: trace allocations, write a tracemalloc snapshot here on SIGUSR1"),
    ("per_key_max_concurrency", int, "concurrent requests per API key (429 past it)"),
    ("max_body_bytes", int, "largest request body (413 past it)"),
    ("max_header_bytes", int, "largest request head (431 past it)"),
    ("max_messages", int, "most messages in one request"),
    ("max_message_chars", int, "longest message, in characters"),
    ("max_tokens_limit", int, "largest max_tokens a client may ask for"),
    ("max_batch_items", int, "most items in one /chat/batch request"),
    ("batch_concurrency", int, "items of one batch run at once (each still goes through admission)"),
    ("per_key_rate", float, "requests per second per API key (429 past it; shared through Redis)"),
    ("per_key_burst", int, "burst allowed above per_key_rate"),
    ("redis_url", str, "share the limits across processes through this Redis (redis://host:port/db)"),
    ("redis_on_error", str, "when Redis is unreachable: fail_open (local share) or fail_closed (503)"),
    ("redis_lease_ttl", float, "seconds after which a dead process's leases expire"),
    ("redis_key_prefix", str, "prefix of the Redis keys (one per deployment)"),
    ("redis_poll_interval", float, "seconds between polls of a waiter (pub/sub wakes it sooner)"),
    ("redis_local_share", int, "slots this process uses while Redis is down (fail_open)"),
    ("otlp_endpoint", str, "trace requests and agent runs: export spans over OTLP/HTTP to this collector "
     "(e.g. http://localhost:4318; default: OTEL_EXPORTER_OTLP_ENDPOINT, else off)"),
    ("trace_queue_size", int, "finished spans that may wait for export (more are dropped and counted)"),
    ("trace_export_interval", float, "seconds between span exports (sooner when 512 spans are queued)"),
    ("trace_export_timeout", float, "seconds one span export may take before it is given up"),
)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .config import MockLLMConfig, ServerConfig

    defaults = ServerConfig()
    mock = MockLLMConfig()
    p = sub.add_parser(
        "serve",
        help="run the gateway (mock LLM by default)",
        description=(
            "Run the trio_agent gateway. Every setting can also come from an environment "
            "variable TRIO_AGENT_<NAME> (flags win); the upstream API key only from "
            "TRIO_AGENT_UPSTREAM_API_KEY."
        ),
    )
    for name, tp, text in _SERVE_FLAGS:
        env = f"TRIO_AGENT_{name.upper()}"
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=tp,
            default=None,
            help=f"{text} [default: {getattr(defaults, name)}; env {env}]",
        )
    p.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accept this API key (repeatable; enables auth) [env TRIO_AGENT_API_KEYS, comma-separated]",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="allow this browser origin (repeatable; CORS is off without one) "
        "[env TRIO_AGENT_CORS_ORIGINS, comma-separated]",
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"one JSON line per request on stderr [default: {defaults.access_log}; env TRIO_AGENT_ACCESS_LOG]",
    )
    p.add_argument(
        "--direct-writes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write streamed tokens straight to the socket when it is free "
        f"[default: {defaults.direct_writes}; env TRIO_AGENT_DIRECT_WRITES]",
    )
    p.add_argument(
        "--trace-content",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record prompts and completions in the spans (with --otlp-endpoint) "
        f"[default: {defaults.trace_content}; env TRIO_AGENT_TRACE_CONTENT]",
    )
    p.add_argument(
        "--upstream-url",
        action="append",
        metavar="URL[,OPTION=VALUE...]",
        help="OpenAI-compatible base URL to proxy to, e.g. https://api.openai.com/v1 "
        "(default: the built-in mock LLM); repeat for several upstreams, each optionally with "
        ",weight=W ,models=a|b ,max_concurrency=N ,api_key_env=VAR (see docs/scale-out.md) "
        "[env TRIO_AGENT_UPSTREAM_URL, specs separated by spaces]",
    )
    p.add_argument(
        "--ready-requires-upstream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="/readyz answers 503 while every upstream is ejected "
        f"[default: {defaults.ready_requires_upstream}; env TRIO_AGENT_READY_REQUIRES_UPSTREAM]",
    )
    for flag, tp, text in (
        ("eject_after_failures", int, "consecutive failures before the first byte that eject an upstream"),
        ("eject_delay", float, "seconds an upstream stays ejected the first time (doubles on repeats)"),
        ("eject_max_delay", float, "the longest ejection, seconds"),
    ):
        p.add_argument(
            "--upstream-" + flag.replace("_", "-"), dest="upstream_" + flag, type=tp,
            help=f"{text} [env TRIO_AGENT_UPSTREAM_{flag.upper()}]",
        )
    p.add_argument(
        "--upstream-model",
        metavar="NAME",
        help="default upstream model [default: gpt-4o-mini; env TRIO_AGENT_UPSTREAM_MODEL]",
    )
    p.add_argument(
        "--mock-ttft", type=float, metavar="SECONDS",
        help=f"mock LLM: time to first token [default: {mock.ttft}; env TRIO_AGENT_MOCK_TTFT]",
    )
    p.add_argument(
        "--mock-itl", type=float, metavar="SECONDS",
        help=f"mock LLM: time between tokens [default: {mock.itl}; env TRIO_AGENT_MOCK_ITL]",
    )
    p.add_argument(
        "--mock-tokens", type=int, metavar="COUNT",
        help=f"mock LLM: tokens per reply [default: {mock.tokens}; env TRIO_AGENT_MOCK_TOKENS]",
    )
    _add_mock_tool_flags(p, "mock LLM: ", env=True)
    _add_agent_flags(p)
    p.set_defaults(func=_run_serve)


_AGENT_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max_tool_concurrency", int, "tool calls running at once in the whole server"),
    ("mcp_max_concurrency", int, "tool calls running at once on one MCP server"),
    ("tool_timeout", float, "seconds each tool call may run (a tool may declare its own)"),
    ("max_agent_steps", int, "model calls of an agent run that may call tools"),
    ("max_tool_calls", int, "tool calls one agent run may make"),
    ("max_tool_output_bytes", int, "longest tool output the model sees (cut with a marker)"),
)


def _add_agent_flags(p: argparse.ArgumentParser) -> None:
    """The agent routes' tools and limits (``ServerConfig.tools/mcp``, ``AgentConfig``)."""
    from .config import AgentConfig

    a = AgentConfig()
    p.add_argument(
        "--tools", action="append", dest="tools", metavar="MODULE",
        help="offer every @tool of this module to /agent runs (repeatable) [env TRIO_AGENT_TOOLS, comma-separated]",
    )
    p.add_argument(
        "--example-tools", action=argparse.BooleanOptionalAction, default=None,
        help="offer the example tools of trio_agent.agent.examples "
        "[default: True; env TRIO_AGENT_EXAMPLE_TOOLS]",
    )
    p.add_argument(
        "--mcp", action="append", dest="mcp", metavar="NAME=COMMAND|NAME=URL",
        help="offer the tools of this MCP server: a command started over stdio, or an "
        "http(s):// URL over streamable HTTP (repeatable) [env TRIO_AGENT_MCP, comma-separated]",
    )
    for name, tp, text in _AGENT_FLAGS:
        p.add_argument(
            "--" + name.replace("_", "-"), type=tp, default=None,
            help=f"{text} [default: {getattr(a, name)}; env TRIO_AGENT_{name.upper()}]",
        )


def _add_mock_tool_flags(p: argparse.ArgumentParser, what: str, *, env: bool) -> None:
    """--mock-tool-calls and --mock-script; ``env``: the command also reads TRIO_AGENT_MOCK_*."""
    from .config import MockLLMConfig

    m = MockLLMConfig()
    p.add_argument(
        "--mock-tool-calls", dest="mock_tool_calls", type=int, metavar="N",
        help=f"{what}tool calls answering a request that offers tools (0: answer in text) "
        f"[default: {m.tool_calls}{'; env TRIO_AGENT_MOCK_TOOL_CALLS' if env else ''}]",
    )
    p.add_argument(
        "--mock-tool-rounds", dest="mock_tool_rounds", type=int, metavar="N",
        help=f"{what}assistant turns that call tools before the text answer "
        f"[default: {m.tool_rounds}{'; env TRIO_AGENT_MOCK_TOOL_ROUNDS' if env else ''}]",
    )
    p.add_argument(
        "--mock-script", dest="mock_script", metavar="FILE",
        help=f"{what}replay the turns of this JSON-lines file in order instead"
        + (" [env TRIO_AGENT_MOCK_SCRIPT]" if env else ""),
    )


def _check_mock_script(path: str | None) -> None:
    """Read the script now, so that a bad one stops the command with a message, not a traceback."""
    if path:
        from .llm._mock_script import load_script

        load_script(path)


def _check_tracing(endpoint: str | None) -> None:
    """Tracing asked for without the OpenTelemetry packages: refused now, naming the fix."""
    if endpoint is None:
        return
    from . import tracing
    from .errors import ConfigError

    missing = tracing.otel_missing()
    if missing is not None:
        raise ConfigError(f"--otlp-endpoint needs {missing}: pip install 'trio_agent[otel]'")


def _run_serve(args: argparse.Namespace) -> int:
    import logging

    import trio

    from .config import server_config_from_env
    from .errors import ConfigError
    from .server import run_workers, serve

    server = {name: getattr(args, name) for name, _, _ in _SERVE_FLAGS}
    server["access_log"] = args.access_log
    server["direct_writes"] = args.direct_writes
    server["trace_content"] = args.trace_content
    if args.api_keys is not None:
        server["api_keys"] = frozenset(args.api_keys)
    if args.cors_origins is not None:
        server["cors_origins"] = tuple(args.cors_origins)
    server["example_tools"] = args.example_tools
    if args.tools is not None:
        server["tools"] = tuple(args.tools)
    if args.mcp is not None:
        server["mcp"] = tuple(args.mcp)
    agent = {name: getattr(args, name) for name, _, _ in _AGENT_FLAGS}
    server["ready_requires_upstream"] = args.ready_requires_upstream
    upstream = {
        # Several specs travel as one space-separated setting, as in TRIO_AGENT_UPSTREAM_URL.
        "base_url": " ".join(args.upstream_url) if args.upstream_url else None,
        "model": args.upstream_model,
        **{f: getattr(args, "upstream_" + f)
           for f in ("eject_after_failures", "eject_delay", "eject_max_delay")},
    }
    mock = {"ttft": args.mock_ttft, "itl": args.mock_itl, "tokens": args.mock_tokens,
            "tool_calls": args.mock_tool_calls, "tool_rounds": args.mock_tool_rounds,
            "script": args.mock_script}
    try:
        config = server_config_from_env(
            server={k: v for k, v in server.items() if v is not None},
            upstream={k: v for k, v in upstream.items() if v is not None},
            mock={k: v for k, v in mock.items() if v is not None},
            agent={k: v for k, v in agent.items() if v is not None},
        )
        _check_mock_script(config.mock.script)
        _check_tracing(config.otlp_endpoint)
    except ConfigError as exc:
        print(f"trio-agent serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # httpx logs every upstream request at INFO: per-request noise on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not config.access_log:
        logging.getLogger("trio_agent.access").disabled = True

    def announce(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        backend = (
            " ".join(t.url for t in config.upstream.upstream_targets)
            if config.upstream
            else "the built-in mock LLM"
        )
        print(f"trio_agent gateway listening on http://{shown}:{port} ({backend})", flush=True)

    if config.workers > 1:
        return run_workers(config, on_bound=announce)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve, config)
            announce(host, port)

    trio.run(main)
    return 0


def _add_mock_llm(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .config import MOCK_FAULT_KINDS, MockLLMConfig, MockServerConfig

    d = MockServerConfig()
    m = MockLLMConfig()
    p = sub.add_parser(
        "mock-llm",
        help="run the OpenAI-compatible mock LLM server",
        description=(
            "Serve POST /v1/chat/completions (streamed or not; offered tools are called), "
            "/v1/embeddings, /v1/completions, /v1/responses and GET /v1/models like OpenAI, "
            "paced like a real model, with faults on demand (X-Mock-Fault header) or at random. "
            "GET /mock/stats shows counters, POST /mock/reset zeroes them, "
            "GET /mock/last-request shows the last body received."
        ),
    )
    p.add_argument("--host", default=d.host, help=f"address to listen on [default: {d.host}]")
    p.add_argument("--port", type=int, default=d.port, help=f"port (0: any free port) [default: {d.port}]")
    p.add_argument("--ttft", type=float, default=m.ttft, metavar="SECONDS",
                   help=f"time to first token [default: {m.ttft}]")
    p.add_argument("--itl", type=float, default=m.itl, metavar="SECONDS",
                   help=f"time between tokens [default: {m.itl}]")
    p.add_argument("--itl-spread", type=float, default=m.jitter, metavar="SECONDS",
                   help=f"uniform +- jitter on each token's due time [default: {m.jitter}]")
    p.add_argument("--tokens", type=int, default=m.tokens, help=f"tokens per reply [default: {m.tokens}]")
    p.add_argument("--seed", type=int, default=m.seed, help=f"seed of content, jitter and faults [default: {m.seed}]")
    p.add_argument("--content", choices=("filler", "echo"), default=m.content,
                   help=f"reply with filler text or echo the last user message [default: {m.content}]")
    p.add_argument("--model", default=m.model, help=f"the model name reported [default: {m.model}]")
    p.add_argument("--max-concurrency", type=int, default=d.max_concurrency,
                   help=f"requests served at once [default: {d.max_concurrency}]")
    p.add_argument("--max-queued", type=int, default=d.max_queued,
                   help=f"requests that may wait for a slot; 429 past it [default: {d.max_queued}]")
    p.add_argument("--max-queue-wait", type=float, default=d.max_queue_wait, metavar="SECONDS",
                   help=f"longest wait for a slot before 429 [default: {d.max_queue_wait}]")
    p.add_argument("--fault-rate", action="append", default=[], metavar="KIND=RATE",
                   help=f"inject a fault into this fraction of requests (repeatable); KIND is one of "
                   f"{', '.join(MOCK_FAULT_KINDS)}")
    p.add_argument("--fault-after-tokens", type=int, default=d.fault_after_tokens, metavar="N",
                   help=f"where random stall/drop/error faults strike [default: {d.fault_after_tokens}]")
    _add_mock_tool_flags(p, "", env=False)
    p.add_argument("--keep-alive-timeout", type=float, default=d.keep_alive_timeout, metavar="SECONDS",
                   help=f"seconds an idle connection is kept [default: {d.keep_alive_timeout}]")
    p.add_argument("--gc-threshold", type=int, default=d.gc_threshold, metavar="N",
                   help=f"Python's youngest-generation GC threshold while serving (0: Python's own) "
                   f"[default: {d.gc_threshold}]")
    p.set_defaults(func=_run_mock_llm)


def _parse_fault_rates(specs: list[str]) -> dict[str, Any]:
    from .config import MOCK_FAULT_KINDS

    rates: dict[str, Any] = {}
    for spec in specs:
        kind, eq, raw = (s.strip() for s in spec.partition("="))
        if not eq or kind not in MOCK_FAULT_KINDS:
            raise ValueError(
                f"--fault-rate must be KIND=RATE with KIND one of {', '.join(MOCK_FAULT_KINDS)}, got {spec!r}"
            )
        try:
            rates[f"fault_{kind}_rate"] = float(raw)
        except ValueError:
            raise ValueError(f"--fault-rate {kind}: RATE must be a number, got {raw!r}") from None
    return rates


def _run_mock_llm(args: argparse.Namespace) -> int:
    import logging

    import trio

    from .config import MockLLMConfig, MockServerConfig
    from .errors import ConfigError
    from .mock_server import serve_mock_llm

    try:
        llm = MockLLMConfig(
            ttft=args.ttft, itl=args.itl, jitter=args.itl_spread, tokens=args.tokens,
            seed=args.seed, content=args.content, model=args.model,
            **({"tool_calls": args.mock_tool_calls} if args.mock_tool_calls is not None else {}),
            **({"tool_rounds": args.mock_tool_rounds} if args.mock_tool_rounds is not None else {}),
            script=args.mock_script,
        )
        _check_mock_script(llm.script)
        config = MockServerConfig(
            host=args.host, port=args.port, llm=llm,
            max_concurrency=args.max_concurrency, max_queued=args.max_queued,
            max_queue_wait=args.max_queue_wait, fault_after_tokens=args.fault_after_tokens,
            gc_threshold=args.gc_threshold, keep_alive_timeout=args.keep_alive_timeout,
            **_parse_fault_rates(args.fault_rate),
        )
    except (ConfigError, ValueError) as exc:
        print(f"trio-agent mock-llm: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_mock_llm, config)
            shown = f"[{host}]" if ":" in host else host
            print(f"mock LLM listening on http://{shown}:{port}", flush=True)

    trio.run(main)
    return 0


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
    p.add_argument("--ramp-up", type=float, default=0.0,
                   help="closed loop: spread the workers' first requests over this many seconds (default 0: all at once)")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of warm-up left out of the results")
    p.add_argument("--seed", type=int, default=0, help="seed of the open-loop schedule (default 0)")
    p.add_argument("--max-tokens", type=int, help="max_tokens sent with every request")
    p.add_argument("--question", help="the prompt sent with every request")
    p.add_argument("--model", help="model name sent with every request")
    p.add_argument("--extra-body", default="", metavar="JSON",
                   help='a JSON object merged into every request body, e.g. \'{"tools": [...]}\'')
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
            ramp_up=args.ramp_up,
            warmup=args.warmup,
            seed=args.seed,
            max_tokens=args.max_tokens,
            model=args.model,
            extra_body=args.extra_body,
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


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """``unrecognized arguments: ...``, with a "did you mean" for each near-miss flag."""
    import difflib

    # Compared without the leading "--", which every flag shares and which would
    # make unrelated short flags look alike.
    known = [opt[2:] for action in parser._actions for opt in action.option_strings if opt.startswith("--")]
    message = "unrecognized arguments: " + " ".join(extras)
    for extra in extras:
        if not extra.startswith("--"):
            continue
        close = difflib.get_close_matches(extra[2:].partition("=")[0], known, n=1, cutoff=0.7)
        if close:
            message += f"\n{extra}: did you mean --{close[0]}?"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import BindError

    parser = build_parser()
    # argparse hands a subcommand's unknown flags up to the top-level parser, which
    # would print its own usage; the subcommand's usage is the one that helps.
    args, extras = parser.parse_known_args(argv)
    if extras:
        _subparsers(parser)[args.command].error(_unrecognized(_subparsers(parser)[args.command], extras))
    try:
        return int(args.func(args))
    except* BindError as group:
        # A port in use or a bad --host: one line, not the server's task tree.
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        print(f"trio-agent: {exc}", file=sys.stderr)
    return 2
