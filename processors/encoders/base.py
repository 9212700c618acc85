"""The encoder contract."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from processors.document import Document, traverse
from processors.exceptions import BadDocumentError, DimensionMismatchError

__all__ = ["EncodeResult", "Encoder", "Truncated", "check_embedding", "check_embedding_shape", "nodes_to_embed", "torch_device"]


def torch_device(setting: str) -> object:
    """The torch device an encoder's ``device`` setting names: ``auto`` takes CUDA when present, else the CPU.
    Imports torch, so only an encoder's model loading calls it."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def nodes_to_embed(roots: Sequence[Document], paths: Sequence[str], filter_by: Sequence[str] | None,
                   dim: int) -> Iterator[tuple[Document, Document, str]]:
    """The nodes on the traversal paths (of the ``filter_by`` fields, if any) that have no embedding, each
    with its root and its name for errors (``document 'a' node 'a/1'``); a node that has one is checked
    (:func:`check_embedding`) instead, so a given vector is kept, never recomputed.

    :raises BadDocumentError, DimensionMismatchError: for a given embedding that does not fit ``dim``.
    """
    for root in roots:
        for path in paths:
            for node in traverse(root, path):
                if filter_by and node.field_name not in filter_by:
                    continue
                where = f"document {root.id!r}" + ("" if node is root else f" node {node.id!r}")
                if node.embedding is not None:
                    check_embedding(node.embedding, dim, where)
                else:
                    yield root, node, where


def check_embedding(vector: object, dim: int, where: str) -> None:
    """A given embedding must be a finite numeric vector of ``dim`` values (shape ``(dim,)``, or
    ``(1, dim)``/``(dim, 1)``): what the index stores is what the model would produce.

    :param where: names the document and node in the error.
    :raises BadDocumentError: if it is not numeric or not finite.
    :raises DimensionMismatchError: if its size or shape is not ``dim``'s.
    """
    array = np.asarray(vector)
    if array.dtype.kind not in "fiu":
        raise BadDocumentError(f"{where}: embedding has dtype {array.dtype}; a numeric vector is needed")
    check_embedding_shape(array, dim, where)
    if not np.all(np.isfinite(array)):
        raise BadDocumentError(f"{where}: embedding holds NaN or infinite values")


def check_embedding_shape(vector: np.ndarray, dim: int, where: str) -> None:
    """The shape half of :func:`check_embedding`, for a vector whose values a decode has already
    validated (``processors.document.validate_embedding``: numeric, finite as float32).

    :raises DimensionMismatchError: if its size or shape is not ``dim``'s.
    """
    if vector.size != dim or vector.ndim > 2 or (vector.ndim == 2 and 1 not in vector.shape):
        raise DimensionMismatchError(f"{where}: embedding has shape {vector.shape}; this flow's vectors are {dim}-d")


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
