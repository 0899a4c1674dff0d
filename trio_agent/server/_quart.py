"""The Quart-Trio app that serves the routes the table gives to Quart (``view_route``).

It sees only requests the front has already routed and authenticated, so its
own 404/405 never answer a client. Errors raised by a view, by Quart (body too
large or too slow) or anywhere else are rendered by the same renderer as the
front's.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import TrioAgentError
from ._context import CONTEXT_KEY, RequestContext
from ._errors import as_trio_agent_error, render_error
from ._router import Router, ViewHandler

__all__ = ["build_quart"]

logger = logging.getLogger("trio_agent.server")


def _context() -> RequestContext:
    scope = cast(dict[str, Any], request.scope)
    ctx = scope.get(CONTEXT_KEY)
    if isinstance(ctx, RequestContext):
        return ctx
    # Only when the Quart app is called without the gateway's front.
    ctx = RequestContext(method=request.method, path=request.path, started_at=trio.current_time())
    scope[CONTEXT_KEY] = ctx
    return ctx


def _error_response(exc: TrioAgentError) -> Response:
    rendered = render_error(exc, _context())
    response = Response(
        orjson.dumps(rendered.body), status=rendered.status, content_type="application/json"
    )
    for name, value in rendered.headers:
        response.headers[name.decode()] = value.decode()
    return response


def _view(handler: ViewHandler) -> Any:
    async def view() -> Response:
        return await handler(_context())

    return view


def build_quart(router: Router, *, max_body_bytes: int, body_timeout: float) -> QuartTrio:
    app = QuartTrio("trio_agent")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    # The request deadline is ours (the drain's scope), not Quart's.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = body_timeout

    @app.errorhandler(TrioAgentError)
    async def _our_error(exc: TrioAgentError) -> Response:
        return _error_response(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        return _error_response(as_trio_agent_error(exc))

    @app.errorhandler(Exception)
    async def _any_error(exc: Exception) -> Response:
        logger.error("unhandled error (request_id=%s)", _context().request_id, exc_info=exc)
        return _error_response(as_trio_agent_error(exc))

    for route in router.routes:
        if route.view is not None:
            app.add_url_rule(
                route.path,
                endpoint=f"{route.method} {route.path}",
                view_func=_view(route.view),
                methods=[route.method],
            )
    return app
