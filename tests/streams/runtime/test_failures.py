"""The failure path the stage loop and replay share: a failed batch is retried record by record, and a
record that fails alone is rejected or dead-lettered as the stage's policy says (no broker: it
produces through the callbacks it is given)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from confluent_kafka import KafkaError

from streams.exceptions import ProducerFailedError
from streams.runtime.failures import Failures, screen
from streams.runtime.inflight import InFlightVerdict
from streams.runtime.spec import FailurePolicy, Inbound, Output


class Refused(Exception):
    """A request the flow refuses (the policy names it)."""


class _Handler:
    """Fails records by value: ``refuse`` with ``Refused``, ``bad`` with a ``ValueError``."""

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        for record in records:
            if record.value == b"refuse":
                raise Refused("not served here")
            if record.value == b"bad":
                raise ValueError("cannot read it")
        return [Output("out", value=r.value) for r in records]

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return [Output("errors", value=f"{type(error).__name__}: {error}".encode())]

    def tick(self) -> list[Output]:
        return []


def _record(offset: int, value: bytes) -> Inbound:
    return Inbound("in", 0, offset, None, value, {})


def _run(policy: FailurePolicy, values: list[bytes]) -> tuple[list[Output], list[tuple[int, str]]]:
    emitted: list[Output] = []
    kept: list[tuple[int, str]] = []
    failures = Failures(_Handler(), policy, emit=emitted.extend, flow="f", stage="s",
                        keep=lambda record, error: kept.append((record.offset, type(error).__name__)))
    failures.run([_record(offset, value) for offset, value in enumerate(values)])
    return emitted, kept


def test_a_failed_batch_is_retried_record_by_record_and_only_the_bad_record_is_dead_lettered() -> None:
    emitted, kept = _run(FailurePolicy(), [b"a", b"bad", b"b"])
    assert kept == [(1, "ValueError")]
    assert [(o.topic, o.value) for o in emitted] == [("out", b"a"), ("errors", b"ValueError: cannot read it"),
                                                     ("out", b"b")]


def test_what_the_policy_rejects_is_answered_and_not_dead_lettered() -> None:
    emitted, kept = _run(FailurePolicy(rejected=(Refused,)), [b"refuse", b"a"])
    assert kept == []
    assert [(o.topic, o.value) for o in emitted] == [("errors", b"Refused: not served here"), ("out", b"a")]


def test_without_the_stage_saying_so_a_refusal_is_a_dead_letter() -> None:
    _, kept = _run(FailurePolicy(), [b"refuse"])
    assert kept == [(0, "Refused")]


def test_screening_sets_apart_records_that_killed_the_stage_and_records_over_the_payload_limit() -> None:
    records = [_record(0, b"a"), _record(1, b"killer"), _record(2, b"x" * 11), _record(3, b"lettered")]
    verdict = InFlightVerdict(poisoned={("in", 0, 1): "crashed the stage 3 times (Aborted)", ("in", 0, 3): "crashed"},
                              isolate=False, lettered=frozenset({("in", 0, 3)}))
    screened = screen(records, max_payload_bytes=10, verdict=verdict)
    assert [r.offset for r in screened.accepted] == [0]
    assert [(r.offset, why) for r, why in screened.poisoned] == [(1, "crashed the stage 3 times (Aborted)")]
    assert [(r.offset, size) for r, size in screened.oversized] == [(2, 11)]


def test_a_producer_that_takes_no_record_fails_the_batch_not_a_record() -> None:
    """A fatal error of the producer is no record's fault: nothing is dead-lettered, the loop recovers."""
    kept: list[Inbound] = []

    def emit(outputs: Sequence[Output]) -> None:
        raise ProducerFailedError("the producer took no record", KafkaError(KafkaError._FATAL))

    failures = Failures(_Handler(), FailurePolicy(), emit=emit, flow="f", stage="s",
                        keep=lambda record, error: kept.append(record))
    with pytest.raises(ProducerFailedError):
        failures.run([_record(0, b"a"), _record(1, b"b")])
    assert kept == []
