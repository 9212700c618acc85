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


INTERRUPTED_IN_C = textwrap.dedent("""
    import os, signal
    from streams.cli.group import one_line_errors, stop_on_sigterm

    stop_on_sigterm()

    @one_line_errors
    def command() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # a system call: the handler runs before the next bytecode
            while True:
                pass
        except KeyboardInterrupt:  # as confluent-kafka's produce reported an interrupt it was converting headers in
            raise TypeError("expected header key to be unicode string") from None

    command()
""")


def test_an_interrupt_a_c_library_reports_as_its_own_error_still_exits_as_interrupted() -> None:
    """CI saw an eval stopped by SIGTERM exit 1 with a traceback: the signal's KeyboardInterrupt landed in
    confluent-kafka's ``produce``, which raised a TypeError of its own instead."""
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IN_C], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 130 and done.stderr.strip() == "streamsearch: interrupted", done.stderr
