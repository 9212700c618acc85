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
    """Every topic of one flow. The index path (ingest, segmented, encoded, search) shares
    one partition count, so partition p of each feeds shard p."""

    flow: str
    partitions: int

    @property
    def ingest(self) -> str:
        return f"{self.flow}.ingest"

    @property
    def segmented(self) -> str:
        return f"{self.flow}.segmented"

    @property
    def encoded(self) -> str:
        return f"{self.flow}.encoded"

    @property
    def query(self) -> str:
        return f"{self.flow}.query"

    @property
    def search(self) -> str:
        return f"{self.flow}.search"

    @property
    def partials(self) -> str:
        return f"{self.flow}.partials"

    @property
    def dead_letter(self) -> str:
        return f"{self.flow}.dead-letter"

    @property
    def status(self) -> str:
        return f"{self.flow}.status"

    def shapes(self) -> list[TopicShape]:
        """All topics to create. ``encoded`` is compacted: it is the index's changelog.
        ``ingest`` keeps everything: it is the source of truth a re-encode starts from."""
        p = self.partitions
        return [
            TopicShape(self.ingest, p, (("retention.ms", "-1"),)),
            TopicShape(self.segmented, p),
            TopicShape(self.encoded, p, (("cleanup.policy", "compact"),)),
            TopicShape(self.query, p),
            TopicShape(self.search, p),
            TopicShape(self.partials, p),
            TopicShape(self.dead_letter, 1),
            TopicShape(self.status, 1, (("cleanup.policy", "compact"),)),
        ]
