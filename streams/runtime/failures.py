"""What happens to records that fail: isolate, retry, then reject or dead-letter; for the stage loop and replay alike.

A batch that raises is retried record by record, so one bad record costs only itself. A record that
fails alone is either refused (a request the flow will not serve: answered with the handler's error
reply and counted, nothing lost) or dead-lettered (kept, with why and where it came from, and the
handler told). Before a batch runs, records that killed the stage before (the crash-loop breaker,
``streams/runtime/inflight.py``) and records over the flow's payload limit are set apart: they are
dead-lettered unprocessed. Replay (``streams/ops/replay.py``) runs the records of a topic through the
same code, so it skips what the live stage skipped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from streams.exceptions import DeliveryError, PayloadTooLargeError, ProducerFailedError
from streams.kafka.producer import StageProducer
from streams.runtime.inflight import CrashLoopError, InFlightVerdict
from streams.runtime.metrics import DEAD_LETTERS, REJECTED_REQUESTS
from streams.wire.dead_letters import dead_letter_headers
from streams.runtime.spec import FailurePolicy, Inbound, Output, PathHandler, StageSpec

__all__ = ["DeadLetterTopic", "Failures", "Screened", "screen"]

logger = logging.getLogger(__name__)

Emit = Callable[[Sequence[Output]], None]
"""Produces a handler's outputs (raises ``PayloadTooLargeError`` for one its topic does not take)."""
Keep = Callable[[Inbound, Exception], None]
"""Keeps a dead-lettered record: the stage produces it to the dead-letter topic; replay reports it."""


@dataclass(slots=True)
class Screened:
    """A batch sorted before it is processed."""

    accepted: list[Inbound] = field(default_factory=list)
    poisoned: list[tuple[Inbound, str]] = field(default_factory=list)
    """Records that killed the stage, not yet dead-lettered, with the reason."""
    oversized: list[tuple[Inbound, int]] = field(default_factory=list)
    """Records over the flow's payload limit, with their size."""


def screen(records: Sequence[Inbound], *, max_payload_bytes: int, verdict: InFlightVerdict | None = None) -> Screened:
    """Set apart what is dead-lettered unprocessed: records ``verdict`` names as having killed the stage
    (those already dead-lettered are dropped), and records over ``max_payload_bytes``."""
    screened = Screened()
    for record in records:
        size = len(record.value or b"")
        where = (record.topic, record.partition, record.offset)
        killer = verdict.poisoned.get(where) if verdict else None
        if killer is not None:
            if where not in verdict.lettered:  # type: ignore[union-attr]
                screened.poisoned.append((record, killer))
        elif size > max_payload_bytes:
            screened.oversized.append((record, size))
        else:
            screened.accepted.append(record)
    return screened


