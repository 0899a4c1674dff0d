"""The upstream router: one :class:`~trio_agent.ChatBackend` over several upstreams, with failover.

Each upstream is an :class:`OpenAIBackend` of its own (its own pool) that
makes a single attempt per call; the router owns the retries, so that a
failure before the first byte goes to *another* upstream at once::

    call ── pick (UpstreamSet: due probe first, else least in flight / weight)
         ── attempt on that upstream ── answer: report it, stream through
                                     └─ retryable failure before the first byte:
                                        report it (ejection counts), then, within
                                        max_attempts and the retry budget, the next
                                        pick avoids the upstreams tried: at once on
                                        another, after a backoff on the same one

After the first byte nothing is retried: a failure then ends the stream with
one error, as with a single upstream. When every upstream that serves the
model is ejected, the call fails at once with :class:`UpstreamUnavailableError`
(503, ``Retry-After`` = the time until the first probe) instead of waiting
for a connect timeout; a model no upstream serves is
:class:`ModelNotFoundError` (404). Deadlines are the request's, from its
start, whichever upstream serves it. The agent runtime and every route use
the router through the :class:`ChatBackend` protocol (docs/decisions/011).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

import orjson
import trio

from ..config import UpstreamConfig, UpstreamTarget
from ..errors import (
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from ._openai import _first_timeout, open_openai_backend
from ._retry import RetryBudget, backoff_delay, is_retryable_status
from ._types import ChatChunk, ChatCompletion, ChatRequest, Relay
from ._upstreams import Pick, Upstream, UpstreamSet, UpstreamStatistics

__all__ = [
    "RoutedBackend",
    "RouterBackend",
    "RouterStatistics",
    "open_router_backend",
    "upstream_unavailable",
]

T = TypeVar("T")


class RoutedBackend(Protocol):
    """What the router needs of each upstream: one attempt per call, deadlines from ``started_at``."""

    def stream_chat(
        self, request: ChatRequest, *, started_at: float | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]: ...

    async def complete_chat(
        self, request: ChatRequest, *, started_at: float | None = None
    ) -> ChatCompletion: ...

    def open_relay(
        self, path: str, body: bytes, *, stream: bool, started_at: float | None = None
    ) -> AbstractAsyncContextManager[Relay]: ...

    async def list_models(self) -> list[str]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class RouterStatistics:
    """The router's counts and each upstream's state; ``in_flight`` is 0 when idle."""

    requests: int
    attempts: int
    retries: int
    failovers: int
    fast_failures: int
    in_flight: int
    errors: dict[str, int]
    upstreams: tuple[UpstreamStatistics, ...]


def _retryable(exc: UpstreamError) -> bool:
    if isinstance(exc, UpstreamStatusError):
        return exc.upstream_status is not None and is_retryable_status(exc.upstream_status)
    return isinstance(exc, UpstreamConnectError | UpstreamConnectTimeoutError)


class RouterBackend:
    """A :class:`~trio_agent.ChatBackend` that spreads calls over ``upstreams`` (see the module docstring).

    ``config`` gives the deadlines, ``max_attempts``, the backoff, the retry
    budget and the ejection rule; each upstream's backend must make one
    attempt per call (``max_attempts=1``), as :func:`open_router_backend` builds them.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        upstreams: Sequence[Upstream[RoutedBackend]],
        *,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.upstreams = UpstreamSet(
            upstreams,
            eject_after_failures=config.eject_after_failures,
            eject_delay=config.eject_delay,
            eject_max_delay=config.eject_max_delay,
        )
        self._budget = budget or RetryBudget(
            ratio=config.retry_budget_ratio,
            window=config.retry_budget_window,
            min_retries=config.retry_budget_min,
        )
        self._rng = rng or random.Random(config.seed)
        # Whether any upstream has a model list: only then is a relayed body parsed for its model.
        self._by_model = any(u.models for u in upstreams)
        self._requests = self._attempts = self._retries = self._failovers = self._fast = 0
        self._errors: dict[str, int] = {}

    @property
    def model(self) -> str:
        """The model asked for when a request names none."""
        return self.config.model

    def __repr__(self) -> str:
        ups = ", ".join(f"{u.name} {u.state} in_flight={u.in_flight}" for u in self.upstreams.upstreams)
        return f"<RouterBackend [{ups}] model={self.model!r}>"

    def statistics(self) -> RouterStatistics:
        """A snapshot: counts, and each upstream's state."""
        ups = tuple(u.statistics() for u in self.upstreams.upstreams)
        return RouterStatistics(
            requests=self._requests,
            attempts=self._attempts,
            retries=self._retries,
            failovers=self._failovers,
            fast_failures=self._fast,
            in_flight=sum(u.in_flight for u in ups),
            errors=dict(self._errors),
            upstreams=ups,
        )

    def unavailable(self, model: str | None = None) -> UpstreamUnavailableError | None:
        """The error a call (for ``model``; None: any) would fail with at once now, else None."""
        ups = self.upstreams
        candidates = ups.upstreams if model is None else [u for u in ups.upstreams if u.serves(model)]
        return ups.unavailable(candidates) if candidates else None

    def _count_error(self, exc: UpstreamError) -> UpstreamError:
        self._errors[exc.code] = self._errors.get(exc.code, 0) + 1
        return exc

    # -- the attempt loop ---------------------------------------------------------------

    async def _first(
        self,
        model: str | None,
        first_deadline: float,
        timeout_error: Callable[[], UpstreamTimeoutError],
        attempt: Callable[[Upstream[RoutedBackend], AsyncExitStack], Awaitable[T]],
    ) -> tuple[T, Pick[RoutedBackend], AsyncExitStack]:
        """Attempt until one upstream answers; return the answer, its pick and what closes it.

        The caller closes the stack, then releases the pick, on every path.
        """
        ups = self.upstreams
        self._requests += 1
        self._budget.record_request()
        candidates = ups.serving(model)
        tried: list[Upstream[RoutedBackend]] = []
        last_error: UpstreamError | None = None
        retry = 0
        while True:
            try:
                pick = await self._pick(candidates, tried, first_deadline, timeout_error)
            except UpstreamUnavailableError as exc:
                # Ejected meanwhile (by this very call's failures, maybe): the failure it
                # saw says more than "ejected"; a call that tried none fails fast.
                if last_error is not None:
                    raise self._count_error(last_error) from None
                self._fast += 1
                raise self._count_error(exc) from None
            self._attempts += 1
            stack = AsyncExitStack()
            error: UpstreamError | None = None
            try:
                result = await attempt(pick.upstream, stack)
            except UpstreamError as exc:
                error = exc
            except BaseException:
                # Cancelled (client gone, deadline): nothing was answered; a probe is due again.
                with trio.CancelScope(shield=True):
                    await stack.aclose()
                ups.release(pick)
                raise
            if error is None:
                ups.answered(pick)
                return result, pick, stack
            with trio.CancelScope(shield=True):
                await stack.aclose()
            if isinstance(error, UpstreamStatusError) and not _retryable(error):
                ups.answered(pick)  # it answered: up, and the answer is the client's
                pick.upstream.note_error(error)
            else:
                ups.failed(pick, error)
            ups.release(pick)
            tried.append(pick.upstream)
            last_error = error
            if not _retryable(error) or retry + 1 >= self.config.max_attempts:
                raise self._count_error(error)
            # The next pick: another upstream at once if one may take it, else this one after a backoff.
            others = [u for u in candidates if u not in tried]
            if ups.unavailable(others) is None and any(u.has_room for u in others):
                delay = 0.0
            else:
                delay = error.retry_after if error.retry_after is not None else backoff_delay(
                    retry, self._rng, base=self.config.backoff_base, cap=self.config.backoff_max
                )
            if trio.current_time() + delay >= first_deadline:
                raise self._count_error(error)
            if not self._budget.try_spend():
                suppressed = error.with_detail("not retried: the retry budget is spent")
                raise self._count_error(suppressed) from error
            retry += 1
            self._retries += 1
            if delay:
                await trio.sleep(delay)
            else:
                self._failovers += 1

    async def _pick(
        self,
        candidates: Sequence[Upstream[RoutedBackend]],
        tried: Sequence[Upstream[RoutedBackend]],
        first_deadline: float,
        timeout_error: Callable[[], UpstreamTimeoutError],
    ) -> Pick[RoutedBackend]:
        ups = self.upstreams
        try:
            return ups.pick_nowait(candidates, avoid=tried)
        except trio.WouldBlock:  # every one that may take it is at its own cap
            with trio.move_on_at(first_deadline):
                return await ups.pick(candidates, avoid=tried)
            raise self._count_error(timeout_error()) from None

    @asynccontextmanager
    async def _holding(self, pick: Pick[RoutedBackend], stack: AsyncExitStack) -> AsyncIterator[None]:
        """The block that reads an opened call: an upstream error in it (after the first byte:
        never retried) counts against the upstream; leaving closes the call, shielded, and
        frees its slot."""
        try:
            yield
        except UpstreamError as exc:
            pick.upstream.note_error(exc)
            self._count_error(exc)
            raise
        finally:
            try:
                with trio.CancelScope(shield=True):
                    await stack.aclose()
            finally:
                self.upstreams.release(pick)

    # -- the backend protocol -------------------------------------------------------------

    @asynccontextmanager
    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        """Stream a reply from one upstream; leaving the block closes it and frees its slot."""
        cfg = self.config
        start = trio.current_time()
        total_deadline = start + cfg.total_timeout
        first_deadline = min(start + cfg.first_token_timeout, total_deadline)

        async def attempt(u: Upstream[RoutedBackend], stack: AsyncExitStack) -> AsyncIterator[ChatChunk]:
            return await stack.enter_async_context(u.backend.stream_chat(request, started_at=start))

        chunks, pick, stack = await self._first(
            _model_of(request, cfg.model),
            first_deadline,
            partial(_first_timeout, cfg, first_deadline, total_deadline, "token"),
            attempt,
        )
        async with self._holding(pick, stack):
            yield chunks

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion:
        """The whole reply from one upstream, with failover before it."""
        cfg = self.config
        start = trio.current_time()
        deadline = start + cfg.total_timeout

        async def attempt(u: Upstream[RoutedBackend], stack: AsyncExitStack) -> ChatCompletion:
            return await u.backend.complete_chat(request, started_at=start)

        completion, pick, _ = await self._first(
            _model_of(request, cfg.model),
            deadline,
            partial(_first_timeout, cfg, deadline, deadline, "byte"),
            attempt,
        )
        self.upstreams.release(pick)
        return completion

    @asynccontextmanager
    async def open_relay(self, path: str, body: bytes, *, stream: bool) -> AsyncIterator[Relay]:
        """Relay one OpenAI call to one upstream (routed by the body's ``model``), with failover before it."""
        cfg = self.config
        start = trio.current_time()
        total_deadline = start + cfg.total_timeout
        first_deadline = min(start + cfg.first_token_timeout, total_deadline) if stream else total_deadline
        model = _body_model(body) if self._by_model else None

        async def attempt(u: Upstream[RoutedBackend], stack: AsyncExitStack) -> Relay:
            return await stack.enter_async_context(
                u.backend.open_relay(path, body, stream=stream, started_at=start)
            )

        relay, pick, stack = await self._first(
            (model or cfg.model) if self._by_model else None,
            first_deadline,
            partial(_first_timeout, cfg, first_deadline, total_deadline, "byte"),
            attempt,
        )
        async with self._holding(pick, stack):
            yield relay

    async def list_models(self) -> list[str]:
        """Every upstream's models: its declared list, else what it answers (ejected ones skipped)."""
        names: dict[str, None] = {}
        error: UpstreamError | None = None
        answered = False
        for u in self.upstreams.upstreams:
            if u.models:
                names.update(dict.fromkeys(u.models))
                answered = True
                continue
            if u.state != "up":
                continue
            try:
                names.update(dict.fromkeys(await u.backend.list_models()))
                answered = True
            except UpstreamError as exc:
                error = exc
        if not answered:
            raise error or self.unavailable() or UpstreamUnavailableError("no upstream answered")
        return list(names)


