"""A shard's RocksDB key layout: the keys, the column family of the vectors, and how each value is packed.

Key layout (one RocksDB per shard):
    d/<doc id>     the root document, embeddings stripped (codec bytes)
    dv/<doc id>    int64 ids of the document's vectors
    v/<vector id>  in the ``vectors`` column family (format 5; before it, beside the others): float32 vector
                   bytes + the owner: 0xFF, then doc id, node path and field name, each as a big-endian uint32
                   byte count and its UTF-8 bytes
    l/<vector id>  the lexical arm's term counts of the vector's node (term NUL count NUL ...), if its text has terms
    s/<doc id>     the document's filterable tag values, JSON {field: [values]}, if it has any (format 4)
    m/checkpoint   the caller's opaque checkpoint
    m/next_vid     the next vector id
    m/commits      how many commits the shard has taken, big-endian uint64, in both column families (format 5):
                   equal unless a crash kept the vectors' family ahead of the rest (``store_recovery.py``)
    m/config       dim and metric, checked on reopen
    m/analyzer     the analyzer the l/ counts come from (format 3)
    m/filterable   the field schema the s/ values follow, JSON {field: type} (format 4)
    m/format       the layout (5); a newer one is refused. A new shard is stamped 5 on its first open, and an
                   older one once its vectors are moved into their column family (at its first open by this
                   code), after which older code refuses to open it. Before format 5, the stamp rose only with a
                   feature's first use: 3 with the lexical arm's counts, 4 with field values.

A key is a fixed prefix and the whole id, and an owner is length-prefixed, so nothing stored
depends on what an id contains (NUL, '/', control characters...). Shards written before
format 2 hold owners as UTF-8 "<doc id>\\0<node path>\\0<field name>", with no 0xFF (never in
UTF-8): such a value is read by its last two NULs, so ids holding NUL are recovered too.
They are read as they are and never rewritten; every new vector is written in format 2.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rocksdict import Rdict

from processors.exceptions import ConfigError

DOC, DOC_VIDS, VEC, TERMS, FIELDS = b"d/", b"dv/", b"v/", b"l/", b"s/"
CHECKPOINT, NEXT_VID, COMMITS, CONFIG = b"m/checkpoint", b"m/next_vid", b"m/commits", b"m/config"
FORMAT_KEY, ANALYZER, FILTERABLE = b"m/format", b"m/analyzer", b"m/filterable"
FORMAT = 5
"""The storage layout this code writes; it reads every one up to it."""
VECTORS_FAMILY = "vectors"
"""The column family of the ``v/`` keys (format 5). Vector ids only grow, so the vectors' files need not overlap one
another, and RocksDB can move them down its levels without rewriting them. Mixed with the documents' keys, which
land anywhere, every flushed file overlapped every older one, and compaction rewrote each 1.6 KB vector several
times: RocksDB's background threads took 9.9 us of CPU a 384-d vector, and 3.7 with their own family (400,000
vectors written as the index stage writes them, ``benchmarks/README`` of stop 48). ``COMMITS``, which every write
puts here too (``ShardStore.commit``), gives every file the same first key: written back to back in-process, no
file was moved and compactions rewrote every vector (the README's "Shard state", which says why a layout without
it was not adopted)."""
OWNER_TAG = b"\xff"
"""Starts a format-2 owner; a format-1 owner is UTF-8 text, which never holds 0xFF."""
VID, U32 = struct.Struct(">q"), struct.Struct(">I")
"""A vector id in keys and counters (big-endian, so keys sort by id); a part's byte count in an owner."""

Owner = tuple[str, str, str]
"""Whose vector it is: (doc id, node path, field name); the path is '' for the root, 'c3.c1' below."""


def vid_key(prefix: bytes, vid: int) -> bytes:
    """A vector's key under ``VEC`` or ``TERMS``: big-endian, so a prefix scan runs in id order."""
    return prefix + VID.pack(vid)


