import json
import pickle
import shutil
import struct
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from rocksdict import Options, Rdict

from processors.document import Direction, Document
from processors.exceptions import ConfigError, DimensionMismatchError
from processors.index import store_flush
from processors.index.base import Change, SearchTuning
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig, _search_past_ties
from processors.index.faiss_flat import FlatVectorIndex
from processors.index.store import FORMAT
from streams.wire.codec import DOCUMENT, STORED_DOCUMENT

DIM = 8


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def doc_with_chunks(doc_id: str, seeds: list[int]) -> Document:
    return Document(id=doc_id, text=doc_id, chunks=[
        Document(id=f"{doc_id}/{i}", parent_id=doc_id, text=f"{doc_id} chunk {i}", embedding=unit(s))
        for i, s in enumerate(seeds)])


def open_index(path: Path, metric: str = "inner_product") -> CompoundIndexer:
    index = CompoundIndexer(CompoundIndexerConfig(dim=DIM, metric=metric), path=path, codec=STORED_DOCUMENT)  # type: ignore[arg-type]
    index.warm_up()
    return index


class TestCompoundIndexer:
    def test_upsert_search_returns_chunk_with_root(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2])), Change("b", doc_with_chunks("b", [3]))],
                    checkpoint=b"c1")
        hits = index.search(embeddings=unit(2)[None], top_k=1)[0]
        assert hits[0].root.id == "a" and hits[0].node.id == "a/1"
        assert hits[0].score.direction is Direction.SIMILARITY and hits[0].score.value == pytest.approx(1.0)
        assert hits[0].root.chunks[0].embedding is None  # stored without embeddings

    def test_resent_id_replaces_all_chunks_and_delete_removes(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2, 3]))], checkpoint=b"1")
        result = index.apply(changes=[Change("a", doc_with_chunks("a", [4]))], checkpoint=b"2")
        assert result.vectors_removed == 3 and result.vectors_added == 1
        assert index.stats().vectors == 1
        assert index.search(embeddings=unit(1)[None], top_k=5)[0][0].node.id == "a/0"
        index.apply(changes=[Change("a", None)], checkpoint=b"3")
        assert index.stats().vectors == 0 and index.get("a") is None

    def test_a_batch_mixing_stored_and_new_ids_removes_only_the_stored_ones_vectors(self, tmp_path: Path) -> None:
        """The batch's stored documents are found in one multi-get, after a reopen too: each stored id loses
        its own vectors, a new id none."""
        index = open_index(tmp_path)
        index.apply(changes=[Change(d, doc_with_chunks(d, [s, s + 10])) for d, s in (("a", 1), ("b", 2), ("c", 3))],
                    checkpoint=b"1")
        index.close()
        index = open_index(tmp_path)
        result = index.apply(changes=[Change("new", doc_with_chunks("new", [4])), Change("b", doc_with_chunks("b", [5])),
                                      Change("ghost", None), Change("c", None)], checkpoint=b"2")
        assert (result.vectors_removed, result.vectors_added) == (4, 2)
        assert index.stats().vectors == 4 and index.stats().documents == 3
        assert index.search(embeddings=unit(2)[None], top_k=1)[0][0].root.id != "b"  # b's old chunk is gone
        assert index.search(embeddings=unit(5)[None], top_k=1)[0][0].node.id == "b/0"
        assert index.get("c") is None and index.get("a") is not None

    def test_a_reopened_shard_keeps_its_bloom_filter(self, tmp_path: Path) -> None:
        """The table options RocksDB applies, as it records them in its newest OPTIONS file: rocksdict took them
        from the file on a reopen, where they had been written back without the filter."""
        for _ in range(2):
            index = open_index(tmp_path)
            index.apply(changes=[Change("a", doc_with_chunks("a", [1]))], checkpoint=b"1")
            index.close()
            newest = max(tmp_path.glob("OPTIONS-*"), key=lambda path: int(path.name.split("-")[1]))
            assert "filter_policy=bloomfilter" in newest.read_text()

    def test_the_vectors_are_stored_uncompressed_and_the_documents_compressed(self, tmp_path: Path) -> None:
        """What RocksDB applies to each family, reopened too: float32 embeddings leave a compressor nothing to
        take, a stored document's text does."""
        for _ in range(2):
            index = open_index(tmp_path)
            index.apply(changes=[Change("a", doc_with_chunks("a", [1]))], checkpoint=b"1")
            index.close()
            newest = max(tmp_path.glob("OPTIONS-*"), key=lambda path: int(path.name.split("-")[1]))
            families = {section.split('"')[0]: section for section in newest.read_text().split('[CFOptions "')[1:]}
            assert "\n  compression=kNoCompression" in families["vectors"]
            assert "\n  compression=kSnappyCompression" in families["default"]

    def test_the_document_count_follows_every_write_as_a_count_on_disk_would(self, tmp_path: Path) -> None:
        """Counted once at open, then followed by the writes (as the store's ids of its documents are, which say
        which upserts look their document up): upserts of new and stored ids, deletes of stored and unknown ids, a
        document without any vector, the same id twice in a batch."""
        index = open_index(tmp_path)
        batches = [
            [Change("a", doc_with_chunks("a", [1, 2])), Change("b", doc_with_chunks("b", [3])),
             Change("empty", Document(id="empty", text="no vector"))],
            [Change("a", doc_with_chunks("a", [4])), Change("ghost", None), Change("c", doc_with_chunks("c", [5]))],
            [Change("b", None), Change("empty", None), Change("c", None), Change("c", doc_with_chunks("c", [6]))],
            [Change("d", doc_with_chunks("d", [7])), Change("d", None)],
        ]
        for i, changes in enumerate(batches):
            index.apply(changes=changes, checkpoint=str(i).encode())
            on_disk = list(index.doc_ids())  # a scan, where the count and the store's known ids follow the writes
            assert index.stats().documents == index._store.document_count() == len(on_disk)
        assert index.stats().documents == 2  # a and c
        index.close()
        assert open_index(tmp_path).stats().documents == 2

    @pytest.mark.parametrize("restart", [False, True])
    @pytest.mark.parametrize("failing", ["write", "flush"])
    def test_a_failed_write_or_flush_leaves_the_shard_as_rocksdb_holds_it(self, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          failing: str, restart: bool) -> None:
        """RocksDB refuses the batch (none of it lands), or the flush after it fails (it landed: a full disk shows
        there, the log being off). Either way the ids of the documents the store holds, the vector ids it gives and
        FAISS agree with RocksDB: the retried batch and a later upsert leave no old vector behind, no id is given
        twice (``restart``: before the retry), and a reopen finds what the open shard held."""
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2]))], checkpoint=b"1")
        batch = [Change("b", doc_with_chunks("b", [3, 4]))]
        with monkeypatch.context() as patched:
            if failing == "write":
                shard = index._store._shard
                patched.setattr(shard, "db", _RefusingWrites(shard.db))
            else:
                patched.setattr(store_flush, "FLUSH_INTERVAL_S", 0.0)
                patched.setattr(store_flush.MemtableFlusher, "_flush", _full_disk)
            with pytest.raises(OSError):
                index.apply(changes=batch, checkpoint=b"2")
        index.apply(changes=[Change("c", doc_with_chunks("c", [6]))], checkpoint=b"3")  # the batch after it
        if restart:
            index.close()
            index = open_index(tmp_path)
        index.apply(changes=batch, checkpoint=b"2")  # the failed one again (a retry, or after a restart a replay)
        result = index.apply(changes=[Change("b", doc_with_chunks("b", [5])), Change("d", doc_with_chunks("d", [7]))],
                             checkpoint=b"4")
        assert (result.vectors_removed, result.vectors_added) == (2, 2)
        held = index.vectors_by_node()
        assert (index.stats().documents, index.stats().vectors, len(held)) == (4, 5, 5)
        index.close()
        index = open_index(tmp_path)
        assert (index.stats().documents, index.stats().vectors) == (4, 5)
        assert index.vectors_by_node().keys() == held.keys()
        assert index.search(embeddings=unit(5)[None], top_k=1)[0][0].node.id == "b/0"

    def test_last_change_of_an_id_wins_within_a_batch(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1])), Change("a", None),
                             Change("a", doc_with_chunks("a", [2, 3]))], checkpoint=b"x")
        assert index.stats().vectors == 2 and index.stats().documents == 1

    def test_replaying_the_same_changes_gives_the_same_index(self, tmp_path: Path) -> None:
        changes = [Change("a", doc_with_chunks("a", [1, 2])), Change("b", doc_with_chunks("b", [3]))]
        index = open_index(tmp_path)
        index.apply(changes=changes, checkpoint=b"1")
        before = [[(h.node.id, h.score.value) for h in hs] for hs in index.search(embeddings=unit(5)[None], top_k=3)]
        index.apply(changes=changes, checkpoint=b"1")
        after = [[(h.node.id, h.score.value) for h in hs] for hs in index.search(embeddings=unit(5)[None], top_k=3)]
        assert before == after and index.stats().vectors == 3

    def test_reopen_restores_vectors_and_checkpoint(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2]))], checkpoint=b"offset=41")
        index.close()
        index.close()  # idempotent
        reopened = open_index(tmp_path)
        assert reopened.checkpoint() == b"offset=41"
        assert reopened.search(embeddings=unit(2)[None], top_k=1)[0][0].node.id == "a/1"
        reopened.apply(changes=[Change("c", doc_with_chunks("c", [9]))], checkpoint=b"offset=42")
        assert reopened.stats().vectors == 3  # new vector ids do not collide with restored ones

    def test_writes_skip_the_log_a_crash_keeps_what_was_flushed_and_a_due_flush_happens_unasked(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A copy of the directory stands for a crash. Without the write-ahead log, a write is only in the memtable
        until a flush: the copy resumes from the checkpoint before it, never from part of a batch. ``flush_if_due``
        flushes once the interval has passed, in the background (waited for here as the copy that shows it); a
        close flushes too."""
        shard = tmp_path / "shard"

        def crash_copy(name: str) -> tuple[bytes | None, int]:
            shutil.copytree(shard, tmp_path / name, ignore=shutil.ignore_patterns("LOCK"))
            reopened = open_index(tmp_path / name)
            try:
                return reopened.checkpoint(), reopened.stats().vectors
            finally:
                reopened.close()

        index = open_index(shard)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2]))], checkpoint=b"offset=1")
        assert crash_copy("unflushed") == (None, 0)
        monkeypatch.setattr(store_flush, "FLUSH_INTERVAL_S", 0.0)
        index.flush_if_due()
        db = index._store._open_db()  # RocksDB's own count of what it still holds to flush: a copy meanwhile could be torn
        deadline = time.monotonic() + 30
        while any(db.property_int_value(f"rocksdb.{name}") for name in (
                "num-entries-active-mem-table", "num-immutable-mem-table", "num-running-flushes")):
            assert time.monotonic() < deadline, "the due flush did not end"
            time.sleep(0.01)
        assert crash_copy("due") == (b"offset=1", 2)
        monkeypatch.setattr(store_flush, "FLUSH_INTERVAL_S", 3600.0)
        index.apply(changes=[Change("b", doc_with_chunks("b", [3])), Change("a", None)], checkpoint=b"offset=2")
        index.flush_if_due()  # not due: nothing flushed
        assert crash_copy("not-due") == (b"offset=1", 2)
        index.close()
        assert crash_copy("closed") == (b"offset=2", 1)

    def test_leaving_a_bulk_load_leaves_everything_on_disk(self, tmp_path: Path) -> None:
        index = open_index(tmp_path / "shard")
        with index.bulk_load():
            index.apply(changes=[Change("a", doc_with_chunks("a", [2, 3]))], checkpoint=b"offset=2")
        shutil.copytree(tmp_path / "shard", tmp_path / "after", ignore=shutil.ignore_patterns("LOCK"))
        reopened = open_index(tmp_path / "after")
        assert (reopened.checkpoint(), reopened.stats().vectors) == (b"offset=2", 2)
        reopened.close()

    @pytest.mark.parametrize("index_type", ["flat", "hnsw"])
    def test_a_bulk_load_adds_to_faiss_once_at_its_end_what_is_still_stored_then(self, tmp_path: Path,
                                                                                  index_type: str) -> None:
        """Vectors replaced or deleted within the bulk load never reach FAISS; those stored before it are
        removed at once; after it FAISS holds exactly the stored vectors, as a reopened shard does."""
        config = CompoundIndexerConfig(dim=DIM, metric="inner_product", index_type=index_type)  # type: ignore[arg-type]
        index = CompoundIndexer(config, path=tmp_path, codec=STORED_DOCUMENT)
        index.warm_up()
        index.apply(changes=[Change("old", doc_with_chunks("old", [1, 2])), Change("kept", doc_with_chunks("kept", [3]))],
                    checkpoint=b"1")
        with index.bulk_load():
            first = index.apply(changes=[Change("a", doc_with_chunks("a", [4, 5])), Change("old", None)], checkpoint=b"2")
            second = index.apply(changes=[Change("a", doc_with_chunks("a", [6])), Change("b", doc_with_chunks("b", [7]))],
                                 checkpoint=b"3")
            third = index.apply(changes=[Change("b", None)], checkpoint=b"4")
            assert index.vector_count == 1  # only "kept" is searchable meanwhile
        assert (first.vectors_removed, second.vectors_removed, third.vectors_removed) == (2, 2, 1)
        assert index.vector_count == 2
        assert index.vectors_by_node().keys() == {("kept", "c0", ""), ("a", "c0", "")}
        for seed, doc_id in ((3, "kept"), (6, "a")):
            assert index.search(embeddings=unit(seed)[None], top_k=1)[0][0].root.id == doc_id
        assert {hit.root.id for hit in index.search(embeddings=unit(4)[None], top_k=5)[0]} == {"kept", "a"}
        index.close()

    def test_wrong_dimension_is_rejected_and_nothing_written(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        bad = Document(id="x", chunks=[Document(id="x/0", embedding=np.ones(DIM + 1, dtype=np.float32))])
        with pytest.raises(DimensionMismatchError, match="9 values"):
            index.apply(changes=[Change("ok", doc_with_chunks("ok", [1])), Change("x", bad)], checkpoint=b"bad")
        assert index.checkpoint() is None and index.stats().vectors == 0

    def test_l2_metric_is_a_distance(self, tmp_path: Path) -> None:
        index = open_index(tmp_path, metric="l2")
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2]))], checkpoint=b"1")
        hits = index.search(embeddings=unit(1)[None], top_k=2)[0]
        assert hits[0].score.direction is Direction.DISTANCE
        assert hits[0].node.id == "a/0" and hits[0].score.value < hits[1].score.value

    def test_with_vectors_each_hit_carries_its_nodes_stored_vector_exactly(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2])), Change("b", doc_with_chunks("b", [3]))],
                    checkpoint=b"1")
        index.apply(changes=[Change("a", doc_with_chunks("a", [4, 2]))], checkpoint=b"2")  # new vector ids for a
        hits = index.search(embeddings=unit(2)[None], top_k=3, with_vectors=True)[0]
        expected = {"a/0": unit(4), "a/1": unit(2), "b/0": unit(3)}
        assert {h.node.id for h in hits} == set(expected)
        for h in hits:
            assert h.node.embedding is not None and np.array_equal(h.node.embedding, expected[h.node.id])
        assert all(h.node.embedding is None for h in index.search(embeddings=unit(2)[None], top_k=3)[0])

    def test_reopening_with_another_dimension_fails(self, tmp_path: Path) -> None:
        open_index(tmp_path).close()
        other = CompoundIndexer(CompoundIndexerConfig(dim=DIM * 2), path=tmp_path, codec=STORED_DOCUMENT)
        for _ in range(2):  # a failed open leaves it closed: the second fails as the first, not finds it open
            with pytest.raises(ConfigError, match="rebuild"):
                other.warm_up()
        open_index(tmp_path).close()  # and leaves RocksDB's lock free


class TestFieldRestrictedSearch:
    @pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
    def test_only_the_named_fields_vectors_answer(self, tmp_path: Path, index_type: str) -> None:
        index = open_index(tmp_path)
        docs = []
        for i in range(300):
            docs.append(Document(id=f"d{i}", chunks=[
                Document(id=f"d{i}/title", field_name="title", embedding=unit(2 * i)),
                Document(id=f"d{i}/summary", field_name="summary", embedding=unit(2 * i + 1))]))
        index.apply(changes=[Change(d.id, d) for d in docs], checkpoint=b"1")
        query = unit(2 * 7 + 1)[None]  # exactly d7's summary vector
        extra = {"nprobe": 1000} if index_type == "ivf" else {}
        titles = index.search(embeddings=query, top_k=5, fields=["title"], index_type=index_type, **extra)[0]
        assert titles and all(hit.node.field_name == "title" for hit in titles)
        summaries = index.search(embeddings=query, top_k=5, fields=["summary"], index_type=index_type, **extra)[0]
        assert summaries[0].node.id == "d7/summary"
        assert index.search(embeddings=query, top_k=5, fields=["author"])[0] == []

    def test_field_of_each_vector_survives_reopen_and_replacement(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        doc = Document(id="a", chunks=[Document(id="a/t", field_name="title", embedding=unit(1))])
        index.apply(changes=[Change("a", doc)], checkpoint=b"1")
        index.close()
        index = open_index(tmp_path)
        assert index.search(embeddings=unit(1)[None], top_k=1, fields=["title"])[0][0].node.id == "a/t"
        moved = Document(id="a", chunks=[Document(id="a/s", field_name="summary", embedding=unit(1))])
        index.apply(changes=[Change("a", moved)], checkpoint=b"2")
        assert index.search(embeddings=unit(1)[None], top_k=1, fields=["title"])[0] == []
        assert index.search(embeddings=unit(1)[None], top_k=1, fields=["summary"])[0][0].node.id == "a/s"


HOSTILE_IDS = [
    "evil\x00id", "\x00", "trailing\x00", "a\x00\x00b", "ctl\x01\x1b\x7f\x85\x9f", "line\nbreak\ttab",
    "with/slash/c0", "d/looks-like-a-key", "v/1", "m/checkpoint", "\u00fcnic\u00f8de \u6587\u5b57 \U0001f680",
    "\ufeffbom", "x" * 2000,
]


def hostile_doc(doc_id: str, seed: int, field_name: str | None = None) -> Document:
    return Document(id=doc_id, text=f"text of {doc_id}", tags={"k\x00": "v\x00"}, chunks=[
        Document(id=f"{doc_id}/{i}", parent_id=doc_id, field_name=field_name, embedding=unit(seed + i))
        for i in range(2)])


class TestAnyIdRoundTrips:
    """Storage never depends on what an id holds: ids are refused at the entry, not by the shard."""

    def test_hostile_ids_survive_close_and_reopen(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change(doc_id, hostile_doc(doc_id, 10 * i, field_name="f\x00/"))
                             for i, doc_id in enumerate(HOSTILE_IDS)], checkpoint=b"1")
        before = index.vectors_by_node()
        index.close()
        index = open_index(tmp_path)  # the reopen a NUL-joined owner failed on
        assert sorted(index.doc_ids()) == sorted(HOSTILE_IDS)
        assert index.stats().documents == len(HOSTILE_IDS) and index.stats().vectors == 2 * len(HOSTILE_IDS)
        assert index.vectors_by_node().keys() == before.keys()
        for i, doc_id in enumerate(HOSTILE_IDS):
            hit = index.search(embeddings=unit(10 * i + 1)[None], top_k=1, fields=["f\x00/"])[0][0]
            assert (hit.root.id, hit.node.id) == (doc_id, f"{doc_id}/1")
            assert index.get(doc_id).tags == {"k\x00": "v\x00"}  # type: ignore[union-attr]

    def test_hostile_ids_are_replaced_and_deleted_after_reopen(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change(doc_id, hostile_doc(doc_id, 10 * i)) for i, doc_id in enumerate(HOSTILE_IDS)],
                    checkpoint=b"1")
        index.close()
        index = open_index(tmp_path)
        index.apply(changes=[Change("evil\x00id", None), Change("a\x00\x00b", hostile_doc("a\x00\x00b", 500))],
                    checkpoint=b"2")
        index.close()
        index = open_index(tmp_path)
        assert "evil\x00id" not in set(index.doc_ids()) and index.get("evil\x00id") is None
        assert index.stats().vectors == 2 * (len(HOSTILE_IDS) - 1)
        assert index.search(embeddings=unit(500)[None], top_k=1)[0][0].root.id == "a\x00\x00b"

    def test_a_lone_surrogate_is_no_storage_concern_either(self, tmp_path: Path) -> None:
        """Avro refuses it (so the entry does), but the shard's own keys take any str."""

        class PickleCodec:
            def encode(self, doc: Document) -> bytes:
                return pickle.dumps(doc)

            def decode(self, data: bytes) -> Document:
                return pickle.loads(data)  # noqa: S301 - the test's own bytes

        config = CompoundIndexerConfig(dim=DIM)
        index = CompoundIndexer(config, path=tmp_path, codec=PickleCodec())
        index.warm_up()
        index.apply(changes=[Change("\ud800x", hostile_doc("\ud800x", 1))], checkpoint=b"1")
        index.close()
        index = CompoundIndexer(config, path=tmp_path, codec=PickleCodec())
        index.warm_up()
        assert list(index.doc_ids()) == ["\ud800x"]
        assert index.search(embeddings=unit(1)[None], top_k=1)[0][0].root.id == "\ud800x"


def write_format_1_shard(path: Path, docs: list[Document], *, checkpoint: bytes = b"old") -> None:
    """A shard as streamsearch wrote it before format 2: owners as NUL-joined UTF-8, no m/format."""
    db = Rdict(str(path), options=Options(raw_mode=True))
    db[b"m/config"] = json.dumps({"dim": DIM, "metric": "inner_product"}).encode()
    vid = 0
    for doc in docs:
        vids = []
        for i, chunk in enumerate(doc.chunks):
            owner = f"{doc.id}\0c{i}\0{chunk.field_name or ''}".encode()
            db[b"v/" + struct.pack(">q", vid)] = np.asarray(chunk.embedding, dtype="<f4").tobytes() + owner
            vids.append(vid)
            vid += 1
        stripped = Document(id=doc.id, text=doc.text, tags=doc.tags, chunks=[
            Document(id=c.id, parent_id=c.parent_id, field_name=c.field_name, text=c.text) for c in doc.chunks])
        db[b"d/" + doc.id.encode()] = DOCUMENT.encode(stripped)
        db[b"dv/" + doc.id.encode()] = np.array(vids, dtype=">i8").tobytes()
    db[b"m/next_vid"] = struct.pack(">q", vid)
    db[b"m/checkpoint"] = checkpoint
    db.close()


class TestFormat1Shards:
    def test_a_shard_written_before_format_2_opens_searches_and_takes_writes(self, tmp_path: Path) -> None:
        old = [doc_with_chunks("a", [1, 2]), doc_with_chunks("b/x", [3]),
               Document(id="t", chunks=[Document(id="t/0", field_name="title", embedding=unit(4))])]
        write_format_1_shard(tmp_path, old)
        index = open_index(tmp_path)
        assert index.checkpoint() == b"old" and sorted(index.doc_ids()) == ["a", "b/x", "t"]
        assert index.search(embeddings=unit(2)[None], top_k=1)[0][0].node.id == "a/1"
        assert index.search(embeddings=unit(4)[None], top_k=1, fields=["title"])[0][0].node.id == "t/0"
        # New vectors (format 2) next to old ones (format 1), replacing one of them; then reopened.
        index.apply(changes=[Change("c", doc_with_chunks("c", [5])), Change("b/x", doc_with_chunks("b/x", [6]))],
                    checkpoint=b"new")
        index.close()
        index = open_index(tmp_path)
        assert index.stats().vectors == 5 and sorted(index.doc_ids()) == ["a", "b/x", "c", "t"]
        for seed, node_id in [(1, "a/0"), (5, "c/0"), (6, "b/x/0"), (4, "t/0")]:
            assert index.search(embeddings=unit(seed)[None], top_k=1)[0][0].node.id == node_id
        assert index.search(embeddings=unit(3)[None], top_k=1)[0][0].node.id != "b/x/0"  # the old vector is gone
        index.close()
        db = Rdict(str(tmp_path), options=Options(raw_mode=True))
        try:
            assert db[b"m/format"] == str(FORMAT).encode()
        finally:
            db.close()

    def test_a_format_1_shard_holding_a_nul_id_opens_again(self, tmp_path: Path) -> None:
        """The crash loop of issue 11: such a shard failed every warm_up; its last two NULs split it."""
        write_format_1_shard(tmp_path, [doc_with_chunks("evil\x00id", [1]), doc_with_chunks("ok", [2])])
        index = open_index(tmp_path)
        assert sorted(index.doc_ids()) == ["evil\x00id", "ok"]
        assert index.search(embeddings=unit(1)[None], top_k=1)[0][0].root.id == "evil\x00id"
        index.apply(changes=[Change("evil\x00id", None)], checkpoint=b"2")
        assert list(index.doc_ids()) == ["ok"] and index.stats().vectors == 1

    def test_a_shard_of_a_newer_format_is_refused(self, tmp_path: Path) -> None:
        open_index(tmp_path).close()
        db = Rdict(str(tmp_path), options=Options(raw_mode=True))
        db[b"m/format"] = str(FORMAT + 1).encode()
        db.close()
        with pytest.raises(ConfigError, match=f"storage format {FORMAT + 1}"):
            open_index(tmp_path)


class TestEqualScores:
    """Identical vectors tie; which documents make the cut, and in what order, goes by document id."""

    IDS = [f"doc{i:02d}" for i in range(12)]

    @pytest.mark.parametrize("metric", ["inner_product", "l2"])
    @pytest.mark.parametrize("index_type", ["flat", "hnsw"])
    def test_insertion_order_never_decides(self, tmp_path: Path, metric: str, index_type: str) -> None:
        answers = set()
        for attempt, seed in enumerate([0, 1, 2, 3]):
            order = list(self.IDS)
            np.random.default_rng(seed).shuffle(order)
            index = open_index(tmp_path / str(attempt), metric=metric)
            # one batch per document: vector ids follow the shuffled order
            for doc_id in order:
                index.apply(changes=[Change(doc_id, Document(id=doc_id, chunks=[
                    Document(id=f"{doc_id}/0", embedding=unit(7)), Document(id=f"{doc_id}/1", embedding=unit(8))]))],
                    checkpoint=b"x")
            hits = index.search(embeddings=unit(7)[None], top_k=5, index_type=index_type)[0]
            answers.add(tuple((hit.root.id, hit.node.id) for hit in hits))
            index.close()
        assert answers == {tuple((doc_id, f"{doc_id}/0") for doc_id in self.IDS[:5])}

    def test_ties_across_fields_and_chunks_order_by_document_then_node(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        docs = [Document(id=doc_id, chunks=[
            Document(id=f"{doc_id}/body", field_name="body", embedding=unit(3)),
            Document(id=f"{doc_id}/title", field_name="title", embedding=unit(3))]) for doc_id in ["z", "b", "m"]]
        index.apply(changes=[Change(d.id, d) for d in docs], checkpoint=b"1")
        hits = index.search(embeddings=unit(3)[None], top_k=6, fields=["title", "body"])[0]
        assert [hit.node.id for hit in hits] == ["b/body", "b/title", "m/body", "m/title", "z/body", "z/title"]
        cut = index.search(embeddings=unit(3)[None], top_k=3, fields=["title"])[0]
        assert [hit.node.id for hit in cut] == ["b/title", "m/title", "z/title"]


class _CountedSearches(FlatVectorIndex):
    """A real flat index that counts its FAISS searches and the widths asked for."""

    def __init__(self) -> None:
        super().__init__(dim=DIM, metric="inner_product")
        self.widths: list[int] = []

    def search(self, queries: np.ndarray, k: int, tuning: SearchTuning | None = None) -> tuple[np.ndarray, np.ndarray]:
        self.widths.append(k)
        return super().search(queries, k, tuning)


class TestSearchPastTies:
    def test_an_untied_cut_takes_one_faiss_search_one_wider_than_top_k(self) -> None:
        index = _CountedSearches()
        index.add(np.arange(50, dtype=np.int64), np.stack([unit(seed) for seed in range(50)]))
        scores, ids = _search_past_ties(index, unit(99)[None], 10, SearchTuning(), index.size)
        assert index.widths == [11]
        assert scores[0, 9] != scores[0, 10] and len(set(ids[0].tolist())) == 11

    def test_a_run_of_ties_across_the_cut_is_fetched_whole(self) -> None:
        index = _CountedSearches()
        distinct = np.stack([unit(seed) for seed in range(20)])
        query = unit(1000)
        distinct -= np.outer(distinct @ query, query)  # orthogonal to the query: score 0, below the tied run
        index.add(np.arange(20, dtype=np.int64), distinct)
        index.add(np.arange(100, 130, dtype=np.int64), np.repeat(query[None], 30, axis=0))  # 30 tied at score 1
        scores, ids = _search_past_ties(index, query[None], 5, SearchTuning(), index.size)
        assert index.widths == [6, 12, 24, 48]
        assert set(range(100, 130)) <= set(ids[0].tolist())


class TestFloat16Shard:
    """``flat_scan: float16``: the shard holds float16 vectors and scores candidates on the float32 ones
    in its RocksDB; every answer is a float32 shard's, through upserts, deletes, a reopen and a bulk load."""

    @staticmethod
    def changes(start: int, count: int) -> list[Change]:
        return [Change(f"d{i:05d}", doc_with_chunks(f"d{i:05d}", [3 * i, 3 * i + 1])) for i in range(start, start + count)]

    @staticmethod
    def answers(index: CompoundIndexer) -> list[list[tuple[str, str, float]]]:
        queries = np.stack([unit(10_000 + s) for s in range(12)])
        return [[(h.root.id, h.node.id, h.score.value) for h in hits]
                for hits in index.search(embeddings=queries, top_k=7)]

    def test_it_answers_as_a_float32_shard_and_holds_half_the_bytes(self, tmp_path: Path) -> None:
        shards = {scan: CompoundIndexer(CompoundIndexerConfig(dim=DIM, flat_scan=scan), path=tmp_path / scan,  # type: ignore[arg-type]
                                        codec=STORED_DOCUMENT) for scan in ("float32", "float16")}
        for shard in shards.values():
            shard.warm_up()
            with shard.bulk_load():
                shard.apply(changes=self.changes(0, 400), checkpoint=b"1")
            shard.apply(changes=self.changes(300, 300), checkpoint=b"2")  # 100 upserts
            shard.apply(changes=[Change(f"d{i:05d}", None) for i in range(0, 600, 7)], checkpoint=b"3")
        assert shards["float16"]._indexes.exact.scan == "float16"
        assert self.answers(shards["float16"]) == self.answers(shards["float32"])
        codes = faiss.downcast_index(shards["float16"]._indexes.exact._index.index).codes.size()
        assert codes == 2 * DIM * shards["float16"]._indexes.exact._index.ntotal  # two bytes a component
        hits = shards["float16"].search(embeddings=unit(3 * 302)[None], top_k=1, with_vectors=True)[0]
        assert np.array_equal(hits[0].node.embedding, unit(3 * 302))  # the stored float32 vector, exactly
        for shard in shards.values():
            shard.close()
        reopened = {scan: open_scan(tmp_path / scan, scan) for scan in shards}
        assert self.answers(reopened["float16"]) == self.answers(reopened["float32"])


def open_scan(path: Path, scan: str) -> CompoundIndexer:
    index = CompoundIndexer(CompoundIndexerConfig(dim=DIM, flat_scan=scan), path=path, codec=STORED_DOCUMENT)  # type: ignore[arg-type]
    index.warm_up()
    return index


class _RefusingWrites:
    """A shard's RocksDB whose writes fail before anything lands; everything else is the real one's."""

    def __init__(self, db: Rdict) -> None:
        self._db = db

    def write(self, batch: object) -> None:
        raise OSError("IO error: the write was refused")

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def _full_disk(self: object, *, wait: bool) -> None:
    raise OSError("IO error: No space left on device")
