"""Streamed replies at the ASGI level: one nursery per request, reader and writer inside it.

::

    drain.track() scope (request deadline; drain; disconnect; stalled write)
    └── request nursery
        ├── disconnect listener   receive() -> http.disconnect cancels the scope
        ├── stall watchdog        a write pending past write_timeout cancels the scope
        └── lease (admission), then the stream nursery
            ├── producer          backend.stream_chat -> _TokenPipe.offer
            └── writer            200 + first event, then what the producer could not send, one terminal event

Admission is decided (the lease is taken, or refused) before a single byte
of the response is sent, so a refusal is raised to the front and rendered
as a plain JSON 503/429.

Per token, the producer writes the token event itself, straight to the
socket, when the writer is idle and the socket is free (docs/decisions/001,
``trio_agent/http/_direct.py``: no task hop, no yield; one task switch per token in all). Otherwise the
delta waits in the pipe and the writer takes whatever piled up and sends it
as ONE token event, so a slow reader costs at most ``CHANNEL_SIZE`` deltas
plus one event of memory, while a reader that keeps up gets each token at once.

Under Hypercorn a socket write is shielded from cancellation, so a stalled
write cannot be interrupted; the watchdog therefore cancels the *producer*
(the upstream call and the lease are freed at once) and the writer leaves as
soon as the socket lets go.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson
import trio

from ..concurrency import Outcome, as_completed
from ..config import ServerConfig
from ..errors import TrioAgentError, UpstreamError
from ..http import ClientGoneError, DirectBody, direct_body
from ..llm import (
    ChatBackend,
    ChatChunk,
    ChatRequest,
    ToolCall,
    ToolCallAssembler,
    Usage,
    record_chat,
    stream_chat_traced,
    upstream_unavailable,
)
from ..sse import encode_comment, encode_event
from ..tracing import current_tracer
from ._admission import Lease, Limits
from ._chat import (
    ChatResult,
    ChatService,
    batch_item_payload,
    request_timeout_error,
    timeout_outcome,
    usage_payload,
)
from ._context import RequestContext
from ._drain import (
    DISCONNECT,
    SHUTTING_DOWN,
    WRITE_STALLED,
    Drain,
    RequestControl,
    shutting_down_error,
)
from ._errors import internal_error, openai_error_payload, sse_error_data
from ._metrics import GatewayMetrics

__all__ = ["NativeFormat", "OpenAIRelayFormat", "StreamFormat", "StreamService"]

logger = logging.getLogger("trio_agent.server")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

KEEPALIVE = encode_comment("keepalive")
CHANNEL_SIZE = 16
MERGE_LIMIT = 64  # most ready chunks merged into one event
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


_TOKEN_EVENT = b'event: token\nid: %d\ndata: {"type":"token","content":%b}\n\n'


# -- event formats --------------------------------------------------------------------


class StreamFormat(Protocol):
    """How one streamed reply is framed on the wire; a new wire format is one more of these.

    ``begin`` is sent right after the head, then the reply's pieces, then
    exactly one of ``done`` or ``error``. A format frames the pieces one of
    two ways: ``relay`` false, ``token`` frames text (what piled up is merged
    into one frame) and ``tool_call`` frames each tool call once its arguments
    are complete; ``relay`` true, ``chunk`` frames every upstream chunk as it
    came (``None``: drop it), and the head waits for the first chunk, so a
    failure before it is still a plain JSON error.
    """

    relay: bool

    def begin(self, lease: Lease | None, model: str) -> bytes: ...

    def token(self, content: str) -> bytes: ...

    def tool_call(self, call: ToolCall) -> bytes: ...

    def chunk(self, chunk: ChatChunk) -> bytes | None: ...

    def done(self, result: ChatResult) -> bytes: ...

    def error(self, exc: TrioAgentError) -> bytes: ...


class NativeFormat:
    """Our events: ``event: <type>``, incrementing ``id``, JSON data with the same ``type``."""

    relay = False

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id
        self._next_id = 0

    def _event(self, kind: str, data: str) -> bytes:
        self._next_id += 1
        return encode_event(data, event=kind, id=str(self._next_id))

    def begin(self, lease: Lease | None, model: str) -> bytes:
        queued_ms = 0.0 if lease is None else round(lease.queued * 1000.0, 3)
        return self._event(
            "thinking",
            _dumps({"type": "thinking", "request_id": self._request_id, "queued_ms": queued_ms}),
        )

    def token(self, content: str) -> bytes:
        # Every token of every stream: the bytes of ``event("token", {"content": content})``
        # from one template (orjson escapes line breaks, so the data is one line).
        self._next_id += 1
        return _TOKEN_EVENT % (self._next_id, orjson.dumps(content))

    def tool_call(self, call: ToolCall) -> bytes:
        return self._event(
            "tool_call",
            _dumps({"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments}),
        )

    def chunk(self, chunk: ChatChunk) -> bytes | None:
        raise NotImplementedError("NativeFormat frames text and tool calls, not chunks")

    def done(self, result: ChatResult) -> bytes:
        return self._event(
            "done",
            _dumps(
                {
                    "type": "done",
                    "finish_reason": result.finish_reason,
                    "usage": usage_payload(result.usage),
                    "timings": result.timings(),
                }
            ),
        )

    def error(self, exc: TrioAgentError) -> bytes:
        return self._event("error", _dumps(sse_error_data(exc, self._request_id)))

    def event(self, kind: str, payload: dict[str, Any]) -> bytes:
        return self._event(kind, _dumps({"type": kind, **payload}))


class OpenAIRelayFormat:
    """OpenAI's wire format, relayed: each upstream chunk as ``data: <its JSON as sent>``, then
    ``data: [DONE]``.

    Nothing the upstream sent is re-encoded (tool-call deltas, refusals,
    logprobs, fields we do not know all pass). The one chunk dropped is the
    usage-only chunk when the client did not ask for it
    (``stream_options.include_usage``): the gateway asks the upstream for it
    anyway, to count tokens.
    """

    relay = True

    def __init__(self, request_id: str, model: str, *, include_usage: bool) -> None:
        self._request_id = request_id
        self._include_usage = include_usage
        self._model = model
        self._created = int(time.time())

    def begin(self, lease: Lease | None, model: str) -> bytes:
        return b""  # the upstream's first chunk opens the stream

    def token(self, content: str) -> bytes:
        return self._frame(self._synthesized(ChatChunk(delta=content)))

    def tool_call(self, call: ToolCall) -> bytes:
        raise NotImplementedError("a relay forwards the tool-call deltas as they came")

    def chunk(self, chunk: ChatChunk) -> bytes | None:
        raw = chunk.raw
        if (
            chunk.usage is not None
            and not self._include_usage
            and not chunk.delta
            and not chunk.tool_calls
            and chunk.finish_reason is None
            and _usage_only(raw)
        ):
            return None
        if raw is None:  # a backend that does not keep the wire bytes
            raw = self._synthesized(chunk)
        return self._frame(raw)

    @staticmethod
    def _frame(raw: bytes) -> bytes:
        if b"\n" in raw or b"\r" in raw:  # JSON sent over several lines: one data line each
            return b"".join(b"data: " + line + b"\n" for line in raw.splitlines()) + b"\n"
        return b"data: " + raw + b"\n\n"

    def _synthesized(self, chunk: ChatChunk) -> bytes:
        delta: dict[str, Any] = {}
        if chunk.delta:
            delta["content"] = chunk.delta
        if chunk.tool_calls:
            delta["tool_calls"] = [
                {
                    "index": d.index,
                    **({"id": d.id, "type": "function"} if d.id is not None else {}),
                    "function": {**({"name": d.name} if d.name is not None else {}), "arguments": d.arguments},
                }
                for d in chunk.tool_calls
            ]
        obj: dict[str, Any] = {
            "id": f"chatcmpl-{self._request_id}",
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": []
            if chunk.usage is not None and not delta and chunk.finish_reason is None
            else [{"index": 0, "delta": delta, "finish_reason": chunk.finish_reason}],
        }
        if chunk.usage is not None:
            obj["usage"] = usage_payload(chunk.usage)
        return orjson.dumps(obj)

    def done(self, result: ChatResult) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, exc: TrioAgentError) -> bytes:
        return encode_event(_dumps(openai_error_payload(exc, self._request_id)))


def _usage_only(raw: bytes | None) -> bool:
    """Whether a chunk is the usage-only one (no choices); parsed only for chunks with usage."""
    if raw is None:
        return True
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and not obj.get("choices")


# -- the response writer ------------------------------------------------------------------


class Responder:
    """Writes one streamed response; every write is watched for stalls."""

    __slots__ = (
        "_ctrl",
        "_pending_since",
        "_send",
        "_stall",
        "_svc",
        "_write_timeout",
        "direct",
        "info",
        "started",
        "terminal_sent",
    )

    def __init__(self, svc: StreamService, send: Send, ctrl: RequestControl, info: RequestContext) -> None:
        self._svc = svc
        self._send = send
        self._ctrl = ctrl
        self._write_timeout = svc.config.write_timeout
        self._stall = trio.CancelScope()
        self._pending_since: float | None = None
        self.direct: DirectBody | None = None
        self.info = info
        self.started = False
        self.terminal_sent = False

    async def watchdog(self) -> None:
        """End the request when one write stays pending past ``write_timeout``.

        Cancelling frees the lease and the upstream call at once. The pending
        write itself may be immune to cancellation (Hypercorn shields its
        socket writes), so the server's ``abort_transport`` hook, when set,
        closes the connection under it.

        The deadline is armed lazily: a write only sets it when none is set,
        and the watchdog re-arms it from the pending write's start when it
        fires early. So a stream writing every few milliseconds touches the deadline
        once per ``write_timeout``, not twice per write, and a stalled write
        is still caught exactly ``write_timeout`` after it began.
        """
        while True:
            since = self._pending_since
            deadline = math.inf if since is None else since + self._write_timeout
            with trio.CancelScope(deadline=deadline) as self._stall:
                await trio.sleep_forever()
            since = self._pending_since
            if since is not None and trio.current_time() - since >= self._write_timeout:
                break
        self._stalled()

    async def watch(self, receive: Receive) -> None:
        """:func:`watch_disconnect` and :meth:`watchdog` in one task (one task less per request).

        The same lazily armed stall deadline, here around the wait for the
        client's next message: a memory channel's ``receive`` (Hypercorn's)
        gives up without losing a message when the deadline cancels it.
        """
        timeout = self._write_timeout
        while True:
            since = self._pending_since
            deadline = math.inf if since is None else since + timeout
            with trio.CancelScope(deadline=deadline) as self._stall:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self._ctrl.cancel(DISCONNECT)
                    return
                continue
            since = self._pending_since
            if since is not None and trio.current_time() - since >= timeout:
                break
        self._stalled()

    def _stalled(self) -> None:
        self._ctrl.cancel(WRITE_STALLED)
        self._svc.metrics.write_stalls += 1
        abort = self._svc.abort_transport
        if abort is not None:
            abort(self._send)

    async def _send_watched(self, message: Message) -> None:
        await self._watched(self._send, message)

    async def _watched(self, fn: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        now = trio.current_time()
        self._pending_since = now
        if self._stall.deadline == math.inf:
            self._stall.deadline = now + self._write_timeout
        try:
            await fn(arg)
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except Exception:
            # The fallback to http.disconnect: a failed write means the client is gone.
            self._ctrl.cancel(DISCONNECT)
            await trio.lowlevel.checkpoint()
            raise
        finally:
            self._pending_since = None

    async def start(
        self, status: int = 200, headers: Headers = SSE_HEADERS, first: bytes = b""
    ) -> None:
        """The head, then ``first`` (if any) in the same write when the direct path can hold
        the head for it (docs/decisions/014)."""
        self.info.status = status
        direct = direct_body(self._send) if self._svc.config.direct_writes else None
        held = bool(first) and direct is not None and direct.hold()
        try:
            await self._send_watched(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*headers, *self.info.response_headers],
                }
            )
            self.started = True
            self.direct = direct
            if first:
                await self.write(first)
        finally:
            if held:
                assert direct is not None
                await self._watched(lambda _: direct.release(), None)

    async def write(self, data: bytes) -> None:
        direct = self.direct
        if direct is None:
            await self._send_watched(
                {"type": "http.response.body", "body": data, "more_body": True}
            )
        else:
            await self._watched(direct.send, data)

    @property
    def can_write_now(self) -> bool:
        """:meth:`write_nowait` will take the next event (the direct path is free)."""
        direct = self.direct
        return direct is not None and direct.ready

    def write_nowait(self, data: bytes) -> bool:
        """Send ``data`` without yielding; only when :attr:`can_write_now`.

        Returns whether part of it is left :attr:`flush_pending` (the socket
        did not take it all). A client found gone cancels the request.
        """
        assert self.direct is not None
        try:
            return not self.direct.send_nowait(data)
        except ClientGoneError:
            self._ctrl.cancel(DISCONNECT)
            return False

    @property
    def flush_pending(self) -> bool:
        """Bytes of a :meth:`write_nowait` are still unsent: :meth:`flush` before writing more."""
        return self.direct is not None and self.direct.pending

    async def flush(self) -> None:
        direct = self.direct
        if direct is not None and direct.pending:
            await self._watched(lambda _: direct.flush(), None)

    async def finish_unwatched(self, data: bytes = b"") -> None:
        """The last bytes, after the request scope ended: bounded by ``write_timeout``."""
        with trio.move_on_after(self._write_timeout):
            try:
                if self.direct is not None:
                    await self.direct.flush()
                await self._send({"type": "http.response.body", "body": data, "more_body": False})
            except (trio.Cancelled, KeyboardInterrupt):
                raise
            except Exception:
                self.info.outcome = DISCONNECT


async def watch_disconnect(receive: Receive, ctrl: RequestControl) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ctrl.cancel(DISCONNECT)
            return


class _TokenPipe:
    """Hands a stream's chunks from the producer (the upstream reader) to the writer task.

    When the writer is idle and Hypercorn's socket is free, :meth:`offer`
    writes the piece straight to the socket from the producer's task
    (:class:`~trio_agent.http.DirectBody`): no task hop, no yield.
    Otherwise the pieces wait here and the writer sends everything that
    piled up as ONE write (texts merged into one token event, whole frames
    concatenated), so a slow reader costs at most ``CHANNEL_SIZE`` pieces
    plus one write of memory.

    A piece is text (``str``, framed by the format's ``token`` when written,
    so texts that wait together become one event) or a whole frame
    (``bytes``: a relayed chunk, a tool call); ``framed`` counts the frames
    waiting, so the all-text case keeps its one join.
    """

    __slots__ = (
        "_out",
        "_parked",
        "_room",
        "calls",
        "closed",
        "deltas",
        "failure",
        "finish",
        "first_at",
        "fmt",
        "framed",
        "last_write_at",
        "metrics",
        "pending",
        "pending_tokens",
        "relay",
        "usage",
        "writing",
    )

    def __init__(self, out: Responder, fmt: StreamFormat, metrics: Any) -> None:
        self._out = out
        self.fmt = fmt
        self.relay = fmt.relay
        self.metrics = metrics
        self.pending: list[str | bytes] = []
        self.pending_tokens = 0
        self.framed = 0
        self.writing = True  # until the writer has sent the head and the thinking event
        self.closed = False
        self.failure: TrioAgentError | None = None
        self.deltas = 0
        self.first_at: float | None = None
        self.last_write_at = 0.0
        self.usage: Usage | None = None
        self.finish: str | None = None
        # Assembles streamed tool calls (framed formats only), made at the first tool-call piece.
        self.calls: ToolCallAssembler | None = None
        self._parked: trio.lowlevel.Task | None = None
        self._room: trio.Event | None = None

    # -- the producer's side ----------------------------------------------------------

    def offer(self, chunk: ChatChunk) -> None:
        """Take one chunk; never yields. Check :attr:`full` before the next one."""
        self._note(chunk)
        if self.relay:
            frame = self.fmt.chunk(chunk)
            if frame is not None:
                self._offer(frame, 1 if chunk.delta or chunk.tool_calls else 0)
            return
        if chunk.delta:
            self._offer(chunk.delta, 1)
        if chunk.tool_calls or (chunk.finish_reason is not None and self.calls is not None):
            self._offer_calls(chunk)

    def _offer_calls(self, chunk: ChatChunk) -> None:
        calls = self.calls
        if calls is None:
            calls = self.calls = ToolCallAssembler()
        for call in calls.feed(chunk):  # each call the moment its arguments are complete
            self._offer(self.fmt.tool_call(call), 1)

    def _note(self, chunk: ChatChunk) -> None:
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage

    def offer_all(self, chunk: ChatChunk, ready: Callable[[], ChatChunk | None]) -> None:
        """Take ``chunk`` and every chunk ``ready()`` still has (up to ``MERGE_LIMIT``) as one."""
        more = ready()
        if more is None:
            self.offer(chunk)
            return
        chunks = [chunk, more]
        while len(chunks) < MERGE_LIMIT:
            more = ready()
            if more is None:
                break
            chunks.append(more)
        if self.relay:
            frames: list[bytes] = []
            tokens = 0
            for c in chunks:
                self._note(c)
                frame = self.fmt.chunk(c)
                if frame is not None:
                    frames.append(frame)
                    if c.delta or c.tool_calls:
                        tokens += 1
            if frames:
                self._offer(b"".join(frames), tokens)
            return
        if self.calls is not None or any(c.tool_calls for c in chunks):
            for c in chunks:  # text and tool calls keep their order
                self.offer(c)
            return
        texts: list[str] = []
        for c in chunks:
            self._note(c)
            if c.delta:
                texts.append(c.delta)
        if texts:
            self._offer("".join(texts), len(texts))

    def offer_ready(self, chunk: ChatChunk, ready: Callable[[], ChatChunk | None]) -> bool:
        """:meth:`offer_all` for a backend's ``push``: whether there is room for more."""
        self.offer_all(chunk, ready)
        return len(self.pending) < CHANNEL_SIZE

    def _offer(self, piece: str | bytes, tokens: int) -> None:
        out = self._out
        direct = out.direct
        if not self.writing and not self.pending and direct is not None and direct.ready:
            left = out.write_nowait(piece if type(piece) is bytes else self.fmt.token(piece))  # type: ignore[arg-type]
            self._count(tokens, 1)
            self.metrics.direct_token_events += 1
            if left:
                self._wake()  # the socket took part of it: the writer sends the rest
            return
        self.pending.append(piece)
        if type(piece) is bytes:
            self.framed += 1
        self.pending_tokens += tokens
        self._wake()

    @property
    def full(self) -> bool:
        return len(self.pending) >= CHANNEL_SIZE

    async def wait_for_room(self) -> None:
        while self.full:
            self._room = trio.Event()
            await self._room.wait()

    def close(self, failure: TrioAgentError | None = None) -> None:
        if failure is None and self.calls is not None:
            try:
                for call in self.calls.finish():  # the stream ended: open calls are complete
                    self._offer(self.fmt.tool_call(call), 1)
            except TrioAgentError as exc:
                failure = exc
        self.failure = failure
        self.closed = True
        self._wake()

    # -- the writer's side ------------------------------------------------------------

    def _count(self, tokens: int, events: int) -> None:
        now = trio.current_time()
        if self.first_at is None:
            self.first_at = now
        self.last_write_at = now
        self.deltas += tokens
        self.metrics.tokens_streamed += tokens
        self.metrics.token_events += events

    def _wake(self) -> None:
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        """Park until there is something to write or the stream ended."""
        if self.pending or self.closed:
            await trio.lowlevel.checkpoint()
            return
        self._parked = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def take(self) -> tuple[bytes, int]:
        """The bytes of everything waiting (``b""``: nothing) and how many tokens they hold."""
        taken, self.pending = self.pending, []
        tokens, self.pending_tokens = self.pending_tokens, 0
        framed, self.framed = self.framed, 0
        room = self._room
        if room is not None:
            self._room = None
            room.set()
        if not taken:
            return b"", tokens
        if not framed:
            texts: list[str] = taken  # type: ignore[assignment]
            return self.fmt.token(texts[0] if len(texts) == 1 else "".join(texts)), tokens
        if framed == len(taken):
            frames: list[bytes] = taken  # type: ignore[assignment]
            return frames[0] if len(frames) == 1 else b"".join(frames), tokens
        out: list[bytes] = []
        run: list[str] = []
        for piece in taken:
            if type(piece) is bytes:
                if run:
                    out.append(self.fmt.token("".join(run)))
                    run = []
                out.append(piece)
            else:
                run.append(piece)  # type: ignore[arg-type]
        if run:
            out.append(self.fmt.token("".join(run)))
        return b"".join(out), tokens


def _none_if_blocked(receive_nowait: Callable[[], ChatChunk]) -> Callable[[], ChatChunk | None]:
    def ready() -> ChatChunk | None:
        try:
            return receive_nowait()
        except trio.WouldBlock:
            return None

    return ready


async def _produce(svc: StreamService, request: ChatRequest, info: RequestContext, pipe: _TokenPipe) -> None:
    """The upstream reader of an admitted stream: backend chunks into ``pipe``, then close it."""
    try:
        # Not observed by the tracing (no cost per chunk): the pipe tells the span what it saw.
        call = stream_chat_traced(svc.backend, request, observe=False)
        async with call as chunks:
            # ready_nowait(): the next chunk already there, or None (the mock and the
            # OpenAI backend have it; a backend with only receive_nowait is adapted; another
            # backend's chunks go one by one).
            ready = getattr(chunks, "ready_nowait", None)
            receive_nowait = getattr(chunks, "receive_nowait", None)
            if ready is None and receive_nowait is not None:
                ready = _none_if_blocked(receive_nowait)
            if ready is not None:
                # A first chunk that is there already (due at once) goes out in this task's
                # first step: waiting for it in __anext__ would cost one more scheduler pass,
                # and under load a pass is long (docs/decisions/015).
                first = ready()
                if first is not None:
                    pipe.offer_all(first, ready)
                    if pipe.full:
                        await pipe.wait_for_room()
            # push(offer): the mock hands its paced units to ``offer`` from its shared clock,
            # this task parked meanwhile (docs/decisions/014); __anext__ takes the rest.
            push = getattr(chunks, "push", None)
            while True:
                if push is not None:
                    await push(pipe.offer_ready)
                    if pipe.full:
                        await pipe.wait_for_room()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                # The backend's own wait was this iteration's checkpoint. Chunks that
                # are already there (the server fell behind) go out with it as one event.
                if ready is None:
                    pipe.offer(chunk)
                else:
                    pipe.offer_all(chunk, ready)
                if pipe.full:
                    await pipe.wait_for_room()
            record_chat(call, usage=pipe.usage, finish_reason=pipe.finish, first_token_at=pipe.first_at)
        pipe.close()
    except TrioAgentError as exc:
        if isinstance(exc, UpstreamError):
            svc.metrics.count_upstream_error(exc.code)
        pipe.close(exc)
    except Exception:
        logger.exception("backend failed (request_id=%s)", info.request_id)
        pipe.close(internal_error())


async def _begin_stream(svc: StreamService, out: Responder, pipe: _TokenPipe, lease: Lease, model: str) -> None:
    """The response head and the format's first event (``thinking``)."""
    await out.start(first=pipe.fmt.begin(lease, model))
    svc.metrics.streams_started += 1
    pipe.last_write_at = trio.current_time()


async def _write_stream(
    svc: StreamService,
    out: Responder,
    pipe: _TokenPipe,
    lease: Lease,
    request: ChatRequest,
) -> TrioAgentError | None:
    """The writer: the head (unless sent already), then whatever the producer could not send,
    then the end.

    Returns the failure that ended a relayed stream before its head (to be
    answered as a plain JSON error), else None.
    """
    info = out.info
    metrics = svc.metrics
    fmt = pipe.fmt
    model = request.model or svc.backend.model
    if not out.started:
        if pipe.relay:
            # The head waits for the upstream's first chunk: a failure before it (after the
            # backend's retries) is still a plain JSON error with its own status.
            while not pipe.pending and not pipe.closed:
                await pipe.wait()
            if not pipe.pending and pipe.failure is not None:
                return pipe.failure
        await _begin_stream(svc, out, pipe, lease, model)
    keepalive_interval = svc.config.keepalive_interval
    while True:
        # The keepalive deadline is armed from the last write, and re-armed only
        # when it fires early: one cancel scope per keepalive interval, not per token.
        pipe.writing = bool(pipe.pending) or out.flush_pending
        if not pipe.writing:
            with trio.CancelScope(deadline=pipe.last_write_at + keepalive_interval) as idle:
                await pipe.wait()
            if idle.cancelled_caught:
                if trio.current_time() - pipe.last_write_at >= keepalive_interval:
                    pipe.writing = True
                    await out.write(KEEPALIVE)
                    pipe.last_write_at = trio.current_time()
                continue
        pipe.writing = True
        await out.flush()
        data, tokens = pipe.take()
        if data:
            pipe._count(tokens, 1)
            await out.write(data)
        if pipe.pending:
            continue
        failure = pipe.failure
        if failure is not None:
            info.outcome = failure.code
            await out.write(fmt.error(failure))
            out.terminal_sent = True
            return None
        if pipe.closed:
            end = trio.current_time()
            start = info.started_at
            first_at = pipe.first_at
            if first_at is not None:
                metrics.ttft.observe(first_at - start)
            metrics.total.observe(end - start)
            result = ChatResult(
                content="",
                finish_reason=pipe.finish,
                usage=pipe.usage or Usage(prompt_tokens=0, completion_tokens=pipe.deltas),
                model=model,
                queued_ms=lease.queued * 1000.0,
                ttft_ms=None if first_at is None else (first_at - start) * 1000.0,
                total_ms=(end - start) * 1000.0,
            )
            await out.write(fmt.done(result))
            out.terminal_sent = True
            metrics.streams_done += 1
            metrics.count_usage(info.path, result.usage)
            info.outcome = "done"
            return None
        pipe.writing = False


class StreamService:
    """Serves the streamed routes: one request nursery per request, reader and writer inside it.

    Holds what a stream needs and nothing else: the backend, the limits, the
    metrics, the drain switch, the whole-call service (batch items) and the
    server's ``abort_transport`` hook (set by whoever serves the app; it closes
    the connection under a write that stalled, see :meth:`Responder.watchdog`).

    Errors before the response head (drain, refusal, a deadline while queued)
    are raised, not written: the front renders them through the one error
    renderer. Once the head is out, the stream ends with exactly one terminal
    event instead.
    """

    __slots__ = ("abort_transport", "backend", "chat", "config", "drain", "limits", "metrics")

    def __init__(
        self,
        *,
        config: ServerConfig,
        backend: ChatBackend,
        limits: Limits,
        metrics: GatewayMetrics,
        drain: Drain,
        chat: ChatService,
    ) -> None:
        self.config = config
        self.backend = backend
        self.limits = limits
        self.metrics = metrics
        self.drain = drain
        self.chat = chat
        self.abort_transport: Callable[[Send], bool] | None = None

    async def serve(
        self,
        info: RequestContext,
        receive: Receive,
        send: Send,
        request: ChatRequest,
        fmt: StreamFormat,
    ) -> None:
        """Answer one streamed chat request; every path ends with one terminal answer if the client is there."""
        svc = self
        out: Responder | None = None
        refused: TrioAgentError | None = None
        tracer = current_tracer()
        with svc.drain.track(svc.config.request_timeout) as ctrl:
            # Refused at once (queue full, key at its cap, every upstream ejected): a plain
            # 503/429, no stream set up.
            refusal = svc.limits.refuse_nowait(info.key_id) or upstream_unavailable(
                svc.backend, request.model
            )
            if refusal is not None:
                if tracer is not None:
                    tracer.admission(queued=0.0, outcome=refusal.code)
                raise refusal
            out = Responder(svc, send, ctrl, info)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.watch, receive)
                try:
                    # The lease is taken here, not in the producer: a free slot costs no
                    # scheduler pass, so the head and the first event go out in the pass
                    # the request arrived in.
                    async with svc.limits.lease(info.key_id) as lease:
                        ctrl.admitted = True
                        svc.metrics.queue_wait.observe(lease.queued)
                        if tracer is not None:
                            tracer.admission(queued=lease.queued, outcome="admitted")
                        pipe = _TokenPipe(out, fmt, svc.metrics)
                        model = request.model or svc.backend.model
                        if not pipe.relay:
                            # The head and the thinking event from this task, in the pass the
                            # request arrived in; the direct path is then free for the reader.
                            await _begin_stream(svc, out, pipe, lease, model)
                            pipe.writing = False
                        ended: list[TrioAgentError | None] = [None]

                        async def write() -> None:
                            ended[0] = await _write_stream(svc, out, pipe, lease, request)

                        # The stream nursery: the upstream reader ends (its response closed,
                        # however the request ends) before the slot is given back. The reader
                        # runs in this task and the writer in a new one, not the other way
                        # round: a first token that is there at once goes out in this pass,
                        # not two passes later, and under load a pass is long (docs/decisions/015).
                        async with svc.metrics.genai.call("chat", model) as call:
                            async with trio.open_nursery() as stream:
                                stream.start_soon(write)
                                await _produce(svc, request, info, pipe)
                            call.finish(pipe.usage, pipe.failure)
                        refused = ended[0]
                except TrioAgentError as exc:
                    if ctrl.admitted:
                        raise
                    if tracer is not None:
                        tracer.admission(queued=getattr(exc, "waited", None) or 0.0, outcome=exc.code)
                    refused = exc
                nursery.cancel_scope.cancel()
        await finish(svc, out, ctrl, fmt, refused)

    async def serve_batch(
        self,
        info: RequestContext,
        receive: Receive,
        send: Send,
        requests: Sequence[ChatRequest],
    ) -> None:
        """``POST /chat/batch`` with ``Accept: text/event-stream``: one ``result`` event per item.

        Items go through admission one by one (a batch never bypasses the global
        cap), ``batch_concurrency`` at a time. Items still running when the
        request deadline passes are reported as ``timeout``; then ``done``.
        """
        svc = self
        fmt = NativeFormat(info.request_id)
        pending = set(range(len(requests)))
        counts = {"ok": 0, "error": 0, "timeout": 0}

        async def one(index: int) -> ChatResult:
            return await svc.chat.collect(requests[index], info)

        async def report(outcome: Outcome[ChatResult]) -> bytes:
            payload = batch_item_payload(outcome, info.request_id)
            counts[payload["status"]] += 1
            pending.discard(outcome.index)
            return fmt.event("result", payload)

        # The batch holds no slot of its own (its items take theirs): admitted.
        with svc.drain.track(svc.config.request_timeout, admitted=True) as ctrl:
            out = Responder(svc, send, ctrl, info)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.watch, receive)
                await out.start()
                await out.write(
                    fmt.event("thinking", {"request_id": info.request_id, "items": len(requests)})
                )
                async with as_completed(
                    one,
                    range(len(requests)),
                    max_concurrency=svc.config.batch_concurrency,
                    item_timeout=svc.config.request_timeout,
                ) as outcomes:
                    async for outcome in outcomes:
                        await out.write(await report(outcome))
                await out.write(fmt.event("done", {"items": len(requests), **counts}))
                out.terminal_sent = True
                info.outcome = "done"
                nursery.cancel_scope.cancel()
        if out.terminal_sent or ctrl.reason in (DISCONNECT, WRITE_STALLED, SHUTTING_DOWN):
            await finish(svc, out, ctrl, fmt, None)
            return
        # The request deadline passed: the items still out are timeouts, then done.
        svc.metrics.timeouts += 1
        tail = b"".join([await report(timeout_outcome(i)) for i in sorted(pending)])
        info.outcome = "timeout"
        await out.finish_unwatched(tail + fmt.event("done", {"items": len(requests), **counts}))


