"""The process's file-descriptor limit, raised to its hard limit at start.

Every client connection, upstream connection, Redis connection and MCP
server pipe is a descriptor. Linux's default soft ``RLIMIT_NOFILE`` (1024) is
far below what the hard limit allows; like Go's runtime (os/rlimit.go), a
server raises the soft limit to the hard one at start instead of running out
of descriptors at a thousand connections. :func:`raise_fd_limit` does that
once and reports the limit in force.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["FdLimit", "current_fd_limit", "raise_fd_limit"]

# A hard limit of RLIM_INFINITY cannot be the soft one on Linux (above fs.nr_open the call
# fails): raise to this much instead.
_INFINITE_CAP = 1 << 20


@dataclass(frozen=True, kw_only=True, slots=True)
class FdLimit:
    """``soft`` descriptors this process may open now (of ``hard`` at most); ``raised_from``
    the soft limit before :func:`raise_fd_limit`, or None when it was left as it was."""

    soft: int
    hard: int
    raised_from: int | None

    def __str__(self) -> str:
        raised = f" (raised from {self.raised_from})" if self.raised_from is not None else ""
        return f"{self.soft} file descriptors{raised}, hard limit {self.hard}"


def _finite(value: int) -> int:
    return _INFINITE_CAP if value == resource.RLIM_INFINITY else value


def raise_fd_limit() -> FdLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the limit in force.

    Never lowers it; a refused raise (a sandbox) leaves the limit as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard)
    if _finite(soft) >= target:
        return FdLimit(soft=_finite(soft), hard=target, raised_from=None)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return FdLimit(soft=_finite(soft), hard=target, raised_from=None)
    return FdLimit(soft=target, hard=target, raised_from=soft)


def current_fd_limit() -> FdLimit:
    """The limit in force now, unchanged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FdLimit(soft=_finite(soft), hard=_finite(hard), raised_from=None)
