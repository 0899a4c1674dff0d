"""Limits shared by several gateway processes through Redis (coredis, on trio).

The same :class:`~trio_agent.server.Limits` interface as the in-process
:class:`~trio_agent.server.Admission`; the gateway does not know which it has.

* Global concurrency is a distributed semaphore of *leases*: members of a
  sorted set scored by their expiry (Redis server time, in ms), changed only
  by Lua scripts, so check-and-add is atomic across processes. One task per
  process renews all of its live leases every ``lease_ttl / 3`` in one script
  call; a lease is released in ``finally``. The leases of a process that dies
  expire within ``lease_ttl``, so no capacity is lost for good.
* Per-key concurrency uses the same leases in a per-key set; the per-key rate
  is GCRA in one script. Both answer :class:`~trio_agent.errors.KeyLimitError`
  (429) with ``retry_after`` across processes.
* A request that finds no slot waits (at most ``max_queued`` waiters in this
  process, at most ``max_queue_wait`` seconds). A release publishes on a
  channel and every process wakes its waiters at once; a short poll with
  jitter is the fallback when a message is lost (pub/sub reconnects lazily).
* When Redis is unreachable, ``fail_open`` falls back to a local
  :class:`Admission` of this process's share, ``fail_closed`` answers 503
  (``limits_unavailable``). ``healthy`` says which; the outage is logged once,
  and a probe brings the shared limits back when Redis returns.

Not across processes: FIFO order among waiters (each process keeps its own).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

from ..concurrency import LoopLag
from ..config import ServerConfig
from ..errors import AdmissionError, KeyLimitError, OverloadedError
from ._admission import Admission, AdmissionStatistics, Lease, LeaseContext, estimate_retry_after

__all__ = ["SharedLimits", "open_shared_limits"]

logger = logging.getLogger("trio_agent.limits")

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local key_limit = tonumber(ARGV[4])
if key_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= key_limit then return -1 end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
if key_limit > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
end
return 1
"""

_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if KEYS[2] ~= KEYS[1] then redis.call('ZREM', KEYS[2], ARGV[1]) end
redis.call('PUBLISH', ARGV[2], '1')
return 1
"""

# ARGV: ttl_ms, then (lease id, per-key set or "") pairs. Renews only leases still present (XX).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV, 2 do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[i])
  if ARGV[i + 1] ~= '' then
    redis.call('ZADD', ARGV[i + 1], 'XX', now + ttl, ARGV[i])
    redis.call('PEXPIRE', ARGV[i + 1], ttl * 2)
  end
end
return renewed
"""

