"""``streamsearch run`` stops on a Ctrl-C that Linux delivers to any of its threads: a SIGINT handled by the
supervisor's watcher thread left ``signal.pause()`` on the main thread asleep (a CI run outlived its SIGINT
by 60 s)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import signal, sys, threading, time
    from streams.cli import _wait_for_signal

    main = threading.main_thread().ident

    def poke() -> None:
        while sys._current_frames()[main].f_code.co_name != "_wait_for_signal":  # a condition: main is waiting
            time.sleep(0.01)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # to this thread, not the main one

    threading.Thread(target=poke, daemon=True).start()
    _wait_for_signal()
    print("stopped")
""")


def test_a_sigint_delivered_to_another_thread_stops_the_wait() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "stopped"), done.stderr


def test_a_sigint_stops_the_wait_when_the_process_started_with_sigint_ignored() -> None:
    """As a shell without job control starts ``cmd &`` (and so a CI job started under nohup): SIGINT
    ignored from the start, which CPython keeps; ``run`` printed "Ctrl-C stops" and outlived SIGINT."""
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30, check=False,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert (done.returncode, done.stdout.strip()) == (0, "stopped"), done.stderr
