"""Commit order: outputs are delivered before input offsets are committed.

A delivery failure cannot be produced on demand by a broker, so producer and consumer are
recording fakes here; everything else about checkpoints runs against the broker elsewhere.
"""

import pytest
from confluent_kafka import TopicPartition

from streams.runtime.checkpoint import Checkpoint
from streams.exceptions import DeliveryError


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
