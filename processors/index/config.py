"""A shard index's configuration, apart from the index itself: a flow is checked (by the client,
the CLI, the HTTP bridge) without FAISS or RocksDB, which only the index stage needs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from processors.exceptions import ConfigError, InvalidParameterError
from processors.index.base import FLAT_SCANS, FlatScan, Metric
from processors.index.lexical import B, K1
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
    :param bm25_k1: the lexical arm's BM25 term-frequency saturation, read at search time (a change needs
        no reindex). 0.75, below Lucene's 1.2: the best hybrid nDCG@10 at the default fusion on the training
        queries of SciFact and NFCorpus together (``benchmarks/fusion_quality.py --select bm25``; the README's
        "How the defaults were chosen"), where BM25 alone scores 0.0016 better at 1.2.
    :param bm25_b: the lexical arm's BM25 length normalisation, 0 (none) to 1 (full); Lucene's 0.75, chosen
        with ``bm25_k1``.
    :param filterable: the top-level tag keys a request's ``filter`` may test, each with its type
        (``keyword``, ``number``, ``date``, ``boolean``: ``processors.query.filter``). Each shard keeps
        their values in field indexes beside the vectors, written with them; a changed declaration is
        applied to the stored documents on the shard's next open.
    :param exact_filter_limit: a filtered search allowing at most this many vectors, or under
        ``exact_filter_share`` of the shard's, scans them exactly with the flat index instead of searching
        the index type with a selector (Qdrant's ``full_scan_threshold``): exact, and faster there than a
        graph walk that steps over the vectors the filter excludes. 100,000 384-d vectors, 2 cores
        (``benchmarks/filtered_search.py``): 995 allowed, the scan answered in 2.3 ms p50 with recall 1.0,
        the HNSW walk in 6.3 ms with recall@10 0.94; 10,000 allowed, the walk in 3.2 ms (0.999), the scan 6.0.
    :param flat_scan: ``float32``, ``float16`` or ``auto`` (default). ``float16``: the flat index holds its
        vectors in float16 (half the memory) and scans those; each search's candidates are then scored on their
        float32 vectors read from RocksDB, and a bound on float16's error proves the answer the float32 scan's,
        ids and scores (``processors/index/half_scan.py``; where it cannot, a range search widens the
        candidates). 384-d, 50,000 vectors, one thread: 4.4 against 5.4 ms (scan and reads). ``auto``: float32
        while the shard is small (the reads cost more than the scan saves), float16 once its vectors would take
        24 MiB in float32 (``processors.index.faiss_flat.AUTO_FLOAT16_BYTES``): the answers are the same.
    :param exact_filter_share: the share of the shard's vectors below which a filtered search scans
        exactly whatever their count: the walk's recall follows the share the filter allows (0.94 at 1 %,
        1.0 at 5 % here), so a large shard needs a bound that grows with it.
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
    bm25_k1: float = added_later(K1)
    bm25_b: float = added_later(B)
    filterable: Mapping[str, FieldType] = added_later(factory=dict)
    exact_filter_limit: int = added_later(5_000)
    exact_filter_share: float = added_later(0.05)
    flat_scan: FlatScan = added_later("auto")

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
        if not 0.0 <= self.exact_filter_share <= 1.0:
            raise ConfigError(f"CompoundIndexer: exact_filter_share must be in [0, 1], got {self.exact_filter_share}")
        if self.exact_filter_limit < 0:
            raise ConfigError(f"CompoundIndexer: exact_filter_limit must be 0 or positive, got {self.exact_filter_limit}")
        if self.flat_scan not in FLAT_SCANS:
            raise ConfigError(f"CompoundIndexer: flat_scan {self.flat_scan!r}; use one of {', '.join(FLAT_SCANS)}")
        if not (math.isfinite(self.bm25_k1) and self.bm25_k1 >= 0 and 0 <= self.bm25_b <= 1):
            raise ConfigError(f"CompoundIndexer: need bm25_k1 >= 0 and 0 <= bm25_b <= 1, "
                              f"got {self.bm25_k1} and {self.bm25_b}")
        if not 1 <= self.pq_bits <= 16:
            raise ConfigError(f"CompoundIndexer: pq_bits must be between 1 and 16, got {self.pq_bits}")

