"""Where a client's writes landed: what read-your-writes and dead-letter lookups start from."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["IndexReceipt"]


@dataclass(slots=True)
class IndexReceipt:
    """Where the written records landed: ingest partition -> last offset. Pass it to
    ``search(after=...)`` to read your own writes, or to ``wait_searchable`` to learn which of
    them a stage dead-lettered on the way."""

    offsets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    spans: dict[int, list[list[int]]] = field(default_factory=dict)
    """Every offset written, per ingest partition, as runs ``[first, last]`` (other writers may
    interleave): a dead letter is this receipt's when its source ingest offset is in one."""
    dead_letters_from: dict[str, int] = field(default_factory=dict)
    """Dead-letter topic -> its end before these writes: their letters can only come after it."""

    def note(self, partition: int, offset: int) -> None:
        if offset > self.offsets.get(partition, -1):
            self.offsets[partition] = offset
        runs = self.spans.setdefault(partition, [])
        if runs and runs[-1][1] == offset - 1:
            runs[-1][1] = offset
        else:
            runs.append([offset, offset])

    def wrote(self, partition: int, offset: int) -> bool:
        """Whether this receipt's writes include ingest ``offset`` of ``partition``."""
        return any(first <= offset <= last for first, last in self.spans.get(partition, ()))

    def merge(self, other: "IndexReceipt") -> "IndexReceipt":
        merged = IndexReceipt(dict(self.offsets), self.count + other.count,
                              {p: [list(run) for run in runs] for p, runs in self.spans.items()},
                              dict(self.dead_letters_from))
        for partition, offset in other.offsets.items():
            if offset > merged.offsets.get(partition, -1):
                merged.offsets[partition] = offset
        for partition, runs in other.spans.items():
            merged.spans.setdefault(partition, []).extend(list(run) for run in runs)
        for topic, start in other.dead_letters_from.items():
            merged.dead_letters_from[topic] = min(start, merged.dead_letters_from.get(topic, start))
        return merged
