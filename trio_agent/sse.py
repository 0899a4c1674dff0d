"""Server-Sent Events: encode events to bytes, and decode bytes back to events. No I/O.

An event stream (``Content-Type: text/event-stream``) is UTF-8 text made of
*blocks* separated by a blank line. Each line of a block is ``field: value``::

    event: delta            <- the event type (default "message")
    id: 42                  <- the last event ID; persists until another id line changes it
    retry: 3000             <- the client's reconnection delay, in milliseconds
    data: first line        <- one data line per line of the payload;
    data: second line       <-   the client joins them with LF
    : a comment             <- ignored; servers send these as keepalives
                            <- a blank line dispatches the event

The decoding rules are those of the WHATWG HTML standard, section "Interpreting
an event stream", followed exactly by :class:`SSEDecoder`:

* the bytes are UTF-8; invalid sequences become U+FFFD, and one leading BOM is
  ignored;
* a line ends with CRLF, LF or a lone CR (so a CR at the end of one chunk and an
  LF at the start of the next are ONE line end);
* a line starting with ``:`` is a comment; a line without a colon is a field
  name with an empty value; one space after the colon is removed;
* ``data`` appends its value and an LF to the data buffer; ``event`` sets the
  type; ``id`` sets the last event ID unless the value contains NUL; ``retry``
  sets the reconnection time only if the value is all ASCII digits; other
  fields are ignored;
* a blank line dispatches: the last event ID is updated, and if the data buffer
  is empty nothing is dispatched; otherwise its trailing LF is dropped and an
  event goes out. The type resets to ``message`` after every blank line;
* at end of stream, an incomplete event (no closing blank line) is discarded.

:func:`encode_event` writes what a conforming client reads back exactly, with
one caveat set by the standard itself: line breaks inside ``data`` (CRLF, LF or
CR) are all read back as LF. :func:`encode_comment` writes a keepalive.

Both sides are on the hot path (the server encodes every token, the upstream
client and the load generator decode every token), so the common case is kept
cheap: a payload without line breaks is encoded with one format and one
``str.encode``; the decoder scans whole chunks with ``str.split`` and handles
only complete lines in Python, never single characters.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from .errors import SSEEventTooLargeError, SSEFieldError

__all__ = ["SSEDecoder", "ServerSentEvent", "encode_comment", "encode_event"]

_LINE_END = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"
_DEFAULT_MAX_EVENT_CHARS = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSentEvent:
    """One dispatched event, as a WHATWG ``EventSource`` would see it.

    ``event`` is the type (``"message"`` when the block set none). ``data`` is
    the payload, its lines joined with LF. ``id`` is the stream's *last event
    ID* when the event was dispatched: it persists across events until an
    ``id`` line changes it, and is ``None`` while it is empty (never set, or
    reset by an empty ``id`` line; a reconnecting client then sends no
    ``Last-Event-ID`` header). ``retry`` is the reconnection time in
    milliseconds set by a valid ``retry`` line in this event's own block, or
    ``None``; :attr:`SSEDecoder.retry` keeps the latest value for the stream.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


