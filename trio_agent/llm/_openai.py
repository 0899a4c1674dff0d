"""The upstream client: any OpenAI-compatible chat completions API over pooled httpx clients.

The pool lives as long as the server: one :class:`httpx.AsyncClient` per
connection by default (see :func:`pool_shards`). HTTP/1.1 only: closing an
HTTP/1.1 response early closes its connection, so an abandoned stream stops
generating upstream; httpx sends no RST_STREAM on HTTP/2, so HTTP/2 is refused.

Deadlines, each its own error: connect (``UpstreamConnectTimeoutError``),
request sent to first content (``UpstreamFirstTokenTimeoutError``), the gap
between two events (``UpstreamIdleTimeoutError``, measured per *event*, so an
upstream dribbling one byte at a time is still caught) and the whole call
(``UpstreamTotalTimeoutError``). An enclosing trio deadline of the caller still
wins when it is tighter.

Retries happen only before the first token reached the caller: on connection
errors, 408, 409, 429 and 5xx, with full-jitter exponential backoff, honouring
``retry-after-ms`` / ``Retry-After`` when the wait fits in the remaining
deadline, and within a process-wide :class:`RetryBudget`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import httpx
import orjson
import trio

from ..config import UpstreamConfig
from ..errors import (
    ConfigError,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamFirstTokenTimeoutError,
    UpstreamIdleTimeoutError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    UpstreamTotalTimeoutError,
)
from ..tracing import trace_headers
from ._h11_body import h11_body
from ._retry import RetryBudget, backoff_delay, is_retryable_status, parse_retry_after
from ._sse_data import SSEDataSplitter
from ._types import ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Relay, Usage
from ._wire import chunk_from_object, tool_calls_from_message, usage_from_object

__all__ = ["OpenAIBackend", "OpenAIBackendStatistics", "open_openai_backend"]

T = TypeVar("T")

_CLOSE_GRACE = 1.0  # seconds a shielded response close may take
_ERROR_BODY_LIMIT = 4096


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenAIBackendStatistics:
    """Upstream call counts: ``in_flight`` streams open now (0 when idle); the rest only grow."""

    requests: int
    attempts: int
    retries: int
    in_flight: int
    errors: dict[str, int]


def pool_shards(config: UpstreamConfig) -> int:
    """How many httpx clients the connection pool is split into (``pool_shards``, 0 = auto).

    Auto is one client per connection. httpx's connection pool, shared by several
    calls, costs twice over under load: it scans all its connections once per
    idle connection each time a request arrives or a response closes (O(n^2)
    per call; 29 % of a proxying client's CPU at 64 streams), and it hands
    every request queued at one moment the *same* idle connection, so all but
    one fail over to the next round, a few scheduler passes each (a
    saturated gateway spent 1.5 s per request there with idle connections
    free). A client with one connection, chosen only while it is idle (see
    :meth:`OpenAIBackend._take`), has neither.
    """
    if config.pool_shards:
        return config.pool_shards
    return config.connections


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _open_clients(config: UpstreamConfig) -> list[httpx.AsyncClient]:
    shards = pool_shards(config)
    # One TLS context for every shard: httpx builds one per client otherwise (loading the CA
    # bundle, about 50 ms each), which made a 4096-connection pool (128 shards) take 8 s
    # to open, blocking the event loop.
    tls = httpx.create_ssl_context()
    return [
        httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=connections,
                max_keepalive_connections=keepalive,
                keepalive_expiry=config.keepalive_expiry,
            ),
            # httpx's read timeout is per chunk; our idle and total deadlines are the real guard.
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=max(config.idle_timeout, config.first_token_timeout),
                write=config.connect_timeout,
                pool=config.connect_timeout,
            ),
            http2=False,
            verify=tls,
        )
        for connections, keepalive in zip(
            _split(config.connections, shards),
            _split(config.keepalive_connections, shards),
            strict=True,
        )
    ]


@asynccontextmanager
async def open_openai_backend(
    config: UpstreamConfig, *, budget: RetryBudget | None = None
) -> AsyncIterator[OpenAIBackend]:
    """Open the shared connection pool (see :func:`pool_shards`), yield the backend, close it on exit."""
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(c) for c in _open_clients(config)]
        yield OpenAIBackend(config, client=clients, budget=budget)


class OpenAIBackend:
    """A :class:`~trio_agent.ChatBackend` for any OpenAI-compatible ``/chat/completions``.

    Pass a shared ``client``, or several (the pool split into shards; each
    call goes to the one with the fewest calls open), see
    :func:`open_openai_backend`. The API key from ``config`` is sent as
    ``Authorization: Bearer`` and never appears in reprs, logs or error messages.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        client: httpx.AsyncClient | Sequence[httpx.AsyncClient],
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if config.http2:
            raise ConfigError("http2 is not supported: httpx cannot cancel an HTTP/2 stream early")
        self.config = config
        self._clients = [client] if isinstance(client, httpx.AsyncClient) else list(client)
        if not self._clients:
            raise ConfigError("OpenAIBackend needs at least one httpx client")
        # Calls open per client, and the clients with none open, the most recently freed last
        # (its connection is the likeliest to be alive): a call takes an idle client in O(1).
        self._load = [0] * len(self._clients)
        self._idle = list(range(len(self._clients)))[::-1]
        self._base = config.base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self._budget = budget or RetryBudget(
            ratio=config.retry_budget_ratio,
            window=config.retry_budget_window,
            min_retries=config.retry_budget_min,
        )
        self._rng = rng or random.Random(config.seed)
        self._requests = self._attempts = self._retries = self._in_flight = 0
        self._errors: dict[str, int] = {}

    @property
    def model(self) -> str:
        """The model asked for when a request names none."""
        return self.config.model

    def __repr__(self) -> str:
        return f"<OpenAIBackend base_url={self._base!r} model={self.model!r} in_flight={self._in_flight}>"

    def statistics(self) -> OpenAIBackendStatistics:
        """A snapshot of call counts."""
        return OpenAIBackendStatistics(
            requests=self._requests,
            attempts=self._attempts,
            retries=self._retries,
            in_flight=self._in_flight,
            errors=dict(self._errors),
        )

    # -- helpers -----------------------------------------------------------------

    def _take(self) -> int:
        """Choose a client for a call and count it open; :meth:`_give_back` when it ends.

        An idle client (the most recently freed), else the one with the fewest
        calls open: the call then waits in that client's pool.
        """
        load = self._load
        if self._idle:
            shard = self._idle.pop()
        else:
            shard = load.index(min(load))
        load[shard] += 1
        return shard

    def _give_back(self, shard: int) -> None:
        self._load[shard] -= 1
        if not self._load[shard]:
            self._idle.append(shard)

    def _redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key else text

    def _count_error(self, exc: UpstreamError) -> UpstreamError:
        self._errors[exc.code] = self._errors.get(exc.code, 0) + 1
        return exc

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        """The upstream's JSON body: the client's own (``openai_body``) with only what the
        gateway owns changed, else one built from the request's fields."""
        client_body = request.openai_body
        if client_body is not None:
            body = dict(client_body)
            if body.get("model") is None:
                body["model"] = request.model or self.config.model
            body["stream"] = stream
            if stream:
                # Usage is counted from the stream; every other option the client set stays.
                options = body.get("stream_options")
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            return orjson.dumps(body)
        body = {
            "model": request.model or self.config.model,
            "messages": [_message(m) for m in request.messages],
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = list(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        return orjson.dumps(body)

    async def _status_error(self, response: httpx.Response) -> UpstreamStatusError:
        message = f"upstream answered {response.status_code}"
        try:
            with trio.move_on_after(1.0):
                raw = b""
                async for piece in response.aiter_bytes():
                    raw += piece
                    if len(raw) > _ERROR_BODY_LIMIT:
                        break
                detail = orjson.loads(raw).get("error", {})
                if isinstance(detail, dict) and isinstance(detail.get("message"), str):
                    message += ": " + detail["message"][:300]
        except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError):
            pass
        return UpstreamStatusError(
            self._redact(message),
            upstream_status=response.status_code,
            retry_after=parse_retry_after(response.headers),
        )

    def _transport_error(self, exc: httpx.HTTPError, what: str) -> UpstreamError:
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return UpstreamConnectTimeoutError(
                f"could not connect to the upstream within {self.config.connect_timeout} s",
                timeout=self.config.connect_timeout,
            )
        if isinstance(exc, httpx.ReadTimeout):
            return UpstreamIdleTimeoutError(
                f"upstream sent nothing for {self.config.idle_timeout} s",
                timeout=self.config.idle_timeout,
            )
        if isinstance(exc, httpx.ConnectError):
            return UpstreamConnectError(f"could not connect to the upstream ({type(exc).__name__})")
        return UpstreamConnectError(f"upstream connection failed {what} ({type(exc).__name__})")

    async def _with_retries(
        self,
        attempt_once: Callable[[], Awaitable[T]],
        *,
        first_deadline: float,
        timeout_error: Callable[[], UpstreamTimeoutError],
    ) -> T:
        """Run ``attempt_once`` until it succeeds, retrying retryable failures within budget."""
        self._requests += 1
        self._budget.record_request()
        retry = 0
        while True:
            self._attempts += 1
            error: UpstreamError | None = None
            retryable = False
            with trio.move_on_at(first_deadline):
                try:
                    return await attempt_once()
                except UpstreamStatusError as exc:
                    error = exc
                    retryable = exc.upstream_status is not None and is_retryable_status(
                        exc.upstream_status
                    )
                except (UpstreamConnectError, UpstreamConnectTimeoutError) as exc:
                    error, retryable = exc, True
                except UpstreamError as exc:
                    raise self._count_error(exc) from exc.__cause__
            if error is None:  # the first-token (or total) deadline ran out
                raise self._count_error(timeout_error())
            if not retryable or retry + 1 >= self.config.max_attempts:
                raise self._count_error(error)
            delay = error.retry_after
            if delay is None:
                delay = backoff_delay(
                    retry, self._rng, base=self.config.backoff_base, cap=self.config.backoff_max
                )
            if trio.current_time() + delay >= first_deadline:
                raise self._count_error(
                    error
                )  # the wait does not fit: fail now, carrying retry_after
            if not self._budget.try_spend():
                # Not retried is a detail of this failure: the client sees the same code
                # (for example upstream_unavailable) whether or not a retry was allowed.
                suppressed = error.with_detail("not retried: the retry budget is spent")
                raise self._count_error(suppressed) from error
            retry += 1
            self._retries += 1
            await trio.sleep(delay)

    # -- streaming -----------------------------------------------------------------

    @asynccontextmanager
    async def stream_chat(
        self, request: ChatRequest, *, started_at: float | None = None
    ) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        """Stream a reply; leaving the block closes the upstream response at once.

        The deadlines run from ``started_at`` (trio time; default now): a
        router that fails over to this upstream passes the request's own start.
        """
        cfg = self.config
        start = trio.current_time() if started_at is None else started_at
        total_deadline = start + cfg.total_timeout
        first_deadline = min(start + cfg.first_token_timeout, total_deadline)
        body = self._body(request, stream=True)
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        trace_headers(headers)

        first_timeout = partial(_first_timeout, cfg, first_deadline, total_deadline, "token")

        async def attempt() -> _UpstreamStream:
            req = client.build_request(
                "POST", f"{self._base}/chat/completions", content=body, headers=headers
            )
            try:
                response = await client.send(req, stream=True)
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, "while sending") from None
            stream = _UpstreamStream(self, response, total_deadline)
            try:
                if response.status_code != 200:
                    raise await self._status_error(response)
                await stream.prime()
            except BaseException:
                await stream.aclose()
                raise
            return stream

        shard = self._take()
        client = self._clients[shard]
        try:
            stream = await self._with_retries(
                attempt, first_deadline=first_deadline, timeout_error=first_timeout
            )
            self._in_flight += 1
            try:
                yield stream
            except UpstreamError as exc:
                self._count_error(exc)
                raise
            finally:
                self._in_flight -= 1
                await stream.aclose()
        finally:
            self._give_back(shard)

    async def complete_chat(
        self, request: ChatRequest, *, started_at: float | None = None
    ) -> ChatCompletion:
        """The whole reply in one non-streamed call, with the same retries and deadlines."""
        cfg = self.config
        deadline = (trio.current_time() if started_at is None else started_at) + cfg.total_timeout
        body = self._body(request, stream=False)
        headers = {**self._headers, "Content-Type": "application/json"}
        trace_headers(headers)

        async def attempt() -> ChatCompletion:
            try:
                response = await client.post(
                    f"{self._base}/chat/completions", content=body, headers=headers
                )
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, "during the call") from None
            if response.status_code != 200:
                raise await self._status_error(response)
            raw = response.content
            try:
                obj = orjson.loads(raw)
                choice = obj["choices"][0]
                message = choice["message"]
                usage = usage_from_object(obj.get("usage"))
                return ChatCompletion(
                    content=message.get("content") or "",
                    finish_reason=choice.get("finish_reason") or "stop",
                    usage=usage or Usage(prompt_tokens=0, completion_tokens=0),
                    model=str(obj.get("model") or request.model or cfg.model),
                    tool_calls=tool_calls_from_message(message),
                    raw=raw,
                )
            except (
                orjson.JSONDecodeError,
                KeyError,
                IndexError,
                TypeError,
                AttributeError,
                ValueError,
            ) as exc:
                raise UpstreamProtocolError(
                    "upstream reply is not a chat.completion object"
                ) from exc

        shard = self._take()
        client = self._clients[shard]
        try:
            return await self._with_retries(
                attempt,
                first_deadline=deadline,
                timeout_error=lambda: UpstreamTotalTimeoutError(
                    f"upstream call exceeded {cfg.total_timeout} s", timeout=cfg.total_timeout
                ),
            )
        finally:
            self._give_back(shard)

    @asynccontextmanager
    async def open_relay(
        self, path: str, body: bytes, *, stream: bool, started_at: float | None = None
    ) -> AsyncIterator[Relay]:
        """Relay ``POST {base_url}{path}`` (``/embeddings``, ``/completions``, ``/responses``, ...).

        ``body`` goes upstream byte for byte. The block is entered once the
        first bytes are in (the first event of a stream, or the whole body);
        until then retryable failures are retried as for chat, within the
        first-token deadline for a stream and the total one otherwise; after
        it, the idle and total deadlines bound each read. A status the
        upstream will not change its mind about (a 4xx other than 408, 409,
        429) comes back as the relay's status, with the upstream's body.
        Leaving the block closes the upstream response.
        """
        cfg = self.config
        start = trio.current_time() if started_at is None else started_at
        total_deadline = start + cfg.total_timeout
        first_deadline = min(start + cfg.first_token_timeout, total_deadline) if stream else total_deadline
        url = f"{self._base}/{path.lstrip('/')}"
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        trace_headers(headers)

        first_timeout = partial(_first_timeout, cfg, first_deadline, total_deadline, "byte")

        async def attempt() -> tuple[Relay, _RelaySource | None]:
            req = client.build_request("POST", url, content=body, headers=headers)
            try:
                response = await client.send(req, stream=True)
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, "while sending") from None
            content_type = response.headers.get("content-type", "application/json")
            status = response.status_code
            try:
                if status != 200 and is_retryable_status(status):
                    raise await self._status_error(response)
                if status == 200 and content_type.startswith("text/event-stream"):
                    source = _RelaySource(self, response, total_deadline)
                    relay = Relay(status=200, content_type=content_type, source=source)
                    await relay.prime()
                    return relay, source
                try:
                    data = await response.aread()
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, "reading the answer") from None
                return (
                    Relay(
                        status=status,
                        content_type=content_type,
                        body=data,
                        first_byte_at=trio.current_time(),
                    ),
                    None,
                )
            except BaseException:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_GRACE):
                    await response.aclose()
                raise

        shard = self._take()
        client = self._clients[shard]
        try:
            relay, source = await self._with_retries(
                attempt, first_deadline=first_deadline, timeout_error=first_timeout
            )
            self._in_flight += 1
            try:
                yield relay
            except UpstreamError as exc:
                self._count_error(exc)
                raise
            finally:
                self._in_flight -= 1
                if source is not None:
                    await source.aclose()
        finally:
            self._give_back(shard)

    async def list_models(self) -> list[str]:
        """Model ids from ``GET {base_url}/models``."""
        shard = self._take()
        try:
            with trio.fail_after(self.config.first_token_timeout):
                response = await self._clients[shard].get(
                    f"{self._base}/models", headers=self._headers
                )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, "listing models") from None
        finally:
            self._give_back(shard)
        if response.status_code != 200:
            raise await self._status_error(response)
        try:
            return [str(m["id"]) for m in orjson.loads(response.content)["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamProtocolError("upstream /models reply is not a model list") from exc


def _message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


class _UpstreamStream:
    """The chunks of one upstream response. Each ``__anext__`` opens its own deadline scope."""

    __slots__ = (
        "_backend",
        "_body",
        "_closed",
        "_done",
        "_events",
        "_pending",
        "_raw",
        "_response",
        "_splitter",
        "_total_deadline",
    )

    def __init__(
        self, backend: OpenAIBackend, response: httpx.Response, total_deadline: float
    ) -> None:
        self._backend = backend
        self._response = response
        self._raw = response.aiter_raw()
        # Below httpx when the response is HTTP/1.1 over trio (see _h11_body); else aiter_raw.
        self._body = h11_body(response) if backend.config.read_below_httpx else None
        self._splitter = SSEDataSplitter()
        self._events: list[bytes] = []  # data of split, not yet parsed events
        self._pending: list[ChatChunk] = []
        self._total_deadline = total_deadline
        self._done = False
        self._closed = False

    def __aiter__(self) -> _UpstreamStream:
        return self

    async def prime(self) -> None:
        """Read until the first chunk with content (or the end); it is replayed by ``__anext__``."""
        while True:
            chunk = await self._next_chunk()
            if chunk is None:
                return
            self._pending.append(chunk)
            if (
                chunk.delta
                or chunk.tool_calls
                or chunk.finish_reason is not None
                or chunk.usage is not None
            ):
                return

    async def __anext__(self) -> ChatChunk:
        if self._pending:
            return self._pending.pop(0)
        cfg = self._backend.config
        idle_deadline = trio.current_time() + cfg.idle_timeout
        deadline = min(idle_deadline, self._total_deadline)
        with trio.move_on_at(deadline):
            chunk = await self._next_chunk()
            if chunk is None:
                raise StopAsyncIteration
            return chunk
        if deadline == self._total_deadline:
            raise UpstreamTotalTimeoutError(
                f"upstream call exceeded {cfg.total_timeout} s", timeout=cfg.total_timeout
            )
        raise UpstreamIdleTimeoutError(
            f"upstream sent nothing for {cfg.idle_timeout} s", timeout=cfg.idle_timeout
        )

    def receive_nowait(self) -> ChatChunk:
        """The next chunk if it is already read and decoded, else ``trio.WouldBlock``.

        Several events arrive in one read when the caller fell behind; this
        hands them over without waiting (``[DONE]`` is left to ``__anext__``).
        """
        chunk = self.ready_nowait()
        if chunk is None:
            raise trio.WouldBlock
        return chunk

    def ready_nowait(self) -> ChatChunk | None:
        """:meth:`receive_nowait` answering None instead of raising (asked after every chunk)."""
        if self._pending:
            return self._pending.pop(0)
        return self._decoded_chunk()

    def _decoded_chunk(self) -> ChatChunk | None:
        """The next chunk worth returning among the events already decoded, up to ``[DONE]``."""
        events = self._events
        if events and events[0] != b"[DONE]":
            return self._parse(events.pop(0))
        return None

    async def _next_chunk(self) -> ChatChunk | None:
        """The next chunk worth returning, or None at ``[DONE]``."""
        while True:
            chunk = self._decoded_chunk()
            if chunk is not None:
                return chunk
            if self._events:  # ``[DONE]`` is next
                self._events.pop(0)
                self._done = True
                await self._drain()
                return None
            if self._done:
                return None
            body = self._body
            if body is not None:
                data = await body.read()
                if not data:
                    raise UpstreamProtocolError("upstream stream ended without [DONE]")
            else:
                try:
                    data = await self._raw.__anext__()
                except StopAsyncIteration:
                    raise UpstreamProtocolError("upstream stream ended without [DONE]") from None
                except httpx.HTTPError as exc:
                    raise self._backend._transport_error(exc, "mid-stream") from None
            self._events.extend(self._splitter.feed(data))

    async def _drain(self) -> None:
        """Read what follows ``[DONE]`` (normally nothing) so the connection can be reused."""
        with trio.move_on_after(_CLOSE_GRACE):
            body = self._body
            try:
                if body is not None:
                    while not body.done:
                        await body.read()
                else:
                    async for _ in self._raw:
                        pass
            except (httpx.HTTPError, UpstreamError):
                pass

    def _parse(self, payload: bytes) -> ChatChunk:
        """One chunk, carrying ``payload`` as its ``raw`` (the bytes as received)."""
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("upstream sent an event that is not JSON") from None
        if not isinstance(obj, dict):
            raise UpstreamProtocolError("upstream sent an event that is not a JSON object")
        if "error" in obj:
            err = obj["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamStreamError(
                self._backend._redact(f"upstream error mid-stream: {message}"[:400])
            )
        try:
            return chunk_from_object(obj, payload)
        except (AttributeError, TypeError, IndexError, KeyError):
            raise UpstreamProtocolError("upstream sent a malformed chat.completion.chunk") from None

    async def aclose(self) -> None:
        """Close the response (and so its connection, if unread), shielded with a short deadline."""
        if self._closed:
            return
        self._closed = True
        await _close_response(self._raw, self._response)


class _RelaySource:
    """The raw bytes of one relayed event stream, cut after the last whole event of each read.

    Each ``__anext__`` reads within the idle and total deadlines; what
    follows the last blank line waits for the next read, so every item ends
    on an event boundary; the upstream's end of body ends the iteration.
    """

    __slots__ = ("_backend", "_body", "_closed", "_ended", "_raw", "_response", "_rest", "_total_deadline")

    def __init__(
        self, backend: OpenAIBackend, response: httpx.Response, total_deadline: float
    ) -> None:
        self._backend = backend
        self._response = response
        self._raw = response.aiter_raw()
        self._body = h11_body(response) if backend.config.read_below_httpx else None
        self._total_deadline = total_deadline
        self._rest = b""
        self._ended = False
        self._closed = False

    def __aiter__(self) -> _RelaySource:
        return self

    async def __anext__(self) -> bytes:
        cfg = self._backend.config
        while not self._ended:
            deadline = min(trio.current_time() + cfg.idle_timeout, self._total_deadline)
            data = b""
            with trio.move_on_at(deadline):
                data = await self._read()
            if not data and not self._ended:
                if deadline == self._total_deadline:
                    raise UpstreamTotalTimeoutError(
                        f"upstream call exceeded {cfg.total_timeout} s", timeout=cfg.total_timeout
                    )
                raise UpstreamIdleTimeoutError(
                    f"upstream sent nothing for {cfg.idle_timeout} s", timeout=cfg.idle_timeout
                )
            buf = self._rest + data if self._rest else data
            cut = _last_event_end(buf)
            if cut:
                self._rest = buf[cut:]
                return buf[:cut] if cut < len(buf) else buf
            self._rest = buf
        if self._rest:  # an unterminated last event: relayed as it came
            rest, self._rest = self._rest, b""
            return rest
        raise StopAsyncIteration

    async def _read(self) -> bytes:
        body = self._body
        if body is not None:
            data = await body.read()
            if not data:
                self._ended = True
            return data
        try:
            return await self._raw.__anext__()
        except StopAsyncIteration:
            self._ended = True
            return b""
        except httpx.HTTPError as exc:
            raise self._backend._transport_error(exc, "mid-stream") from None

    async def aclose(self) -> None:
        """Close the response (and so its connection, if unread), shielded with a short deadline."""
        if self._closed:
            return
        self._closed = True
        await _close_response(self._raw, self._response)


async def _close_response(raw: AsyncIterator[bytes], response: httpx.Response) -> None:
    """Close a streamed response's raw iterator, then the response, shielded with a short deadline."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_GRACE):
        await raw.aclose()  # type: ignore[attr-defined]
        await response.aclose()


def _last_event_end(buf: bytes) -> int:
    """Where the last whole event of ``buf`` ends (0: none ends in it)."""
    lf = buf.rfind(b"\n\n")
    crlf = buf.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _first_timeout(
    cfg: UpstreamConfig, first_deadline: float, total_deadline: float, what: str
) -> UpstreamTimeoutError:
    """The error for a call that got nothing by ``first_deadline``: the tighter deadline names it."""
    if first_deadline >= total_deadline:
        return UpstreamTotalTimeoutError(
            f"upstream call exceeded {cfg.total_timeout} s", timeout=cfg.total_timeout
        )
    return UpstreamFirstTokenTimeoutError(
        f"no first {what} from the upstream within {cfg.first_token_timeout} s",
        timeout=cfg.first_token_timeout,
    )
