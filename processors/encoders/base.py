"""The encoder contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from processors.document import Document

__all__ = ["Encoder", "EncodeResult", "Truncated"]


@dataclass(frozen=True, slots=True)
class Truncated:
    """A node whose text was longer than the encoder reads: its vector stands for the first
    ``max_length`` tokens only.

    :param doc_id: the root document's id.
    :param node_id: the node's id (the root's for a root-level text).
    :param tokens: tokens of the whole text.
    :param max_length: tokens the encoder read.
    """

    doc_id: str
    node_id: str
    tokens: int
    max_length: int


@dataclass(frozen=True, slots=True)
class EncodeResult:
    """The input documents with embeddings set on the traversed nodes, and the nodes whose text
    the encoder had to truncate (never silently: the runtime counts and logs them)."""

    docs: tuple[Document, ...]
    truncated: tuple[Truncated, ...] = ()


class Encoder(Protocol):
    """Embeds the text of documents; the model loads in ``warm_up``. ``run`` embeds only nodes
    without an embedding: a given one is kept as it is (after a dimension check)."""

    @property
    def dim(self) -> int: ...

    @property
    def output_dim(self) -> int:
        """The embedding dimension, known without loading the model (from its config): checking a
        given vector or the index's ``dim`` must not load weights."""
        ...

    def warm_up(self) -> None: ...

    def run(
        self,
        *,
        docs: Sequence[Document],
        traversal_paths: Sequence[str] | None = None,
        filter_by: Sequence[str] | None = None,
    ) -> EncodeResult: ...
