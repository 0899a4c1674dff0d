"""The router table: (method, path) -> handler, and the JSON 404/405 for everything else.

A route is served either below Quart (:func:`asgi_route`: the handler gets the
raw ASGI call and writes its own response; the streamed routes, where a
per-chunk framework layer would cost) or by Quart (:func:`view_route`: the
handler returns a Quart response; everything else). Both kinds share the
front: request id, CORS, auth, error rendering and the access log.

Adding a route is one entry in the table (``_app.routes``) plus its handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MethodNotAllowedError, NotFoundError
from ._context import RequestContext

if TYPE_CHECKING:
    from quart import Response

__all__ = ["AsgiHandler", "Call", "Route", "Router", "ViewHandler", "asgi_route", "view_route"]

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Call:
    """One request as an ASGI handler sees it; ``headers`` are keyed by lower-cased name."""

    ctx: RequestContext
    scope: dict[str, Any]
    receive: Receive
    send: Send
    headers: dict[bytes, bytes]


AsgiHandler = Callable[[Call], Awaitable[None]]
ViewHandler = Callable[[RequestContext], Awaitable["Response"]]


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the table. ``accept``: only requests whose ``Accept`` contains it.

    ``public`` routes answer without an API key (probes, scrapes, the page and
    the API description: they reveal no data).
    """

    method: str
    path: str
    asgi: AsgiHandler | None = None
    view: ViewHandler | None = None
    public: bool = False
    accept: bytes | None = None


def asgi_route(
    method: str, path: str, handler: AsgiHandler, *, public: bool = False, accept: bytes | None = None
) -> Route:
    """A route served below Quart: ``handler(call)`` writes the whole response."""
    return Route(method, path, asgi=handler, public=public, accept=accept)


def view_route(method: str, path: str, handler: ViewHandler, *, public: bool = False) -> Route:
    """A route served by Quart: ``handler(ctx)`` returns the response."""
    return Route(method, path, view=handler, public=public)


class Router:
    """Finds a request's route; the first entry that fits wins."""

    __slots__ = ("_by_path", "paths", "public_paths", "routes")

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._by_path: dict[str, list[Route]] = {}
        for route in self.routes:
            if (route.asgi is None) == (route.view is None):
                raise ValueError(f"route {route.method} {route.path}: give exactly one handler")
            self._by_path.setdefault(route.path, []).append(route)
        self.paths = frozenset(self._by_path)
        self.public_paths = frozenset(
            path for path, entries in self._by_path.items() if all(r.public for r in entries)
        )

    def match(self, method: str, path: str, headers: dict[bytes, bytes]) -> Route:
        """The route for this request; :class:`NotFoundError` (404), :class:`MethodNotAllowedError` (405)."""
        entries = self._by_path.get(path)
        if entries is None:
            raise NotFoundError("no such path")
        # HEAD is GET without the body (Quart drops it) for the routes Quart serves.
        wanted = "GET" if method == "HEAD" else method
        accept = headers.get(b"accept", b"")
        for route in entries:
            if route.method == method or (route.view is not None and route.method == wanted):
                if route.accept is None or route.accept in accept:
                    return route
        allowed = tuple(sorted({r.method for r in entries}))
        raise MethodNotAllowedError("method not allowed", allowed=allowed)

    def __repr__(self) -> str:
        return f"<Router routes={len(self.routes)}>"
