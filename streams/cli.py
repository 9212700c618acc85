"""The ``streamsearch`` command: parses arguments and starts things; no logic of its own."""

from __future__ import annotations

import errno
import faulthandler
import functools
import math
import os
import logging
import signal
import time
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import click
from confluent_kafka import KafkaException

from processors.index.types import INDEX_TYPES
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import DEFAULT_FUSION, FUSIONS, RETRIEVALS
from streams.kafka.admin import check_broker, ensure_topics
from streams.exceptions import (EXIT_CONFIG, BrokerError, RequestExpiredError, RequestTimeoutError, StateConfigError,
                                StreamsearchError)
from streams.stages.extras import require_stage_extras
from streams.flow.parse import load_flow
from streams.flow.spec import FlowSpec, with_state_dir
from streams.stages.kinds import KINDS, STATEFUL_KINDS
from streams.kafka.settings import QUIET_LIBRDKAFKA, KafkaSettings
from streams.local.brokers import BrokerKind
from streams.logs import configure_logging
from streams.wire.topics import DEAD_LETTER, STATUS, FlowTopics, TopicRole

logger = logging.getLogger(__name__)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one readable line and exit code 1, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (StreamsearchError, KafkaException) as exc:
            click.echo(f"streamsearch: error: {exc}", err=True)
            sys.exit(EXIT_CONFIG if isinstance(exc, StateConfigError) else 1)  # a supervisor does not restart it
        except KeyboardInterrupt:
            click.echo("streamsearch: interrupted", err=True)
            sys.exit(130)

    return wrapper


class Commands(click.Group):
    """The ``streamsearch`` group: every command added to it reports expected failures in one line
    (``one_line_errors``), so a new command declares only its own options."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if cmd.callback is not None:
            cmd.callback = one_line_errors(cmd.callback)
        super().add_command(cmd, name)


class CommandFlow:
    """A flow as a command names it: by name (version 1's topics, no spec) or by its YAML (its
    version's topics and librdkafka settings). The YAML is read on first use, inside the command,
    so that a bad one is one line and exit 1 (``one_line_errors``), at the point the command needs it."""

    def __init__(self, value: str) -> None:
        self.value = value
        self._spec: FlowSpec | None = None

    def __str__(self) -> str:
        return self.value

    @property
    def spec(self) -> FlowSpec | None:
        if self._spec is None and self.value.endswith((".yml", ".yaml")):
            self._spec = load_flow(self.value)
        return self._spec

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else self.value

    @property
    def topics(self) -> FlowTopics:
        """A YAML's version's topics; a bare name's version 1 (the shared ingest topic names the flow)."""
        return self.spec.topics if self.spec else FlowTopics(self.value, 1)

    @property
    def kafka(self) -> Mapping[str, Any] | None:
        """A flow YAML's librdkafka settings (SASL, TLS, ...); a bare name has none."""
        return self.spec.kafka if self.spec else None


class FlowRef(click.ParamType):
    """``--flow NAME|FLOW.yml``: a :class:`CommandFlow`."""

    name = "flow"

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "TEXT"  # the help as it was: a name or a path

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> CommandFlow:
        return value if isinstance(value, CommandFlow) else CommandFlow(str(value))


FLOW = FlowRef()


@click.group(cls=Commands)
@click.version_option(package_name="streamsearch", prog_name="streamsearch", message="%(prog)s %(version)s")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO, or STREAMSEARCH_LOG_LEVEL).")
@click.option("--log-json", is_flag=True, default=None, help="JSON log lines (or STREAMSEARCH_LOG_JSON=1).")
def main(log_level: str | None, log_json: bool | None) -> None:
    """Neural search as an event-streaming pipeline on Kafka."""
    configure_logging(log_level, as_json=log_json)
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