def _model_of(request: ChatRequest, default: str) -> str:
    body = request.openai_body
    if body is not None and isinstance(body.get("model"), str):
        return str(body["model"])
    return request.model or default


def _body_model(body: bytes) -> str | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, str) else None


def upstream_unavailable(backend: object, model: str | None = None) -> UpstreamUnavailableError | None:
    """The error a call on ``backend`` would fail with at once now (every upstream ejected), else None.

    For a route that answers before it calls the backend (a stream's head):
    ``None`` for any backend that is not a router.
    """
    if isinstance(backend, RouterBackend):
        return backend.unavailable(model)
    return None


@asynccontextmanager
async def open_router_backend(
    config: UpstreamConfig, *, budget: RetryBudget | None = None
) -> AsyncIterator[RouterBackend]:
    """Open one pool per upstream of ``config`` (``upstream_targets``), yield the router, close them."""
    async with AsyncExitStack() as stack:
        upstreams: list[Upstream[RoutedBackend]] = []
        for target in config.upstream_targets:
            backend = await stack.enter_async_context(open_openai_backend(_single(config, target)))
            upstreams.append(
                Upstream(
                    name=_shown(target.url),
                    backend=backend,
                    weight=target.weight,
                    models=target.models,
                    max_concurrency=target.max_concurrency,
                )
            )
        yield RouterBackend(config, upstreams, budget=budget)


def _shown(url: str) -> str:
    """``url`` without any ``user:password@``: the name in metrics and logs never carries a secret."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"


def _single(config: UpstreamConfig, target: UpstreamTarget) -> UpstreamConfig:
    """One upstream's own config: its URL and key, one attempt per call, a pool sized to its cap."""
    connections = config.max_connections
    if target.max_concurrency is not None:
        connections = min(connections or target.max_concurrency, target.max_concurrency)
    return dataclasses.replace(
        config,
        base_url=target.url,
        api_key=target.api_key if target.api_key is not None else config.api_key,
        max_attempts=1,
        targets=(),
        max_connections=connections,
        max_keepalive_connections=None
        if config.max_keepalive_connections is None
        else min(config.max_keepalive_connections, connections or config.connections),
        pool_shards=min(config.pool_shards, connections or config.connections),
    )