class Failures:
    """One path's records through its handler, and what happens to those that fail."""

    def __init__(self, handler: PathHandler, policy: FailurePolicy, *, emit: Emit, keep: Keep, flow: str, stage: str,
                 timed: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext) -> None:
        """:param timed: a context that times a whole batch (a metric of the stage)."""
        self._handler = handler
        self._policy = policy
        self._emit = emit
        self._keep = keep
        self._flow = flow
        self._stage = stage
        self._timed = timed

    def take(self, records: list[Inbound], *, max_payload_bytes: int, verdict: InFlightVerdict | None = None,
             call: Callable[[list[Inbound]], list[Output]] | None = None,
             noting: Callable[[Inbound], None] | None = None,
             lettered: Callable[[list[Inbound]], None] | None = None) -> Screened:
        """Screen a batch (:func:`screen`), then process it: records that killed the stage are
        dead-lettered unprocessed (then ``lettered`` is told of them), the rest is :meth:`run`, and
        records over ``max_payload_bytes`` are dead-lettered after the batch's outputs (a watermark
        marker must not overtake the records before it: a shard would claim an ingest offset whose
        predecessors it has not applied).

        :param verdict: the crash-loop breaker's judgement of this batch.
        """
        screened = screen(records, max_payload_bytes=max_payload_bytes, verdict=verdict)
        for record, killer in screened.poisoned:
            self.dead_letter(record, CrashLoopError(killer))
        if screened.poisoned and lettered is not None:
            lettered([record for record, _ in screened.poisoned])
        self.run(screened.accepted, call=call, isolate=verdict.isolate if verdict else False, noting=noting)
        for record, size in screened.oversized:
            self.dead_letter(record, PayloadTooLargeError(f"{size} bytes exceeds max_payload_bytes={max_payload_bytes}"))
        return screened

    def run(self, records: list[Inbound], *, call: Callable[[list[Inbound]], list[Output]] | None = None,
            isolate: bool = False, noting: Callable[[Inbound], None] | None = None) -> None:
        """Process a batch with ``call`` (the handler's ``process`` by default); if it raises, or
        ``isolate`` (it killed the process before), record by record, failing the one that fails.

        :param noting: told of each record before it is processed alone (the crash-loop breaker).
        """
        if not records:
            return
        if isolate:
            logger.warning("processing record by record: this batch killed the stage before",
                           extra={"stage": self._stage, "records": len(records)})
            for record in records:
                if noting is not None:
                    noting(record)
                self._alone(record)
            return
        try:
            with self._timed():
                self._emit((call or self._handler.process)(records))
            return
        except ProducerFailedError:  # the producer's fault, not a record's: the stage recovers it
            raise
        except Exception as exc:  # isolate the bad record below; nothing is lost
            if len(records) == 1:
                self.fail(records[0], exc)
                return
            logger.info("batch failed, retrying record by record", extra={"stage": self._stage, "error": str(exc)})
        for record in records:
            self._alone(record)

    def _alone(self, record: Inbound) -> None:
        try:
            self._emit(self._handler.process([record]))
        except ProducerFailedError:
            raise
        except Exception as exc:
            self.fail(record, exc)

    def fail(self, record: Inbound, error: Exception) -> None:
        """A record that failed alone: a request the flow refuses (the policy says which) is answered
        (the handler's error reply) and counted, not dead-lettered, since nothing was lost; anything
        else is dead-lettered."""
        if not self._policy.rejects(error):
            self.dead_letter(record, error)
            return
        REJECTED_REQUESTS.labels(self._flow, self._stage, type(error).__name__).inc()
        logger.debug("request rejected", extra={"stage": self._stage, "error": f"{type(error).__name__}: {error}"})
        self._react(record, error)

    def dead_letter(self, record: Inbound, error: Exception) -> None:
        """Keep the bad record, with why and where it came from, and let the handler react."""
        self._keep(record, error)
        self._react(record, error)

    def _react(self, record: Inbound, error: Exception) -> None:
        try:
            self._emit(self._handler.on_failure(record, error))
        except ProducerFailedError:
            raise
        except Exception:
            logger.exception("on_failure raised", extra={"stage": self._stage})

    def refused(self, records: Sequence[Inbound], error: DeliveryError, limits: Mapping[str, int]) -> None:
        """The broker refused some outputs of this batch for good (too large, not authorised):
        dead-letter the inputs they came from (outputs carry their input's key), then commit.

        :param limits: the largest record each topic takes, named in the reason.
        :raises DeliveryError: when a failure is transient or cannot be traced to an input: the
            stage stops without committing, and the batch runs again after a restart.
        """
        if not error.failures or not all(f.permanent for f in error.failures):
            raise error
        refused = {f.key: f for f in error.failures}
        culprits = [r for r in records if r.key in refused]
        if not culprits:
            raise error
        for record in culprits:
            failure = refused[record.key]
            self.dead_letter(record, PayloadTooLargeError(
                f"the broker refused the output for {failure.topic}: {failure.error.str()} "
                f"({failure.size} bytes; the topic takes up to {limits[failure.topic]})"))


class DeadLetterTopic:
    """The flow's dead-letter topic, as one stage writes to it."""

    def __init__(self, spec: StageSpec) -> None:
        self._spec = spec
        self.count = 0

    def keep(self, producer: StageProducer, record: Inbound, error: Exception) -> None:
        """Produce ``record`` to the dead-letter topic with why and where it came from; its value only
        when within the flow's payload limit (the reason says why a larger one was not taken)."""
        self.count += 1
        DEAD_LETTERS.labels(self._spec.flow, self._spec.name, type(error).__name__).inc()
        logger.warning(
            "dead letter",
            extra={
                "stage": self._spec.name,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": f"{type(error).__name__}: {error}",
            },
        )
        headers = dead_letter_headers(record.headers, stage=self._spec.name, error=error, topic=record.topic,
                                      partition=record.partition, offset=record.offset)
        value = record.value if len(record.value or b"") <= self._spec.max_payload_bytes else None
        producer.produce(self._spec.dead_letter_topic, value=value, key=record.key, headers=headers)
