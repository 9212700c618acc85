"""``streamsearch run``: a flow's stages, supervised here or joining a running flow, until a signal stops them."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import click

from streams.cli.flowref import _command_settings, _spec
from streams.cli.group import BROKER_OPTION, main, stop_on_sigterm
from streams.exceptions import BrokerError
from streams.kafka.admin import check_broker, ensure_topics
from streams.kafka.settings import KafkaSettings
from streams.local.brokers import BrokerKind
from streams.stages.extras import require_stage_extras
from streams.stages.kinds import KINDS


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
            from processors.index.huge_pages import start_collapsing
            from streams.local.supervisor import stop_with_supervisor
            from streams.runtime.heap import fix_mmap_threshold, freeze_startup_heap
            from streams.runtime.loop import StageLoop
            from streams.stages.kinds import build_stage

            loop = StageLoop(build_stage(flow, stage, settings), settings)
            loop.install_signal_handlers()
            stop_with_supervisor(loop.stop)
            freeze_startup_heap()  # its model, modules and stage: never walked by a full collection
            if KINDS[stage].holds_vectors:
                fix_mmap_threshold()
                start_collapsing()  # its vectors into huge pages whenever its writes pause
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


SIGNAL_CHECK_S = 0.2
"""How often the waiting main thread wakes to run a pending signal handler."""


def _wait_for_signal() -> None:
    """Until Ctrl-C or SIGTERM. Not ``signal.pause()``: it returns only for a signal delivered to the main
    thread, and Linux may deliver a process's SIGINT to any thread (the supervisor's watcher): the handler,
    which CPython runs on the main thread, then waited until the next signal (a CI run's ``run`` outlived its
    SIGINT by 60 s, until the test's SIGUSR1 woke it). A short sleep lets the handler run within 0.2 s."""
    stop_on_sigterm()  # as every command sets them; again for a caller that is not one
    try:
        while True:
            time.sleep(SIGNAL_CHECK_S)
    except KeyboardInterrupt:
        pass