class ErrorFrame(Protocol):
    """What :func:`finish` needs of a format: the terminal error frame."""

    def error(self, exc: TrioAgentError) -> bytes: ...


async def finish(
    svc: StreamService,
    out: Responder | None,
    ctrl: RequestControl,
    fmt: ErrorFrame,
    refused: TrioAgentError | None,
) -> None:
    """After the request scope: the single terminal answer the path still owes.

    Before the head was sent, that answer is an error raised to the front;
    after it, one SSE ``error`` event or the end of the body.
    """
    metrics = svc.metrics
    if ctrl.reason == DISCONNECT:
        metrics.disconnects += 1
        if out is not None:
            out.info.outcome = DISCONNECT
        return
    if ctrl.reason == WRITE_STALLED:
        if out is not None:
            out.info.outcome = WRITE_STALLED
        return
    if refused is not None:
        raise refused
    if out is not None and out.terminal_sent:
        await out.finish_unwatched()
        return
    started = out is not None and out.started
    if ctrl.reason == SHUTTING_DOWN:
        exc: TrioAgentError = shutting_down_error()
        if started:
            metrics.drain_cancelled += 1
    else:
        metrics.timeouts += 1
        exc = request_timeout_error(svc.config.request_timeout)
    if out is None or not out.started:
        raise exc
    out.info.outcome = exc.code
    await out.finish_unwatched(fmt.error(exc))
