"""Topic names and shapes of a flow, as ARCHITECTURE.md fixes them, and the records each carries."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from streams.wire.codec import (DOCUMENT, LEXICAL_COUNT, PARTIAL_RESULT, REQUEST, SEARCH_REPLY, SERVING_VERSION,
                                STAGE_STATUS, VERSION_BUILD, Codec)

__all__ = ["FlowTopics", "TopicRole", "TopicShape", "TopicSettings", "FLOW_ROLES", "INGEST", "VERSIONS", "SEGMENTED",
           "ENCODED", "LEXICAL_STATS", "QUERY", "SEARCH", "PARTIALS", "DEAD_LETTER", "STATUS", "REPLY", "RECORD_OVERHEAD_BYTES"]

RECORD_OVERHEAD_BYTES = 64 * 1024
"""Room above ``max_payload_bytes`` in a topic's ``max.message.bytes`` for the record batch header,
the key and the headers (trace, offsets, dead-letter reasons)."""

KEPT = (("retention.ms", "-1"), ("retention.bytes", "-1"))
COMPACTED = (("cleanup.policy", "compact"),)


@dataclass(frozen=True, slots=True)
class TopicRole:
    """What one topic of a flow is for: its name, the records it carries and how it is created.

    Producers write through ``Codec.encode_record``, which adds the schema fingerprint header; every
    decoder of a topic reads through ``Codec.decode_record``, which refuses a record whose header
    names another schema. A stage kind that writes a topic of its own declares its role in its row
    (``streams.stages.kinds``); the flow creates it with the rest (:meth:`FlowTopics.shapes`).
    """

    name: str
    """The ``topics.config`` key of a flow YAML."""
    codecs: tuple[Codec[Any], ...]
    """The record types it carries (several: told apart by key); empty: a record of any topic, kept as it came."""
    config: tuple[tuple[str, str], ...] = ()
    """Topic configs it is created with, under the flow's ``topics.config`` for it."""
    suffix: str = ""
    """The topic name after the flow's prefix; empty: ``name``."""
    shared: bool = False
    """Named ``<flow>.<suffix>`` and shared by every version, not ``<flow>.vN.<suffix>``."""
    partitioned: bool = True
    """Has the index path's partition count (partition p feeds shard p); else one partition."""


INGEST = TopicRole("ingest", (DOCUMENT,), KEPT, shared=True)
"""The source of truth a re-encode starts from: kept forever."""
VERSIONS = TopicRole("versions", (SERVING_VERSION, VERSION_BUILD), COMPACTED, shared=True, partitioned=False)
"""Which version serves (key ``serving``) and what each was built from (``build/v<N>``)."""
SEGMENTED = TopicRole("segmented", (DOCUMENT,))
ENCODED = TopicRole("encoded", (DOCUMENT,), COMPACTED)
"""The index's changelog: compacted."""
LEXICAL_STATS = TopicRole("lexical_stats", (LEXICAL_COUNT,), COMPACTED, suffix="lexical-stats")
"""Each shard's own lexical statistics (partition p: shard p's), absolute and compacted: the fan-out sums
the partitions into the corpus-wide statistics a request carries, so every shard scores alike."""
QUERY = TopicRole("query", (REQUEST,), (("message.timestamp.type", "LogAppendTime"),))
"""Stamped with the broker's clock: a request's deadline counts from then, whatever the client's clock
says (``streams.stages.fanout.flow_deadline_ms``)."""
SEARCH = TopicRole("search", (REQUEST,))
PARTIALS = TopicRole("partials", (PARTIAL_RESULT,))
DEAD_LETTER = TopicRole("dead_letter", (), KEPT, suffix="dead-letter", partitioned=False)
STATUS = TopicRole("status", (STAGE_STATUS,), COMPACTED, partitioned=False)
REPLY = TopicRole("reply", (SEARCH_REPLY,), partitioned=False)
"""A client's reply topic (:meth:`FlowTopics.new_reply_topic`): not one of a flow's own topics."""

FLOW_ROLES: tuple[TopicRole, ...] = (INGEST, VERSIONS, SEGMENTED, ENCODED, LEXICAL_STATS, QUERY, SEARCH, PARTIALS,
                                     DEAD_LETTER, STATUS)
"""Every flow's topics, in data-flow order; a stage kind may add its own (``FlowTopics.stage_roles``)."""


