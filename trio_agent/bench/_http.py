"""Just enough HTTP/1.1 for a load generator, without I/O: request bytes and a response parser.

The load client sends one hand-written request per exchange and parses the
answer incrementally: the status line and headers, then the body framed by
``Transfer-Encoding: chunked``, ``Content-Length``, or the end of the
connection. Chunks may be cut anywhere (inside a size line, inside the CRLF
after a chunk's data); the parser keeps only the unfinished size or trailer
line between calls and passes data through as soon as it arrives, so its
buffer stays small however large the body grows.

Every framing error raises :class:`HTTPProtocolError`.
"""

from __future__ import annotations

__all__ = ["HTTPProtocolError", "ResponseHead", "ResponseParser", "build_request"]

from dataclasses import dataclass

_MAX_HEAD_BYTES = 64 * 1024
_MAX_LINE_BYTES = 4096


class HTTPProtocolError(Exception):
    """The bytes from the server are not a well-framed HTTP/1.1 response."""


def build_request(
    method: str,
    host: str,
    path: str,
    body: bytes,
    *,
    content_type: str = "application/json",
    accept: str = "text/event-stream",
    keepalive: bool = True,
) -> bytes:
    """The bytes of one HTTP/1.1 request with a fixed-length body."""
    connection = "keep-alive" if keepalive else "close"
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"User-Agent: trio-agent-bench\r\n"
        f"Accept: {accept}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {connection}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status line and headers. Header names are lower-cased; a repeated header keeps its last value."""

    status_code: int
    reason: str
    http_version: str
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this response."""
        connection = self.headers.get("connection", "").lower()
        if self.http_version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """Incremental parser for one HTTP/1.1 response.

    ``feed(data)`` returns the body pieces that ``data`` completes (possibly
    none); :attr:`head` is set once the headers are in; :attr:`complete` turns
    true when the body's framing says it ended. Call :meth:`feed_eof` when the
    connection closes: it ends a body framed by the close, and raises if the
    response was cut short. Bytes after the end of the response (a server may
    not send any: the client does not pipeline) raise.
    """

    __slots__ = ("_buf", "_remaining", "_state", "head")

    def __init__(self) -> None:
        self._buf = b""
        self._state = _HEAD
        self._remaining = 0
        self.head: ResponseHead | None = None

    @property
    def complete(self) -> bool:
        """The whole response (head and body) has been read."""
        return self._state == _DONE

    def __repr__(self) -> str:
        names = ["head", "size", "data", "data_end", "trailer", "length", "until_close", "done"]
        return f"<ResponseParser state={names[self._state]} buffered={len(self._buf)}>"

    def feed(self, data: bytes) -> list[bytes]:
        """Parse the next bytes of the response; return the body pieces they complete."""
        state = self._state
        if state == _DATA and not self._buf and len(data) <= self._remaining:
            # Fast path: the piece lies inside one chunk's data.
            self._remaining -= len(data)
            if self._remaining == 0:
                self._state = _DATA_END
            return [data] if data else []
        if state == _UNTIL_CLOSE:
            return [data] if data else []
        if state == _DONE:
            if data:
                raise HTTPProtocolError("bytes after the end of the response")
            return []
        buf = self._buf + data if self._buf else data
        n = len(buf)
        out: list[bytes] = []
        pos = 0
        while True:
            if state == _SIZE:
                # The hot loop: whole chunks, back to back, in one read.
                while True:
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        if n - pos > _MAX_LINE_BYTES:
                            raise HTTPProtocolError("chunk size line too long")
                        break
                    size = _chunk_size(buf[pos:end])
                    start = end + 2
                    if size == 0:
                        pos = start
                        state = _TRAILER
                        break
                    stop = start + size
                    if stop + 2 > n:
                        pos = start
                        self._remaining = size
                        state = _DATA
                        break
                    if buf[stop : stop + 2] != b"\r\n":
                        raise HTTPProtocolError("chunk data not followed by CRLF")
                    out.append(buf[start:stop])
                    pos = stop + 2
                if state == _SIZE:
                    break
            elif state == _DATA or state == _LENGTH:
                avail = n - pos
                if avail == 0:
                    break
                take = min(avail, self._remaining)
                out.append(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    state = _DATA_END if state == _DATA else _DONE
            elif state == _DATA_END:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise HTTPProtocolError("chunk data not followed by CRLF")
                pos += 2
                state = _SIZE
            elif state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    if n > _MAX_HEAD_BYTES:
                        raise HTTPProtocolError("response head too large")
                    break
                self.head = _parse_head(buf[pos:end])
                pos = end + 4
                state = self._body_state(self.head)
            elif state == _TRAILER:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if n - pos > _MAX_LINE_BYTES:
                        raise HTTPProtocolError("trailer line too long")
                    break
                empty = end == pos
                pos = end + 2
                if empty:
                    state = _DONE
            elif state == _UNTIL_CLOSE:
                if pos < n:
                    out.append(buf[pos:])
                pos = n
                break
            else:  # _DONE
                if pos < n:
                    raise HTTPProtocolError("bytes after the end of the response")
                break
        self._buf = buf[pos:] if pos < n else b""
        self._state = state
        return out

    def feed_eof(self) -> None:
        """The server closed the connection: fine only if the body ran to its end."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
        elif self._state != _DONE:
            raise HTTPProtocolError("connection closed before the end of the response")

    def _body_state(self, head: ResponseHead) -> int:
        if head.status_code in (204, 304) or 100 <= head.status_code < 200:
            if 100 <= head.status_code < 200:
                raise HTTPProtocolError(f"unexpected informational status {head.status_code}")
            return _DONE
        te = head.headers.get("transfer-encoding")
        if te is not None:
            if te.lower().split(",")[-1].strip() != "chunked":
                raise HTTPProtocolError(f"unsupported transfer-encoding {te!r}")
            return _SIZE
        length = head.headers.get("content-length")
        if length is not None:
            try:
                self._remaining = int(length)
            except ValueError:
                raise HTTPProtocolError(f"bad content-length {length!r}") from None
            if self._remaining < 0:
                raise HTTPProtocolError(f"bad content-length {length!r}")
            return _LENGTH if self._remaining else _DONE
        return _UNTIL_CLOSE


def _chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (extensions ignored), strictly hex digits."""
    if not (line.isalnum() and len(line) <= 16):
        # Rare: an extension (";name=value") or spaces; same checks after stripping.
        line = line.split(b";", 1)[0].strip(b" \t")
        if not (line.isalnum() and len(line) <= 16):
            raise HTTPProtocolError(f"bad chunk size line {line[:40]!r}")
    if b"x" in line or b"X" in line:
        raise HTTPProtocolError(f"bad chunk size line {line!r}")
    try:
        return int(line, 16)
    except ValueError:
        raise HTTPProtocolError(f"bad chunk size line {line!r}") from None


def _parse_head(raw: bytes) -> ResponseHead:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3:
        raise HTTPProtocolError(f"bad status line {lines[0][:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise HTTPProtocolError(f"bad status line {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HTTPProtocolError(f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return ResponseHead(
        status_code=status,
        reason=parts[2] if len(parts) > 2 else "",
        http_version=parts[0],
        headers=headers,
    )
