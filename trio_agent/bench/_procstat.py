"""CPU and memory of processes, read from ``/proc`` (Linux) and ``getrusage``.

The server's figures cover its whole process tree (the pid and every
descendant, found through the ``ppid`` field of ``/proc/<pid>/stat``), so a
multi-worker server is measured whole. CPU is user and system time
separately: on loopback much of the kernel's work is the client's traffic, so
servers are best compared on user CPU as well as the total. Reaped children's
time is included through the ``cutime``/``cstime`` fields.

Peak RSS is the largest sum of the tree's resident sets over the samples
taken while the run lasts (and at least the root's own ``VmHWM``).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

__all__ = ["CPUTimes", "ProcessTreeSample", "process_cpu_self", "sample_process_tree"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, kw_only=True, slots=True)
class CPUTimes:
    """CPU seconds spent in user and kernel mode."""

    user: float
    system: float

    @property
    def total(self) -> float:
        """User plus system seconds."""
        return self.user + self.system

    def __sub__(self, other: CPUTimes) -> CPUTimes:
        return CPUTimes(user=self.user - other.user, system=self.system - other.system)


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessTreeSample:
    """One reading of a process tree: pids, CPU so far, resident memory now, root's peak."""

    pids: tuple[int, ...]
    cpu: CPUTimes
    rss_bytes: int
    root_hwm_bytes: int


def process_cpu_self() -> CPUTimes:
    """This process's own CPU time so far (``getrusage(RUSAGE_SELF)``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return CPUTimes(user=usage.ru_utime, system=usage.ru_stime)


def _read_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return raw[raw.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _read_stat(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def sample_process_tree(pid: int) -> ProcessTreeSample:
    """Read the tree rooted at ``pid``. Raises ``ProcessLookupError`` if ``pid`` is gone."""
    if _read_stat(pid) is None:
        raise ProcessLookupError(pid)
    children = _children_map()
    tree: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    user = system = 0
    rss_pages = 0
    for p in tree:
        fields = _read_stat(p)
        if fields is None:
            continue  # exited meanwhile
        # After the command: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                rss_pages += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return ProcessTreeSample(
        pids=tuple(sorted(tree)),
        cpu=CPUTimes(user=user / _CLK_TCK, system=system / _CLK_TCK),
        rss_bytes=rss_pages * _PAGE_SIZE,
        root_hwm_bytes=hwm,
    )
