"""``streamsearch status``: what each stage and shard of a running flow is doing.

Lag is computed here, from the groups' committed offsets and the high watermark of fetch
responses (the embedded broker's ListOffsets is wrong), so a stopped stage shows its true
lag. Members, throughput and shard contents come from the reports stage processes publish
on ``<flow>.status``; a report older than ``STALE_AFTER_S`` is a process that is gone.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka.admin import AdminClient, ConsumerGroupDescription

from streams.kafka.admin import (START_HINT, TopicDescription, check_broker, describe_topics, require_flow,
                                 topic_warnings)
from streams.exceptions import BrokerError, ReadTimeoutError, SerdeError
from streams.flow.spec import FlowSpec
from streams.stages.kinds import ANSWERING_KINDS, JOIN, KINDS, QUERY_PATH_KINDS, STAGE_TOPIC_ROLES, STATEFUL_KINDS
from streams.kafka.settings import KafkaSettings
from streams.kafka.consumer import headers_of
from streams.kafka.reader import fetch_high_watermarks, read_to_end
from streams.wire.codec import STAGE_STATUS
from streams.wire.records import ServingVersion, StageStatus
from streams.wire.topics import PARTIALS, QUERY, FlowTopics
from streams.ops.versions import existing_versions, read_serving

__all__ = ["PartitionLag", "StageState", "FlowStatus", "collect_status", "collect_status_by_name", "format_status",
           "require_flow", "require_running_version", "running_stages", "versions_report", "why_no_reply",
           "STALE_AFTER_S", "START_HINT"]

STALE_AFTER_S = 15.0

PROBE_TIMEOUT_S = 5.0
"""How long each broker read that explains a missing reply may wait (``why_no_reply``). A frozen broker (a
network partition: connections open, nothing answers) answers none, and librdkafka's own request timeout
is a minute: the bridge's 503 for a 2 s search came after 144 s, three group descriptions in a row."""


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int
    high_watermark: int
    lag: int


@dataclass(slots=True)
class StageState:
    stage: str
    group: str
    members: int
    throughput: float
    lag: list[PartitionLag] = field(default_factory=list)
    reports: list[StageStatus] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.lag)


@dataclass(slots=True)
class FlowStatus:
    flow: str
    stages: list[StageState]
    shards: list[dict[str, Any]]
    dead_letters: int
    version: int = 1
    serving_version: int = 1
    """The version ``<flow>.versions`` names: queries go there, whichever version this status is of."""
    brokers: int = 0
    topics: list[TopicDescription] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Unsafe topic settings for production (replication 1 on a cluster, unclean leader election),
    and shards that may be missing documents."""
    note: str | None = None
    """What this report leaves out and why (a flow known by its name only, not its YAML)."""


def collect_status(settings: KafkaSettings, flow: FlowSpec, *, timeout: float = 15.0) -> FlowStatus:
    """Read groups, offsets, watermarks and the latest live reports of every stage."""
    topics = flow.topics
    inputs = {s.name: _lag_input(flow, s.name) for s in flow.stages}
    partitions = {topic: topics.partitions for topic in inputs.values()} | {topics.dead_letter: 1}
    highs = fetch_high_watermarks(settings, partitions, timeout)
    admin = AdminClient(settings.base())
    reports = _live_reports(settings, topics.status, highs_timeout=timeout)
    stages = []
    for stage in flow.stages:
        group = topics.group(stage.name)
        topic = inputs[stage.name]
        committed = _committed(admin, group, topic, topics.partitions, timeout)
        lag = _records_behind(settings, [
            PartitionLag(topic, p, committed[p], highs[(topic, p)], max(0, highs[(topic, p)] - max(committed[p], 0)))
            for p in range(topics.partitions)], timeout=min(timeout, 5.0))
        mine = [r for r in reports if r.stage == stage.name]
        # The embedded broker describes its groups with no members: live reports count them too.
        members = max(_members(admin, group, timeout), len({r.member for r in mine}))
        stages.append(StageState(stage.name, group, members, sum(r.rate for r in mine), lag, mine))
    shards = _shards(reports)
    serving = read_serving(settings, flow.name, timeout=timeout)
    brokers = len(admin.list_topics(timeout=timeout).brokers)
    described = describe_topics(settings, [shape.name for shape in topics.shapes()], timeout=timeout)
    return FlowStatus(flow.name, stages, shards, highs[(topics.dead_letter, 0)], flow.version,
                      serving.version if serving else 1, brokers, described,
                      topic_warnings(described, brokers) + shard_warnings(shards))


def _lag_input(flow: FlowSpec, stage: str) -> str:
    """The topic a stage's lag is measured on: its index path's input, else its query path's."""
    kind = KINDS[stage]
    return flow.input_topic(stage) if kind.index_path else flow.topics.name(kind.query_reads) if kind.query_reads else ""


