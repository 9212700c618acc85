"""Commit order: outputs are delivered before input offsets are committed.

A delivery failure, or a fatal error of a transactional producer, cannot be produced on demand by a
broker, so producer and consumer are recording fakes here; everything else about checkpoints runs against the broker elsewhere.
"""

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.runtime import checkpoint as checkpoint_module
from streams.runtime.checkpoint import MAX_RECREATIONS, Checkpoint, TransactionalCheckpoint
from streams.runtime.metrics import PRODUCER_RECREATIONS
from streams.exceptions import DeliveryError, ProducerFailedError


class Recorder:
    def __init__(self, fail_flush: bool = False, pending: bool = False) -> None:
        self.calls: list[str] = []
        self.committed: list[TopicPartition] = []
        self.fail_flush = fail_flush
        self.pending = pending

    def flush(self) -> None:
        self.calls.append("flush")
        if self.fail_flush:
            raise DeliveryError("delivery failed: t[0]: broker down")

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.calls.append("commit")
        self.committed = offsets


class TestCheckpoint:
    def test_flush_then_commit_next_offsets(self) -> None:
        rec = Recorder()
        checkpoint = Checkpoint(rec, rec)  # type: ignore[arg-type]
        checkpoint.record("t", 0, 5)
        checkpoint.record("t", 0, 3)
        checkpoint.record("t", 1, 9)
        checkpoint.commit()
        assert rec.calls == ["flush", "commit"]
        assert sorted((tp.partition, tp.offset) for tp in rec.committed) == [(0, 6), (1, 10)]
        assert checkpoint.empty

    def test_empty_checkpoint_commits_nothing(self) -> None:
        rec = Recorder()
        Checkpoint(rec, rec).commit()  # type: ignore[arg-type]
        assert rec.calls == []

    def test_empty_checkpoint_sends_outputs_a_timer_queued(self) -> None:
        """A parked search answered by ``tick`` has no input offset to commit: its part must not linger."""
        rec = Recorder(pending=True)
        Checkpoint(rec, rec).commit()  # type: ignore[arg-type]
        assert rec.calls == ["flush"]

    def test_delivery_failure_leaves_offsets_uncommitted(self) -> None:
        rec = Recorder(fail_flush=True)
        checkpoint = Checkpoint(rec, rec)  # type: ignore[arg-type]
        checkpoint.record("t", 0, 5)
        with pytest.raises(DeliveryError):
            checkpoint.commit()
        assert "commit" not in rec.calls and not checkpoint.empty

    def test_revoke_commits_only_when_leaving_partitions_have_pending_offsets(self) -> None:
        rec = Recorder()
        checkpoint = Checkpoint(rec, rec)  # type: ignore[arg-type]
        checkpoint.record("t", 0, 5)
        checkpoint.revoke([TopicPartition("t", 1)])
        assert rec.calls == []
        checkpoint.revoke([TopicPartition("t", 0)])
        assert rec.calls == ["flush", "commit"]

    def test_a_partition_is_committed_up_to_its_earliest_held_record_and_past_it_once_answered(self) -> None:
        """``holds``: a search parked for a write is read again by a new owner of its partition."""
        rec = Recorder()
        held = {("t", 0): 5}
        checkpoint = Checkpoint(rec, rec)  # type: ignore[arg-type]
        checkpoint.holds = lambda: held
        for offset in (4, 5, 6):
            checkpoint.record("t", 0, offset)
        checkpoint.record("t", 1, 9)
        checkpoint.commit()
        assert sorted((tp.partition, tp.offset) for tp in rec.committed) == [(0, 5), (1, 10)]
        assert not checkpoint.empty
        rec.calls.clear()
        checkpoint.commit()  # still held: nothing new to commit
        assert rec.calls == []
        held.clear()
        checkpoint.commit()
        assert [(tp.partition, tp.offset) for tp in rec.committed] == [(0, 7)] and checkpoint.empty

    def test_with_an_interval_asynchronous_commits_wait_for_it_and_synchronous_ones_never_do(self) -> None:
        """``PathSpec.commit_interval_s``: a shard stores its applied offsets itself, the group's are for lag."""
        rec = Recorder()
        checkpoint = Checkpoint(rec, rec, interval_s=3600)  # type: ignore[arg-type]
        checkpoint.record("t", 0, 1)
        checkpoint.commit()
        assert rec.calls == ["flush", "commit"]
        checkpoint.record("t", 0, 2)
        checkpoint.commit()
        assert rec.calls == ["flush", "commit"] and not checkpoint.empty  # within the interval: kept for later
        checkpoint.revoke([TopicPartition("t", 0)])  # synchronous
        assert rec.calls == ["flush", "commit"] * 2 and [(tp.partition, tp.offset) for tp in rec.committed] == [(0, 3)]
        checkpoint.record("t", 1, 5)
        checkpoint.commit(asynchronous=False)
        assert [(tp.partition, tp.offset) for tp in rec.committed] == [(1, 6)] and checkpoint.empty

    def test_with_an_interval_an_asynchronous_commit_comes_once_it_has_passed_or_when_expedited(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        clock = [1000.0]
        monkeypatch.setattr(checkpoint_module.time, "monotonic", lambda: clock[0])
        rec = Recorder()
        checkpoint = Checkpoint(rec, rec, interval_s=1.0)  # type: ignore[arg-type]
        checkpoint.record("t", 0, 1)
        checkpoint.commit()
        checkpoint.record("t", 0, 2)
        clock[0] += 0.9
        checkpoint.commit()
        assert rec.calls == ["flush", "commit"]
        clock[0] += 0.2
        checkpoint.commit()
        assert rec.calls == ["flush", "commit"] * 2 and [(tp.partition, tp.offset) for tp in rec.committed] == [(0, 3)]
        checkpoint.record("t", 0, 3)
        checkpoint.expedite()  # a dead letter: its delivery is checked at this batch's end
        checkpoint.commit()
        assert rec.calls == ["flush", "commit"] * 3 and checkpoint.empty

    def test_a_consumer_moved_backwards_commits_its_lower_offset(self) -> None:
        """A shard rebuilt from the beginning, an offset reset: the next commit goes back with the consumer."""
        rec = Recorder()
        checkpoint = Checkpoint(rec, rec)  # type: ignore[arg-type]
        checkpoint.holds = dict
        checkpoint.record("t", 0, 9)
        checkpoint.commit()
        checkpoint.record("t", 0, 2)
        checkpoint.commit()
        assert [(tp.partition, tp.offset) for tp in rec.committed] == [(0, 3)] and checkpoint.empty
        rec.calls.clear()
        checkpoint.record("t", 0, 2)  # read once more: committed there already
        checkpoint.commit()
        assert "commit" not in rec.calls and checkpoint.empty

    def test_a_revoked_partition_is_forgotten_even_when_its_outputs_fail(self) -> None:
        """Its next owner reprocesses; this consumer must not commit it later over the new owner's offset."""
        rec = Recorder(fail_flush=True)
        checkpoint = Checkpoint(rec, rec)  # type: ignore[arg-type]
        checkpoint.holds = lambda: {("t", 0): 5}
        checkpoint.record("t", 0, 8)
        with pytest.raises(DeliveryError):
            checkpoint.revoke([TopicPartition("t", 0)])
        assert checkpoint.empty and "commit" not in rec.calls

    def test_a_revoked_held_partition_is_committed_at_its_hold_and_a_lost_one_never_again(self) -> None:
        rec = Recorder()
        checkpoint = Checkpoint(rec, rec)  # type: ignore[arg-type]
        checkpoint.holds = lambda: {("t", 0): 5, ("t", 1): 2}
        checkpoint.record("t", 0, 8)
        checkpoint.record("t", 1, 3)
        checkpoint.revoke([TopicPartition("t", 0)])
        assert [(tp.partition, tp.offset) for tp in rec.committed] == [(0, 5), (1, 2)]
        checkpoint.forget([("t", 1)])  # lost: its new owner commits from here on
        rec.calls.clear()
        checkpoint.holds = dict
        checkpoint.commit()
        assert rec.calls == [] and checkpoint.empty


def _fatal(code: int = KafkaError._FENCED) -> KafkaException:
    return KafkaException(KafkaError(code, "producer fenced", fatal=True))


RELEASE = threading.Event()
"""Ends the calls a fake left hanging (set when the test that hung them ends)."""


class FakeTransactions:
    """One raw transactional producer: the calls it got, and errors raised once per call name."""

    def __init__(self, failing: dict[str, list[KafkaException]]) -> None:
        self.calls: list[str] = []
        self.failing = failing

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failing.get(name):
            raise self.failing[name].pop(0)

    def begin_transaction(self) -> None:
        self._call("begin")

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: object, timeout: float) -> None:
        self._call("send_offsets")
        if self.failing.get("hang_in_send_offsets"):
            self.failing["hang_in_send_offsets"].pop(0)
            RELEASE.wait()  # as librdkafka #5456: the call's own timeout is never checked

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")


