"""The ``streamsearch`` command group: failures in one line, logging, and the options several commands share."""

from __future__ import annotations

import faulthandler
import functools
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
from confluent_kafka import KafkaException

from processors.query.parameters import FUSIONS, RETRIEVALS
from streams.exceptions import EXIT_CONFIG, StateConfigError, StreamsearchError
from streams.local.brokers import BrokerKind
from streams.logs import configure_logging


def stop_on_sigterm() -> None:
    """SIGTERM stops every command like Ctrl-C: the ``with`` blocks unwind, so stage processes, then the
    broker the command started, stop with it (a killed ``eval`` left its stages running). SIGINT is set
    too: a process started in the background by a shell without job control (``cmd &`` in a script, under
    nohup) inherits SIGINT ignored, and CPython then leaves it ignored, so the "Ctrl-C stops" a command
    prints, and a supervisor's SIGINT, would do nothing."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


_SIGNALLED: list[int] = []
"""The signals that interrupted this process (``_interrupt``)."""


def _interrupt(signum: int, _frame: object) -> None:
    """Raise KeyboardInterrupt where the main thread is, noting that a signal came: raised inside a C library's
    call (confluent-kafka's ``produce`` converting headers), it may come out as that library's own error
    ("TypeError: expected header key to be unicode string", seen once in CI as an eval was stopped)."""
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt()


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one readable line and exit code 1, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()
        except Exception as exc:
            if _SIGNALLED:  # the interrupt, reported by a C library it landed in as its own error
                _interrupted()
            if not isinstance(exc, (StreamsearchError, KafkaException)):
                raise
            click.echo(f"streamsearch: error: {exc}", err=True)
            sys.exit(EXIT_CONFIG if isinstance(exc, StateConfigError) else 1)  # a supervisor does not restart it

    return wrapper


def _interrupted() -> None:
    click.echo("streamsearch: interrupted", err=True)
    sys.exit(130)


class Commands(click.Group):
    """The ``streamsearch`` group: every command added to it reports expected failures in one line
    (``one_line_errors``), so a new command declares only its own options."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if cmd.callback is not None:
            cmd.callback = one_line_errors(cmd.callback)
        super().add_command(cmd, name)


@click.group(cls=Commands)
@click.version_option(package_name="streamsearch", prog_name="streamsearch", message="%(prog)s %(version)s")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO, or STREAMSEARCH_LOG_LEVEL).")
@click.option("--log-json", is_flag=True, default=None, help="JSON log lines (or STREAMSEARCH_LOG_JSON=1).")
def main(log_level: str | None, log_json: bool | None) -> None:
    """Neural search as an event-streaming pipeline on Kafka."""
    configure_logging(log_level, as_json=log_json)
    stop_on_sigterm()
    if sys.platform != "win32":
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack, to stderr


BROKER_OPTION = click.option(
    "--broker", type=click.Choice([k.value for k in BrokerKind]), default=BrokerKind.AUTO.value, show_default=True,
    help="The local broker to start when KAFKA_BOOTSTRAP_SERVERS is unset: Apache Kafka (durable; needs Java 17 "
         "and `make install`), Tansu (memory-only), or auto (Apache Kafka when it can run here).")


def retrieval_options(*, retrieval: str | None, fusion: str | None,
                      multiple: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--retrieval`` and ``--fusion``, the choices of ``processors.query.parameters`` (None: the flow's default).

    :param multiple: ``--retrieval`` may be given several times (a tuple; ``retrieval`` when none is given).
    """
    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option("--fusion", type=click.Choice(FUSIONS), default=fusion, show_default=fusion is not None,
                               help="How hybrid fuses the dense and lexical lists.")(command)
        return click.option("--retrieval", type=click.Choice(RETRIEVALS), multiple=multiple,
                            default=(retrieval,) if multiple else retrieval, show_default=retrieval is not None,
                            help="Search the vectors (dense), the texts with BM25 (lexical) or both, fused (hybrid); "
                                 "lexical and hybrid need a flow whose index has `lexical: true`.")(command)
    return add
