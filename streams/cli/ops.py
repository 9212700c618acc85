"""The operator's commands on a flow: ``dead-letters``, ``status``, ``replay``, ``reindex`` and ``versions``."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from streams.cli.flowref import FLOW, CommandFlow, _command_settings, _connect, _spec
from streams.cli.group import main
from streams.cli.running import _wait_for_signal
from streams.exceptions import StreamsearchError
from streams.kafka.settings import QUIET_LIBRDKAFKA, KafkaSettings
from streams.stages.extras import require_stage_extras
from streams.stages.kinds import STATEFUL_KINDS
from streams.wire.topics import DEAD_LETTER, STATUS


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
    from streams.runtime.heap import fix_mmap_threshold, freeze_startup_heap
    logging.getLogger("streams").setLevel(logging.WARNING)
    freeze_startup_heap()  # a replay decodes millions of records: its modules never walked by a full collection
    fix_mmap_threshold()  # it builds the shards' FAISS indexes
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
