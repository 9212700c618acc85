"""The segmenter contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from processors.document import Document

__all__ = ["Segmenter", "SegmentResult"]


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """The input documents, each now carrying its chunks."""

    docs: tuple[Document, ...]


class Segmenter(Protocol):
    """Splits documents into chunks; cheap to construct, loads nothing heavy."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The named fields it maps to chunks, each searched on its own; empty for one that splits text."""
        ...

    def warm_up(self) -> None: ...

    def run(self, *, docs: Sequence[Document]) -> SegmentResult: ...
