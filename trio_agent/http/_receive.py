"""Request bodies handed from Hypercorn to the app without a scheduler pass per piece.

Hypercorn gives the app each body piece with ``await send(...)`` on a memory
channel (``HTTPStream.app_put``), a whole scheduler pass per piece for the
connection task, and the app's ASGI ``receive`` is that channel's
``receive``. :func:`put_nowait` puts without yielding while the channel has
room, and :func:`quick_receive` takes what is already there without
yielding, so a body that came in one read is all there when the app starts
and is read whole (docs/decisions/002). A full channel (a slow app) still
waits, as before.

Both look for ``send_nowait``/``receive_nowait`` on the bound method's
``__self__`` (a trio memory channel); any other ``receive`` is used as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["put_nowait", "quick_receive", "receive_nowait_of"]


def put_nowait(put: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """``put`` (a memory channel's ``send``), not yielding while the channel has room."""
    send_nowait = getattr(getattr(put, "__self__", None), "send_nowait", None)
    if send_nowait is None:
        return put

    async def put_now(message: Any) -> None:
        try:
            send_nowait(message)
        except trio.WouldBlock:
            await put(message)

    return put_now


def receive_nowait_of(receive: Callable[[], Awaitable[Any]]) -> Callable[[], Any] | None:
    """The ``receive_nowait`` behind an ASGI ``receive`` (a memory channel's ``receive``), or None.

    ``trio.WouldBlock`` from it means: await ``receive()``.
    """
    ready = getattr(getattr(receive, "__self__", None), "receive_nowait", None)
    return ready if callable(ready) else None


def quick_receive(receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """``receive``, returning a message the server already holds without a scheduler pass."""
    ready = receive_nowait_of(receive)
    if ready is None:
        return receive

    async def take() -> Any:
        try:
            return ready()
        except trio.WouldBlock:
            return await receive()

    return take
