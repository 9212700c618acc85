"""Topic names and shapes of a flow, as ARCHITECTURE.md fixes them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FlowTopics", "TopicShape"]


@dataclass(frozen=True, slots=True)
class TopicShape:
    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = ()


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

    def group(self, stage: str) -> str:
        """The consumer group of a stage's index path (its query path adds a suffix)."""
        return f"{self.prefix}.{stage}"

    def shapes(self) -> list[TopicShape]:
        """All topics to create. ``encoded`` is compacted: it is the index's changelog.
        ``ingest`` keeps everything: it is the source of truth a re-encode starts from."""
        p = self.partitions
        return [
            TopicShape(self.ingest, p, (("retention.ms", "-1"),)),
            TopicShape(self.versions, 1, (("cleanup.policy", "compact"),)),
            TopicShape(self.segmented, p),
            TopicShape(self.encoded, p, (("cleanup.policy", "compact"),)),
            TopicShape(self.query, p),
            TopicShape(self.search, p),
            TopicShape(self.partials, p),
            TopicShape(self.dead_letter, 1),
            TopicShape(self.status, 1, (("cleanup.policy", "compact"),)),
        ]
