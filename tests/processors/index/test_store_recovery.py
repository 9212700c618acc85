"""A shard's store at open (``processors/index/store_recovery.py``): an older layout's vectors moved into their column
family, and a crash that left that family flushed ahead of the checkpoint brought back to it. A copy of the
directory stands for the crash: the process that wrote it never closed it."""

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from rocksdict import Options, Rdict

from processors.document import Document
from processors.exceptions import ConfigError
from processors.index import store_recovery
from processors.index.base import Change
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from processors.index.store_flush import MemtableFlusher
from processors.index.store_layout import FORMAT, VECTORS_FAMILY
from streams.wire.codec import STORED_DOCUMENT

DIM = 8


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def doc(doc_id: str, seeds: list[int], *, bucket: str = "x") -> Document:
    return Document(id=doc_id, tags={"bucket": bucket}, chunks=[
        Document(id=f"{doc_id}/{i}", parent_id=doc_id, text=f"{doc_id} word{seed}", embedding=unit(seed))
        for i, seed in enumerate(seeds)])


def open_index(path: Path) -> CompoundIndexer:
    config = CompoundIndexerConfig(dim=DIM, lexical=True, filterable={"bucket": "keyword"})  # type: ignore[arg-type]
    index = CompoundIndexer(config, path=path, codec=STORED_DOCUMENT)
    index.warm_up()
    return index


def crash_copy(shard: Path, to: Path) -> Path:
    shutil.copytree(shard, to, ignore=shutil.ignore_patterns("LOCK"))
    return to


def state(index: CompoundIndexer) -> tuple[object, ...]:
    """What a reader of the shard sees: documents, vector and lexical counts, and the nearest chunk of each seed."""
    nearest = [index.search(embeddings=unit(seed)[None], top_k=1)[0][0].node.id for seed in range(1, 9)]
    lexical = sorted((hit.root.id, hit.node.id) for hit in index.search_lexical(
        terms=index.analyze("word2 word5 word6"), stats=index.lexical_stats(), top_k=10))
    return sorted(index.doc_ids()), index.stats().vectors, index.lexical_stats(), nearest, lexical


def stored_keys(path: Path, family: str | None = None) -> list[bytes]:
    db = Rdict(str(path), options=Options(raw_mode=True))
    try:
        return list((db if family is None else db.get_column_family(family)).keys())
    finally:
        db.close()


FIRST = [Change("keep", doc("keep", [1])), Change("a", doc("a", [2, 3])), Change("b", doc("b", [4]))]
SECOND = [Change("a", doc("a", [5], bucket="y")), Change("b", None), Change("c", doc("c", [6, 7]))]


def test_vectors_flushed_ahead_of_the_checkpoint_are_dropped_with_the_documents_changed_after_it(
        tmp_path: Path) -> None:
    """The vectors' family is flushed first (``store_flush.py``); a crash before the rest leaves it a commit ahead.
    Reopened, the shard holds exactly what the checkpoint says, less the documents that commit changed; reading
    the records after the checkpoint again gives what a shard that never crashed holds."""
    index = open_index(tmp_path / "shard")
    index.apply(changes=FIRST, checkpoint=b"1")
    index.flush()
    index.apply(changes=SECOND, checkpoint=b"2")
    index._store._open_shard().vectors.flush(wait=True)  # the crash comes before the rest is flushed
    crashed = open_index(crash_copy(tmp_path / "shard", tmp_path / "crashed"))
    index.close()
    assert crashed.checkpoint() == b"1"
    assert sorted(crashed.doc_ids()) == ["keep"] and crashed.stats().vectors == 1
    assert crashed.lexical_stats().units == 1
    crashed.apply(changes=SECOND, checkpoint=b"2")  # the records after the checkpoint, read again
    live = open_index(tmp_path / "live")
    live.apply(changes=FIRST, checkpoint=b"1")
    live.apply(changes=SECOND, checkpoint=b"2")
    assert state(crashed) == state(live)
    assert state(crashed)[:2] == (["a", "c", "keep"], 4)
    crashed.close()
    reopened = open_index(tmp_path / "crashed")  # the counts agree again: nothing more is dropped
    assert state(reopened) == state(live)
    reopened.close()
    live.close()


class _Crash(Exception):
    """The process dies here."""


