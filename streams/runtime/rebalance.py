"""The stage's rebalance callbacks: the index path's partitions come and go, its handler's state
with them, and a query path that follows the index path (co-partitioning) is assigned the same."""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from streams.runtime.paths import InputPath

__all__ = ["Rebalance"]

logger = logging.getLogger(__name__)

Callback = Callable[[Consumer, list[TopicPartition]], None]


class Rebalance:
    """Subscribes a stage's paths and handles their rebalances.

    A callback never lets an exception into librdkafka (it would surface as a SystemError far from
    its cause): the error is kept and raised by :meth:`raise_error` after the poll.
    """

    def __init__(self, stage: str) -> None:
        self._stage = stage
        self._index: InputPath | None = None
        self._query: InputPath | None = None
        self.error: BaseException | None = None
        self.releases = 0
        """Times the index path gave partitions up (revoked or lost): a caller holding consumed records of the
        query path compares it before and after a poll of the index consumer."""

    def subscribe(self, index: InputPath | None, query: InputPath | None) -> None:
        self._index, self._query = index, query
        for path in (index, self._following()):
            if path is not None:
                path.keep_assignment()
        if query is not None and not query.spec.follow_index_path:
            query.consumer.subscribe(query.spec.topics, on_revoke=self._guarded(self._on_revoke_query))
        if index is not None:
            index.consumer.subscribe(index.spec.topics, on_assign=self._guarded(self._on_assign),
                                     on_revoke=self._guarded(self._on_revoke), on_lost=self._guarded(self._on_lost))

    def raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _guarded(self, callback: Callback) -> Callback:
        def call(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            try:
                callback(consumer, partitions)
            except BaseException as exc:  # noqa: BLE001 - re-raised by raise_error
                logger.exception("rebalance callback failed", extra={"stage": self._stage})
                self.error = self.error or exc

        return call

    def _following(self) -> InputPath | None:
        """The query path that mirrors the index path's assignment, if any."""
        return self._query if self._query is not None and self._query.spec.follow_index_path else None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._index is not None
        state = self._index.spec.partition_aware
        numbers = [tp.partition for tp in partitions]
        starts = state.assigned(numbers) if state is not None else {}
        for tp in partitions:
            if tp.partition in starts:
                tp.offset = starts[tp.partition]
        consumer.incremental_assign(partitions)
        self._index.took(numbers)
        if (following := self._following()) is not None:
            following.consumer.incremental_assign([TopicPartition(following.spec.topic, p) for p in numbers])
            following.took(numbers)
        logger.info("partitions assigned", extra={"stage": self._stage, "partitions": numbers})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._index is not None
        following = self._following()
        try:  # a commit that raises (an output undelivered) must not keep the partitions here
            self._index.checkpoint.revoke(partitions)
        finally:
            try:
                if following is not None:  # its commits stop at the requests it holds
                    following.checkpoint.revoke([TopicPartition(following.spec.topic, tp.partition)
                                                 for tp in partitions])
            finally:
                self._release(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Nothing is committed for partitions already someone else's: their offsets are forgotten."""
        assert self._index is not None
        self._index.checkpoint.forget([(tp.topic, tp.partition) for tp in partitions])
        if (following := self._following()) is not None:
            following.checkpoint.forget([(following.spec.topic, tp.partition) for tp in partitions])
        self._release(consumer, partitions)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._index is not None
        numbers = [tp.partition for tp in partitions]
        self.releases += 1
        if (following := self._following()) is not None:
            following.consumer.incremental_unassign([TopicPartition(following.spec.topic, p) for p in numbers])
            following.gave_up(numbers)
        if (state := self._index.spec.partition_aware) is not None:
            state.revoked(numbers)
        consumer.incremental_unassign(partitions)
        self._index.gave_up(numbers)
        logger.info("partitions revoked", extra={"stage": self._stage, "partitions": numbers})

    def _on_revoke_query(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._query is not None
        self._query.checkpoint.revoke(partitions)
