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

    def warm_up(self) -> None: ...

    def run(self, *, docs: Sequence[Document]) -> SegmentResult: ...