def test_a_reconcile_cut_off_by_a_crash_between_its_flushes_is_done_again_at_the_next_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconciling flushes the vectors' family first too: a crash before the rest is flushed leaves the drops done
    in one family only, and the next open must reconcile again rather than trust counts that agree."""
    index = open_index(tmp_path / "shard")
    index.apply(changes=FIRST, checkpoint=b"1")
    index.flush()
    index.apply(changes=SECOND, checkpoint=b"2")
    index._store._open_shard().vectors.flush(wait=True)
    crash_copy(tmp_path / "shard", tmp_path / "crashed")
    index.close()

    def vectors_only(flusher: MemtableFlusher) -> None:
        flusher._vectors.flush(wait=True)
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(MemtableFlusher, "flush", vectors_only)
        with pytest.raises(_Crash) as died:  # kept: freed, rocksdict would flush what it holds
            open_index(tmp_path / "crashed")
    again = open_index(crash_copy(tmp_path / "crashed", tmp_path / "again"))
    del died
    assert again.checkpoint() == b"1" and sorted(again.doc_ids()) == ["keep"] and again.stats().vectors == 1
    again.apply(changes=SECOND, checkpoint=b"2")
    live = open_index(tmp_path / "live")
    live.apply(changes=FIRST, checkpoint=b"1")
    live.apply(changes=SECOND, checkpoint=b"2")
    assert state(again) == state(live)
    again.close()
    live.close()


def test_vectors_behind_the_checkpoint_are_refused_with_a_rebuild(tmp_path: Path) -> None:
    """Never, while every flush writes the vectors first; if it happened, vectors the checkpoint counts are lost,
    and only a rebuild brings them back."""
    index = open_index(tmp_path / "shard")
    index.apply(changes=FIRST, checkpoint=b"1")
    index.close()
    db = Rdict(str(tmp_path / "shard"), options=Options(raw_mode=True))
    vectors = db.get_column_family(VECTORS_FAMILY)
    vectors[b"m/commits"] = struct.pack(">q", 0)
    vectors.close()
    del vectors
    db.close()
    with pytest.raises(ConfigError, match=r"vectors are behind its checkpoint \(commit 0 of 1\).*rebuild"):
        open_index(tmp_path / "shard")


def test_a_crash_after_both_flushes_or_before_either_needs_nothing_put_right(tmp_path: Path) -> None:
    index = open_index(tmp_path / "shard")
    index.apply(changes=FIRST, checkpoint=b"1")
    index.flush()
    index.apply(changes=SECOND, checkpoint=b"2")
    before_either = open_index(crash_copy(tmp_path / "shard", tmp_path / "before"))
    index.flush()
    after_both = open_index(crash_copy(tmp_path / "shard", tmp_path / "after"))
    assert (before_either.checkpoint(), sorted(before_either.doc_ids())) == (b"1", ["a", "b", "keep"])
    assert (after_both.checkpoint(), state(after_both)) == (b"2", state(index))
    for each in (index, before_either, after_both):
        each.close()


def write_format_4_shard(path: Path, docs: list[Document]) -> None:
    """A shard as format 4 left it: one column family, its vectors beside the documents. Written from what this
    code stores, every key of both families copied into a RocksDB that never had a second one."""
    index = open_index(path.with_name(path.name + "-source"))
    index.apply(changes=[Change(d.id, d) for d in docs], checkpoint=b"old")
    index.close()
    source = Rdict(str(path.with_name(path.name + "-source")), options=Options(raw_mode=True))
    vectors = source.get_column_family(VECTORS_FAMILY)
    old = Rdict(str(path), options=Options(raw_mode=True))
    try:
        for key, value in [*source.items(), *vectors.items()]:
            if key != b"m/commits":
                old[key] = value
        old[b"m/format"] = b"4"
        assert old.list_cf(str(path), Options(raw_mode=True)) == ["default"]
    finally:
        vectors.close()
        del vectors
        source.close()
        old.close()


def test_an_older_shards_vectors_move_into_their_family_in_batches_and_a_move_cut_off_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [doc(f"d{i}", [i, i + 20]) for i in range(1, 8)]
    live = open_index(tmp_path / "live")
    live.apply(changes=[Change(d.id, d) for d in docs], checkpoint=b"old")
    write_format_4_shard(tmp_path / "old", docs)
    assert len([key for key in stored_keys(tmp_path / "old") if key.startswith(b"v/")]) == 14
    monkeypatch.setattr(store_recovery, "MOVE_BATCH", 3)
    moved = open_index(tmp_path / "old")
    assert state(moved) == state(live) and moved.checkpoint() == b"old"
    moved.close()
    assert not [key for key in stored_keys(tmp_path / "old") if key.startswith(b"v/")]
    assert len([key for key in stored_keys(tmp_path / "old", VECTORS_FAMILY) if key.startswith(b"v/")]) == 14

    # Cut off: some vectors moved and still beside the documents too, some moved, some not yet.
    write_format_4_shard(tmp_path / "cut", docs)
    db = Rdict(str(tmp_path / "cut"), options=Options(raw_mode=True))
    vectors = db.create_column_family(VECTORS_FAMILY, Options(raw_mode=True))
    for n, key in enumerate([key for key in list(db.keys()) if key.startswith(b"v/")]):
        if n < 8:
            vectors[key] = db[key]
        if n < 4:
            del db[key]
    vectors.close()
    del vectors
    db.close()
    resumed = open_index(tmp_path / "cut")
    assert state(resumed) == state(live)
    resumed.close()
    db = Rdict(str(tmp_path / "cut"), options=Options(raw_mode=True))
    try:
        assert db[b"m/format"] == str(FORMAT).encode()
    finally:
        db.close()
    live.close()


def test_a_key_among_the_vectors_that_is_not_a_vectors_is_refused_with_a_rebuild(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=FIRST, checkpoint=b"1")
    index.close()
    db = Rdict(str(tmp_path), options=Options(raw_mode=True))
    vectors = db.get_column_family(VECTORS_FAMILY)
    vectors[b"w/stray"] = b"x"
    vectors.close()
    del vectors
    db.close()
    with pytest.raises(ConfigError, match="not a vector's among its vectors: rebuild"):
        open_index(tmp_path)


def test_a_documents_damaged_vector_ids_are_refused_with_a_rebuild_and_the_shard_left_as_it_was(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=FIRST, checkpoint=b"1")
    index.close()
    db = Rdict(str(tmp_path), options=Options(raw_mode=True))
    assert struct.unpack(">2q", db[b"dv/a"]) == (1, 2)  # big-endian int64s, as numpy's ">i8" wrote them
    db[b"dv/a"] = db[b"dv/a"][:11]  # not a whole number of ids
    db.close()
    index = open_index(tmp_path)
    with pytest.raises(ConfigError, match=r"vector ids are unreadable \(11 bytes\): rebuild"):
        index.apply(changes=SECOND, checkpoint=b"2")
    assert index.checkpoint() == b"1" and index.get("b") is not None
    index.close()