def _shards(reports: list[StageStatus]) -> list[dict[str, Any]]:
    """The shards the live reports of stateful stages hold, each with its owner, by partition."""
    return sorted((dict(dataclasses.asdict(s), owner=r.member) for r in reports if r.stage in STATEFUL_KINDS
                   for s in r.shards), key=lambda s: s["partition"])


def collect_status_by_name(settings: KafkaSettings, flow: str, *, timeout: float = 15.0) -> FlowStatus:
    """What can be known of a running flow from its name alone: the serving version's topics,
    the stages and shards that report live, dead letters. Lag needs each stage's input topic,
    which only the flow's YAML says (``note`` says so).

    :raises BrokerError: if the broker is unreachable or has no such flow.
    """
    existing = require_flow(settings, FlowTopics(flow, 1), timeout=timeout)
    serving = read_serving(settings, flow, timeout=timeout)
    version = serving.version if serving else 1
    topics = FlowTopics(flow, existing[f"{flow}.ingest"], version, STAGE_TOPIC_ROLES)  # every kind's own, as a YAML's
    admin = AdminClient(settings.base())
    reports = _live_reports(settings, topics.status, highs_timeout=timeout) if topics.status in existing else []
    stages = []
    for name in KINDS:
        mine = [r for r in reports if r.stage == name]
        members = max(_members(admin, topics.group(name), timeout), len({r.member for r in mine}))
        if members:
            stages.append(StageState(name, topics.group(name), members, sum(r.rate for r in mine), [], mine))
    shards = _shards(reports)
    dead_letters = (fetch_high_watermarks(settings, {topics.dead_letter: 1}, timeout)[(topics.dead_letter, 0)]
                    if topics.dead_letter in existing else 0)
    brokers = len(admin.list_topics(timeout=timeout).brokers)
    described = describe_topics(settings, [shape.name for shape in topics.shapes()], timeout=timeout)
    return FlowStatus(flow, stages, shards, dead_letters, version, version, brokers, described,
                      topic_warnings(described, brokers) + shard_warnings(shards),
                      note="known by name only: stages that report live, no lag per partition "
                           "(give the flow's YAML for everything `streamsearch status` shows)")


def running_stages(settings: KafkaSettings, topics: FlowTopics, stages: tuple[str, ...], *,
                   timeout: float = 10.0) -> set[str]:
    """Which of ``stages`` of a flow version have a live process: a member in the consumer
    group of its query path, or else (the memory-only broker describes no members) a recent
    report on ``<flow>.status``."""
    admin = AdminClient(settings.base())
    # A shard's search path assigns itself its partitions (no group): its index path's group says.
    members = {stage: _described_members(admin, topics.group(stage) + KINDS[stage].liveness_suffix, timeout)
               for stage in stages}
    running = {stage for stage, count in members.items() if count}
    if any(count is None for count in members.values()):
        reports = _live_reports(settings, topics.status, highs_timeout=timeout)
        running |= {r.stage for r in reports if members.get(r.stage, 0) is None}
    return running


def expected_stages(settings: KafkaSettings, topics: FlowTopics, stages: tuple[str, ...], *,
                    timeout: float = 10.0) -> tuple[str, ...]:
    """``stages`` (query-path or answering kinds) as this flow version runs them: in a flow without a
    model the join stage's consumer also reads the query topic and fans out, so no encode stage is
    expected. Told from the join group's assignment; when the broker cannot describe it, all of them."""
    admin = AdminClient(settings.base())
    group = topics.group(JOIN.name)
    try:
        members = _describe_group(admin, group, timeout).members
    except Exception:  # unknown group, a broker that does not describe groups or not in time: expect every stage
        return stages
    read = {tp.topic for member in members if member.assignment for tp in member.assignment.topic_partitions}
    return tuple(s for s in stages if not (topics.query in read and KINDS[s].query_reads == QUERY))


def require_running_version(settings: KafkaSettings, name: str, version: int) -> None:
    """Check that ``version`` of flow ``name`` could answer searches: its topics exist and every
    stage of the query path has a live process.

    :raises UnknownFlowError: if the version has no topics.
    :raises BrokerError: naming the stages no process runs.
    """
    target = FlowTopics(name, 1, version)
    require_flow(settings, target, QUERY, PARTIALS)
    stages = expected_stages(settings, target, QUERY_PATH_KINDS)
    running = running_stages(settings, target, stages)
    missing = [stage for stage in stages if stage not in running]
    if missing:
        raise BrokerError(f"no process runs the {', '.join(missing)} stage(s) of version {version} of flow "
                          f"{name!r}: start them (`streamsearch run` of its YAML joins this directory's broker), "
                          "or pass --force")