@dataclass(frozen=True, slots=True)
class TopicShape:
    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = ()
    role: str = ""
    """A :class:`TopicRole`'s name: which ``topics.config`` entry of the flow applies."""


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """The ``topics:`` section of a flow YAML: how the topics ``run`` creates are replicated and
    configured. Topics that exist already are left as they are (``status`` shows and checks them).

    ``replication_factor`` None means 3 on a cluster of 3 or more brokers, else the broker count;
    ``min_insync_replicas`` None means 2 with a replication factor of 3 or more, else 1.
    ``config`` maps a role (:class:`TopicRole` name) to Kafka topic configs that override the defaults
    (``ingest`` kept forever, ``encoded``/``status``/``versions`` compacted, ``max.message.bytes``
    from ``max_payload_bytes``).
    """

    replication_factor: int | None = None
    min_insync_replicas: int | None = None
    config: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def replication_for(self, brokers: int) -> int:
        return self.replication_factor or min(3, max(brokers, 1))

    def min_insync_for(self, replication: int) -> int:
        return self.min_insync_replicas or (2 if replication >= 3 else 1)


REPLY_INFIX = ".reply."
"""Reply topics are ``<flow>.reply.<random>``."""

_LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
"""What Kafka accepts as a topic name (``org.apache.kafka.common.internals.Topic``)."""


@dataclass(frozen=True, slots=True)
class FlowTopics:
    """Every topic of one version of a flow. The index path (ingest, segmented, encoded,
    search) shares one partition count, so partition p of each feeds shard p.

    Versions share ``<flow>.ingest``, the source of truth, and ``<flow>.versions``, which names
    the one that serves queries; every other topic belongs to one version: version 1 has the
    plain names (``<flow>.encoded``), version N > 1 is prefixed ``<flow>.vN`` (``<flow>.v2.encoded``).
    A reindex builds a new version beside the serving one, like a new index behind an alias.
    """

    flow: str
    partitions: int
    version: int = 1
    stage_roles: tuple[TopicRole, ...] = field(default=(), compare=False)
    """Topics stage kinds write beyond :data:`FLOW_ROLES` (``StageKind.writes``): created with the rest."""

    @property
    def prefix(self) -> str:
        """What this version's own topics, consumer groups and state directories are named by."""
        return self.flow if self.version == 1 else f"{self.flow}.v{self.version}"

    @property
    def roles(self) -> tuple[TopicRole, ...]:
        """Every topic role of this flow: :data:`FLOW_ROLES`, then the stage kinds' own."""
        return FLOW_ROLES + tuple(role for role in self.stage_roles if role not in FLOW_ROLES)

    def name(self, role: TopicRole) -> str:
        """The topic of ``role`` in this version of the flow."""
        return f"{self.flow if role.shared else self.prefix}.{role.suffix or role.name}"

    @property
    def ingest(self) -> str:
        return self.name(INGEST)

    @property
    def versions(self) -> str:
        return self.name(VERSIONS)

    @property
    def segmented(self) -> str:
        return self.name(SEGMENTED)

    @property
    def encoded(self) -> str:
        return self.name(ENCODED)

    @property
    def lexical_stats(self) -> str:
        return self.name(LEXICAL_STATS)

    @property
    def query(self) -> str:
        return self.name(QUERY)

    @property
    def search(self) -> str:
        return self.name(SEARCH)

    @property
    def partials(self) -> str:
        return self.name(PARTIALS)

    @property
    def dead_letter(self) -> str:
        return self.name(DEAD_LETTER)

    @property
    def status(self) -> str:
        return self.name(STATUS)

    def new_reply_topic(self) -> str:
        """A client's own one-partition reply topic, ``<flow>.reply.<random>``: shared by versions,
        since a client follows the serving one."""
        return f"{self.flow}{REPLY_INFIX}{uuid.uuid4().hex[:12]}"

    def is_reply_topic(self, name: str) -> bool:
        """Whether ``name`` is a reply topic of this flow: the only topics a stage answers to, so a
        request naming ``<flow>.ingest`` as its ``reply_to`` cannot make a stage write into the flow."""
        return name.startswith(f"{self.flow}{REPLY_INFIX}") and _LEGAL_TOPIC.fullmatch(name) is not None

    def group(self, stage: str) -> str:
        """The consumer group of a stage's index path (its query path adds a suffix)."""
        return f"{self.prefix}.{stage}"

    def shapes(self) -> list[TopicShape]:
        """All topics to create, configured as their roles say."""
        return [TopicShape(self.name(role), self.partitions if role.partitioned else 1, role.config, role.name)
                for role in self.roles]
