"""Topic names and shapes of a flow, as ARCHITECTURE.md fixes them, and the records each carries."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from streams.wire.codec import (DOCUMENT, PARTIAL_RESULT, REQUEST, SEARCH_REPLY, SERVING_VERSION, STAGE_STATUS,
                                VERSION_BUILD, Codec)

__all__ = ["FlowTopics", "TopicShape", "TopicSettings", "TOPIC_CODECS", "TOPIC_ROLES", "REPLY_ROLE", "RECORD_OVERHEAD_BYTES"]

TOPIC_ROLES = ("ingest", "versions", "segmented", "encoded", "query", "search", "partials", "dead_letter", "status")
"""What each topic of a flow is for; the ``topics.config`` keys of a flow YAML."""

RECORD_OVERHEAD_BYTES = 64 * 1024
"""Room above ``max_payload_bytes`` in a topic's ``max.message.bytes`` for the record batch header,
the key and the headers (trace, offsets, dead-letter reasons)."""


REPLY_ROLE = "reply"
"""A client's reply topic (``FlowTopics.new_reply_topic``): not one of a flow's own topics."""

TOPIC_CODECS: Mapping[str, tuple[Codec[Any], ...]] = {
    "ingest": (DOCUMENT,),
    "versions": (SERVING_VERSION, VERSION_BUILD),  # told apart by key: "serving", "build/v<N>"
    "segmented": (DOCUMENT,),
    "encoded": (DOCUMENT,),
    "query": (REQUEST,),
    "search": (REQUEST,),
    "partials": (PARTIAL_RESULT,),
    "dead_letter": (),  # a record of any topic, kept as it came
    "status": (STAGE_STATUS,),
    REPLY_ROLE: (SEARCH_REPLY,),
}
"""What each topic role (:data:`TOPIC_ROLES`, and reply topics) carries. Producers write through
``Codec.encode_record``, which adds the schema fingerprint header; every decoder of a topic reads
through ``Codec.decode_record``, which refuses a record whose header names another schema."""


@dataclass(frozen=True, slots=True)
class TopicShape:
    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = ()
    role: str = ""
    """One of :data:`TOPIC_ROLES`: which ``topics.config`` entry of the flow applies."""


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """The ``topics:`` section of a flow YAML: how the topics ``run`` creates are replicated and
    configured. Topics that exist already are left as they are (``status`` shows and checks them).

    ``replication_factor`` None means 3 on a cluster of 3 or more brokers, else the broker count;
    ``min_insync_replicas`` None means 2 with a replication factor of 3 or more, else 1.
    ``config`` maps a role (:data:`TOPIC_ROLES`) to Kafka topic configs that override the defaults
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

    @property
    def prefix(self) -> str:
        """What this version's own topics, consumer groups and state directories are named by."""
        return self.flow if self.version == 1 else f"{self.flow}.v{self.version}"

    @property
    def ingest(self) -> str:
        return f"{self.flow}.ingest"

    @property
    def versions(self) -> str:
        return f"{self.flow}.versions"

    @property
    def segmented(self) -> str:
        return f"{self.prefix}.segmented"

    @property
    def encoded(self) -> str:
        return f"{self.prefix}.encoded"

    @property
    def query(self) -> str:
        return f"{self.prefix}.query"

    @property
    def search(self) -> str:
        return f"{self.prefix}.search"

    @property
    def partials(self) -> str:
        return f"{self.prefix}.partials"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def status(self) -> str:
        return f"{self.prefix}.status"

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
        """All topics to create. ``encoded`` is compacted: it is the index's changelog.
        ``ingest`` keeps everything: it is the source of truth a re-encode starts from. ``query``
        stamps records with the broker's clock (LogAppendTime): a request's deadline counts from
        then, whatever the client's clock says (``streams.stages.fanout.flow_deadline_ms``)."""
        p = self.partitions
        kept = (("retention.ms", "-1"), ("retention.bytes", "-1"))
        compacted = (("cleanup.policy", "compact"),)
        return [
            TopicShape(self.ingest, p, kept, "ingest"),
            TopicShape(self.versions, 1, compacted, "versions"),
            TopicShape(self.segmented, p, (), "segmented"),
            TopicShape(self.encoded, p, compacted, "encoded"),
            TopicShape(self.query, p, (("message.timestamp.type", "LogAppendTime"),), "query"),
            TopicShape(self.search, p, (), "search"),
            TopicShape(self.partials, p, (), "partials"),
            TopicShape(self.dead_letter, 1, kept, "dead_letter"),
            TopicShape(self.status, 1, compacted, "status"),
        ]
