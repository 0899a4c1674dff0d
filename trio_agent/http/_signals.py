"""Turning SIGTERM/SIGINT, or a caller's trigger, into one ``trio.Event``.

A server's shutdown starts from a single event; these tasks set it. Each runs
in the server's nursery and is cancelled with it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["set_after", "watch_signals"]

logger = logging.getLogger("trio_agent.http")


async def watch_signals(event: trio.Event) -> None:
    """Set ``event`` on every SIGTERM or SIGINT (logging the first); runs until cancelled."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not event.is_set():
                logger.info("received %s", signal.Signals(signum).name)
            event.set()


async def set_after(trigger: Callable[[], Awaitable[Any]], event: trio.Event) -> None:
    """Await ``trigger()``, then set ``event``."""
    await trigger()
    event.set()