# GCRA: ARGV emission interval (ms), burst. Returns 0 (allowed) or the wait in ms.
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tau = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tau then return math.ceil(tat - tau - now) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now + interval))
return 0
"""


class _SharedLease(Lease):
    __slots__ = ("id", "key_set", "local")

    def __init__(
        self, *, key: str | None, queued: float, admitted_at: float, id: str, key_set: str
    ) -> None:
        super().__init__(key=key, queued=queued, admitted_at=admitted_at)
        self.id = id
        self.key_set = key_set
        self.local: Any = None  # the fallback lease context when admitted locally


class SharedLimits:
    """Admission shared across processes through Redis; see the module docstring."""

    def __init__(self, client: Any, config: ServerConfig, *, fallback: Admission) -> None:
        self._client = client
        self._config = config
        self._fallback = fallback
        prefix = config.redis_key_prefix
        self._sem = f"{prefix}:sem"
        self._channel = f"{prefix}:released"
        self._key_prefix = f"{prefix}:key:"
        self._rate_prefix = f"{prefix}:rate:"
        self._ttl_ms = int(config.redis_lease_ttl * 1000)
        self._acquire_script = client.register_script(_ACQUIRE)
        self._release_script = client.register_script(_RELEASE)
        self._renew_script = client.register_script(_RENEW)
        self._rate_script = client.register_script(_RATE)
        self._live: dict[str, _SharedLease] = {}
        self._wake = trio.Event()
        self._rng = random.Random()
        self._healthy = True
        self._unhealthy_since: float | None = None
        self._queued = 0
        self._admitted = self._shed_full = self._shed_timeout = self._shed_key_limit = 0
        self._redis_errors = 0
        self._mean_service_time = 1.0

    # -- status --------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while Redis is unreachable (then the failure policy applies)."""
        return self._healthy

    @property
    def ready(self) -> bool:
        """Whether the gateway can admit work: healthy, or failing open."""
        return self._healthy or self._config.redis_on_error == "fail_open"

    def status(self) -> dict[str, Any]:
        """For /readyz and /metrics: mode, health, the policy and errors seen."""
        return {
            "mode": "redis" if self._healthy else ("local" if self.ready else "unavailable"),
            "healthy": self._healthy,
            "on_error": self._config.redis_on_error,
            "redis_errors": self._redis_errors,
        }

    def statistics(self) -> AdmissionStatistics:
        """This process's view: its leases and waiters; ``max_concurrency`` is the global cap."""
        local = self._fallback.statistics()
        return AdmissionStatistics(
            in_flight=len(self._live) + local.in_flight,
            queued=self._queued + local.queued,
            max_concurrency=self._config.max_concurrency,
            max_queued=self._config.max_queued,
            admitted=self._admitted + local.admitted,
            shed_full=self._shed_full + local.shed_full,
            shed_timeout=self._shed_timeout + local.shed_timeout,
            shed_key_limit=self._shed_key_limit + local.shed_key_limit,
            shed_loop_lag=local.shed_loop_lag,
            keys_in_flight=len({lease.key for lease in self._live.values() if lease.key})
            + local.keys_in_flight,
            mean_service_time=self._mean_service_time,
            admitted_newest_first=local.admitted_newest_first,
        )

    def __repr__(self) -> str:
        return (
            f"<SharedLimits healthy={self._healthy} leases={len(self._live)}"
            f" queued={self._queued} max_concurrency={self._config.max_concurrency}>"
        )

    def lease(self, key: str | None = None) -> LeaseContext[_SharedLease]:
        """Wait (bounded) for a global slot; ``async with`` it."""
        return LeaseContext(lambda: self._acquire(key), self._release)

    def slot(self) -> AbstractAsyncContextManager[Lease]:
        """A global slot for work admitted already (see :meth:`Limits.slot`): never refused.

        The shared queue is bounded, so a refusal of :meth:`lease` here means
        "not yet": the wait is retried, backing off up to a second, until a
        slot is free or the caller's deadline ends it.
        """
        return _patient(self)

    def refuse_nowait(self, key: str | None = None) -> AdmissionError | None:
        """The loop-lag refusal if this process lags, else None: only Redis knows whether
        a global slot is free (``lease`` decides)."""
        return self._fallback.refuse_if_lagging(self._held())

    # -- health ----------------------------------------------------------------------

    def _redis_failed(self, exc: BaseException) -> None:
        self._redis_errors += 1
        if self._healthy:
            self._healthy = False
            self._unhealthy_since = trio.current_time()
            logger.error(
                "redis unreachable (%s): limits now %s until it returns",
                type(exc).__name__,
                "local to this process"
                if self._config.redis_on_error == "fail_open"
                else "refusing work (503)",
            )

    def _redis_back(self) -> None:
        if not self._healthy:
            self._healthy = True
            down = trio.current_time() - (self._unhealthy_since or trio.current_time())
            logger.warning("redis reachable again after %.1fs: shared limits restored", down)
            self._wake.set()

    # -- acquire and release -----------------------------------------------------------

    def _retry_after(self) -> float:
        return estimate_retry_after(
            self._mean_service_time, self._queued, self._config.max_concurrency
        )

    def _held(self) -> int:
        """Leases this process holds, shared or local (the loop-lag rule's floor counts them)."""
        return len(self._live) + self._fallback.statistics().in_flight

    async def _acquire(self, key: str | None) -> _SharedLease:
        lagging = self._fallback.refuse_if_lagging(self._held())
        if lagging is not None:
            await trio.lowlevel.checkpoint()
            raise lagging
        if not self._healthy:
            return await self._acquire_without_redis(key)
        cfg = self._config
        start = trio.current_time()
        lease_id = uuid.uuid4().hex
        key_limit = (
            cfg.per_key_max_concurrency if key is not None and cfg.per_key_max_concurrency else 0
        )
        key_set = f"{self._key_prefix}{key}" if key_limit else self._sem
        try:
            if key is not None and cfg.per_key_rate is not None:
                wait_ms = int(
                    await self._rate_script(
                        keys=[f"{self._rate_prefix}{key}"],
                        args=[1000.0 / cfg.per_key_rate, cfg.per_key_burst],
                    )
                )
                if wait_ms > 0:
                    self._shed_key_limit += 1
                    raise KeyLimitError(
                        f"request rate for this API key exceeded ({cfg.per_key_rate:g}/s)",
                        retry_after=wait_ms / 1000.0,
                    )
            got = await self._try(lease_id, key_set, key_limit)
            if got == 0:
                got = await self._wait(lease_id, key_set, key_limit, start)
        except (OSError, _redis_errors()) as exc:
            self._redis_failed(exc)
            return await self._acquire_without_redis(key)
        if got < 0:
            self._shed_key_limit += 1
            raise KeyLimitError(
                f"too many concurrent requests for this API key (limit {cfg.per_key_max_concurrency})",
                retry_after=self._retry_after(),
            )
        now = trio.current_time()
        lease = _SharedLease(
            key=key, queued=now - start, admitted_at=now, id=lease_id, key_set=key_set
        )
        self._live[lease_id] = lease
        self._admitted += 1
        return lease

    async def _try(self, lease_id: str, key_set: str, key_limit: int) -> int:
        return int(
            await self._acquire_script(
                keys=[self._sem, key_set],
                args=[self._config.max_concurrency, lease_id, self._ttl_ms, key_limit],
            )
        )

    async def _wait(self, lease_id: str, key_set: str, key_limit: int, start: float) -> int:
        cfg = self._config
        if self._queued >= cfg.max_queued:
            self._shed_full += 1
            raise OverloadedError(
                f"server overloaded: {cfg.max_concurrency} in flight across all processes and "
                f"{self._queued} queued here (max {cfg.max_queued})",
                retry_after=self._retry_after(),
            )
        self._queued += 1
        try:
            with trio.move_on_at(start + cfg.max_queue_wait):
                while True:
                    wake = self._wake
                    # Woken by a release anywhere (pub/sub), or by the poll with jitter.
                    with trio.move_on_after(cfg.redis_poll_interval * (0.5 + self._rng.random())):
                        await wake.wait()
                    got = await self._try(lease_id, key_set, key_limit)
                    if got != 0:
                        return got
        finally:
            self._queued -= 1
        self._shed_timeout += 1
        raise OverloadedError(
            f"server overloaded: no capacity within {cfg.max_queue_wait:g}s",
            retry_after=self._retry_after(),
            waited=trio.current_time() - start,
        )

    async def _acquire_without_redis(self, key: str | None) -> _SharedLease:
        if self._config.redis_on_error == "fail_closed":
            await trio.lowlevel.checkpoint()
            raise OverloadedError(
                "shared limits unavailable (redis unreachable); refusing work",
                retry_after=5.0,
                code="limits_unavailable",
            )
        ctx = self._fallback.lease(key)
        inner = await ctx.__aenter__()
        lease = _SharedLease(
            key=key, queued=inner.queued, admitted_at=inner.admitted_at, id="", key_set=""
        )
        lease.local = ctx
        return lease

    async def _release(self, lease: _SharedLease, exc: BaseException | None) -> None:
        held = trio.current_time() - lease.admitted_at
        self._mean_service_time += 0.1 * (held - self._mean_service_time)
        if lease.local is not None:
            await lease.local.__aexit__(
                None if exc is None else type(exc), exc, None if exc is None else exc.__traceback__
            )
            return
        del self._live[lease.id]  # synchronously: renewal stops at once
        # If Redis is gone the lease simply expires; never hang a request on it.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0):
            try:
                await self._release_script(
                    keys=[self._sem, lease.key_set], args=[lease.id, self._channel]
                )
            except (OSError, _redis_errors()) as err:
                self._redis_failed(err)

    # -- background work, in the limits' own nursery -----------------------------------

    async def _renew_forever(self) -> None:
        interval = self._config.redis_lease_ttl / 3
        while True:
            await trio.sleep(interval)
            if not self._live or not self._healthy:
                continue
            args: list[Any] = [self._ttl_ms]
            for lease in list(self._live.values()):
                args += [lease.id, lease.key_set if lease.key_set != self._sem else ""]
            try:
                with trio.fail_after(interval):
                    await self._renew_script(keys=[self._sem], args=args)
            except (OSError, trio.TooSlowError, _redis_errors()) as exc:
                self._redis_failed(exc)

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with self._client.pubsub(
                    channels=[self._channel], ignore_subscribe_messages=True
                ) as ps:
                    async for _ in ps:
                        wake, self._wake = self._wake, trio.Event()
                        wake.set()
            except (OSError, _redis_errors()):
                await trio.sleep(1.0)

    async def _probe_forever(self) -> None:
        delay = 0.5
        while True:
            await trio.sleep(delay)
            if self._healthy:
                delay = 0.5
                continue
            try:
                with trio.fail_after(1.0):
                    await self._client.ping()
            except (OSError, trio.TooSlowError, _redis_errors()):
                delay = min(5.0, delay * 2)
            else:
                self._redis_back()
                delay = 0.5