@main.command("hello-world")
@click.option("--limit", default=1000, show_default=True, help="Docstrings to index.")
@click.option("--flow", "flow_path", type=click.Path(path_type=Path), default=None, help="Flow YAML (default: the example flow hello.yml, streams/flows/).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="Where shard state and stage logs go.")
@click.option("--port", default=0, show_default="a free port", help="Port of the search page and HTTP API.")
@click.option("--serve/--no-serve", default=None,
              help="Keep serving the search page after the demo (default: when run in a terminal).")
@BROKER_OPTION
def hello_world(limit: int, flow_path: Path | None, state_dir: Path | None, port: int, serve: bool | None,
                broker: str) -> None:
    """Index Python's docstrings on a local broker and search them while they stream in."""
    from streams.demo.hello_world import DEFAULT_FLOW, run_hello_world

    logging.getLogger().setLevel(logging.WARNING)
    run_hello_world(limit=limit, flow_path=flow_path or DEFAULT_FLOW, state_dir=state_dir, bridge_port=port,
                    keep_serving=sys.stdin.isatty() if serve is None else serve, broker=BrokerKind(broker))


@main.command("run")
@click.argument("flow_path", type=click.Path(path_type=Path))
@click.option("--stage", default=None, help="Join a running flow with this stage: one consumer in this process, or --replicas N.")
@click.option("--replicas", type=int, default=None, help="Supervised processes of --stage to add (its partitions bound the useful number).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="Overrides the flow's state_dir for shard state and logs (the local broker's log stays under the YAML's).")
@BROKER_OPTION
def run(flow_path: Path, stage: str | None, replicas: int | None, state_dir: Path | None, broker: str) -> None:
    """Run a flow's stages: all of them supervised (with a local broker if no Kafka is set),
    or one stage joining a running flow (``--replicas N`` adds N supervised consumers)."""
    flow = _spec(flow_path, state_dir)
    require_stage_extras(flow, [stage] if stage else None)  # one line, not stage processes dying on an import
    if stage is None or (stage in KINDS and KINDS[stage].needs_model):  # a join or segment container holds no model
        flow.check_dimensions()  # before a broker starts: one line, not a dead letter per document
    if stage is not None:
        from streams.ops.versions import claim_serving

        flow.stage(stage)
        check_broker(_command_settings(flow.kafka))  # one line, not librdkafka's retries, if unreachable
        settings = KafkaSettings.discover(flow.kafka)
        ensure_topics(settings, flow.topics.shapes(), topic_settings=flow.topic_settings,
                      max_payload_bytes=flow.max_payload_bytes)  # idempotent; a real cluster may not have them yet
        claim_serving(settings, flow.topics)  # the first version to run serves; later ones wait for a reindex
        if not replicas:
            from streams.runtime.loop import StageLoop
            from streams.stages.kinds import build_stage

            loop = StageLoop(build_stage(flow, stage, settings), settings)
            loop.install_signal_handlers()
            loop.run()
            return
        _supervise(flow, flow_path, settings.bootstrap_servers, stage, replicas)
        return
    from streams.local.bootstrap import FlowRunLock
    from streams.local.runtime import LocalRuntime
    from streams.local.supervisor import stage_logs_shown

    for warning in flow.idle_replicas():
        click.echo(f"streamsearch: warning: {warning}", err=True)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        check_broker(_command_settings(flow.kafka))  # one line, not librdkafka's retries, if unreachable
    run_lock = FlowRunLock(flow.topics.prefix)
    run_lock.acquire()
    _stop_on_sigterm()  # from here on, so that a TERM while starting stops what started
    with LocalRuntime(flow, flow_path=flow_path, broker=BrokerKind(broker)) as runtime:
        assert runtime.settings is not None
        click.echo(f"flow {flow.name!r} starting on broker {_broker_origin(runtime)}; "
                   f"logs in {stage_logs_shown(runtime.flow)}; "
                   f"waiting until every stage is assigned and all {flow.shards} shards serve ...")
        _wait_ready(runtime)
        click.echo(f"flow {flow.name!r} running: every stage assigned, all {flow.shards} shards serving. Ctrl-C stops.")
        _wait_for_signal()


READY_WARNING_S = 180.0
"""After this long, ``run`` says the flow is still not ready (and goes on waiting)."""


def _broker_origin(runtime: Any) -> str:
    """The broker's address and where it comes from: started here, joined, or configured."""
    address = runtime.settings.bootstrap_servers
    if runtime.broker_kind is not None:
        return f"{address} ({runtime.broker_kind.label}, started here)"
    if runtime.joined is not None:
        owner = (f"`streamsearch run` pid {runtime.joined.owner_pid}" if runtime.joined.owner_pid
                 else "a run that has exited")
        return f"{address} (this directory's local broker, started by {owner}; it stops with that run)"
    return address


def _wait_ready(runtime: Any) -> None:
    """Until a search of this flow version is answered by every shard: a warning line after
    ``READY_WARNING_S``, then on until it is, or Ctrl-C."""
    with runtime.client(version=runtime.flow.version) as client:
        try:
            runtime.wait_ready(client, timeout=READY_WARNING_S)
        except BrokerError as exc:
            click.echo(f"streamsearch: warning: {exc}; still waiting", err=True)
            runtime.wait_ready(client, timeout=math.inf)


def _supervise(flow: Any, flow_path: Path, bootstrap: str, stage: str, replicas: int) -> None:
    """Add ``replicas`` supervised processes of one stage to a running flow, until Ctrl-C."""
    from streams.local.supervisor import LocalFlow, stage_logs_shown

    for warning in flow.idle_replicas({stage: replicas}):
        click.echo(f"streamsearch: warning: {warning}", err=True)
    with LocalFlow(flow, flow_path=flow_path, bootstrap_servers=bootstrap,
                   stages=[stage], replicas={stage: replicas}, label=f"added-{os.getpid()}"):
        click.echo(f"{replicas} more {stage!r} replicas joined flow {flow.name!r} on {bootstrap}; "
                   f"logs in {stage_logs_shown(flow)}. Ctrl-C stops them.")
        _wait_for_signal()


def _stop_on_sigterm() -> None:
    """SIGTERM stops like Ctrl-C: stages, then the broker this process started."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


SIGNAL_CHECK_S = 0.2
"""How often the waiting main thread wakes to run a pending signal handler."""


def _wait_for_signal() -> None:
    """Until Ctrl-C or SIGTERM. Not ``signal.pause()``: it returns only for a signal delivered to the main
    thread, and Linux may deliver a process's SIGINT to any thread (the supervisor's watcher): the handler,
    which CPython runs on the main thread, then waited until the next signal (a CI run's ``run`` outlived its
    SIGINT by 60 s, until the test's SIGUSR1 woke it). A short sleep lets the handler run within 0.2 s."""
    _stop_on_sigterm()
    try:
        while True:
            time.sleep(SIGNAL_CHECK_S)
    except KeyboardInterrupt:
        pass


def _client(flow: CommandFlow) -> Any:
    """A client of a flow that exists on the broker.

    :raises BrokerError: in one line, if the broker is unreachable or has no such flow.
    """
    from streams.client import Client

    logging.getLogger("streams.kafka.admin").setLevel(logging.ERROR)  # not the replication of the client's own reply topic
    settings = _connect(flow, quiet=max(logging.WARNING, logging.getLogger().level))  # before it creates anything
    return Client(flow.name, settings=settings)


def _connect(flow: CommandFlow, *roles: TopicRole, check: bool = True, quiet: int = logging.WARNING) -> KafkaSettings:
    """The settings of a command on a running flow: our log lines from ``quiet`` up only, and (``check``)
    the flow's ingest topic and its topics of ``roles`` checked to exist (``require_flow``).

    :raises BrokerError: in one line, if the broker is unreachable or has no such flow.
    """
    from streams.kafka.admin import require_flow

    logging.getLogger("streams").setLevel(quiet)  # keep output clean
    settings = _command_settings(flow.kafka)
    if check:
        require_flow(settings, flow.topics, *roles)
    return settings


def _command_settings(flow_extra: Mapping[str, Any] | None = None) -> KafkaSettings:
    """Settings for a short-lived command: the running flow's broker, and librdkafka's own log
    lines routed through Python logging (silenced), so a failure prints our one line only."""
    found = KafkaSettings.discover(flow_extra)
    return KafkaSettings(found.bootstrap_servers, {**found.extra, "logger": QUIET_LIBRDKAFKA})


def _spec(flow_path: Path, state_dir: Path | None) -> FlowSpec:
    """A flow YAML's spec, its shard state and logs under ``--state-dir`` when given."""
    flow = load_flow(flow_path)
    return with_state_dir(flow, state_dir) if state_dir else flow


@main.command("index")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--flow", type=FLOW, default="hello", show_default=True, help="Flow name or flow YAML.")
@click.option("--wait", is_flag=True, help="Return once every shard has applied the documents: searchable (read-your-writes); "
                   "exit 1 naming those a stage dead-lettered on the way.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="With --wait: give up after S seconds.")
def index(file: Path, flow: CommandFlow, wait: bool, timeout: float) -> None:
    """Index a JSONL file of {"id", "text", ...} objects into a running flow; "text" is optional
    when the flow maps fields (e.g. {"id": "10", "title": ..., "summary": ...})."""
    from streams.demo.corpora import read_jsonl
    from streams.client.progress import wait_searchable

    # A flow YAML says which fields it maps; a bare name does not, so any string field may do.
    docs = list(read_jsonl(file, fields=flow.spec.fields if flow.spec else None))
    with _client(flow) as client:
        receipt = client.index(docs, progress=True, total=len(docs))
        click.echo(f"sent {receipt.count} documents; last offsets {receipt.offsets}")
        if wait:
            click.echo("waiting until every shard has applied them ...", err=True)
            try:
                searchable = wait_searchable(client, receipt, timeout=timeout)
            except RequestTimeoutError as exc:
                raise StreamsearchError(f"{exc}; raise --timeout, or see `streamsearch status`") from exc
            reply, letters = searchable.reply, searchable.dead_letters
            version = f" by index version {reply.version}" if reply is not None else ""
            click.echo(f"{receipt.count - len(letters)} documents searchable{version}")
            if letters:
                raise StreamsearchError(_dead_lettered(letters, receipt.count, flow))


def _dead_lettered(letters: list[Any], count: int, flow: CommandFlow) -> str:
    """One line naming the documents a stage dead-lettered on the way, and why."""
    shown = "; ".join(f"{(letter.key or b'').decode(errors='replace')!r} by {letter.stage}: {letter.error_class}: "
                      f"{letter.message[:200]}" for letter in letters[:3])
    more = f"; and {len(letters) - 3} more" if len(letters) > 3 else ""
    return (f"{len(letters)} of {count} documents were dead-lettered on the way and are not searchable: {shown}{more} "
            f"(`streamsearch dead-letters --flow {flow}`)")


@main.command("search")
@click.argument("text")
@click.option("--flow", type=FLOW, default="hello", show_default=True, help="Flow name or flow YAML.")
@click.option("--top-k", type=int, default=None,
              help=f"Documents to return, 1..{REQUEST_LIMITS.max_top_k} (max_top_k); the flow's default if unset.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Deadline in seconds.")
@click.option("--filter-by", multiple=True, help="Search only this field (repeatable; multi-field flows).")
@click.option("--index-type", default=None, help=f"Shard index to answer from: {', '.join(INDEX_TYPES)}.")
@retrieval_options(retrieval=None, fusion=None)
def search(text: str, flow: CommandFlow, top_k: int | None, timeout: float, filter_by: tuple[str, ...],
           index_type: str | None, retrieval: str | None, fusion: str | None) -> None:
    """Search a running flow and print the matches."""
    from streams.demo.hello_world import format_reply
    from streams.ops.status import why_no_reply

    with _client(flow) as client:
        try:
            reply = client.search(text, top_k=top_k, timeout_s=timeout, filter_by=filter_by or None,
                                  index_type=index_type, retrieval=retrieval, fusion=fusion)
        except ValueError as exc:  # refused before sending: a blank text, a timeout over the limit
            raise StreamsearchError(str(exc)) from None
        except RequestExpiredError:  # answered: the flow says why
            raise
        except RequestTimeoutError as exc:  # a flow that does not run, or a deadline too short for it?
            raise StreamsearchError(why_no_reply(client.settings, client.topics, timeout)
                                    .replace("raise the timeout", "raise --timeout")) from exc
    if reply.errors:
        raise StreamsearchError("; ".join(reply.errors))
    for warning in reply.warnings:  # a short but good result: said, and the matches shown
        click.echo(f"streamsearch: warning: {warning}", err=True)
    click.echo(format_reply(text, reply))
    scored = sorted({f"{m.scores['score'].op_name} ({m.scores['score'].direction.value})"
                     for doc in reply.docs for m in doc.matches if "score" in m.scores})
    click.echo(f"\n  answered by index version {reply.version}"
               f"{'; scores: ' + ', '.join(scored) if scored else ''}")


@main.command("serve")
@click.option("--flow", type=FLOW, required=True,
              help="Flow name or flow YAML (a YAML also gives the page its field filter).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def serve(flow: CommandFlow, host: str, port: int) -> None:
    """Serve the HTTP bridge and the search page for a running flow (bearer token: STREAMSEARCH_TOKEN)."""
    import uvicorn

    from streams.client.http import create_app, warn_if_unprotected
    from streams.ops.bridge import StatusInspector

    with _client(flow) as client:
        listener = _listen(host, port)  # a busy port is one line, before anything is started
        client.start()  # reply topic and serving version before the first request, off the event loop
        app = create_app(client, flow=flow.spec, inspector=StatusInspector(client.settings, flow.spec or flow.name))
        warn_if_unprotected(app, host)
        bound_host, bound_port = listener.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        click.echo(f"serving flow {client.topics.flow!r}: search page http://{shown}:{bound_port}/ , "
                   f"API docs http://{shown}:{bound_port}/docs (Ctrl-C stops)")
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port))
        server.run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``.

    :raises StreamsearchError: if the address is taken or cannot be bound.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise StreamsearchError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a socket in TIME_WAIT is free
    try:
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise StreamsearchError(f"cannot serve on {host}:{port}: {exc.strerror}"
                                f"{'; choose another --port' if exc.errno == errno.EADDRINUSE else ''}") from exc
    return listener


@main.command("dead-letters")
@click.option("--flow", type=FLOW, default="hello", show_default=True,
              help="Flow name (version 1) or flow YAML (its version).")
@click.option("--from-offset", type=int, default=0, show_default=True, help="First dead-letter offset to read.")
@click.option("--redrive", is_flag=True,
              help="Put the listed records back on their source topic, after a fix (each letter once: re-drives are remembered).")
def dead_letters(flow: CommandFlow, from_offset: int, redrive: bool) -> None:
    """List the records stages could not process, with why and where they came from."""
    from streams.client.dead_letters import read_dead_letters
    from streams.ops import dead_letters as dl

    settings, topics = _connect(flow, DEAD_LETTER), flow.topics  # a YAML names its version
    letters = read_dead_letters(settings, topics, from_offset=from_offset)
    for letter in letters:
        key = letter.key.decode(errors="replace") if letter.key else "-"
        click.echo(f"{letter.offset}\t{letter.stage}\t{letter.error_class}\t"
                   f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}\tkey={key}\t{letter.message}")
    click.echo(f"{len(letters)} dead letters", err=True)
    if redrive:
        done = dl.redriven_up_to(settings, topics)
        fresh = [letter for letter in letters if letter.offset >= done]
        before = f" ({len(letters) - len(fresh)} re-driven before: not again)" if len(fresh) < len(letters) else ""
        click.echo(f"re-driven: {dl.redrive(settings, fresh, topics=topics)}{before}", err=True)


@main.command("status")
@click.option("--flow", "flow", type=FLOW, required=True,
              help="Flow name or flow YAML (with the YAML, lag per partition too: it names each stage's input).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
def status(flow: CommandFlow, as_json: bool) -> None:
    """Per stage: members, throughput, lag per partition; per shard: documents, vectors, offsets; dead letters."""
    import dataclasses
    import json

    from streams.ops.status import collect_status, collect_status_by_name, format_status

    settings = _connect(flow, STATUS, check=flow.spec is not None)  # a name is checked as it is collected
    report = collect_status(settings, flow.spec) if flow.spec else collect_status_by_name(settings, flow.name)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2))
        return
    for line in format_status(report):
        click.echo(line)


@main.command("replay")
@click.argument("flow_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--stage", type=click.Choice(STATEFUL_KINDS), default=STATEFUL_KINDS[0], show_default=True,
              help="The stateful stage to rebuild.")
@click.option("--from-beginning", "from_beginning", is_flag=True, help="Delete the shards and rebuild them (default).")
@click.option("--from-timestamp", "from_timestamp", default=None,
              help="Apply records from this time on again, over the current state: ISO 8601 or epoch milliseconds.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="Overrides the flow's state_dir for shard state and logs (the local broker's log stays under the YAML's).")
def replay(flow_path: Path, stage: str, from_beginning: bool, from_timestamp: str | None,
           state_dir: Path | None) -> None:
    """Rebuild the index from <flow>.encoded (no re-encoding); the index stage must be stopped."""
    from streams.local.runtime import durable_local_broker

    if from_beginning and from_timestamp:
        raise click.UsageError("--from-beginning and --from-timestamp exclude each other")
    flow = _spec(flow_path, state_dir)
    require_stage_extras(flow, [stage])
    from streams.ops.replay import replay_index  # the shard's FAISS and RocksDB: after the check that names their extra
    logging.getLogger("streams").setLevel(logging.WARNING)
    with durable_local_broker(flow, flow_path) as broker:  # the flow may be stopped: its broker with it
        settings = KafkaSettings(broker.bootstrap_servers, {**broker.extra, "logger": QUIET_LIBRDKAFKA})
        result = replay_index(flow, settings, from_timestamp_ms=_epoch_ms(from_timestamp) if from_timestamp else None)
    click.echo(f"replayed {result.records} records of {flow.input_topic(stage)} in {result.seconds:.1f}s into "
               f"{flow.state_dir / flow.topics.prefix / stage}")
    for partition in sorted(result.documents):
        click.echo(f"  shard {partition}: {result.documents[partition]} documents, {result.vectors[partition]} vectors")
    if result.skipped:  # each one logged with its offset and error above
        click.echo(f"  skipped {result.skipped} bad record(s), as the live stage did (see `streamsearch dead-letters`)")


@main.command("reindex")
@click.option("--flow", "flow_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The new version's flow YAML: same name, a higher `version:`, new executors.")
@click.option("--run/--no-run", "run_stages", default=True, show_default=True,
              help="Run the new version's stages here, supervised (--no-run: they are deployed elsewhere).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="Overrides the flow's state_dir.")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Give up waiting after this many seconds.")
@click.option("--allow-dead-letters", is_flag=True,
              help="Switch even if the new version dead-lettered documents (they would not be found).")
def reindex(flow_path: Path, run_stages: bool, state_dir: Path | None, timeout_s: float | None,
            allow_dead_letters: bool) -> None:
    """Build a new index version from <flow>.ingest and switch queries to it once it has caught up;
    the serving version answers until then."""
    from contextlib import nullcontext

    from streams.ops.reindex import plan_reindex, switch_when_caught_up
    from streams.local.supervisor import LocalFlow, stage_logs_shown

    flow = _spec(flow_path, state_dir)
    flow.check_dimensions()
    logging.getLogger("streams").setLevel(logging.WARNING)
    settings = _command_settings(flow.kafka)
    plan = plan_reindex(settings, flow)
    click.echo(f"building version {flow.version} of flow {flow.name!r} from {plan.records} records of "
               f"{flow.topics.ingest}; version {plan.serving.version} serves meanwhile", err=True)
    stages = (LocalFlow(flow, flow_path=flow_path, bootstrap_servers=settings.bootstrap_servers,
                        label=f"v{flow.version}") if run_stages else nullcontext())
    with stages:
        try:
            result = switch_when_caught_up(settings, plan, timeout_s=timeout_s, allow_dead_letters=allow_dead_letters)
        except StreamsearchError as exc:
            if run_stages:  # leaving this block stops them: say so, the advice in exc assumes they run
                raise StreamsearchError(f"{exc} (version {flow.version}'s stages stop with this command; its "
                                        "topics and state stay, and a rerun of the same flow resumes)") from exc
            raise
        if result.dead_letters:
            click.echo(f"version {result.version} dead-lettered {result.dead_letters} records "
                       f"(`streamsearch dead-letters --flow {flow_path}`)", err=True)
        click.echo(f"version {result.version} of flow {flow.name!r} serves queries now (was {result.previous}); "
                   f"caught up in {result.seconds:.1f}s. Stop version {result.previous}'s stages when you no longer "
                   f"want to switch back (`streamsearch versions --flow {flow.name} --serve {result.previous}`).")
        if run_stages:
            click.echo(f"version {result.version}'s stages run here (logs in {stage_logs_shown(flow)}): keep this "
                       f"running. Ctrl-C stops them, and with them the serving version, until they run elsewhere "
                       f"(`streamsearch run {flow_path} --stage ...`).")
            _wait_for_signal()


@main.command("versions")
@click.option("--flow", type=FLOW, required=True, help="Flow name or flow YAML.")
@click.option("--serve", "serve_version", type=int, default=None, help="Switch queries to this version now.")
@click.option("--force", is_flag=True, help="Switch even if no process runs some stage of that version.")
def versions(flow: CommandFlow, serve_version: int | None, force: bool) -> None:
    """Show which index version of a flow serves queries, or switch it (e.g. back after a reindex)."""
    from streams.ops.status import require_running_version, versions_report
    from streams.ops.versions import read_serving, switch_serving

    settings = _connect(flow)
    if serve_version is not None and serve_version < 1:
        raise click.BadParameter("versions start at 1", param_hint="--serve")
    if serve_version is not None and not force:
        require_running_version(settings, flow.name, serve_version)  # else every search would wait out its deadline
    serving = switch_serving(settings, flow.name, serve_version) if serve_version else read_serving(settings, flow.name)
    for line in versions_report(settings, flow.name, serving):
        click.echo(line)


def _epoch_ms(value: str) -> int:
    """Epoch milliseconds from digits or an ISO 8601 time (UTC when it names no zone)."""
    import datetime

    if value.isdigit():
        return int(value)
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is neither epoch milliseconds nor ISO 8601") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp() * 1000)


@main.command("eval")
@click.option("--beir", "beir_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--flow", "flow_path", type=click.Path(path_type=Path), default=None, help="Flow YAML (default: the example flow beir.yml, streams/flows/).")
@click.option("--limit-queries", type=int, default=None, help="Evaluate only the first N test queries.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@retrieval_options(retrieval=RETRIEVALS[0], fusion=DEFAULT_FUSION, multiple=True)
def evaluate(beir_dir: Path, flow_path: Path | None, limit_queries: int | None, state_dir: Path | None,
             retrieval: tuple[str, ...], fusion: str) -> None:
    """Index a BEIR folder through the pipeline, send its test queries, print nDCG@10 and recall@100.
    With --retrieval lexical and/or hybrid (repeatable), the same index answers dense too, and a 95 %
    paired bootstrap interval of each one's nDCG@10 difference to dense is printed."""
    from streams.demo.beir import DEFAULT_EVAL_FLOW, run_eval

    logging.getLogger().setLevel(logging.WARNING)
    report = run_eval(beir_dir, flow_path=flow_path or DEFAULT_EVAL_FLOW, state_dir=state_dir,
                      limit_queries=limit_queries, retrievals=retrieval, fusion=fusion)
    for line in report.lines():
        click.echo(line)


if __name__ == "__main__":
    main()