def _check_field(name: str, value: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise SSEFieldError(f"SSE {name} must not contain CR, LF or NUL: {value!r}", field=name)


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event as UTF-8 bytes, ending with the blank line that dispatches it.

    ``data`` may hold any text: each of its lines (split at CRLF, LF or a lone
    CR) becomes one ``data:`` line, so a conforming client rebuilds it exactly,
    except that every line break comes back as LF (the standard joins data lines
    with LF). NUL passes through in ``data``. An empty ``data`` is still sent
    (``data: ``) and dispatches an event with empty data.

    ``event`` sets the type; ``id`` the last event ID (``""`` resets it);
    ``retry`` the client's reconnection time in milliseconds. Raises
    :class:`~trio_agent.errors.SSEFieldError` (a ``ValueError``) if ``event``
    or ``id`` contains CR, LF or NUL (a line break would end the field early;
    a client ignores an ``id`` holding NUL), or if ``retry`` is not a
    non-negative ``int``.
    """
    if "\n" in data or "\r" in data:
        lines = data.split("\n") if "\r" not in data else _LINE_END.split(data)
        data = "\ndata: ".join(lines)
    if event is None and id is None and retry is None:
        return f"data: {data}\n\n".encode()
    head = ""
    if event is not None:
        _check_field("event", event)
        head = f"event: {event}\n"
    if id is not None:
        _check_field("id", id)
        head += f"id: {id}\n"
    if retry is not None:
        if type(retry) is not int or retry < 0:
            raise SSEFieldError(
                f"SSE retry must be a non-negative int (milliseconds): {retry!r}", field="retry"
            )
        head += f"retry: {retry}\n"
    return f"{head}data: {data}\n\n".encode()


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line and a blank line: ``b": text\\n\\n"`` (``b":\\n\\n"`` if empty).

    Clients ignore comments; servers send them as keepalives so that proxies
    and idle timeouts see traffic. The blank line dispatches nothing (the data
    buffer is empty after a complete event) but also ends any block, so send
    comments only between events. Raises
    :class:`~trio_agent.errors.SSEFieldError` if ``text`` contains CR or LF.
    """
    if not text:
        return b":\n\n"
    if "\n" in text or "\r" in text:
        raise SSEFieldError(f"SSE comment must not contain CR or LF: {text!r}", field="comment")
    return f": {text}\n\n".encode()


class SSEDecoder:
    """Incremental event-stream decoder: feed it bytes as they arrive, get events back.

    ``feed(chunk)`` accepts chunks cut at any byte, even inside a multi-byte
    UTF-8 character or between the CR and LF of a CRLF, and returns the events
    completed by that chunk. ``close()`` ends the stream: per the standard, an
    event still missing its closing blank line is discarded (so ``close()``
    returns an empty list; it exists so that callers always pair the two). The
    same decoder can then read a new stream, as after a reconnection:
    :attr:`last_event_id` and :attr:`retry` carry over, as in ``EventSource``
    (the new stream's ID buffer starts empty, as the standard says, so the
    first blank line of the new stream updates :attr:`last_event_id` again).

    Memory is bounded: if the unfinished line plus the data of the event being
    built exceed ``max_event_chars`` characters, ``feed`` raises
    :class:`~trio_agent.errors.SSEEventTooLargeError` and the decoder must not
    be used again.
    """

    __slots__ = (
        "_block_retry",
        "_bom_checked",
        "_data",
        "_data_chars",
        "_decoder",
        "_event_type",
        "_id_buffer",
        "_last_event_id",
        "_max_event_chars",
        "_pending",
        "_pending_chars",
        "_retry",
        "_skip_lf",
    )

    def __init__(self, *, max_event_chars: int = _DEFAULT_MAX_EVENT_CHARS) -> None:
        if type(max_event_chars) is not int or max_event_chars < 1:
            raise ValueError(f"max_event_chars must be a positive int: {max_event_chars!r}")
        self._max_event_chars = max_event_chars
        self._last_event_id = ""
        self._retry: int | None = None
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bom_checked = False
        self._skip_lf = False
        self._pending: list[str] = []
        self._pending_chars = 0
        self._data: list[str] = []
        self._data_chars = 0
        self._event_type = ""
        self._block_retry: int | None = None
        # Each stream starts with an empty last event ID buffer (the standard);
        # the last event ID *string* keeps its value until the next dispatch.
        self._id_buffer = ""

    @property
    def last_event_id(self) -> str | None:
        """The stream's last event ID as of the latest blank line, or ``None`` if empty.

        This is what a reconnecting client sends as ``Last-Event-ID``.
        """
        return self._last_event_id or None

    @property
    def retry(self) -> int | None:
        """The latest valid reconnection time in milliseconds, or ``None`` if none was sent."""
        return self._retry

    def __repr__(self) -> str:
        buffered = self._pending_chars + self._data_chars
        return (
            f"<SSEDecoder last_event_id={self.last_event_id!r} retry={self._retry!r} "
            f"buffered_chars={buffered} max_event_chars={self._max_event_chars}>"
        )

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode ``data``, the next bytes of the stream; return the events it completes."""
        text = self._decoder.decode(data)
        if not text:
            return []
        if not self._bom_checked:
            self._bom_checked = True
            if text[0] == _BOM:
                text = text[1:]
                if not text:
                    return []
        if self._skip_lf:
            # The previous chunk ended with CR: an LF now completes that CRLF.
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        if "\n" not in text and "\r" not in text:
            # No line end yet: keep the pieces, join once a line completes.
            self._pending.append(text)
            self._pending_chars += len(text)
            self._check_size()
            return []
        if self._pending:
            self._pending.append(text)
            text = "".join(self._pending)
            self._pending.clear()
        if "\r" in text:
            lines = _LINE_END.split(text)
            self._skip_lf = text[-1] == "\r"
        else:
            lines = text.split("\n")
        rest = lines.pop()
        if rest:
            self._pending.append(rest)
        self._pending_chars = len(rest)
        events = self._process(lines)
        self._check_size()
        return events

    def close(self) -> list[ServerSentEvent]:
        """End the stream; return the events still due (always none, see below).

        Bytes of an incomplete UTF-8 character and an event without its closing
        blank line are discarded, as the standard requires. The decoder is then
        ready for a new stream, keeping :attr:`last_event_id` and :attr:`retry`.
        """
        self._decoder.decode(b"", final=True)
        self._reset_stream()
        return []

    def _check_size(self) -> None:
        if self._pending_chars + self._data_chars > self._max_event_chars:
            raise SSEEventTooLargeError(
                f"SSE line or event longer than {self._max_event_chars} characters",
                limit=self._max_event_chars,
            )

    def _process(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                # Blank line: dispatch.
                self._last_event_id = self._id_buffer
                if data:
                    events.append(
                        ServerSentEvent(
                            data="\n".join(data),
                            event=self._event_type or "message",
                            id=self._last_event_id or None,
                            retry=self._block_retry,
                        )
                    )
                    data.clear()
                    self._data_chars = 0
                self._event_type = ""
                self._block_retry = None
                continue
            if line[0] == ":":
                continue
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
                self._data_chars += len(value) + 1
            elif name == "event":
                self._event_type = value
            elif name == "id":
                if "\0" not in value:
                    self._id_buffer = value
            elif name == "retry":
                if value.isascii() and value.isdigit():
                    try:
                        retry = int(value)
                    except ValueError:  # more digits than int() accepts
                        continue
                    self._retry = retry
                    self._block_retry = retry
        return events
