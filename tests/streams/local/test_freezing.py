"""A frozen process runs no more once ``freeze`` returns: every thread, not just the one the signal reached."""

from __future__ import annotations

import subprocess
import sys

from streams.local.freezing import freeze, frozen, thaw
from tests.fixtures import wait_until

BUSY_THREADS = """
import sys, threading
def spin():
    while True:
        pass
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
print("spinning", flush=True)
spin()
"""


def test_every_thread_of_a_busy_process_is_stopped_when_freeze_returns_and_runs_again_after_thaw() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY_THREADS], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "spinning"
        assert not frozen(child.pid)
        freeze(child)
        assert frozen(child.pid)  # at once: no thread left running
        cpu_before = _cpu_ticks(child.pid)
        assert frozen(child.pid) and _cpu_ticks(child.pid) == cpu_before
        thaw(child)
        wait_until(lambda: not frozen(child.pid), "a thawed process stayed stopped")
        wait_until(lambda: _cpu_ticks(child.pid) > cpu_before, "a thawed process did not run")
    finally:
        child.kill()
        child.wait()
    freeze(child)  # an exited process: nothing to stop, no error
    thaw(child)
    assert frozen(child.pid)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (clock ticks), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
