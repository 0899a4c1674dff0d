"""Allocation tracing on demand: ``tracemalloc`` snapshots written on SIGUSR1.

With ``ServerConfig.tracemalloc_dir`` set, :func:`serve_memtrace` starts
:mod:`tracemalloc` (``frames`` deep) and, on each SIGUSR1, writes
``snapshot-<n>.tracemalloc`` in that directory (``tracemalloc.Snapshot.load``
reads it back; benchmarks/soak.py compares two). A diagnostic: tracing slows
every allocation, so it is off unless asked for.
"""

from __future__ import annotations

import logging
import os
import signal
import tracemalloc

import trio

__all__ = ["serve_memtrace"]

logger = logging.getLogger("trio_agent.server")


async def serve_memtrace(
    directory: str,
    *,
    frames: int = 1,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Trace allocations until cancelled; a snapshot per SIGUSR1 (see the module)."""
    os.makedirs(directory, exist_ok=True)
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start(frames)
    try:
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            logger.info("tracemalloc on: SIGUSR1 writes a snapshot to %s", directory)
            task_status.started()
            taken = 0
            async for _ in signals:
                taken += 1
                path = os.path.join(directory, f"snapshot-{taken}.tracemalloc")
                snapshot = tracemalloc.take_snapshot()
                snapshot.dump(path)
                current, peak = tracemalloc.get_traced_memory()
                logger.info("tracemalloc snapshot %s (traced %d bytes, peak %d)", path, current, peak)
    finally:
        if started_here:
            tracemalloc.stop()
