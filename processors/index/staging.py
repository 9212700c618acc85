"""What one write of a shard stages for its upserted documents: each embedded node's vector under a new id, with
its owner and its term counts, and each document as the shard keeps it. ``compound.py`` commits the write, then has
FAISS, the owners and the lexical arm follow what was staged here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from processors.document import Document
from processors.exceptions import DimensionMismatchError
from processors.index.hits import Planned
from processors.index.lexical_arm import FieldedTermCounts, LexicalArm
from processors.index.store import Owner, ShardWrite

__all__ = ["StagedVectors", "check_dims", "stage_vectors", "without_blobs"]


@dataclasses.dataclass(frozen=True, slots=True)
class StagedVectors:
    """The vectors one write stages, in the order they were given ids."""

    ids: np.ndarray
    """Their vector ids, int64, ascending and consecutive from the shard's next id."""
    matrix: np.ndarray
    """Shape (len(ids), dim), float32: one row a vector, as stored."""
    owners: list[Owner]
    terms: FieldedTermCounts
    """Each unit's term counts and field (nodes with text, where the lexical arm is on)."""


def check_dims(planned: Planned, dim: int) -> None:
    """Refuse the whole batch before anything is written if one embedding has another width.

    :raises DimensionMismatchError: naming the first document and node whose embedding is not ``dim`` wide.
    """
    for doc, nodes in planned:
        for path, node in nodes:
            size = int(np.asarray(node.embedding).size)
            if size != dim:
                raise DimensionMismatchError(
                    f"document {doc.id!r} node {path or 'root'}: embedding has {size} values, the index holds {dim}")


def stage_vectors(write: ShardWrite, planned: Planned, stored: Mapping[str, bytes | None], *, first_vid: int,
                  dim: int, lexical: LexicalArm) -> StagedVectors:
    """Stage each upserted document (``stored``: its bytes, where the caller had them) and its vectors under ids
    from ``first_vid`` on, and each vector's node's term counts. The vectors are copied once, into the one matrix
    that FAISS then takes whole.

    :param dim: the embeddings' width, already checked (:func:`check_dims`).
    """
    matrix = np.empty((sum(len(nodes) for _, nodes in planned), dim), dtype="<f4")
    owners: list[Owner] = []
    terms: FieldedTermCounts = []
    vid = first_vid
    for doc, nodes in planned:
        vids = []
        for path, node in nodes:
            row = matrix[vid - first_vid]
            row[:] = np.asarray(node.embedding).reshape(-1)
            owner = (doc.id, path, node.field_name or "")
            write.put_vector(vid, row, owner)
            if (counts := lexical.stage(write, vid, node.text)) is not None:
                terms.append((vid, counts, owner[2]))
            owners.append(owner)
            vids.append(vid)
            vid += 1
        given = stored.get(doc.id)
        write.put_document(without_blobs(doc) if given is None else doc, vids, stored=given)
    return StagedVectors(np.arange(first_vid, vid, dtype=np.int64), matrix, owners, terms)


def without_blobs(doc: Document) -> Document:
    """The document as the shard keeps it: without the bytes of any node (an image's, say). Search reads
    vectors and texts; a reply carrying each match's image would be megabytes (an image flow's segmenter
    leaves a small ``thumbnail`` tag instead), and the ingest topic keeps the originals."""
    if not _has_blob(doc):
        return doc
    return dataclasses.replace(doc, blob=None, chunks=[without_blobs(chunk) for chunk in doc.chunks],
                               matches=[without_blobs(match) for match in doc.matches])


def _has_blob(doc: Document) -> bool:
    return doc.blob is not None or any(_has_blob(node) for node in (*doc.chunks, *doc.matches))
