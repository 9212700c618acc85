"""``streamsearch reindex``: build a new index version from the ingest topic, then switch queries.

The new version (a flow YAML with a higher ``version:``, new model or segmentation) gets its
own topics, groups and shard state, and reads the shared ``<flow>.ingest`` from the
beginning: the ingest topic is the source of truth, which is why it keeps everything. The
serving version goes on answering meanwhile. "Caught up" is checked end to end: a search on
the new version that must see every ingest record that existed when the reindex started
(``min_offsets``, the read-your-writes wait of each shard) comes back complete, with no shard
restoring or stale. Only then does ``<flow>.versions`` name the new version, and clients
follow (``streams/ops/versions.py``). Records written during the reindex reach both versions.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import TopicPartition
from tqdm import tqdm

from processors.settings import settings_repr
from streams.kafka.admin import ensure_topics
from streams.client import Client, IndexReceipt
from streams.client.dead_letters import read_dead_letters
from streams.wire.dead_letters import DeadLetter
from streams.exceptions import FlowConfigError, RequestTimeoutError, StreamsearchError
from streams.flow.spec import FlowSpec
from streams.stages.kinds import KINDS, STATEFUL_KINDS
from streams.kafka.settings import KafkaSettings
from streams.kafka.reader import TopicReader, fetch_high_watermarks
from streams.wire.records import SearchReply, ServingVersion, StageStatus
from streams.ops.status import STALE_AFTER_S, decode_report
from streams.ops.versions import publish_build, publish_serving, read_builds, read_serving

__all__ = ["ReindexPlan", "ReindexResult", "plan_reindex", "index_path_dead_letters", "switch_when_caught_up",
           "wait_caught_up"]

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
"""Deadline of each catch-up probe: a shard still behind holds it until just before."""
PROBE_INTERVAL_S = 1.0
"""At most one probe per second, however fast a restoring shard answers."""


@dataclass(frozen=True, slots=True)
class ReindexPlan:
    """What the new version must reach: every ingest partition's high watermark at the start."""

    flow: FlowSpec
    serving: ServingVersion
    targets: dict[int, int]

    @property
    def records(self) -> int:
        return sum(self.targets.values())


@dataclass(frozen=True, slots=True)
class ReindexResult:
    version: int
    previous: int
    records: int
    seconds: float
    dead_letters: int = 0


def plan_reindex(settings: KafkaSettings, flow: FlowSpec) -> ReindexPlan:
    """Check that ``flow`` can be built beside the serving version, create its topics and take
    the ingest high watermarks it must reach.

    :raises StreamsearchError: if the flow has no ingest topic (nothing to reindex), or its
        version is not above the serving one, or its shard count differs from the ingest topic's.
    """
    topics = flow.topics
    highs = _ingest_highs(settings, flow)
    serving = read_serving(settings, flow.name)
    if serving is None:  # a flow that has only ever had version 1 and never named it
        serving = publish_serving(settings, flow.name, 1, previous=None, reason="serving before a reindex")
    if flow.version <= serving.version:
        where = f"{flow.source}: " if flow.source else ""
        raise FlowConfigError(f"{where}version {flow.version} is not above the serving version {serving.version} of "
                              f"flow {flow.name!r}: set `version: {serving.version + 1}` in the new flow YAML")
    built_with = read_builds(settings, flow.name).get(flow.version)
    fingerprint = executors_fingerprint(flow)
    if built_with is not None and built_with != fingerprint:
        raise FlowConfigError(f"version {flow.version} of flow {flow.name!r} was built before with other executors; "
                              f"its topics and state hold their output: give the new flow YAML a new `version:`")
    ensure_topics(settings, topics.shapes(), topic_settings=flow.topic_settings,  # checks the shard count
                  max_payload_bytes=flow.max_payload_bytes)
    if built_with is None:
        publish_build(settings, flow.name, flow.version, fingerprint)
    targets = {p: highs[(topics.ingest, p)] for p in range(topics.partitions)}
    logger.info("reindex planned", extra={"flow": flow.name, "version": flow.version, "serving": serving.version,
                                          "ingest_records": sum(targets.values())})
    return ReindexPlan(flow, serving, targets)


def executors_fingerprint(flow: FlowSpec) -> str:
    """What decides a version's index content: each stage's executor and settings. A rerun
    with the same ones resumes the build; other ones must not write into it."""
    content = [(s.name, s.uses, settings_repr(s.config), s.filter_by) for s in flow.stages if KINDS[s.name].index_path]
    return hashlib.sha256(repr((content, flow.shards)).encode()).hexdigest()


def _ingest_highs(settings: KafkaSettings, flow: FlowSpec) -> dict[tuple[str, int], int]:
    from confluent_kafka.admin import AdminClient

    ingest = flow.topics.ingest
    found = AdminClient(settings.base()).list_topics(timeout=10).topics.get(ingest)
    if found is None or found.error is not None:
        raise StreamsearchError(f"flow {flow.name!r} has no topic {ingest} on {settings.bootstrap_servers}: "
                                "nothing to reindex (start the flow first with `streamsearch run`)")
    if len(found.partitions) != flow.topics.partitions:
        raise FlowConfigError(f"{ingest} has {len(found.partitions)} partitions but version {flow.version} has "
                              f"{flow.topics.partitions} shards: a version keeps the ingest topic's partition count")
    return fetch_high_watermarks(settings, {ingest: flow.topics.partitions}, timeout=15)


