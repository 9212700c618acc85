"""Malformed and hostile records for the wire fuzz test, one generator per input topic.

Each record is what an attacker (or a broken producer) with write access to a topic could put
there: bytes that are not Avro of the topic's type, Avro that declares more than it holds or nests
past the decoder's caps, and well-formed records holding what no stage of ours writes (NaN vectors,
a vector of the wrong dimension, ids with control characters, replies aimed at the flow's own
topics, parts from shards the flow does not have). Every record has its own key, so that its dead
letter can be found whatever stage refuses it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from processors.document import Direction, Document, Score
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST
from streams.wire.records import PartialResult, Request
from streams.wire.topics import FlowTopics
from tests.streams.wire.fixtures import DEFAULT_PREFIX

Make = Callable[[str], tuple[bytes | None, tuple[h.Header, ...]] | bytes | None]
"""One kind of hostile record: its value (and headers, unless the topic's own schema header) for a key."""


@dataclass(frozen=True, slots=True)
class Hostile:
    kind: str
    key: bytes
    value: bytes | None
    headers: tuple[h.Header, ...]
    refusal: str | None = None
    """For a well-formed request the flow refuses (a limit, a vector of the wrong width): what its
    error reply says. It is answered and counted, not dead-lettered."""


def zigzag(n: int) -> bytes:
    """An Avro long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return zigzag(len(raw)) + raw


def _vector(values: list[float] | np.ndarray, dtype: str = "<f4") -> np.ndarray:
    return np.asarray(values, dtype=dtype)


def _deep(prefix: bytes, inner: bytes) -> bytes:
    """``prefix`` + the 135 KB nesting where the encoding of ``inner`` stood."""
    head = prefix.index(inner)
    return prefix[:head] + DEFAULT_PREFIX * 5625  # the 135 KB record that overflowed fastavro's C stack


def _damaged(rng: random.Random, valid: bytes) -> bytes:
    return valid[: rng.randrange(1, len(valid))]


class HostileRecords:
    """Hostile records for one flow, with a fresh key each."""

    def __init__(self, topics: FlowTopics, reply_topic: str, seed: int = 7) -> None:
        self.topics = topics
        self.reply_topic = reply_topic
        self.rng = random.Random(seed)
        self.count = 0
        self.deadline_ms = int(time.time() * 1000) + 290_000  # the joiner refuses parts due after 330 s

    def _key(self) -> str:
        self.count += 1
        return f"hostile-{self.count:05d}"

    # -- <flow>.ingest: Documents --------------------------------------------------------------

    def ingest(self, n: int) -> Iterator[Hostile]:
        kinds: list[tuple[str, Callable[[str], tuple[bytes | None, tuple[h.Header, ...]] | bytes]]] = [
            ("random bytes", lambda key: self.rng.randbytes(self.rng.randrange(1, 300))),
            ("truncated", lambda key: _damaged(self.rng, DOCUMENT.encode(self._doc(key)))),
            ("a Request on ingest", lambda key: (REQUEST.encode(self._request(key)), (REQUEST.header(),))),
            ("unknown fingerprint", lambda key: (DOCUMENT.encode(self._doc(key)), ((h.SCHEMA, b"123456789"),))),
            ("huge id length", lambda key: zigzag(2**60) + b"abc"),
            ("huge chunk count", lambda key: DOCUMENT.encode(Document(id=key))[:-2] + zigzag(2**40) + b"\x00"),
            ("negative block, huge size", lambda key: DOCUMENT.encode(Document(id=key))[:-2] + zigzag(-3) + zigzag(2**62)),
            ("nested 5,625 deep", lambda key: _deep(DOCUMENT.encode(self._doc(key, chunk=True)),
                                                   DOCUMENT.encode(Document(id=f"{key}/0")))),
            ("NaN root embedding", lambda key: DOCUMENT.encode(self._doc(key, embedding=_vector([np.nan] * 384)))),
            ("inf chunk embedding", lambda key: DOCUMENT.encode(dataclasses.replace(
                self._doc(key), chunks=[Document(id=f"{key}/0", text="A chunk.", embedding=_vector([np.inf] * 384))]))),
            ("7-d root embedding", lambda key: DOCUMENT.encode(self._doc(key, embedding=_vector([0.5] * 7)))),
            ("shape and bytes disagree", lambda key: self._bad_array(key, "<f4", [384], b"\x00" * 7)),
            ("complex embedding", lambda key: self._bad_array(key, "<c8", [2], b"\x00" * 16)),
            ("object dtype", lambda key: self._bad_array(key, "O", [1], b"\x00" * 8)),
            ("NUL in id", lambda key: DOCUMENT.encode(self._doc(f"{key}\x00evil"))),
            ("escape in id", lambda key: DOCUMENT.encode(self._doc(f"{key}\x1b[31m"))),
            ("empty id", lambda key: DOCUMENT.encode(self._doc(""))),
            ("600-byte id", lambda key: DOCUMENT.encode(self._doc(key + "x" * 600))),
            ("surrogate bytes in text", lambda key: DOCUMENT.encode(self._doc(key, text="abc")).replace(
                _string("abc"), zigzag(3) + b"\xed\xa0\x80")),
            ("key is not the id", lambda key: DOCUMENT.encode(self._doc(key + "-other"))),
            ("NaN weight", lambda key: DOCUMENT.encode(dataclasses.replace(self._doc(key), weight=float("nan")))),
            ("inf score", lambda key: DOCUMENT.encode(dataclasses.replace(
                self._doc(key), scores={"s": Score(float("inf"), "x", Direction.SIMILARITY)}))),
            ("over max_payload_bytes", lambda key: DOCUMENT.encode(self._doc(key, text="Big. " * 60_000))),
        ]
        yield from self._cycle(n, kinds, DOCUMENT.header(), query_path=False)

    def _doc(self, key: str, *, text: str = "A hostile sentence is here.", embedding: np.ndarray | None = None,
             chunk: bool = False) -> Document:
        return Document(id=key, text=text, embedding=embedding, chunks=[Document(id=f"{key}/0")] if chunk else [])

    def _bad_array(self, key: str, dtype: str, shape: list[int], data: bytes) -> bytes:
        """A Document whose embedding record says one thing and holds another."""
        good = DOCUMENT.encode(self._doc(key, embedding=_vector([1.0])))
        array = _string("<f4") + zigzag(1) + zigzag(1) + b"\x00" + zigzag(4) + np.float32(1.0).tobytes()
        assert array in good
        bad = _string(dtype) + (zigzag(len(shape)) + b"".join(zigzag(s) for s in shape) + b"\x00"
                                if shape else b"\x00") + zigzag(len(data)) + data
        return good.replace(array, bad)

    # -- <flow>.query: Requests ----------------------------------------------------------------

    def query(self, n: int) -> Iterator[Hostile]:
        flow = self.topics.flow
        kinds: list[tuple[str, Callable[[str], tuple[bytes | None, tuple[h.Header, ...]] | bytes | None]]] = [
            ("random bytes", lambda key: self.rng.randbytes(self.rng.randrange(1, 300))),
            ("truncated", lambda key: _damaged(self.rng, REQUEST.encode(self._request(key)))),
            ("a Document on query", lambda key: (DOCUMENT.encode(self._doc(key)), (DOCUMENT.header(),))),
            ("unknown fingerprint", lambda key: (REQUEST.encode(self._request(key)), ((h.SCHEMA, b"42"),))),
            ("huge request id length", lambda key: zigzag(2**61) + b"r"),
            ("nested 5,625 deep", lambda key: _deep(REQUEST.encode(self._request(key, Document(id="q0", chunks=[
                Document(id="q0/0")]))), DOCUMENT.encode(Document(id="q0/0")))),
            ("NaN query vector", lambda key: REQUEST.encode(self._request(key, Document(
                id="q0", embedding=_vector([np.nan] * 384))))),
            ("-inf query vector", lambda key: REQUEST.encode(self._request(key, Document(
                id="q0", embedding=_vector([-np.inf] + [0.0] * 383))))),
            ("NUL in query text", lambda key: REQUEST.encode(self._request(key, Document(id="q0", text="a\x00b")))),
            ("reply_to the ingest topic", lambda key: REQUEST.encode(dataclasses.replace(
                self._request(key), reply_to=self.topics.ingest))),
            ("reply_to another flow", lambda key: REQUEST.encode(dataclasses.replace(
                self._request(key), reply_to="other.reply.abc"))),
            ("reply_to a client that is gone", lambda key: REQUEST.encode(dataclasses.replace(
                self._request(key), reply_to=f"{flow}.reply.gone{key[-5:]}"))),
            ("no value", lambda key: None),
        ]
        yield from self._cycle(n, kinds, REQUEST.header())
        # Well-formed but refused: answered with an error saying why, not dead-lettered.
        refused = [
            ("deadline in 10^8 years", lambda key: dataclasses.replace(self._request(key), deadline_ms=2**62),
             "the limit max_deadline_s is 300"),
            ("7-d query vector", lambda key: self._request(key, Document(id="q0", embedding=_vector([0.1] * 7))),
             "a vector of 7 values; this flow's model produces 384-d vectors"),
        ]
        for i in range(max(2, n // 50)):
            kind, make, says = refused[i % len(refused)]
            key = self._key()
            yield Hostile(kind, key.encode(), REQUEST.encode(make(key)), self._query_headers(key) + (REQUEST.header(),),
                          refusal=says)

    # -- <flow>.search: Requests as the encode stage fans them out -------------------------------

    def search(self, n: int) -> Iterator[Hostile]:
        """Written past the encode stage's checks, straight to the shards' topic."""
        kinds: list[tuple[str, Callable[[str], tuple[bytes | None, tuple[h.Header, ...]] | bytes | None]]] = [
            ("random bytes", lambda key: self.rng.randbytes(self.rng.randrange(1, 300))),
            ("truncated", lambda key: _damaged(self.rng, REQUEST.encode(self._request(key, self._vector_query())))),
            ("a PartialResult on search", lambda key: (PARTIAL_RESULT.encode(self._part(key)), (PARTIAL_RESULT.header(),))),
            ("nested 5,625 deep", lambda key: _deep(REQUEST.encode(self._request(key, Document(id="q0", chunks=[
                Document(id="q0/0")]))), DOCUMENT.encode(Document(id="q0/0")))),
            ("1e30 query vector", lambda key: REQUEST.encode(self._request(key, Document(
                id="q0", embedding=_vector([1e30] * 384))))),
            ("7-d query vector", lambda key: REQUEST.encode(self._request(key, Document(
                id="q0", embedding=_vector([0.1] * 7))))),
            ("parked for 10^8 years", lambda key: REQUEST.encode(dataclasses.replace(
                self._request(key, self._vector_query()), deadline_ms=2**62, min_offsets={0: 10**12, 1: 10**12}))),
            ("headers not UTF-8", lambda key: (self.rng.randbytes(40), (
                (h.REQUEST_ID, b"\xff\xfe" + key.encode()), (h.REPLY_TO, b"\xc3\x28"), REQUEST.header()))),
        ]
        for record in self._cycle(n, kinds, REQUEST.header()):
            if record.kind == "headers not UTF-8":  # its own headers replace the request's
                record = dataclasses.replace(record, headers=tuple(
                    (k, v) for k, v in record.headers if k not in (h.REQUEST_ID, h.REPLY_TO) or v[:1] in (b"\xff", b"\xc3")))
            yield record

    @staticmethod
    def _vector_query() -> Document:
        return Document(id="q0", embedding=_vector([0.05] * 384))

    def _request(self, key: str, doc: Document | None = None) -> Request:
        return Request(key, "search", [doc or Document(id="q0", text="hostile")], self.reply_topic,
                       self.deadline_ms, {}, {})

    def _query_headers(self, key: str) -> tuple[h.Header, ...]:
        return ((h.REQUEST_ID, key.encode()), (h.REPLY_TO, self.reply_topic.encode()),
                h.int_header(h.DEADLINE_MS, self.deadline_ms))

    # -- <flow>.partials: PartialResults -------------------------------------------------------

    def partials(self, n: int) -> Iterator[Hostile]:
        kinds: list[tuple[str, Callable[[str], tuple[bytes | None, tuple[h.Header, ...]] | bytes | None]]] = [
            ("random bytes", lambda key: self.rng.randbytes(self.rng.randrange(1, 300))),
            ("truncated", lambda key: _damaged(self.rng, PARTIAL_RESULT.encode(self._part(key)))),
            ("a Request on partials", lambda key: (REQUEST.encode(self._request(key)), (REQUEST.header(),))),
            ("unknown fingerprint", lambda key: (PARTIAL_RESULT.encode(self._part(key)), ((h.SCHEMA, b"7"),))),
            ("huge request id length", lambda key: zigzag(2**62 - 1) + b"p"),
            ("huge expected_shards count", lambda key: _string(key) + zigzag(0) + b"\x00" + zigzag(2**50)),
            ("nested 5,625 deep", lambda key: _deep(PARTIAL_RESULT.encode(self._part(key, match=Document(
                id="m", chunks=[Document(id="m/0")]))), DOCUMENT.encode(Document(id="m/0")))),
            ("NaN match score", lambda key: PARTIAL_RESULT.encode(self._part(key, match=Document(
                id="d", scores={"cosine": Score(float("nan"), "x", Direction.SIMILARITY)})))),
            ("NaN query embedding", lambda key: PARTIAL_RESULT.encode(dataclasses.replace(self._part(key), docs=[
                Document(id="q0", embedding=_vector([np.nan] * 384))]))),
            ("shard the flow lacks", lambda key: PARTIAL_RESULT.encode(dataclasses.replace(self._part(key), shard=7))),
            ("expects 30,000 shards", lambda key: PARTIAL_RESULT.encode(dataclasses.replace(
                self._part(key), expected_shards=list(range(30_000))))),
            ("expects a field the flow lacks", lambda key: PARTIAL_RESULT.encode(dataclasses.replace(
                self._part(key), expected_fields=["title"] * 3))),
            ("deadline in 10^8 years", lambda key: PARTIAL_RESULT.encode(dataclasses.replace(
                self._part(key), deadline_ms=2**62))),
            ("reply_to the encoded topic", lambda key: PARTIAL_RESULT.encode(dataclasses.replace(
                self._part(key), reply_to=self.topics.encoded))),
            ("no value", lambda key: None),
        ]
        yield from self._cycle(n, kinds, PARTIAL_RESULT.header())

    def _part(self, key: str, match: Document | None = None) -> PartialResult:
        query = Document(id="q0", text="hostile", matches=[match] if match is not None else [])
        return PartialResult(key, 0, [0, 1], self.reply_topic, self.deadline_ms, {"top_k": 3}, [query])

    # -- common --------------------------------------------------------------------------------

    def _cycle(self, n: int, kinds: Sequence[tuple[str, Make]], header: h.Header, *, query_path: bool = True
               ) -> Iterator[Hostile]:
        """``n`` records, the kinds in turn; query-path records carry a request's headers (a deadline
        in 290 s: expired records are skipped unread, by design)."""
        for i in range(n):
            kind, make = kinds[i % len(kinds)]
            key = self._key()
            made = make(key)
            value, headers = made if isinstance(made, tuple) else (made, (header,))
            yield Hostile(kind, key.encode(), value, (self._query_headers(key) if query_path else ()) + tuple(headers))
