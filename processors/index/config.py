"""A shard index's configuration, apart from the index itself: a flow is checked (by the client,
the CLI, the HTTP bridge) without FAISS or RocksDB, which only the index stage needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from processors.exceptions import ConfigError, InvalidParameterError
from processors.index.base import Metric
from processors.index.types import IndexType, known_index_type
from processors.query.filter import FieldType, field_schema
from processors.settings import added_later

__all__ = ["CompoundIndexerConfig"]


@dataclass(frozen=True, slots=True)
class CompoundIndexerConfig:
    """Shape of the vectors a shard holds, and the index types that serve them.

    Only ``dim`` and ``metric`` are stored with the shard; the index type and its parameters
    can change between runs (or per request) without re-encoding or re-ingesting.

    :param dim: embedding dimension; a document with another one is rejected.
    :param metric: ``inner_product`` (similarity) or ``l2`` (distance).
    :param index_type: what answers a search that does not choose: a name in ``INDEX_TYPES``
        (``processors/index/types.py``); a non-flat default is built at ``warm_up`` and kept ready.
    :param hnsw_m: HNSW neighbours per node.
    :param hnsw_ef_construction: HNSW candidate list size while inserting.
    :param hnsw_ef_search: HNSW candidate list size per query.
    :param ivf_nlist: IVF lists; 0 picks about 4*sqrt(n) (at most n/39, at most 4096) when built.
    :param ivf_nprobe: IVF lists scanned per query.
    :param pq_m: IVF-PQ sub-quantizers; must divide ``dim``; 0 picks dim/8 or the next divisor below.
    :param pq_bits: bits per IVF-PQ sub-vector code.
    :param lexical: keep the lexical arm too (``processors/index/lexical.py``): the texts of the nodes
        that have vectors, analysed and counted in the same write. Off by default while no search
        through a flow reads it: turning it on counts a shard's stored documents on its next open.
    :param filterable: the top-level tag keys a request's ``filter`` may test, each with its type
        (``keyword``, ``number``, ``date``, ``boolean``: ``processors.query.filter``). Each shard keeps
        their values in field indexes beside the vectors, written with them; a changed declaration is
        applied to the stored documents on the shard's next open.
    :param exact_filter_limit: a filtered search allowing at most this many vectors scans them exactly
        instead of searching the index type with a selector (Qdrant's ``full_scan_threshold``): exact,
        and faster below it than a graph walk that steps over the vectors the filter excludes (384-d, 100,000
        vectors, 2 cores: the flat scan of 5,000 allowed vectors took about as long as HNSW's filtered walk,
        1.2 ms; of 1,000, 0.4 ms, against 5 ms and more for the walk: ``benchmarks/filtered_search.py``).
    """

    dim: int = 384
    metric: Metric = "inner_product"
    index_type: IndexType = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    pq_m: int = 0
    pq_bits: int = 8
    lexical: bool = added_later(False)
    filterable: Mapping[str, FieldType] = added_later(factory=dict)
    exact_filter_limit: int = added_later(5_000)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"CompoundIndexer: dim must be positive, got {self.dim}")
        if self.metric not in ("inner_product", "l2"):
            raise ConfigError(f"CompoundIndexer: metric {self.metric!r}; use inner_product or l2")
        known_index_type(self.index_type)
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CompoundIndexer: {name} must be positive, got {getattr(self, name)}")
        if self.ivf_nlist < 0 or self.pq_m < 0:
            raise ConfigError("CompoundIndexer: ivf_nlist and pq_m must be 0 (automatic) or positive")
        if self.pq_m and self.dim % self.pq_m:
            raise ConfigError(f"CompoundIndexer: pq_m {self.pq_m} must divide dim {self.dim}")
        try:
            object.__setattr__(self, "filterable", MappingProxyType(field_schema(self.filterable)))
        except InvalidParameterError as exc:
            raise ConfigError(f"CompoundIndexer: {exc}") from None
        if self.exact_filter_limit < 0:
            raise ConfigError(f"CompoundIndexer: exact_filter_limit must be 0 or positive, got {self.exact_filter_limit}")
        if not 1 <= self.pq_bits <= 16:
            raise ConfigError(f"CompoundIndexer: pq_bits must be between 1 and 16, got {self.pq_bits}")

