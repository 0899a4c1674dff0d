"""trio_agent.bench._procstat: CPU and memory of a process tree from /proc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trio_agent.bench import CPUTimes, process_cpu_self, sample_process_tree


def test_cpu_times_arithmetic() -> None:
    a = CPUTimes(user=3.0, system=1.5)
    b = CPUTimes(user=1.0, system=0.5)
    assert a - b == CPUTimes(user=2.0, system=1.0)
    assert (a - b).total == 3.0


def test_own_cpu_grows() -> None:
    before = process_cpu_self()
    sum(i * i for i in range(200_000))
    after = process_cpu_self()
    assert after.user + after.system >= before.user + before.system
    assert after.user >= 0 and after.system >= 0


def test_tree_includes_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sample = sample_process_tree(os.getpid())
        assert os.getpid() in sample.pids
        assert child.pid in sample.pids
        assert sample.rss_bytes > 0
        assert sample.root_hwm_bytes > 0
        assert sample.cpu.user > 0
        alone = sample_process_tree(child.pid)
        assert alone.pids == (child.pid,)
    finally:
        child.kill()
        child.wait(timeout=10)


def test_missing_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    with pytest.raises(ProcessLookupError):
        sample_process_tree(child.pid)
