"""The encoder contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from processors.document import Document

__all__ = ["Encoder", "EncodeResult"]


@dataclass(frozen=True, slots=True)
class EncodeResult:
    """The input documents with embeddings set on the traversed nodes."""

    docs: tuple[Document, ...]


class Encoder(Protocol):
    """Embeds the text of documents; the model loads in ``warm_up``. ``run`` embeds only nodes
    without an embedding: a given one is kept as it is (after a dimension check)."""

    @property
    def dim(self) -> int: ...

    def warm_up(self) -> None: ...

    def run(
        self,
        *,
        docs: Sequence[Document],
        traversal_paths: Sequence[str] | None = None,
        filter_by: Sequence[str] | None = None,
    ) -> EncodeResult: ...