def versions_report(settings: KafkaSettings, name: str, serving: ServingVersion | None) -> list[str]:
    """``streamsearch versions`` as lines: which version serves since when, then each version's running stages."""
    if serving is None:
        lines = [f"flow {name!r}: version 1 serves (no version named yet)"]
    else:
        since = datetime.datetime.fromtimestamp(serving.since_ms / 1000,
                                                datetime.UTC).isoformat(timespec="seconds")
        previous = f"; replaced version {serving.previous}" if serving.previous is not None else ""
        lines = [f"flow {name!r}: version {serving.version} serves since {since} ({serving.reason}{previous})"]
    serving_version = serving.version if serving else 1
    for version in existing_versions(settings, name):
        topics = FlowTopics(name, 1, version)
        stages = expected_stages(settings, topics, QUERY_PATH_KINDS)
        running = running_stages(settings, topics, stages)
        state = (f"stages running: {', '.join(s for s in stages if s in running)}" if running
                 else "no stage runs")
        warning = "  <- serving, but no stage answers: searches get no reply" \
            if version == serving_version and not running else ""
        lines.append(f"  version {version}{' (serving)' if version == serving_version else ''}: {state}{warning}")
    return lines


def why_no_reply(settings: KafkaSettings, topics: FlowTopics, timeout_s: float) -> str:
    """Why a search of ``topics``' version got no reply by its deadline, in one line that says what
    to run: no stage runs (and, when the serving version is one nobody runs while another version
    does, which command switches back), one answering stage is missing, or the deadline was short."""
    name, where = topics.flow, settings.bootstrap_servers
    check_broker(settings, timeout=PROBE_TIMEOUT_S)  # a broker that does not answer: BrokerError, not a minute a read
    running = running_stages(settings, topics, ANSWERING_KINDS, timeout=PROBE_TIMEOUT_S)
    if not running:
        others = [v for v in existing_versions(settings, name) if v != topics.version
                  and running_stages(settings, FlowTopics(name, topics.partitions, v), ANSWERING_KINDS,
                                     timeout=PROBE_TIMEOUT_S)]
        if others:
            return (f"no reply: version {topics.version} of flow {name!r} serves queries but none of its stages "
                    f"runs on {where}; version {others[-1]} runs: switch back with `streamsearch versions --flow "
                    f"{name} --serve {others[-1]}`, or start version {topics.version}'s stages (`streamsearch run` "
                    f"of its YAML)")
        return f"no reply: no stage of flow {name!r} is running on {where}; {START_HINT}"
    expected = expected_stages(settings, topics, ANSWERING_KINDS, timeout=PROBE_TIMEOUT_S)
    if set(expected) - running:
        missing = " and ".join(sorted(set(expected) - running))
        return (f"no reply: the {missing} stage of flow {name!r} is not running on {where} "
                f"(see `streamsearch status`)")
    return (f"no reply within {timeout_s:g}s: flow {name!r} runs, the deadline was too short for it; "
            "raise the timeout")


def format_status(report: FlowStatus) -> list[str]:
    """``streamsearch status`` as lines: the flow, then tables of stages, shards and topics, then warnings."""
    serving = ("serving" if report.serving_version == report.version
               else f"not serving: version {report.serving_version} is")
    lines = [f"flow {report.flow} version {report.version} ({serving})    dead letters: {report.dead_letters}",
             f"{'stage':<8} {'members':>7} {'records/s':>10} {'lag':>7}  per partition"]
    for st in report.stages:
        per = " ".join(f"{p.partition}:{p.lag}" for p in st.lag)
        lines.append(f"{st.stage:<8} {st.members:>7} {st.throughput:>10.1f} {st.total_lag:>7}  {per}")
    lines.append(f"{'shard':<6} {'state':<9} {'documents':>9} {'vectors':>8} {'encoded@':>9} {'ingest@':>8}  "
                 "index types  owner")
    for sh in report.shards:
        state = "restoring" if sh.get("restoring") else "serving"
        lines.append(f"{sh['partition']:<6} {state:<9} {sh['documents']:>9} {sh['vectors']:>8} "
                     f"{sh['encoded_offset']:>9} {sh['ingest_offset']:>8}  {','.join(sh['index_types']):<11}  {sh['owner']}")
    lines.append(f"{'topic':<28} {'parts':>5} {'RF':>3} {'min.isr':>7} {'max.message.bytes':>17}  cleanup  retention.ms"
                 f"    ({report.brokers} broker{'s' if report.brokers != 1 else ''})")
    for tp in report.topics:
        cfg = tp.config
        lines.append(f"{tp.name:<28} {tp.partitions:>5} {tp.replication_factor:>3} "
                     f"{cfg.get('min.insync.replicas', '-'):>7} {cfg.get('max.message.bytes', '-'):>17}  {cfg.get('cleanup.policy', '-'):<7}  "
                     f"{cfg.get('retention.ms', '-')}")
    lines += [f"warning: {warning}" for warning in report.warnings]
    lines += [f"note: {report.note}"] if report.note else []
    return lines