def wait_caught_up(settings: KafkaSettings, plan: ReindexPlan, *, progress: bool = True,
                   timeout_s: float | None = None) -> list[str]:
    """Return once the new version answers complete searches that include every planned
    ingest record; the bar follows the shards' reported ingest offsets (status reports).

    :returns: the probe's errors if the shards report every record applied but searches fail
        (an index that cannot take the model's vectors): caught up, yet unable to serve.
    :raises StreamsearchError: if ``timeout_s`` passes first.
    """
    flow = plan.flow
    wanted = IndexReceipt({p: high - 1 for p, high in plan.targets.items() if high > 0})
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    bar = tqdm(total=plan.records, unit="record", desc=f"reindex v{flow.version}", disable=not progress)
    reports = _ShardReports(settings, flow.topics.status)
    probe = None
    try:
        probe = Client(flow.name, settings=settings, version=flow.version, timeout_s=PROBE_TIMEOUT_S)
        while True:
            applied = reports.applied_ingest_offsets()
            bar.update(sum(min(applied.get(p, -1) + 1, high) for p, high in plan.targets.items()) - bar.n)
            asked = time.monotonic()
            reply = _probe(probe, wanted)
            if reply is not None and not reply.partial and not reply.stale_shards and not reply.errors:
                bar.update(plan.records - bar.n)
                return []
            if reply is not None and reply.errors and all(applied.get(p, -1) >= offset
                                                          for p, offset in wanted.offsets.items()):
                return list(reply.errors)
            if deadline is not None and time.monotonic() > deadline:
                raise StreamsearchError(f"version {flow.version} of flow {flow.name!r} did not catch up within "
                                        f"{timeout_s:.0f}s; version {plan.serving.version} keeps serving")
            # A restoring shard answers at once: pace the probes, not the condition they test.
            time.sleep(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - asked)))
    finally:
        bar.close()
        if probe is not None:
            probe.close()
        reports.close()


def _probe(probe: Client, wanted: IndexReceipt) -> SearchReply | None:
    """One search that every shard answers only once it has applied ``wanted`` (or flags stale)."""
    try:
        return probe.search("reindex caught up?", top_k=1, after=wanted)
    except RequestTimeoutError:  # the new version's stages are still starting
        return None


class _ShardReports:
    """Follows a version's ``<prefix>.status`` for the shards' applied ingest offsets (progress only)."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self._reader = TopicReader(settings, group_id=f"{topic}.reindex.{uuid.uuid4().hex[:8]}")
        self._reader.assign([TopicPartition(topic, 0, 0)])
        self._latest: dict[bytes, StageStatus] = {}

    def applied_ingest_offsets(self) -> dict[int, int]:
        for msg in self._reader.poll(0.1).records:
            if msg.value() is not None and (report := decode_report(msg)) is not None:
                self._latest[msg.key()] = report
        fresh_after = time.time() * 1000 - STALE_AFTER_S * 1000
        applied: dict[int, int] = {}
        for report in self._latest.values():
            if report.stage not in STATEFUL_KINDS or report.ts_ms < fresh_after:
                continue
            for shard in report.shards:
                applied[shard.partition] = max(applied.get(shard.partition, -1), shard.ingest_offset)
        return applied

    def close(self) -> None:
        self._reader.close()


def switch_when_caught_up(settings: KafkaSettings, plan: ReindexPlan, *, progress: bool = True,
                          timeout_s: float | None = None, allow_dead_letters: bool = False) -> ReindexResult:
    """Wait until the new version (its stages started by the caller, here or elsewhere) has
    caught up, then name it the serving version. The previous version keeps running until its
    operator stops it: until then, ``streamsearch versions --serve`` switches back at once.

    :raises StreamsearchError: if the new version dead-lettered documents (a segmenter that
        fails, a model whose dimension the index does not take), so that switching would lose
        them from search (``allow_dead_letters`` accepts that), or if it answers searches with
        errors. An operator's ``versions --serve`` can still switch.
    """
    started = time.monotonic()
    errors = wait_caught_up(settings, plan, progress=progress, timeout_s=timeout_s)
    flow = plan.flow
    lost = index_path_dead_letters(settings, flow)
    problems = [f"answers searches with errors ({errors[0]})"] if errors else []
    if lost and not allow_dead_letters:
        first = lost[0]
        problems.insert(0, f"dead-lettered {len(lost)} records (first: stage {first.stage}: {first.error_class}: "
                           f"{first.message})")
    if problems:
        where = flow.source or flow.name
        anyway = (f"; to switch anyway (without them), `streamsearch reindex --flow {where} --allow-dead-letters` "
                  "resumes this version and switches" if lost and not allow_dead_letters and not errors else "")
        raise StreamsearchError(
            f"version {flow.version} caught up but {' and '.join(problems)}; version {plan.serving.version} keeps "
            f"serving. See `streamsearch dead-letters --flow {where}`{anyway}")
    publish_serving(settings, flow.name, flow.version, previous=plan.serving.version,
                    reason=f"reindex caught up on {plan.records} ingest records")
    logger.info("index version switched", extra={"flow": flow.name, "version": flow.version,
                                                 "previous": plan.serving.version, "dead_letters": len(lost)})
    return ReindexResult(flow.version, plan.serving.version, plan.records, time.monotonic() - started, len(lost))


def index_path_dead_letters(settings: KafkaSettings, flow: FlowSpec) -> list[DeadLetter]:
    """Records of the new version's index path that a stage could not process (bad queries,
    also dead-lettered there, do not count)."""
    topics = flow.topics
    sources = {topics.ingest} | {topics.name(kind.writes) for kind in KINDS.values() if kind.writes}
    return [letter for letter in read_dead_letters(settings, topics) if letter.source_topic in sources]
