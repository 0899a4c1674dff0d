"""The ``data`` of server-sent events, as bytes: the upstream read path's event splitter.

:class:`~trio_agent.sse.SSEDecoder` decodes events into text, for consumers
that want every field. The upstream stream wants only each event's ``data``,
as the exact bytes the upstream sent, so that a relay forwards them without a
decode and an encode: one ``split`` on the blank line per read, and a slice
per event. Line ends may be ``\\n``, ``\\r\\n`` or ``\\r`` (normalised: they are
not part of any data value); ``id``, ``event`` and ``retry`` fields and comments
are skipped.
"""

from __future__ import annotations

from ..errors import UpstreamProtocolError

__all__ = ["SSEDataSplitter"]

_DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class SSEDataSplitter:
    """Feed it bytes as they arrive; it returns the data of each event completed so far."""

    __slots__ = ("_buf", "_max", "_skip_lf", "_started")

    def __init__(self, *, max_event_bytes: int = _DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buf = b""
        self._max = max_event_bytes
        self._started = False
        self._skip_lf = False

    def feed(self, data: bytes) -> list[bytes]:
        """The data of every event that ``data`` completes (events without data give none).

        Raises :class:`~trio_agent.UpstreamProtocolError` when one event grows past the limit.
        """
        if not self._started:  # a byte order mark may open the stream, even cut in pieces
            head = self._buf + data
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._buf = head
                return []
            self._started = True
            self._buf = b""
            data = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._skip_lf and data:  # the "\n" of a "\r\n" cut between two reads
            self._skip_lf = False
            if data.startswith(b"\n"):
                data = data[1:]
        if b"\r" in data:
            self._skip_lf = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + data if self._buf else data
        if b"\n\n" not in buf:
            if len(buf) > self._max:
                raise UpstreamProtocolError(f"upstream sent an event larger than {self._max} bytes")
            self._buf = buf
            return []
        events = buf.split(b"\n\n")
        self._buf = events.pop()
        out = []
        for event in events:
            if event.startswith(b"data: ") and b"\n" not in event:  # the usual case: one data line
                out.append(event[6:])
                continue
            lines = []
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    lines.append(value[1:] if value.startswith(b" ") else value)
            if lines:
                out.append(b"\n".join(lines))
        return out