COUNTED_LAG = 10_000
"""Up to this many offsets behind, lag is counted record by record (see ``_records_behind``)."""


def _records_behind(settings: KafkaSettings, lags: list[PartitionLag], *, timeout: float) -> list[PartitionLag]:
    """Lag in records, not offsets: a transaction's commit marker takes an offset that no consumer
    ever receives, so an exactly-once stage that is caught up sits one offset behind the high
    watermark of its input for good. Where the gap is small, the records a read_committed consumer
    sees past the committed offset are counted; a larger gap keeps the offset difference (markers
    are then noise), and so does a partition not read to its end within ``timeout``.
    """
    small = {(g.topic, g.partition): g for g in lags if 0 < g.lag <= COUNTED_LAG}
    if not small:
        return lags
    counted = dict.fromkeys(small, 0)
    ended = set(small)
    try:
        for msg in read_to_end(settings, [TopicPartition(t, p, max(g.committed, 0)) for (t, p), g in small.items()],
                               group_id=f"status.{uuid.uuid4().hex[:8]}", timeout=timeout, read_committed=True,
                               until={key: g.high_watermark for key, g in small.items()}):
            counted[(msg.topic(), msg.partition())] += 1
    except ReadTimeoutError as exc:
        ended -= exc.unfinished
    return [dataclasses.replace(g, lag=counted[(g.topic, g.partition)]) if (g.topic, g.partition) in ended else g
            for g in lags]


def _committed(admin: AdminClient, group: str, topic: str, count: int, timeout: float) -> dict[int, int]:
    """:raises KafkaException: when the broker refuses it; ``BrokerError`` when it does not answer in time."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(count)])
    result = _answer(admin.list_consumer_group_offsets([request], request_timeout=timeout)[group], timeout,
                     f"list the committed offsets of group {group}")
    found = {tp.partition: tp.offset for tp in result.topic_partitions}
    return {p: found.get(p, -1) for p in range(count)}


def _describe_group(admin: AdminClient, group: str, timeout: float) -> ConsumerGroupDescription:
    """The broker's description of a consumer group, within ``timeout`` (librdkafka's default is a minute).

    :raises KafkaException: when the broker refuses it; ``BrokerError`` when it does not answer in time.
    """
    return _answer(admin.describe_consumer_groups([group], request_timeout=timeout)[group], timeout,
                   f"describe consumer group {group}")


def _answer(future: concurrent.futures.Future[Any], timeout: float, what: str) -> Any:
    """An admin request's result, waited for a second longer than its ``request_timeout``.

    :raises BrokerError: naming ``what`` when no answer came in time.
    """
    try:
        return future.result(timeout=timeout + 1)
    except TimeoutError as exc:
        raise BrokerError(f"the broker did not {what} within {timeout:g}s") from exc


def _described_members(admin: AdminClient, group: str, timeout: float) -> int | None:
    """The group's members as the broker describes them; None when it cannot tell: an error, or
    no members in a state other than empty or dead (the memory-only broker describes live groups
    as stable, or unknown, with no members)."""
    try:
        described = _describe_group(admin, group, timeout)
    except Exception:
        return None
    if not described.members and described.state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
        return None
    return len(described.members)


def _members(admin: AdminClient, group: str, timeout: float) -> int:
    try:
        return len(_describe_group(admin, group, timeout).members)
    except Exception:  # an unknown group has no members (nor one the broker did not describe in time)
        return 0


def decode_report(msg: Message) -> StageStatus | None:
    """A stage's report, or None for one written with another schema (a process of an older
    release, still on the compacted topic): it is not misread."""
    try:
        return STAGE_STATUS.decode_record(msg.value(), headers_of(msg))
    except SerdeError:
        return None


def shard_warnings(shards: list[dict[str, Any]]) -> list[str]:
    """One line per shard that may be missing documents, saying how many and why."""
    return [f"shard {shard['partition']} may be missing up to {shard['missing']} documents: {shard['missing_reason']}"
            for shard in shards if shard.get("missing")]


def _live_reports(settings: KafkaSettings, topic: str, *, highs_timeout: float) -> list[StageStatus]:
    """The latest report of each stage process, if it is recent."""
    latest: dict[bytes, StageStatus] = {}
    try:
        for msg in read_to_end(settings, [TopicPartition(topic, 0, 0)], group_id=f"status.{uuid.uuid4().hex[:8]}",
                               timeout=highs_timeout):
            if msg.value() is not None:
                report = decode_report(msg)
                if report is not None:
                    latest[msg.key()] = report
    except ReadTimeoutError:
        pass  # the reports read in time
    now_ms = time.time() * 1000
    return [r for r in latest.values() if now_ms - r.ts_ms <= STALE_AFTER_S * 1000]
