"""What a shard's store puts right when it opens: vectors of an older layout, and a crash's uneven flushes.

Both run before anything reads the shard, and both may be cut off by a crash and run again: redoing a step that
survived changes nothing, and what says a job is done (the vectors gone from the default family; the commit counts
equal) is written only once the rest of it is on disk.
"""

from __future__ import annotations

import logging

from rocksdict import ColumnFamily, Rdict, WriteBatch

from processors.index.store_layout import COMMITS, DOC, DOC_VIDS, FIELDS, TERMS, VEC, VID, scan, unpack_vids, vid_key

__all__ = ["MOVE_BATCH", "move_vectors", "reconcile", "settle_commits"]

logger = logging.getLogger(__name__)

MOVE_BATCH = 4096
"""Vectors moved into their column family per WriteBatch: about 6.5 MB of 384-d vectors, never the whole shard
in memory at once."""


def move_vectors(db: Rdict, family: ColumnFamily) -> int:
    """Move every vector a shard written before format 5 holds beside its documents into the vectors' column
    family, ``MOVE_BATCH`` at a time, each a put there and a delete here in one WriteBatch. Returns how many moved.

    A crash midway leaves some moved and the rest where they were (a moved vector may also still be here, when
    the vectors' family was flushed and the rest was not): the next open moves what is here again.
    """
    moved = 0
    batch = WriteBatch(raw_mode=True)
    for key, value in scan(db, VEC):
        batch.put(key, value, family)
        batch.delete(key)
        moved += 1
        if moved % MOVE_BATCH == 0:
            db.write(batch)
            batch = WriteBatch(raw_mode=True)
    if not batch.is_empty():
        db.write(batch)
    return moved


def reconcile(db: Rdict, vectors: Rdict, family: ColumnFamily, *, next_vid: int) -> None:
    """Bring the vectors' column family back to the stored checkpoint, where a crash left it ahead of the rest
    (``store_flush``: it is flushed first, so it is never behind).

    Ahead means it holds the writes of some commits after the checkpoint: vectors added by them (ids from
    ``next_vid`` on, which is stored with the checkpoint) are deleted; vectors they removed are already gone, so
    the documents that owned them (changed after the checkpoint) are dropped whole, with their term counts, field
    values and remaining vectors. The shard then reads every record after the checkpoint again, and those commits
    write both families anew. The caller flushes, then settles the commit counts (``settle_commits``): until
    then, a crash has the next open reconcile again, which finds the same to drop or less.

    :param next_vid: the next vector id, as stored with the checkpoint.
    """
    batch = WriteBatch(raw_mode=True)
    added, kept = 0, set()
    for key, _ in scan(vectors, VEC):
        vid = VID.unpack(key[len(VEC):])[0]
        if vid < next_vid:
            kept.add(vid)
        else:
            batch.delete(key, family)
            added += 1
    changed = 0
    for key, raw in scan(db, DOC_VIDS):
        vids = unpack_vids(raw)
        if all(vid in kept for vid in vids):
            continue
        changed += 1
        doc = key[len(DOC_VIDS):]
        for stored_key in (DOC + doc, key, FIELDS + doc):
            batch.delete(stored_key)
        for vid in vids:
            batch.delete(vid_key(VEC, vid), family)
            batch.delete(vid_key(TERMS, vid))
    db.write(batch)
    if added or changed:
        logger.warning("shard store reconciled after a crash: its vectors were flushed ahead of its checkpoint",
                       extra={"vectors_dropped": added, "documents_dropped": changed})


def settle_commits(db: Rdict, family: ColumnFamily) -> None:
    """Give the vectors' family the commit count the rest holds (none, where it holds none): once ``reconcile``'s
    work is on disk, the two families are at the same commit again."""
    batch = WriteBatch(raw_mode=True)
    commits = db.get(COMMITS)
    if commits is None:
        batch.delete(COMMITS, family)
    else:
        batch.put(COMMITS, commits, family)
    db.write(batch)
