"""API keys and CORS: who may call, and which browser origins may read the answer.

Keys are compared as SHA-256 digests in constant time over all keys; the key
id logged and used for per-key limits is a prefix of the digest, never the
key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from ..errors import AuthenticationError
from ._context import Headers

__all__ = ["ApiKeys", "Cors"]

_CORS_METHODS = b"GET, POST, OPTIONS"
_CORS_HEADERS = b"Authorization, Content-Type, Accept, X-Request-ID"
_CORS_EXPOSE = b"X-Request-ID, Retry-After"


class ApiKeys:
    """Bearer-key authentication; with no keys configured, everyone is let in."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    def authenticate(self, headers: dict[bytes, bytes]) -> str | None:
        """The key's id (a hash prefix, safe to log), or None when auth is off; 401 if wrong."""
        if not self._digests:
            return None
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
        digest = hashlib.sha256(token).digest()
        ok = False
        for known in self._digests:  # no early exit: constant time over all keys
            ok |= hmac.compare_digest(digest, known)
        if not ok:
            raise AuthenticationError("invalid API key")
        return digest.hex()[:16]

    def __repr__(self) -> str:
        return f"<ApiKeys keys={len(self._digests)}>"


class Cors:
    """The CORS headers for a request's ``Origin``, and the preflight answer."""

    __slots__ = ("_any", "_origins")

    def __init__(self, origins: Iterable[str]) -> None:
        origins = tuple(origins)
        self._any = "*" in origins
        self._origins = frozenset(o.encode() for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self._any or bool(self._origins)

    def headers_for(self, origin: bytes | None) -> Headers:
        """What every response to a request from ``origin`` carries (empty: not allowed)."""
        if origin is None:
            return []
        if self._any:
            return [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", _CORS_EXPOSE),
            ]
        if origin in self._origins:
            return [
                (b"access-control-allow-origin", origin),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers", _CORS_EXPOSE),
            ]
        return []

    def is_preflight(self, method: str, headers: dict[bytes, bytes]) -> bool:
        return (
            self.enabled and method == "OPTIONS" and b"access-control-request-method" in headers
        )

    @staticmethod
    def preflight_headers(allowed: bool) -> Headers:
        """The 204's extra headers: what may be sent, when the origin is allowed at all."""
        if not allowed:
            return []
        return [
            (b"access-control-allow-methods", _CORS_METHODS),
            (b"access-control-allow-headers", _CORS_HEADERS),
            (b"access-control-max-age", b"600"),
        ]

    def __repr__(self) -> str:
        return f"<Cors any={self._any} origins={len(self._origins)}>"