class FakeStageProducer:
    """A ``StageProducer`` whose ``recreate`` makes a fresh raw producer (errors to come are shared)."""

    def __init__(self, **failing: list[KafkaException]) -> None:
        self.failing = failing
        self.raws = [FakeTransactions(failing)]
        self.pending = False

    @property
    def raw(self) -> FakeTransactions:
        return self.raws[-1]

    def recreate(self) -> None:
        self.raws.append(FakeTransactions(self.failing))


class FakeConsumer:
    """Assigned t[0], committed up to offset 5; notes seeks."""

    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("t", 0)]

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 5) for tp in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def consumer_group_metadata(self) -> object:
        return object()


def _batch(checkpoint: TransactionalCheckpoint) -> None:
    checkpoint.begin()
    checkpoint.record("t", 0, 7)
    checkpoint.commit()


class TestTransactionalCheckpoint:
    """A transaction's errors as librdkafka sorts them; none of them ends the process (but a producer
    that fails again and again after being replaced)."""

    def test_a_fatal_error_replaces_the_producer_and_the_batch_runs_again(self) -> None:
        consumer, producer = FakeConsumer(), FakeStageProducer(commit=[_fatal()])
        checkpoint = TransactionalCheckpoint(consumer, producer, flow="f", stage="s")  # type: ignore[arg-type]
        recreated = PRODUCER_RECREATIONS.labels("f", "s", "_FENCED")._value.get()
        _batch(checkpoint)
        assert [raw.calls for raw in producer.raws] == [["begin", "send_offsets", "commit"], []]
        assert consumer.seeks == [("t", 0, 5)] and checkpoint.empty
        assert PRODUCER_RECREATIONS.labels("f", "s", "_FENCED")._value.get() == recreated + 1
        _batch(checkpoint)  # the rerun, in a transaction of the fresh producer
        assert producer.raws[1].calls == ["begin", "send_offsets", "commit"]

    def test_an_abortable_error_aborts_with_the_same_producer(self) -> None:
        abortable = KafkaException(KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "epoch", txn_requires_abort=True))
        consumer, producer = FakeConsumer(), FakeStageProducer(commit=[abortable])
        _batch(TransactionalCheckpoint(consumer, producer))  # type: ignore[arg-type]
        assert [raw.calls for raw in producer.raws] == [["begin", "send_offsets", "commit", "abort"]]
        assert consumer.seeks == [("t", 0, 5)]

    def test_a_retriable_commit_is_tried_again(self) -> None:
        timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))
        consumer, producer = FakeConsumer(), FakeStageProducer(commit=[timed_out])
        _batch(TransactionalCheckpoint(consumer, producer))  # type: ignore[arg-type]
        assert producer.raws[0].calls == ["begin", "send_offsets", "commit", "commit"] and consumer.seeks == []

    def test_a_producer_that_cannot_abort_is_replaced(self) -> None:
        """As seen when the transaction coordinator was killed: sending the offsets fails (its connection),
        and the abort that follows fails for good (INVALID_TXN_STATE, fatal): this ended the process."""
        transport = KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to add offsets to transaction"))
        consumer, producer = FakeConsumer(), FakeStageProducer(send_offsets=[transport],
                                                               abort=[_fatal(KafkaError.INVALID_TXN_STATE)])
        _batch(TransactionalCheckpoint(consumer, producer))  # type: ignore[arg-type]
        assert [raw.calls for raw in producer.raws] == [["begin", "send_offsets", "abort"], []]
        assert consumer.seeks == [("t", 0, 5)]

    def test_sending_offsets_that_never_returns_replaces_the_producer(self) -> None:
        """librdkafka ignores ``send_offsets_to_transaction``'s timeout while the group coordinator's broker
        is gone (#5456, #5511): seen as an exactly_once stage that stopped for good after that broker was
        killed. The checkpoint stops waiting, replaces the producer and rewinds; the rerun commits."""
        consumer, producer = FakeConsumer(), FakeStageProducer(hang_in_send_offsets=[_fatal()])
        checkpoint = TransactionalCheckpoint(consumer, producer)  # type: ignore[arg-type]
        checkpoint.SEND_OFFSETS_TIMEOUT_S, checkpoint.UNCHECKED_TIMEOUT_GRACE_S = 0.05, 0.05
        try:
            _batch(checkpoint)
            assert [raw.calls for raw in producer.raws] == [["begin", "send_offsets"], []]
            assert consumer.seeks == [("t", 0, 5)] and checkpoint.empty
            _batch(checkpoint)
            assert producer.raws[1].calls == ["begin", "send_offsets", "commit"]
        finally:
            RELEASE.set()

    def test_an_error_raised_in_the_bounded_call_is_the_calls_own(self) -> None:
        transport = KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to add offsets to transaction"))
        consumer, producer = FakeConsumer(), FakeStageProducer(send_offsets=[transport])
        _batch(TransactionalCheckpoint(consumer, producer))  # type: ignore[arg-type]
        assert [raw.calls for raw in producer.raws] == [["begin", "send_offsets", "abort"]]  # abortable, not fatal

    def test_a_fresh_producer_that_cannot_begin_is_replaced_too(self) -> None:
        producer = FakeStageProducer(begin=[_fatal(), _fatal()])
        checkpoint = TransactionalCheckpoint(FakeConsumer(), producer)  # type: ignore[arg-type]
        checkpoint.begin()
        assert [raw.calls for raw in producer.raws] == [["begin"], ["begin"], ["begin"]]

    def test_the_process_gives_up_when_replaced_producers_keep_failing(self) -> None:
        producer = FakeStageProducer(commit=[_fatal() for _ in range(MAX_RECREATIONS + 1)])
        checkpoint = TransactionalCheckpoint(FakeConsumer(), producer)  # type: ignore[arg-type]
        for _ in range(MAX_RECREATIONS):
            _batch(checkpoint)
        with pytest.raises(ProducerFailedError, match="this process must go"):
            _batch(checkpoint)

    def test_a_commit_between_failures_starts_the_count_afresh(self) -> None:
        producer = FakeStageProducer(commit=[_fatal() for _ in range(MAX_RECREATIONS)])
        checkpoint = TransactionalCheckpoint(FakeConsumer(), producer)  # type: ignore[arg-type]
        for _ in range(MAX_RECREATIONS + 1):  # the last one commits
            _batch(checkpoint)
        producer.failing["commit"] = [_fatal() for _ in range(MAX_RECREATIONS)]
        for _ in range(MAX_RECREATIONS):
            _batch(checkpoint)
        assert len(producer.raws) == 2 * MAX_RECREATIONS + 1
