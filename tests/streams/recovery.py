"""What recovery tests need: wait until writes are applied, and read a stopped flow's shards."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processors.document import Document
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from streams.client import Client, IndexReceipt
from streams.wire.codec import STORED_DOCUMENT
from streams.wire.records import SearchReply


def wait_applied(client: Client, receipt: IndexReceipt, *, timeout: float = 240.0) -> SearchReply:
    """Search with read-your-writes until every shard has applied ``receipt`` and serves.

    A shard that restarts answers ``restoring`` at once, and one that has not caught up by the
    deadline answers ``stale``: both mean "ask again", never "done".
    """
    deadline = time.monotonic() + timeout
    last: SearchReply | None = None
    while time.monotonic() < deadline:
        try:
            last = client.search("are all writes applied?", after=receipt, timeout_s=10)
        except Exception:  # a stage is restarting and the request expired unanswered: ask again
            continue
        if not last.partial and not last.stale_shards:
            return last
        if last.restoring_shards:
            time.sleep(0.2)  # the restoring shard answered at once; do not spin on it
    raise AssertionError(f"writes not applied within {timeout}s; last reply {last}")


def text_hash(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()


@dataclass(frozen=True)
class ShardContents:
    """Everything the shards of a stopped flow hold."""

    docs: dict[str, Document]
    vectors: int
    per_doc: dict[str, int]
    vector_table: dict[tuple[str, str, str], bytes]
    shards_of: dict[str, list[int]]


def read_shards(state_dir: Path, flow: str, partitions: int, config: CompoundIndexerConfig) -> ShardContents:
    """Open every shard of a stopped flow (the stages hold RocksDB's lock while they run)."""
    docs: dict[str, Document] = {}
    shards_of: dict[str, list[int]] = {}
    vector_table: dict[tuple[str, str, str], bytes] = {}
    per_doc: dict[str, int] = {}
    vectors = 0
    for partition in range(partitions):
        path = Path(state_dir) / flow / "index" / str(partition)
        if not path.exists():
            continue
        index = CompoundIndexer(config, path=path, codec=STORED_DOCUMENT)
        index.warm_up()
        try:
            for doc_id in index.doc_ids():
                doc = index.get(doc_id)
                assert doc is not None
                docs[doc_id] = doc
                shards_of.setdefault(doc_id, []).append(partition)
            for owner, vector in index.vectors_by_node().items():
                vector_table[owner] = np.asarray(vector, dtype=np.float32).tobytes()
                per_doc[owner[0]] = per_doc.get(owner[0], 0) + 1
            vectors += index.vector_count
        finally:
            index.close()
    return ShardContents(docs, vectors, per_doc, vector_table, shards_of)
