"""Freezing a local process (SIGSTOP) as a network partition or a hung node looks, and thawing it (SIGCONT).

A stop signal is not a stop: the kernel queues it and each thread stops on its next way back to user space.
Under load, a broker's network thread could still answer a request sent right after ``kill(SIGSTOP)``
(``tests/streams/runtime/test_replies.py`` saw a frozen broker answer, 3 times in 12 runs beside two busy
cores). :func:`freeze` returns once every thread of the process is stopped, as ``/proc`` shows it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["FREEZE_TIMEOUT_S", "freeze", "frozen", "thaw"]

FREEZE_TIMEOUT_S = 10.0
"""The longest :func:`freeze` waits for every thread to stop: a thread stops within a scheduler tick of running."""

_STOPPED_STATES = frozenset("tTZX")
"""``/proc/<pid>/task/<tid>/stat`` states of a thread that runs no more: stopped, traced, dead."""


def frozen(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (or gone): True for a process that has exited."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        # "tid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'
        if stat[stat.rindex(")") + 2] not in _STOPPED_STATES:
            return False
    return True


def freeze(process: subprocess.Popen[Any], timeout_s: float = FREEZE_TIMEOUT_S) -> None:
    """SIGSTOP ``process`` and return once all its threads have stopped (at once if it has exited).

    Raises:
        TimeoutError: a thread still ran after ``timeout_s`` (the process is sent SIGCONT first: running, as
            before the call).
    """
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while not frozen(process.pid):
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGCONT)  # not left stopped: a caller that gets no pause resumes nothing
            raise TimeoutError(f"process {process.pid} still ran {timeout_s:g} s after SIGSTOP")
        time.sleep(0.001)  # polling interval of /proc: a stop takes a scheduler tick or so


def thaw(process: subprocess.Popen[Any]) -> None:
    """SIGCONT ``process`` (nothing if it has exited)."""
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
