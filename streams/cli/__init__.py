"""The ``streamsearch`` command: parses arguments and starts things; no logic of its own.

``main`` is the group (``streams.cli.group``); importing this package registers every command on it: ``run``
(``running``), ``hello-world`` and ``eval`` (``demos``), ``index``, ``search`` and ``serve`` (``query``), and the
operator's ``dead-letters``, ``status``, ``replay``, ``reindex`` and ``versions`` (``ops``).
"""

from streams.cli import demos, ops, query, running  # noqa: F401  (importing each registers its commands on main)
from streams.cli.group import Commands, main, one_line_errors
from streams.cli.running import _wait_for_signal as _wait_for_signal  # tests/streams/test_wait_for_signal.py

__all__ = ["Commands", "main", "one_line_errors"]
