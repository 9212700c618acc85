"""Records for the wire tests, and for stage tests that feed hostile bytes (``nested``, ``DEFAULT_PREFIX``)."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
from hypothesis import strategies as st

from processors.document import Direction, Document, Score

__all__ = ["DEFAULT_PREFIX", "documents", "nested", "nested_docs", "tree", "varint"]


def tree() -> Document:
    chunk = Document(id="d/0", parent_id="d", granularity=1, text="chunk", offset=0, location=[0, 5],
                     embedding=np.arange(6, dtype=np.float32).reshape(2, 3), field_name="title",
                     scores={"score": Score(0.5, "faiss.flat_l2", Direction.DISTANCE)})
    match = Document(id="m", adjacency=1, blob=b"\x00\x01", uri="file:///x", tags={"k": "v"}, weight=0.25)
    return Document(id="d", text="root", chunks=[chunk], matches=[match], mime_type="text/plain", modality="text")



DEFAULT_PREFIX = b"\x00" * 12 + struct.pack("<d", 1.0) + b"\x00" * 3 + b"\x02"
"""An all-default Document (empty id and mime type, every option null, no tags, scores or
location) up to its ``chunks`` array, which holds one item: the next such Document."""


def nested(depth: int) -> bytes:
    """A Document ``depth`` levels deep, each the only chunk of the one above, closed properly."""
    innermost = DEFAULT_PREFIX[:-1] + b"\x00\x00"  # no chunks, no matches
    return DEFAULT_PREFIX * (depth - 1) + innermost + b"\x00\x00" * (depth - 1)  # end of chunks, no matches


def nested_docs(depth: int) -> Document:
    doc = Document(id=f"d{depth}", text="leaf")
    for level in range(depth - 1, 0, -1):
        doc = Document(id=f"d{level}", chunks=[doc], matches=[Document(id=f"m{level}")] if level % 2 else [])
    return doc


def varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))



def documents() -> st.SearchStrategy[Document]:
    text = st.text(max_size=8)
    leaf = st.builds(
        Document, id=text, text=st.none() | text, blob=st.none() | st.binary(max_size=8), granularity=st.integers(-3, 3),
        tags=st.dictionaries(text, text, max_size=2), location=st.lists(st.integers(-2**31, 2**31 - 1), max_size=3),
        weight=st.floats(allow_nan=False), offset=st.integers(0, 10**6),
        embedding=st.none() | st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=4).map(
            lambda v: np.asarray(v, dtype=np.float32)),
        scores=st.dictionaries(text, st.builds(Score, st.floats(allow_nan=False), text, st.sampled_from(Direction)),
                               max_size=2))
    return st.recursive(leaf, lambda children: st.builds(
        lambda doc, chunks, matches: dataclasses.replace(doc, chunks=chunks, matches=matches),
        leaf, st.lists(children, max_size=3), st.lists(children, max_size=2)), max_leaves=12)

