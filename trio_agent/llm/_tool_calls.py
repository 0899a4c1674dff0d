"""Assemble streamed tool-call pieces into whole calls, each the moment it is complete.

OpenAI streams a tool call as :class:`ToolCallDelta` pieces: the first carries
``id`` and ``name``, later ones fragments of ``arguments``; parallel calls are
told apart by ``index`` and follow one another. An agent wants to start each
tool as soon as its own arguments are whole, not when the model's message ends,
so :class:`ToolCallAssembler` reports a call at the earliest moment it can know
the call is complete:

- the next call begins: a new ``index``, or the same ``index`` with a new ``id``
  (servers that put every call at index 0 tell them apart this way);
- the accumulated arguments form a complete JSON object (a server that sends all
  arguments in the first piece gives the call at once);
- the choice finishes (a chunk with ``finish_reason``, or :meth:`finish` at the
  end of the stream).

Each call is reported exactly once, in the order the stream began them. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from ..errors import UpstreamProtocolError
from ._types import ChatChunk, ToolCall, ToolCallDelta

__all__ = ["ToolCallAssembler"]

_WHITESPACE = frozenset(" \t\r\n")


@dataclass(slots=True)
class _Partial:
    """A call being assembled, with a linear scan of its arguments' JSON nesting."""

    index: int
    id: str | None
    name: str | None
    parts: list[str] = field(default_factory=list)
    reported: bool = False
    # The scanner: depth of {}/[] outside strings; whether inside a string, after a backslash.
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    started: bool = False
    # The first non-space character is not '{', or a '}' closed more than was opened:
    # the text is not an object, so only the end of the call can complete it.
    hopeless: bool = False

    def feed(self, fragment: str) -> bool:
        """Add a fragment; True when the arguments may now be a complete JSON object."""
        self.parts.append(fragment)
        if self.hopeless:
            return False
        maybe_closed = False
        for char in fragment:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                continue
            if not self.started:
                if char in _WHITESPACE:
                    continue
                if char != "{":
                    self.hopeless = True
                    return False
                self.started = True
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth < 0:
                    self.hopeless = True
                    return False
                if self.depth == 0:
                    maybe_closed = True
        return maybe_closed and self.depth == 0

    def arguments(self) -> str:
        return "".join(self.parts)


class ToolCallAssembler:
    """Feed it every chunk of one streamed choice; it returns the calls each chunk completed.

    ::

        assembler = ToolCallAssembler()
        async for chunk in chunks:
            for call in assembler.feed(chunk):
                start(call)
        for call in assembler.finish():
            start(call)

    A call without an ``id`` (some servers omit it) gets ``call_<n>``, numbered
    in stream order. Text that continues a call after its arguments closed as a
    JSON object is a protocol error (:class:`~trio_agent.errors.UpstreamProtocolError`);
    whitespace after it is ignored.
    """

    __slots__ = ("_calls", "_current", "_finished", "_open")

    def __init__(self) -> None:
        # The call each index is currently assembling (the last one begun at that index).
        self._current: dict[int, _Partial] = {}
        # Begun and not yet reported, in stream order.
        self._open: list[_Partial] = []
        self._calls: list[ToolCall] = []
        self._finished = False

    @property
    def calls(self) -> tuple[ToolCall, ...]:
        """Every call reported so far, in stream order."""
        return tuple(self._calls)

    def feed(self, chunk: ChatChunk) -> list[ToolCall]:
        """Take one chunk; return the calls it completed (often none)."""
        done: list[ToolCall] = []
        for delta in chunk.tool_calls:
            self._feed_delta(delta, done)
        if chunk.finish_reason is not None:
            done.extend(self.finish())
        return done

    def finish(self) -> list[ToolCall]:
        """The stream ended: every call still open is complete. Idempotent."""
        done: list[ToolCall] = []
        for partial in list(self._open):
            self._report(partial, done)
        self._finished = True
        return done

    def _feed_delta(self, delta: ToolCallDelta, done: list[ToolCall]) -> None:
        current = self._current.get(delta.index)
        begins = current is None or (delta.id is not None and delta.id != current.id)
        if begins:
            if self._finished:
                raise UpstreamProtocolError("a tool call began after the choice finished")
            # A new call begins: OpenAI streams parallel calls one after another, so every
            # call begun before it is complete now.
            for partial in list(self._open):
                self._report(partial, done)
            current = _Partial(index=delta.index, id=delta.id, name=delta.name or None)
            self._current[delta.index] = current
            self._open.append(current)
        else:
            assert current is not None
            if current.name is None and delta.name:
                current.name = delta.name
            if current.reported:
                if delta.arguments.strip():
                    raise UpstreamProtocolError(
                        f"tool call {current.id!r} continued after its arguments were complete"
                    )
                return
        if delta.arguments and current.feed(delta.arguments) and _is_object(current.arguments()):
            self._report(current, done)

    def _report(self, partial: _Partial, done: list[ToolCall]) -> None:
        if partial.reported:
            return
        partial.reported = True
        self._open.remove(partial)
        call_id = partial.id if partial.id else f"call_{len(self._calls)}"
        call = ToolCall(id=call_id, name=partial.name or "", arguments=partial.arguments())
        self._calls.append(call)
        done.append(call)


def _is_object(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False