def pack_vids(vids: Sequence[int]) -> bytes:
    """A document's vector ids under ``DOC_VIDS``: big-endian int64s (numpy's ``>i8``, which wrote them before). One
    declaration for the writer and the two readers; ``struct`` packs one id in 0.34 us (numpy 0.45) and unpacks
    it in 0.37 (0.82), once per stored or replaced document."""
    return struct.pack(f">{len(vids)}q", *vids)


def unpack_vids(raw: bytes) -> list[int]:
    """:raises ConfigError: if ``raw`` is not a whole number of ids (a damaged shard: rebuild it by replay)."""
    if len(raw) % VID.size:
        raise ConfigError(f"a document's stored vector ids are unreadable ({len(raw)} bytes): rebuild the shard by replay")
    return list(struct.unpack(f">{len(raw) // VID.size}q", raw))


def scan(db: Rdict, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) under ``prefix`` in one column family, in key order."""
    for key, value in db.items(from_key=prefix):
        if not key.startswith(prefix):
            return
        yield key, value


def scan_keys(db: Rdict, prefix: bytes) -> Iterator[bytes]:
    """Every key under ``prefix`` in one column family, in key order; the values are not read."""
    for key in db.keys(from_key=prefix):
        if not key.startswith(prefix):
            return
        yield key


def utf8(text: str) -> bytes:
    """UTF-8, lone surrogates passed through: any str has bytes that decode back to it."""
    return text.encode("utf-8", "surrogatepass")


def pack_fields(values: Mapping[str, Sequence[Any]]) -> bytes:
    """Filterable values as compact JSON: strings, finite floats and booleans only (``stored_values``)."""
    return json.dumps({name: list(members) for name, members in values.items()}, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")


def pack_terms(counts: Mapping[str, int]) -> bytes:
    """A unit's term counts as ``term NUL count NUL ...`` in UTF-8: the analyzer's terms are runs of
    letters and digits (tantivy's simple tokenizer), never NUL. Faster than JSON for the short texts of
    chunks (0.7 against 3.9 us for two terms)."""
    return "\0".join(f"{term}\0{count}" for term, count in counts.items()).encode()


def unpack_terms(raw: bytes) -> dict[str, int]:
    parts = raw.decode().split("\0")
    return {parts[i]: int(parts[i + 1]) for i in range(0, len(parts), 2)}


def pack_owner(doc_id: str, path: str, field_name: str) -> bytes:
    """A vector's owner in format 2: the tag, then each part as a uint32 byte count and its bytes."""
    doc, node, field = utf8(doc_id), utf8(path), utf8(field_name)  # unrolled: once per vector, 3.0 -> 1.4 us
    return b"".join((OWNER_TAG, U32.pack(len(doc)), doc, U32.pack(len(node)), node, U32.pack(len(field)), field))


def unpack_owner(raw: bytes) -> Owner:
    """A vector's (doc id, node path, field name), stored in format 2 or in format 1.

    :raises ConfigError: if the bytes are neither (a damaged shard: rebuild it by replay).
    """
    if not raw.startswith(OWNER_TAG):
        # Format 1: path and field never hold NUL, so the last two NULs split it, even for ids holding NUL.
        parts = raw.decode("utf-8", "surrogatepass").rsplit("\0", 2)
        if len(parts) != 3:
            raise ConfigError(f"a stored vector owner is unreadable: {raw[:80]!r}")
        return parts[0], parts[1], parts[2]
    owner, at = [], len(OWNER_TAG)
    for _ in range(3):
        if at + 4 > len(raw):
            raise ConfigError(f"a stored vector owner is truncated: {raw[:80]!r}")
        (size,) = U32.unpack_from(raw, at)
        at += 4
        if at + size > len(raw):
            raise ConfigError(f"a stored vector owner is truncated: {raw[:80]!r}")
        owner.append(raw[at : at + size].decode("utf-8", "surrogatepass"))
        at += size
    return owner[0], owner[1], owner[2]
