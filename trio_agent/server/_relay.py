"""Relayed OpenAI calls: ``/v1/embeddings``, ``/v1/completions``, ``/v1/responses``.

The gateway does not model these answers: the body goes to the backend's
``open_relay`` as the client sent it (the default model filled in when it
names none), and the answer comes back as bytes written through unchanged,
status and content type included. What every route of the gateway has, these
have too::

    drain.track() scope (request deadline; drain; disconnect; stalled write)
    └── request nursery
        ├── disconnect listener, stall watchdog (as a chat stream's)
        └── lease (admission), then backend.open_relay: retries before the first byte,
            the head once the first bytes are in, then each read written through

A failure before the first byte (refusal, deadline, upstream error after the
retries) is raised, so the front renders it as a JSON error with its status;
after it, the stream ends with one OpenAI-style error frame (for the
Responses API, an ``event: error``).
"""

from __future__ import annotations

import logging

import orjson
import trio

from ..errors import TrioAgentError, UpstreamError
from ..llm import ChatBackend, Usage, open_relay_traced
from ._context import RequestContext
from ._errors import openai_error_payload
from ._router import Call
from ._stream import Responder, StreamService, finish, watch_disconnect

__all__ = ["RelayService"]

# The GenAI operation name of each relayed route (gen_ai.operation.name).
_OPERATIONS = {"/embeddings": "embeddings", "/completions": "text_completion", "/responses": "chat"}

logger = logging.getLogger("trio_agent.server")


class _Frames:
    """The terminal error frame of a relayed stream, in the route's own dialect."""

    __slots__ = ("_event", "_request_id")

    def __init__(self, request_id: str, *, event: bool) -> None:
        self._request_id = request_id
        self._event = event

    def error(self, exc: TrioAgentError) -> bytes:
        payload = openai_error_payload(exc, self._request_id)
        if not self._event:
            return b"data: " + orjson.dumps(payload) + b"\n\n"
        # The Responses API's error event (type, code, message, param) that also carries the
        # ``error`` object, on which OpenAI's SDKs raise.
        err = payload["error"]
        event = {"type": "error", "code": err["code"], "message": err["message"], "param": err["param"], **payload}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


class RelayService:
    """Serves the relayed routes through the streams' admission, deadlines and writer."""

    __slots__ = ("_backend", "_streams")

    def __init__(self, streams: StreamService, backend: ChatBackend) -> None:
        self._streams = streams
        self._backend = backend

    async def serve(self, call: Call, path: str, body: bytes, *, stream: bool, model: str = "") -> None:
        """Relay ``POST {path}`` with ``body`` (for ``model``); every path ends with one terminal answer."""
        svc = self._streams
        info = call.ctx
        frames = _Frames(info.request_id, event=path.endswith("/responses"))
        out: Responder | None = None
        refused: TrioAgentError | None = None
        with svc.drain.track(svc.config.request_timeout) as ctrl:
            refusal = svc.limits.refuse_nowait(info.key_id)
            if refusal is not None:
                raise refusal
            out = Responder(svc, call.send, ctrl, info)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_disconnect, call.receive, ctrl)
                nursery.start_soon(out.watchdog)
                try:
                    async with svc.limits.lease(info.key_id) as lease:
                        ctrl.admitted = True
                        svc.metrics.queue_wait.observe(lease.queued)
                        await self._relay(out, frames, path, body, stream, model)
                except TrioAgentError as exc:
                    if isinstance(exc, UpstreamError):
                        svc.metrics.count_upstream_error(exc.code)
                    if out.started:  # not expected: mid-stream failures end inside _relay
                        info.outcome = exc.code
                        await out.write(frames.error(exc))
                        out.terminal_sent = True
                    else:
                        refused = exc  # before the head: raised by finish(), rendered by the front
                nursery.cancel_scope.cancel()
        await finish(svc, out, ctrl, frames, refused)

    async def _relay(
        self, out: Responder, frames: _Frames, path: str, body: bytes, stream: bool, model: str
    ) -> None:
        info: RequestContext = out.info
        metrics = self._streams.metrics
        operation = _OPERATIONS.get(path, "chat")
        async with (
            metrics.genai.call(operation, model) as call,
            open_relay_traced(self._backend, path, body, stream=stream, operation=operation, model=model) as relay,
        ):
            if relay.first_byte_at is not None:
                metrics.ttft.observe(relay.first_byte_at - info.started_at)
            headers = [(b"content-type", relay.content_type.encode("latin-1"))]
            if not relay.streaming:
                await out.start(relay.status, headers)
                await out.write(relay.body)
                self._done(out, relay.usage)
                call.finish(relay.usage, None if relay.status < 400 else info.outcome)
                return
            await out.start(relay.status, [*headers, (b"cache-control", b"no-store")])
            metrics.streams_started += 1
            try:
                async for data in relay:
                    await out.write(data)
            except TrioAgentError as exc:
                # After the head: one error frame ends the stream.
                if isinstance(exc, UpstreamError):
                    metrics.count_upstream_error(exc.code)
                info.outcome = exc.code
                call.finish(relay.usage, exc)
                await out.write(frames.error(exc))
                out.terminal_sent = True
                return
            metrics.streams_done += 1
            self._done(out, relay.usage)
            call.finish(relay.usage, None if relay.status < 400 else info.outcome)

    def _done(self, out: Responder, usage: Usage | None) -> None:
        metrics = self._streams.metrics
        info = out.info
        out.terminal_sent = True
        info.outcome = "done" if info.status < 400 else "upstream_refused"
        metrics.total.observe(trio.current_time() - info.started_at)
        metrics.count_usage(info.path, usage)