@asynccontextmanager
async def _patient(limits: SharedLimits) -> AsyncIterator[Lease]:
    delay = 0.01
    while True:
        context = limits.lease()
        try:
            lease = await context.__aenter__()
        except AdmissionError as exc:
            if exc.status_code != 503:
                raise
        else:
            break
        await trio.sleep(delay)
        delay = min(1.0, delay * 2)
    try:
        yield lease
    except BaseException as exc:
        await context.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await context.__aexit__(None, None, None)


def _redis_errors() -> type[Exception]:
    import coredis.exceptions

    return coredis.exceptions.RedisError


@asynccontextmanager
async def open_shared_limits(
    config: ServerConfig, *, loop_lag: LoopLag | None = None
) -> AsyncIterator[SharedLimits]:
    """Connect to ``config.redis_url`` and run the limits' background tasks until exit.

    With a running ``loop_lag`` and ``config.max_loop_lag``, this process
    also refuses new requests while its scheduler lags (see :class:`Admission`).
    """
    import coredis

    if config.redis_url is None:
        raise ValueError("open_shared_limits needs config.redis_url")
    share = config.redis_local_share or max(1, config.max_concurrency // config.workers)
    fallback = Admission.from_config(config, loop_lag=loop_lag, max_concurrency=share)
    client = coredis.Redis.from_url(
        config.redis_url, decode_responses=True, connect_timeout=1.0, stream_timeout=2.0
    )
    async with client:
        limits = SharedLimits(client, config, fallback=fallback)
        try:
            with trio.fail_after(2.0):
                await client.ping()
        except (OSError, trio.TooSlowError, _redis_errors()) as exc:
            limits._redis_failed(exc)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(limits._renew_forever)
            nursery.start_soon(limits._listen_forever)
            nursery.start_soon(limits._probe_forever)
            try:
                yield limits
            finally:
                nursery.cancel_scope.cancel()
