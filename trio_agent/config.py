"""Configuration: frozen, keyword-only, validated dataclasses.

Each part takes its config object explicitly; nothing reads globals. This
module is the only reader of environment variables (``TRIO_AGENT_<NAME>``),
and :func:`config_from_mapping` refuses unknown keys instead of ignoring them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import ConfigError

__all__ = [
    "AgentConfig",
    "BenchConfig",
    "MockLLMConfig",
    "MockServerConfig",
    "ServerConfig",
    "UpstreamConfig",
    "UpstreamTarget",
    "config_from_env",
    "config_from_mapping",
    "env_name",
    "mcp_spec",
    "otlp_endpoint_from_env",
    "server_config_from_env",
]

ENV_PREFIX = "TRIO_AGENT_"
# Variables with the prefix that are not settings of any config object.
ENV_NOT_CONFIG = frozenset({"TRIO_AGENT_VENV"})

ContentMode = Literal["echo", "filler"]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


_STANDALONE_CONNECTIONS = 100  # UpstreamConfig.max_connections None, outside the gateway


def _non_negative(name: str, value: float | None) -> None:
    _check(value is None or value >= 0, f"{name} must be >= 0, got {value!r}")


def _positive(name: str, value: float | None) -> None:
    _check(value is None or value > 0, f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MockLLMConfig:
    """How the in-process mock LLM behaves (see :class:`trio_agent.MockLLM`).

    Times are seconds on trio's clock. ``fail_before_first`` raises before any
    token; ``fail_after_tokens`` raises after that many tokens;
    ``stall_after_tokens`` stops sending (forever) after that many tokens.
    ``pacing_resolution``: streams due within this many seconds of each other
    are woken together by one shared clock (see ``Pacer``); 0 keeps exact times.
    ``tool_calls``: how many tool calls answer a request that offers tools
    (0 = answer with text), round-robin over the tools, arguments generated
    from each tool's JSON schema, for ``tool_rounds`` assistant turns after
    the last user message (then a text answer quoting the results). ``script``: a JSON-lines file of turns
    replayed in order instead, one per request: a line is either a list of
    ``chat.completion.chunk`` objects replayed exactly, or a compact turn
    ``{"content": ...}`` / ``{"tool_calls": [{"name", "arguments"}], "quirks":
    ["one-delta", "index-zero"]}``.
    """

    ttft: float = 0.2
    itl: float = 0.02
    jitter: float = 0.0
    tokens: int = 128
    seed: int = 0
    content: ContentMode = "filler"
    model: str = "mock-llm"
    fail_before_first: bool = False
    fail_after_tokens: int | None = None
    stall_after_tokens: int | None = None
    pacing_resolution: float = 0.001
    tool_calls: int = 1
    tool_rounds: int = 1
    script: str | None = None

    def __post_init__(self) -> None:
        _non_negative("pacing_resolution", self.pacing_resolution)
        _check(self.tool_calls >= 0, f"tool_calls must be >= 0, got {self.tool_calls!r}")
        _check(self.tool_rounds >= 1, f"tool_rounds must be >= 1, got {self.tool_rounds!r}")
        _non_negative("ttft", self.ttft)
        _non_negative("itl", self.itl)
        _non_negative("jitter", self.jitter)
        _check(self.tokens >= 0, f"tokens must be >= 0, got {self.tokens!r}")
        _check(self.content in ("echo", "filler"), f"content must be 'echo' or 'filler', got {self.content!r}")
        _non_negative("fail_after_tokens", self.fail_after_tokens)
        _non_negative("stall_after_tokens", self.stall_after_tokens)


# The fault kinds of the mock LLM server, as ``--fault-rate KIND=RATE`` names them.
MOCK_FAULT_KINDS = ("429", "500", "503", "stall", "drop", "error")


@dataclass(frozen=True, kw_only=True)
class MockServerConfig:
    """The OpenAI-compatible mock LLM server (``trio-agent mock-llm``, ``serve_mock_llm``).

    ``llm`` paces and fills every reply. Admission: at most ``max_concurrency``
    chat requests run at once; up to ``max_queued`` more wait at most
    ``max_queue_wait`` seconds; past either the answer is 429 with
    ``Retry-After: retry_after``. Random faults, drawn per request from an RNG
    seeded with ``llm.seed`` (at most one per request, so the rates must sum
    to <= 1): ``fault_429_rate``/``fault_500_rate``/``fault_503_rate`` answer
    that status; ``fault_stall_rate`` stops sending after
    ``fault_after_tokens`` tokens, ``fault_drop_rate`` cuts the connection
    there, ``fault_error_rate`` sends an ``{"error": ...}`` frame there. The
    ``X-Mock-Fault`` request header asks for one fault explicitly.
    ``slow_bytes_delay`` is the pause between bytes of a ``slow-bytes``
    stream; ``drain_timeout`` how long streams may run on after shutdown.
    ``gc_threshold`` is as :class:`ServerConfig`'s, while the server runs.
    ``keep_alive_timeout`` closes a connection idle that long between requests:
    longer than a client pool keeps idle connections (:class:`UpstreamConfig`'s
    ``keepalive_expiry``, 30 s), as a real API's is, so a pooled connection is
    not closed under a request sent on it (Hypercorn's own default is 5 s).
    """

    host: str = "127.0.0.1"
    port: int = 8100
    llm: MockLLMConfig = field(default_factory=MockLLMConfig)
    max_concurrency: int = 1000
    max_queued: int = 1000
    max_queue_wait: float = 5.0
    retry_after: float = 1.0
    fault_429_rate: float = 0.0
    fault_500_rate: float = 0.0
    fault_503_rate: float = 0.0
    fault_stall_rate: float = 0.0
    fault_drop_rate: float = 0.0
    fault_error_rate: float = 0.0
    fault_after_tokens: int = 5
    slow_bytes_delay: float = 0.002
    max_body_bytes: int = 1 << 20
    drain_timeout: float = 1.0
    keep_alive_timeout: float = 75.0
    gc_threshold: int = 50_000

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port!r}")
        _check(self.max_concurrency >= 1, f"max_concurrency must be >= 1, got {self.max_concurrency!r}")
        _check(self.max_queued >= 0, f"max_queued must be >= 0, got {self.max_queued!r}")
        _check(self.gc_threshold >= 0, f"gc_threshold must be >= 0, got {self.gc_threshold!r}")
        _positive("keep_alive_timeout", self.keep_alive_timeout)
        _non_negative("max_queue_wait", self.max_queue_wait)
        _non_negative("retry_after", self.retry_after)
        rates = [getattr(self, f"fault_{kind}_rate") for kind in MOCK_FAULT_KINDS]
        for kind, rate in zip(MOCK_FAULT_KINDS, rates, strict=True):
            _check(0 <= rate <= 1, f"fault_{kind}_rate must be in [0, 1], got {rate!r}")
        _check(sum(rates) <= 1 + 1e-9, f"the fault rates must sum to <= 1, got {sum(rates)!r}")
        _non_negative("fault_after_tokens", self.fault_after_tokens)
        _non_negative("slow_bytes_delay", self.slow_bytes_delay)
        _positive("max_body_bytes", self.max_body_bytes)
        _non_negative("drain_timeout", self.drain_timeout)

    def fault_rates(self) -> dict[str, float]:
        """The non-zero random fault rates, by kind (``"429"``, ``"stall"``, ...)."""
        rates = {kind: getattr(self, f"fault_{kind}_rate") for kind in MOCK_FAULT_KINDS}
        return {kind: rate for kind, rate in rates.items() if rate}


@dataclass(frozen=True, kw_only=True)
class UpstreamTarget:
    """One of several upstreams (``--upstream-url URL[,weight=W][,models=a|b][,max_concurrency=N][,api_key_env=VAR]``).

    ``weight`` is its share of the traffic when the upstreams are equally
    loaded; ``models`` the model names it serves (empty: any);
    ``max_concurrency`` its own cap on calls at once (None: only the global
    admission cap); ``api_key`` its own key (None: the shared
    ``UpstreamConfig.api_key``), given on the command line as the *name* of
    the environment variable that holds it, so that no key shows in ``ps``.
    See docs/scale-out.md.
    """

    url: str
    weight: float = 1.0
    models: tuple[str, ...] = ()
    max_concurrency: int | None = None
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check(
            self.url.startswith(("http://", "https://")),
            f"base_url must start with http:// or https://, got {self.url!r}",
        )
        _check(self.weight > 0, f"upstream weight must be > 0, got {self.weight!r}")
        _positive("max_concurrency", self.max_concurrency)

    @classmethod
    def parse(cls, spec: str, environ: Mapping[str, str] | None = None) -> UpstreamTarget:
        """``URL[,weight=W][,models=a|b][,max_concurrency=N][,api_key_env=VAR]`` -> a target."""
        url, *options = [part.strip() for part in spec.strip().split(",")]
        values: dict[str, Any] = {"url": url}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or not value:
                raise ConfigError(f"upstream {url!r}: expected key=value, got {option!r}")
            if key == "weight":
                values["weight"] = _convert(f"upstream {url!r} weight", float, value)
            elif key == "models":
                values["models"] = tuple(m.strip() for m in value.split("|") if m.strip())
            elif key == "max_concurrency":
                values["max_concurrency"] = _convert(f"upstream {url!r} max_concurrency", int, value)
            elif key == "api_key_env":
                env = os.environ if environ is None else environ
                if not env.get(value):
                    raise ConfigError(f"upstream {url!r}: environment variable {value} is not set")
                values["api_key"] = env[value]
            else:
                raise ConfigError(
                    f"upstream {url!r}: unknown option {key!r} "
                    "(known: weight, models, max_concurrency, api_key_env)"
                )
        return cls(**values)


def parse_upstream_urls(
    raw: str, environ: Mapping[str, str] | None = None
) -> tuple[str, tuple[UpstreamTarget, ...]]:
    """An upstream URL setting (several specs separated by spaces) -> (first URL, targets).

    The targets are empty when there is a single plain URL (the one-upstream
    configuration, which needs no list).
    """
    specs = raw.split()
    if not specs:
        raise ConfigError("the upstream URL is empty")
    targets = tuple(UpstreamTarget.parse(spec, environ) for spec in specs)
    if len(targets) == 1 and "," not in specs[0]:
        return targets[0].url, ()
    return targets[0].url, targets


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    """A real OpenAI-compatible upstream reached through a pool of httpx clients.

    ``api_key`` is never shown in ``repr`` or logs. Deadlines in seconds:
    ``connect_timeout`` to open a connection, ``first_token_timeout`` from
    sending the request to the first content, ``idle_timeout`` between two
    chunks, ``total_timeout`` for the whole call. Retries happen only before
    the first token reached the caller, at most ``max_attempts`` attempts, and
    at most ``retry_budget_ratio`` of requests over ``retry_budget_window``.
    The pool (``max_connections``) is split over ``pool_shards`` httpx
    clients (0: one per connection), since httpx's connection pool costs O(n^2) in
    its connections per request and gives requests that queue together the
    same idle connection (docs/decisions/004).
    ``max_connections`` None: the gateway sizes the pool to its
    ``max_concurrency`` (every admitted request has a connection; a smaller
    pool makes admitted requests wait inside httpx, unseen by admission and
    its metrics); a backend opened on its own gets 100.
    ``max_keepalive_connections`` None: as many as ``max_connections``.
    ``read_below_httpx`` reads a streamed body straight from its HTTP/1.1
    connection's h11 state instead of through httpx's iterators
    (docs/decisions/003); off, every byte goes through ``aiter_raw``.

    ``targets``: several upstreams (``base_url`` is then the first one's);
    empty means the one upstream at ``base_url``. Whatever their number,
    calls go through a router (llm/_router.py, docs/decisions/011): least
    in-flight (weighted) picking, failover before the first byte, and
    outlier ejection: ``eject_after_failures`` consecutive connection
    failures or 5xx answers before the first byte eject an upstream for
    ``eject_delay`` seconds, doubled on each repeat ejection up to
    ``eject_max_delay``; one real request then probes it before it takes
    traffic again.
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    model: str = "gpt-4o-mini"
    max_connections: int | None = None
    max_keepalive_connections: int | None = None
    keepalive_expiry: float = 30.0
    pool_shards: int = 0
    read_below_httpx: bool = True
    http2: bool = False
    connect_timeout: float = 5.0
    first_token_timeout: float = 30.0
    idle_timeout: float = 30.0
    total_timeout: float = 300.0
    max_attempts: int = 3
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    retry_budget_ratio: float = 0.1
    retry_budget_window: float = 10.0
    retry_budget_min: int = 3
    seed: int | None = None
    targets: tuple[UpstreamTarget, ...] = ()
    eject_after_failures: int = 3
    eject_delay: float = 5.0
    eject_max_delay: float = 60.0

    def __post_init__(self) -> None:
        _check(self.eject_after_failures >= 1, "eject_after_failures must be >= 1")
        _positive("eject_delay", self.eject_delay)
        _check(self.eject_max_delay >= self.eject_delay, "eject_max_delay must be >= eject_delay")
        _check(
            self.base_url.startswith(("http://", "https://")),
            f"base_url must start with http:// or https://, got {self.base_url!r}",
        )
        _positive("max_connections", self.max_connections)
        _non_negative("max_keepalive_connections", self.max_keepalive_connections)
        _check(
            0 <= self.pool_shards <= self.connections,
            f"pool_shards must be in 0..max_connections, got {self.pool_shards!r}",
        )
        for name in ("connect_timeout", "first_token_timeout", "idle_timeout", "total_timeout"):
            _positive(name, getattr(self, name))
        _check(self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts!r}")
        _non_negative("backoff_base", self.backoff_base)
        _non_negative("backoff_max", self.backoff_max)
        _check(0 <= self.retry_budget_ratio <= 1, "retry_budget_ratio must be in [0, 1]")
        _positive("retry_budget_window", self.retry_budget_window)

    @property
    def upstream_targets(self) -> tuple[UpstreamTarget, ...]:
        """Every upstream: ``targets``, or the one at ``base_url``."""
        return self.targets or (UpstreamTarget(url=self.base_url),)

    @property
    def connections(self) -> int:
        """The pool's size: ``max_connections``, or 100 when it is None."""
        return self.max_connections or _STANDALONE_CONNECTIONS

    @property
    def keepalive_connections(self) -> int:
        """Idle connections kept: ``max_keepalive_connections``, or the pool's size when None."""
        k = self.max_keepalive_connections
        return self.connections if k is None else k


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConfig:
    """The agent runtime's limits (:class:`~trio_agent.agent.Agent` and each of its runs).

    ``tool_timeout`` is each call's deadline (a tool may declare its own);
    ``max_tool_concurrency`` bounds the tool calls running at once in the whole
    agent, ``mcp_max_concurrency`` those on one MCP server; ``max_agent_steps``
    is how many model calls of a run may call tools (one more, with
    ``tool_choice: "none"``, then gives the answer), ``max_tool_calls`` the calls
    one run may make; a tool's output longer than ``max_tool_output_bytes`` is
    cut, with a marker, before the model sees it. ``mcp_connect_timeout``
    bounds one MCP server's spawn, handshake and listing;
    ``mcp_reconnect_delay`` is the first wait before reconnecting a dead MCP
    server (doubling up to ``mcp_max_reconnect_delay``); ``mcp_ping_interval``
    how often a quiet server is checked. The gateway reads these as
    ``TRIO_AGENT_<FIELD>`` (``TRIO_AGENT_TOOL_TIMEOUT``) and ``serve`` flags.
    """

    tool_timeout: float = 30.0
    max_tool_concurrency: int = 32
    mcp_max_concurrency: int = 8
    max_agent_steps: int = 8
    max_tool_calls: int = 32
    max_tool_output_bytes: int = 64 * 1024
    mcp_connect_timeout: float = 30.0
    mcp_reconnect_delay: float = 0.5
    mcp_max_reconnect_delay: float = 30.0
    mcp_ping_interval: float = 10.0

    def __post_init__(self) -> None:
        for name in ("tool_timeout", "mcp_connect_timeout", "mcp_reconnect_delay",
                     "mcp_max_reconnect_delay", "mcp_ping_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_tool_concurrency", "mcp_max_concurrency", "max_agent_steps",
                     "max_tool_calls", "max_tool_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def mcp_spec(spec: str) -> tuple[str, str]:
    """``NAME=COMMAND`` or ``NAME=http://HOST:PORT/PATH`` -> (name, target); ConfigError if malformed."""
    name, sep, target = spec.partition("=")
    name = name.strip()
    if not sep or not name or not target.strip():
        raise ConfigError(f"mcp: expected NAME=COMMAND or NAME=URL, got {spec!r}")
    return name, target.strip()


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The gateway: listening address, admission, deadlines, limits, auth.

    Admission: at most ``max_concurrency`` upstream calls run at once; up to
    ``max_queued`` more wait at most ``max_queue_wait`` seconds, past which
    the answer is 503 with ``Retry-After``. The queue is FIFO until it has
    stayed non-empty for ``queue_lifo_after`` seconds (0 = always FIFO);
    from then until it empties, a freed slot goes to the newest waiter
    (adaptive LIFO, docs/decisions/006): under
    sustained overload the requests served start while their clients still
    want them, and the rest get their 503 when their wait runs out.
    ``request_timeout`` covers queue wait and upstream together.
    ``keep_alive_timeout`` closes a connection that is idle between
    requests or still sending its request head (a
    slowloris client); a slow body is bounded by ``request_timeout`` (408).
    A request head over ``max_header_bytes`` gets 431, a body over
    ``max_body_bytes`` 413. ``max_loop_lag`` (seconds; 0, the default, = off)
    refuses new requests with 503 at once while the process's trio scheduler
    runs further behind than that, however many slots ``max_concurrency``
    and ``max_queued`` leave free (see :class:`~trio_agent.concurrency.LoopLag`,
    docs/decisions/007): the CPU is full and admitting more would slow every
    stream already running. It is opt-in because it overrides those limits and
    helps only when refused clients go away (open-loop arrivals); clients that
    come straight back get slower service (docs/decisions/015). Each episode of
    such refusals is logged once, with the lag, when it starts and when it ends. ``gc_threshold`` is Python's collector threshold for its
    youngest generation while :func:`~trio_agent.serve` runs (Python's
    default is 700; 0 leaves the collector as it is): streaming allocates
    a few container objects per token, so at the default the collector runs
    hundreds of times a second under load, and each full collection, which
    walks every live stream's objects, stops every stream at once
    (docs/decisions/005). ``direct_writes`` lets a stream write its token
    events straight to the socket when it is free (HTTP/1.1 over TCP;
    docs/decisions/001); off, every write goes through ASGI.
    ``max_connections`` bounds the client connections open at once (None:
    the file-descriptor limit, raised to the hard limit at start, minus the
    upstream pools, 64 for Redis when set, and ``max(192, limit // 10)``);
    past it the oldest idle keep-alive connection is closed to make room,
    else the new one gets a minimal 503 (docs/decisions/010). ``tracemalloc_dir`` set starts
    :mod:`tracemalloc` with the server and writes a snapshot there on each
    SIGUSR1 (a diagnostic for memory growth; it slows the server).
    ``upstream`` set means proxy to a real
    OpenAI-compatible API; ``None`` means answer from the built-in mock.
    ``ready_requires_upstream``: ``/readyz`` answers 503 while every upstream
    is ejected (off: the gateway stays ready and fails requests fast).

    ``otlp_endpoint`` set turns tracing on: spans of requests, model calls and
    agent runs go over OTLP/HTTP to that collector (a base URL such as
    ``http://localhost:4318`` gets ``/v1/traces``; unset, the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
    is used, and ``OTEL_SDK_DISABLED=true`` turns it off). Prompts and
    completions are recorded only with ``trace_content``. At most
    ``trace_queue_size`` finished spans wait for export (more are dropped and
    counted in ``/metrics``); they leave every ``trace_export_interval``
    seconds (as the SDK's batch processor, 5 s), or at once when 512 are
    queued; one export call gives up after ``trace_export_timeout`` seconds.
    See docs/tracing.md.

    The agent routes (``/agent``, ``/agent/stream``) offer the tools of the
    modules in ``tools`` (every ``@tool`` in each), the example tools of
    ``trio_agent.agent.examples`` when ``example_tools``, and those of the
    MCP servers in ``mcp`` (``NAME=COMMAND`` over stdio, ``NAME=http://...``
    over streamable HTTP); ``agent`` holds their limits.

    ``redis_url`` set means the limits are shared by every process using the
    same Redis: ``max_concurrency`` is then the global cap, leases expire
    ``redis_lease_ttl`` seconds after their holder stops renewing them, and
    ``per_key_rate`` (requests per second, burst ``per_key_burst``) holds
    across processes. If Redis is unreachable, ``redis_on_error`` decides:
    ``fail_open`` falls back to local limits of ``redis_local_share`` slots
    (default: ``max_concurrency // workers``), ``fail_closed`` answers 503.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_concurrency: int = 50
    max_queued: int = 100
    max_queue_wait: float = 5.0
    queue_lifo_after: float = 0.1
    max_loop_lag: float = 0.0
    gc_threshold: int = 50_000
    request_timeout: float = 120.0
    keepalive_interval: float = 15.0
    write_timeout: float = 10.0
    drain_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    per_key_max_concurrency: int | None = None
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1 << 20
    max_header_bytes: int = 16 * 1024
    max_messages: int = 256
    max_message_chars: int = 100_000
    max_tokens_limit: int = 8192
    max_batch_items: int = 64
    batch_concurrency: int = 8
    access_log: bool = True
    direct_writes: bool = True
    max_connections: int | None = None
    tracemalloc_dir: str | None = None
    per_key_rate: float | None = None
    per_key_burst: int = 1
    redis_url: str | None = field(default=None, repr=False)
    redis_on_error: Literal["fail_open", "fail_closed"] = "fail_open"
    redis_lease_ttl: float = 10.0
    redis_key_prefix: str = "trio_agent"
    redis_poll_interval: float = 0.1
    redis_local_share: int | None = None
    tools: tuple[str, ...] = ()
    example_tools: bool = True
    mcp: tuple[str, ...] = ()
    ready_requires_upstream: bool = False
    otlp_endpoint: str | None = None
    trace_content: bool = False
    trace_queue_size: int = 2048
    trace_export_interval: float = 5.0
    trace_export_timeout: float = 2.0
    upstream: UpstreamConfig | None = None
    mock: MockLLMConfig = field(default_factory=MockLLMConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        for spec in self.mcp:
            mcp_spec(spec)
        names = [mcp_spec(spec)[0] for spec in self.mcp]
        _check(len(set(names)) == len(names), f"mcp: two servers share a name in {list(self.mcp)!r}")
        _check(all(m.strip() for m in self.tools), "tools must not contain empty module names")
        _check(0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port!r}")
        _check(self.workers >= 1, f"workers must be >= 1, got {self.workers!r}")
        _check(self.max_concurrency >= 1, f"max_concurrency must be >= 1, got {self.max_concurrency!r}")
        _check(self.max_queued >= 0, f"max_queued must be >= 0, got {self.max_queued!r}")
        _non_negative("max_queue_wait", self.max_queue_wait)
        _non_negative("queue_lifo_after", self.queue_lifo_after)
        _non_negative("max_loop_lag", self.max_loop_lag)
        _check(self.gc_threshold >= 0, f"gc_threshold must be >= 0, got {self.gc_threshold!r}")
        for name in (
            "request_timeout",
            "keepalive_interval",
            "write_timeout",
            "drain_timeout",
            "keep_alive_timeout",
        ):
            _positive(name, getattr(self, name))
        _positive("per_key_max_concurrency", self.per_key_max_concurrency)
        _positive("max_connections", self.max_connections)
        _positive("per_key_rate", self.per_key_rate)
        _check(self.per_key_burst >= 1, f"per_key_burst must be >= 1, got {self.per_key_burst!r}")
        _check(
            self.redis_url is None or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "redis_url must start with redis://, rediss:// or unix://",
        )
        _check(
            self.redis_on_error in ("fail_open", "fail_closed"),
            f"redis_on_error must be 'fail_open' or 'fail_closed', got {self.redis_on_error!r}",
        )
        _positive("redis_lease_ttl", self.redis_lease_ttl)
        _positive("redis_poll_interval", self.redis_poll_interval)
        _positive("redis_local_share", self.redis_local_share)
        for name in (
            "max_body_bytes",
            "max_header_bytes",
            "max_messages",
            "max_message_chars",
            "max_tokens_limit",
            "max_batch_items",
            "batch_concurrency",
        ):
            _positive(name, getattr(self, name))
        _check(all(k for k in self.api_keys), "api_keys must not contain empty keys")
        _check(
            self.otlp_endpoint is None or self.otlp_endpoint.startswith(("http://", "https://")),
            f"otlp_endpoint must start with http:// or https://, got {self.otlp_endpoint!r}",
        )
        _check(self.trace_queue_size >= 1, f"trace_queue_size must be >= 1, got {self.trace_queue_size!r}")
        _positive("trace_export_interval", self.trace_export_interval)
        _positive("trace_export_timeout", self.trace_export_timeout)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One load-benchmark run (see :mod:`trio_agent.bench`).

    Closed loop when ``rate`` is ``None``: ``concurrency`` workers each send
    their next request as soon as the previous one ends. Open loop otherwise:
    arrivals at ``rate`` per second with gamma-distributed gaps of shape
    ``burstiness`` (1 = Poisson), at most ``concurrency`` in flight (later
    arrivals wait in the client, which the from-scheduled latencies show).
    ``ramp_up`` (closed loop only) spreads the workers' first requests evenly
    over that many seconds instead of sending them all at once.

    The run sends for ``warmup`` seconds (results discarded) and then until
    ``requests`` measured requests were sent or ``duration`` seconds passed;
    requests in flight then finish, each bounded by ``request_timeout``. Hard
    caps always hold: at most ``max_requests`` sends in all, and the whole run
    (warm-up, sending, drain) ends after ``max_duration`` seconds, cancelling
    what is still in flight. ``seed`` makes the open-loop schedule
    reproducible. ``slo_*`` (seconds) define goodput; ``None`` = no bound.
    ``extra_body`` is a JSON object merged into every request body (for
    example ``{"tools": [...]}`` to load tool-call streams).
    """

    url: str
    api: Literal["trio-agent", "openai"] = "trio-agent"
    concurrency: int = 10
    requests: int | None = None
    duration: float | None = None
    rate: float | None = None
    burstiness: float = 1.0
    ramp_up: float = 0.0
    warmup: float = 0.0
    seed: int = 0
    max_tokens: int | None = None
    question: str = "Explain structured concurrency in one paragraph."
    model: str | None = None
    extra_body: str = ""
    request_timeout: float = 60.0
    max_requests: int = 1_000_000
    max_duration: float = 900.0
    keepalive: bool = True
    processes: int = 1
    slo_ttft: float | None = None
    slo_tpot: float | None = None
    slo_e2e: float | None = None
    label: str = ""

    def __post_init__(self) -> None:
        _check(
            self.url.startswith("http://"),
            f"url must start with http:// (the load client speaks plain HTTP/1.1), got {self.url!r}",
        )
        _check(self.api in ("trio-agent", "openai"), f"api must be trio-agent or openai, got {self.api!r}")
        _check(self.concurrency >= 1, f"concurrency must be >= 1, got {self.concurrency!r}")
        if self.extra_body:
            try:
                extra = json.loads(self.extra_body)
            except ValueError:
                extra = None
            _check(isinstance(extra, dict), f"extra_body must be a JSON object, got {self.extra_body!r}")
        _check(
            self.requests is not None or self.duration is not None,
            "give requests or duration (or both) to bound the run",
        )
        _positive("requests", self.requests)
        _positive("duration", self.duration)
        _positive("rate", self.rate)
        _positive("burstiness", self.burstiness)
        _non_negative("warmup", self.warmup)
        _non_negative("ramp_up", self.ramp_up)
        _check(
            self.ramp_up == 0 or self.rate is None,
            "ramp_up applies to the closed loop only (no rate)",
        )
        _check(
            self.ramp_up < self.max_duration,
            f"ramp_up ({self.ramp_up}) must be < max_duration ({self.max_duration})",
        )
        _positive("max_tokens", self.max_tokens)
        _positive("request_timeout", self.request_timeout)
        _positive("max_requests", self.max_requests)
        _positive("max_duration", self.max_duration)
        _check(self.processes >= 1, f"processes must be >= 1, got {self.processes!r}")
        _check(
            self.processes <= self.concurrency,
            f"processes ({self.processes}) must be <= concurrency ({self.concurrency})",
        )
        for name in ("slo_ttft", "slo_tpot", "slo_e2e"):
            _positive(name, getattr(self, name))


# -- building configs from mappings and the environment -------------------------

C = TypeVar("C")

_EXPECTED: dict[Any, str] = {int: "an integer", float: "a number", str: "a string"}

# Where each config object's fields live in the environment, for the gateway
# (``trio-agent serve``): ``<prefix><FIELD>``. ``UpstreamConfig.base_url`` is
# ``TRIO_AGENT_UPSTREAM_URL``; nested configs have no variable of their own.
ENV_SECTIONS: dict[type[Any], str] = {
    ServerConfig: ENV_PREFIX,
    UpstreamConfig: ENV_PREFIX + "UPSTREAM_",
    MockLLMConfig: ENV_PREFIX + "MOCK_",
    # The agent's limits share the gateway's prefix: TRIO_AGENT_TOOL_TIMEOUT (no field clashes).
    AgentConfig: ENV_PREFIX,
}


def _convert(name: str, tp: Any, raw: Any) -> Any:
    """Convert ``raw`` (often a string from the environment) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        non_none = [a for a in args if a is not type(None)]
        last_exc: Exception | None = None
        for a in non_none:
            try:
                return _convert(name, a, raw)
            except ConfigError as exc:
                last_exc = exc
        raise ConfigError(str(last_exc))
    if origin is Literal:
        if raw not in args:
            raise ConfigError(f"{name}: expected one of {list(args)}, got {raw!r}")
        return raw
    if origin in (tuple, frozenset):
        items = [s.strip() for s in raw.split(",") if s.strip()] if isinstance(raw, str) else list(raw)
        return origin(_convert(name, args[0], i) for i in items)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected a boolean (true or false), got {raw!r}")
    if tp in (int, float, str):
        expected = _EXPECTED[tp]
        if isinstance(raw, bool) and tp is not str:
            raise ConfigError(f"{name}: expected {expected}, got {raw!r}")
        try:
            return tp(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: expected {expected}, got {raw!r}") from exc
    if dataclasses.is_dataclass(tp) and isinstance(raw, Mapping):
        return config_from_mapping(tp, raw)  # type: ignore[arg-type]
    if dataclasses.is_dataclass(tp) and dataclasses.is_dataclass(raw):
        return raw
    raise ConfigError(f"cannot convert {name}={raw!r} to {tp!r}")


def config_from_mapping(cls: type[C], values: Mapping[str, Any]) -> C:
    """Build ``cls`` from a mapping, converting strings; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
    kwargs = {k: _convert(k, hints[k], v) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def config_from_env(
    cls: type[C],
    environ: Mapping[str, str] | None = None,
    *,
    prefix: str = ENV_PREFIX,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` from ``TRIO_AGENT_<FIELD>`` variables, then ``overrides``.

    A variable with the prefix that names no field of ``cls`` is an error, so a
    typo never silently falls back to a default. Only scalar and list fields
    are read from the environment; nested configs come through ``overrides``.
    """
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(prefix) or key in ENV_NOT_CONFIG:
            continue
        name = key[len(prefix) :].lower()
        if name not in fields:
            known = [prefix + f.upper() for f in fields]
            raise ConfigError(f"unknown environment variable {key}{_did_you_mean(key, known)}")
        values[name] = _convert(key, typing.get_type_hints(cls)[name], raw)
    env_names = {name: prefix + name.upper() for name in values}
    values.update(overrides or {})
    with _naming_variables({n: v for n, v in env_names.items() if n not in (overrides or {})}):
        return config_from_mapping(cls, values)


def env_name(cls: type[Any], name: str) -> str | None:
    """The environment variable of field ``name`` of ``cls`` for ``trio-agent serve``, if any."""
    prefix = ENV_SECTIONS.get(cls)
    if prefix is None or (cls is ServerConfig and name in ("upstream", "mock", "agent")):
        return None
    if cls is UpstreamConfig and name == "targets":  # given with the URL (see parse_upstream_urls)
        return None
    if cls is UpstreamConfig and name == "base_url":
        return ENV_PREFIX + "UPSTREAM_URL"
    return prefix + name.upper()


def _did_you_mean(word: str, candidates: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


@contextlib.contextmanager
def _naming_variables(variables: Mapping[str, str]) -> Iterator[None]:
    """Prefix a validation error about a field that came from the environment with its variable.

    ``__post_init__`` checks speak of fields (``max_concurrency must be >= 1``);
    a user who set ``TRIO_AGENT_MAX_CONCURRENCY=0`` must see which variable it was.
    """
    try:
        yield
    except ConfigError as exc:
        variable = variables.get(str(exc).split(" ", 1)[0])
        if variable is None:
            raise
        raise ConfigError(f"{variable}: {exc}") from exc


def otlp_endpoint_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint the standard OpenTelemetry variables name, if any.

    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the traces URL itself), else
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL); ``None`` when neither is set
    or ``OTEL_SDK_DISABLED`` is true.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def server_config_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    upstream: Mapping[str, Any] | None = None,
    mock: Mapping[str, Any] | None = None,
    agent: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Build the gateway's :class:`ServerConfig` from the environment, then overrides (flags).

    Names are mapped explicitly, since the environment holds the settings of
    three objects: ``TRIO_AGENT_<FIELD>`` for :class:`ServerConfig` fields
    (``TRIO_AGENT_API_KEYS`` and ``TRIO_AGENT_CORS_ORIGINS`` are
    comma-separated), ``TRIO_AGENT_UPSTREAM_URL`` and
    ``TRIO_AGENT_UPSTREAM_<FIELD>`` for :class:`UpstreamConfig` (the key only
    as ``TRIO_AGENT_UPSTREAM_API_KEY``; ``TRIO_AGENT_UPSTREAM_URL`` may list
    several upstreams separated by spaces), ``TRIO_AGENT_MOCK_<FIELD>`` for
    :class:`MockLLMConfig`, ``TRIO_AGENT_<FIELD>`` for :class:`AgentConfig`
    (``TRIO_AGENT_TOOL_TIMEOUT``). Any other ``TRIO_AGENT_*`` name is an error.
    Upstream settings without an upstream URL are an error too.
    """
    env = os.environ if environ is None else environ
    # variable name -> (config class, field); every value read is converted
    # here, so a bad one is reported under the variable the user set.
    variables = {
        name: (cls, f.name)
        for cls in (ServerConfig, UpstreamConfig, MockLLMConfig, AgentConfig)
        for f in dataclasses.fields(cls)
        if (name := env_name(cls, f.name)) is not None
    }
    sections = (ServerConfig, UpstreamConfig, MockLLMConfig, AgentConfig)
    vals: dict[type[Any], dict[str, Any]] = {cls: {} for cls in sections}
    names: dict[type[Any], dict[str, str]] = {cls: {} for cls in sections}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_NOT_CONFIG:
            continue
        if key not in variables:
            raise ConfigError(f"unknown environment variable {key}{_did_you_mean(key, list(variables))}")
        cls, name = variables[key]
        vals[cls][name] = _convert(key, typing.get_type_hints(cls)[name], raw)
        names[cls][name] = key
    for cls, flags in (
        (ServerConfig, server), (UpstreamConfig, upstream), (MockLLMConfig, mock), (AgentConfig, agent)
    ):
        for name in flags or {}:
            names[cls].pop(name, None)  # a flag wins, and names itself
        vals[cls].update(flags or {})
    upstream_config: UpstreamConfig | None = None
    if vals[UpstreamConfig]:
        if "base_url" not in vals[UpstreamConfig]:
            raise ConfigError(
                "upstream settings given without an upstream URL "
                "(--upstream-url or TRIO_AGENT_UPSTREAM_URL)"
            )
        with _naming_variables(names[UpstreamConfig]):
            raw_url = vals[UpstreamConfig]["base_url"]
            if isinstance(raw_url, str):  # one or several specs (see parse_upstream_urls)
                base_url, targets = parse_upstream_urls(raw_url, env)
                vals[UpstreamConfig].update(base_url=base_url, targets=targets)
            upstream_config = config_from_mapping(UpstreamConfig, vals[UpstreamConfig])
    with _naming_variables(names[MockLLMConfig]):
        mock_config = config_from_mapping(MockLLMConfig, vals[MockLLMConfig])
    with _naming_variables(names[AgentConfig]):
        agent_config = config_from_mapping(AgentConfig, vals[AgentConfig])
    if vals[ServerConfig].get("otlp_endpoint") is None:
        vals[ServerConfig]["otlp_endpoint"] = otlp_endpoint_from_env(env)
    with _naming_variables(names[ServerConfig]):
        return config_from_mapping(
            ServerConfig,
            {**vals[ServerConfig], "upstream": upstream_config, "mock": mock_config, "agent": agent_config},
        )
