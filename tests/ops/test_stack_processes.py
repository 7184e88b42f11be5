"""The stack's process bookkeeping on real processes (no servers): a child that exits while ``down``
watches it is reaped and counted as gone, never an error."""

from __future__ import annotations

import subprocess
import sys
import time

from radimagenet.ops.stack import processes


def _zombie() -> tuple[int, int]:
    """A child that has exited but is not reaped yet: (pid, start time)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while (info := processes._proc_stat(child.pid)) is not None and info[0] not in "ZX":
        if time.monotonic() > deadline:
            raise TimeoutError("the child did not exit")
        time.sleep(0.01)
    assert info is not None
    child.returncode = 0  # reaped by the stack below, not by Popen
    return child.pid, info[3]


def test_an_exited_child_is_reaped_and_counted_gone():
    pid, start = _zombie()
    assert processes._alive({pid: start}) == {}  # reaping it removes /proc/<pid>: no error
    assert processes._proc_stat(pid) is None
    assert processes._threads_running(pid) is False


def test_a_running_process_is_alive():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        info = processes._proc_stat(child.pid)
        assert info is not None and processes._alive({child.pid: info[3]}) == {child.pid: info[3]}
        assert processes._threads_running(child.pid)
        assert processes._alive({child.pid: info[3] + 1}) == {}  # another start time: pid reuse, not ours
    finally:
        child.kill()
        child.wait()
