"""The vector index types a shard answers from: one row each, read by every place that names a type.

A row says what builds the type from the shard's config and stored vectors, how many stored
vectors it needs first (the exact index answers until then), which config settings it reads and
which per-request knobs (``SearchTuning``) it honours. The flow's ``index_type`` check, the shard
index, its stats and the request checks read this table: a new type is a row here and its test.

FAISS is imported inside the builders only: a flow is checked without the index extra installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Mapping

from processors.exceptions import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from processors.index.base import VectorIndex
    from processors.index.config import CompoundIndexerConfig
    from processors.index.faiss_ivf import ProductQuantization
    from processors.index.half_scan import VectorSource

__all__ = ["IndexInputs", "VectorIndexType", "EXACT", "VECTOR_INDEX_TYPES", "INDEX_TYPES", "IndexType",
           "known_index_type"]


def _untrained(config: CompoundIndexerConfig) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class IndexInputs:
    """What a shard hands every index type it builds; a type takes what it needs.

    :param config: the shard's config (each type reads its ``settings``).
    :param training: ``(n, dim)`` float32, the vectors to train on: every vector the shard holds (``(0, 0)``
        for the exact index, built empty); a type that does not train ignores them.
    :param source: the shard's stored float32 vectors by id, exactly as added (a flat index in float16,
        ``flat_scan: float16`` or ``auto``, scores its candidates on them).
    """

    config: CompoundIndexerConfig
    training: np.ndarray
    source: VectorSource


@dataclass(frozen=True, slots=True)
class VectorIndexType:
    """One vector index type a shard can build from its stored vectors and answer from.

    :param name: what a flow's and a request's ``index_type`` say; also the name in shard status.
    :param build: a new index of this type holding no vectors yet, from what the shard hands it.
    :param training_size: the fewest stored vectors it can be built from (FAISS's hard limit).
    :param settings: the ``CompoundIndexerConfig`` fields it reads.
    :param knobs: the ``SearchTuning`` fields a search call may set for it; it ignores the others.
    """

    name: str
    build: Callable[[IndexInputs], VectorIndex]
    training_size: Callable[[CompoundIndexerConfig], int] = _untrained
    settings: tuple[str, ...] = ()
    knobs: tuple[str, ...] = ()


def _flat(given: IndexInputs) -> VectorIndex:
    from processors.index.faiss_flat import FlatVectorIndex

    config = given.config
    return FlatVectorIndex(dim=config.dim, metric=config.metric, scan=config.flat_scan, source=given.source)


def _hnsw(given: IndexInputs) -> VectorIndex:
    from processors.index.faiss_hnsw import HnswVectorIndex

    config = given.config
    return HnswVectorIndex(dim=config.dim, metric=config.metric, m=config.hnsw_m,
                           ef_construction=config.hnsw_ef_construction, ef_search=config.hnsw_ef_search)


def _product_quantization(config: CompoundIndexerConfig) -> ProductQuantization:
    from processors.index.faiss_ivf import ProductQuantization, auto_pq_m

    return ProductQuantization(m=config.pq_m or auto_pq_m(config.dim), bits=config.pq_bits)


def _ivf(config: CompoundIndexerConfig, training: np.ndarray, pq: ProductQuantization | None) -> VectorIndex:
    from processors.index.faiss_ivf import IvfVectorIndex

    return IvfVectorIndex(dim=config.dim, metric=config.metric, nlist=config.ivf_nlist,
                          nprobe=config.ivf_nprobe, pq=pq, training=training)


def _ivf_training(config: CompoundIndexerConfig, pq: ProductQuantization | None) -> int:
    from processors.index.faiss_ivf import training_size_needed

    return training_size_needed(nlist=config.ivf_nlist, pq=pq)


EXACT = VectorIndexType("flat", build=_flat, settings=("flat_scan",))
"""The exact index: every shard keeps it, and it answers for a type that cannot be trained yet."""

VECTOR_INDEX_TYPES: Mapping[str, VectorIndexType] = {row.name: row for row in (
    EXACT,
    VectorIndexType(
        "hnsw", build=_hnsw, settings=("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"), knobs=("ef_search",)),
    VectorIndexType(
        "ivf", build=lambda given: _ivf(given.config, given.training, pq=None),
        training_size=lambda config: _ivf_training(config, pq=None),
        settings=("ivf_nlist", "ivf_nprobe"), knobs=("nprobe",)),
    VectorIndexType(
        "ivf_pq", build=lambda given: _ivf(given.config, given.training, pq=_product_quantization(given.config)),
        training_size=lambda config: _ivf_training(config, pq=_product_quantization(config)),
        settings=("ivf_nlist", "ivf_nprobe", "pq_m", "pq_bits"), knobs=("nprobe",)),
)}
"""Every type by name, in the order status and error messages list them."""

INDEX_TYPES: tuple[str, ...] = tuple(VECTOR_INDEX_TYPES)
IndexType = Literal[INDEX_TYPES]  # type: ignore[valid-type]
"""The names as a Literal: the flow's ``with`` check reads a config field's Literal for its choices."""


def known_index_type(index_type: str) -> str:
    """The index type, checked.

    :raises ConfigError: naming the known types.
    """
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"index_type {index_type!r} is unknown; use one of {', '.join(INDEX_TYPES)}")
    return index_type
