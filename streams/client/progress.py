"""Indexing progress, measured where it happens: by tailing ``<flow>.encoded``.

Producing to the ingest topic takes a second; encoding takes minutes. The bar counts the
documents that left the encoder, and is done when every ingest partition's last written
offset has come through (the ``ss-ingest-offset`` header). ``wait_searchable`` goes one step
further: every shard has applied the writes and answers with them (read-your-writes), and it
names the documents a stage dead-lettered on the way (the shards' watermarks move past them).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import TopicPartition
from tqdm import tqdm

from processors.document import Document
from streams.wire import headers as h
from streams.client import Client, IndexReceipt
from streams.client.dead_letters import read_dead_letters
from streams.wire.dead_letters import DeadLetter
from streams.exceptions import RequestTimeoutError, SearchError
from streams.kafka.settings import KafkaSettings
from streams.kafka.reader import fetch_high_watermarks, tail
from streams.wire.records import SearchReply
from streams.wire.topics import FlowTopics

__all__ = ["IndexProgress", "Searchable", "wait_searchable", "dead_letters_of", "index_with_progress"]

FIRST_OFFSETS_TIMEOUT_S = 10.0
"""How long the bar may take to learn where the ingest topic ends; past it, it counts every record."""

PROBE_DEADLINE_S = 10.0
"""Each probe search's deadline: a shard behind the receipt waits until shortly before it."""


@dataclass(frozen=True, slots=True)
class Searchable:
    """The end of a read-your-writes wait: every shard has applied the receipt's writes.

    :param reply: the first complete, fresh reply; None when the receipt holds no writes.
    :param dead_letters: the receipt's records a stage dead-lettered on the way, with the stage
        and the reason: those documents are not searchable (``streamsearch dead-letters`` shows
        them too, and re-drives them after a fix).
    """

    reply: SearchReply | None
    dead_letters: list[DeadLetter]


def dead_letters_of(client: Client, receipt: IndexReceipt) -> list[DeadLetter]:
    """The dead letters, on the serving version's dead-letter topic, whose source traces back to
    an ingest offset ``receipt`` wrote; read from where that topic ended before the writes."""
    topics = client.topics
    start = receipt.dead_letters_from.get(topics.dead_letter, 0)
    return [letter for letter in read_dead_letters(client.settings, topics, from_offset=start)
            if receipt.wrote(letter.source_partition, letter.ingest_offset)]


def wait_searchable(client: Client, receipt: IndexReceipt, *, timeout: float) -> Searchable:
    """Wait until every shard has applied the writes of ``receipt`` and answers: a search with
    ``after=receipt`` comes back complete and not stale. A record dead-lettered on the way moves
    the shard's watermark past it, so the wait ends, and names it.

    A restoring shard answers at once, a shard still behind answers ``stale`` by the deadline,
    and a stage that is restarting may leave a probe unanswered: each means "ask again".

    :param timeout: give up after this many seconds.
    :returns: the first complete, fresh reply and the receipt's dead letters.
    :raises RequestTimeoutError: naming the shards still behind, if ``timeout`` passes first.
    """
    if not receipt.offsets:
        return Searchable(None, [])
    deadline = time.monotonic() + timeout
    last: SearchReply | None = None
    while (left := deadline - time.monotonic()) > 0:
        try:
            last = client.probe(after=receipt, timeout_s=max(1.0, min(PROBE_DEADLINE_S, left)))
        except RequestTimeoutError:  # unanswered, or expired in a backlog: ask again
            continue
        except SearchError as exc:
            raise RequestTimeoutError(f"cannot check the writes: {exc}") from exc
        if last.errors:
            raise RequestTimeoutError(f"cannot check the writes: {'; '.join(last.errors)}")
        if not last.partial and not last.stale_shards:
            return Searchable(last, dead_letters_of(client, receipt))
        if last.restoring_shards:
            time.sleep(0.2)  # the restoring shard answered at once: do not spin on it
    behind = "no reply" if last is None else (
        f"shards behind: stale {last.stale_shards}, missing {last.missing_shards}, restoring {last.restoring_shards}")
    raise RequestTimeoutError(f"writes not searchable after {timeout:.0f}s ({behind})")


class IndexProgress:
    """A progress bar over encoded documents; ``wait()`` returns when the receipt is through."""

    def __init__(self, settings: KafkaSettings, topics: FlowTopics, *, total: int, disable: bool = False) -> None:
        self._settings = settings
        self._topics = topics
        self._first = {partition: high for (_, partition), high in fetch_high_watermarks(
            settings, {topics.ingest: topics.partitions}, timeout=FIRST_OFFSETS_TIMEOUT_S).items()}
        """Per ingest partition, the first offset written after this bar started: what was written before
        (a run stopped half-way and started again re-sends its corpus) is not counted."""
        self._bar = tqdm(total=total, unit="doc", desc="indexed", disable=disable)  # after the wait on the broker: an interrupt there leaves no bar
        self._target: dict[int, int] | None = None
        self._indexed = 0
        self._seen: dict[int, int] = {}
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tail, daemon=True, name="index-progress")
        self._thread.start()

    @property
    def indexed(self) -> int:
        """Documents of this run that left the encoder (counted here: a disabled tqdm counts nothing)."""
        return self._indexed

    def expect(self, receipt: IndexReceipt) -> None:
        """Set what "done" means: these ingest offsets have come through the encoder."""
        self._target = dict(receipt.offsets)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._bar.close()

    def __enter__(self) -> "IndexProgress":
        return self

    def __exit__(self, *_: object) -> None:
        """Closed on the way out, an interrupt included: a bar left open is redrawn at exit, after the
        command's last line ("streamsearch: interrupted")."""
        self.close()

    def _tail(self) -> None:
        starts = [TopicPartition(self._topics.encoded, p, 0) for p in range(self._topics.partitions)]
        for fetched in tail(self._settings, starts, group_id=f"{self._topics.flow}.progress.{uuid.uuid4().hex[:8]}",
                            stop=self._stop, max_records=512):
            for msg in fetched.records:
                headers = dict(msg.headers() or [])
                offset = h.read_int(headers, h.INGEST_OFFSET)
                if offset is not None:
                    self._seen[msg.partition()] = max(self._seen.get(msg.partition(), -1), offset)
                if msg.value() is not None and (offset is None or offset >= self._first.get(msg.partition(), 0)):
                    self._indexed += 1
                    self._bar.update(1)
            if self._target is not None and all(self._seen.get(p, -1) >= o for p, o in self._target.items()):
                self._done.set()
                return


def index_with_progress(client: Client, docs: Sequence[Document], *, topics: FlowTopics,
                        while_indexing: Callable[[IndexProgress], object] | None = None) -> IndexReceipt:
    """Send ``docs`` under a progress bar and return once the encoder has passed them all.

    :param topics: the running flow's (its partition count: a ``Client``'s own topics do not know it).
    :param while_indexing: called between the send and the wait, with the bar (the hello-world searches there).
    """
    with IndexProgress(client.settings, topics, total=len(docs)) as progress:
        receipt = client.index(docs)
        progress.expect(receipt)
        if while_indexing is not None:
            while_indexing(progress)
        progress.wait()
    return receipt
