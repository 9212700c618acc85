"""One batch of an input path: processed (in slices where queries wait), what fails dead-lettered, the
offsets noted and committed, in one transaction with ``exactly_once``.

Why slices: a shard serves its queries on the thread that applies its ingest (both read one state, and one
rebalance moves both), so a bulk batch would hold every query behind it; between two slices the loop serves
the queries already fetched (``Slicing.between``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from streams.exceptions import DeliveryError, ProducerFailedError
from streams.runtime.inflight import InFlightLog, offset_ranges
from streams.runtime.metrics import RECORDS_IN
from streams.runtime.outputs import TopicLimits
from streams.runtime.paths import InputPath
from streams.runtime.spec import Inbound, Output, StageSpec

__all__ = ["Slicing", "take_batch"]

Call = Callable[[list[Inbound]], list[Output]]


@dataclass(frozen=True, slots=True)
class Slicing:
    """How a batch is cut when queries wait behind it."""

    size: int
    """Records per slice (``PathSpec.slice_records``); 0 takes the batch whole."""
    between: Callable[[Callable[[], None]], None]
    """Serves the queries already fetched (and the handler's timers) between two slices, calling the function
    it is given (which drops the batch's in-flight notes) before it runs any query; with nothing to serve it
    calls nothing, and the notes stay as they are."""
    serve_for_s: float
    """How long after the batch begins queries may run between its slices; later slices follow one another,
    so that a flood of queries cannot hold the next poll of the batch's consumer (``max.poll.interval.ms``)."""


def take_batch(path: InputPath, records: list[Inbound], *, stage: StageSpec, limits: TopicLimits, call: Call,
               slicing: Slicing | None = None) -> None:
    """Process, dead-letter what fails, note the offsets and commit (in one transaction with ``exactly_once``)."""
    if path.transactional:
        path.checkpoint.begin()  # type: ignore[attr-defined]
    RECORDS_IN.labels(stage.flow, stage.name, path.spec.topic).inc(len(records))
    accepted = _process_in_slices(path, records, stage=stage, call=call, slicing=slicing)
    if accepted is None:
        return
    for record in records:
        path.checkpoint.record(record.topic, record.partition, record.offset)
    path.processed += len(records)
    try:
        path.checkpoint.commit()
    except DeliveryError as exc:
        path.failures.refused(accepted, exc, limits)
        path.checkpoint.commit()
    if path.inflight is not None:
        path.inflight.end(records)


def _process_in_slices(path: InputPath, records: list[Inbound], *, stage: StageSpec, call: Call,
                       slicing: Slicing | None) -> list[Inbound] | None:
    """The records the handler accepted, the batch taken slice by slice with the queries already fetched served
    between two; the batch is noted in flight from here to ``take_batch``'s end. None when the path's producer
    failed (no record's fault): it is fresh, and the batch runs again. The serving stays outside that
    ``except``: a query path's fatal producer error is not this path's.

    Only a batch the crash-loop breaker found no crash over is sliced: its notes are dropped while queries run
    between slices and taken again for the rest, which a batch with a crash count would lose."""
    inflight = path.inflight
    verdict = inflight.begin(records) if inflight is not None else None
    crashed = verdict is not None and verdict.crashed
    size = 0 if crashed or slicing is None else slicing.size or len(records)
    parts = _slices(records, size)
    accepted: list[Inbound] = []
    serve_until = time.monotonic() + (slicing.serve_for_s if slicing is not None else 0.0)
    for number, part in enumerate(parts):
        if number and slicing is not None and time.monotonic() < serve_until:
            _serve_between(slicing, inflight, records, rest=records[number * size:])
        try:
            accepted += path.failures.take(
                part, max_payload_bytes=stage.max_payload_bytes, verdict=verdict, call=call,
                noting=inflight.begin_record if inflight is not None else None,
                lettered=path.lettered if inflight is not None and not path.transactional else None).accepted
        except ProducerFailedError as exc:
            path.checkpoint.recover(exc)
            if inflight is not None:
                inflight.end(records)
            return None
    return accepted


def _serve_between(slicing: Slicing, inflight: InFlightLog | None, batch: list[Inbound], *,
                   rest: list[Inbound]) -> None:
    """Serve what waits between two slices. None of the batch is in flight while queries run (one that kills the
    process is not counted against the batch): its notes are dropped before the first query, and the rest of it
    noted again after. Where nothing waited they stay, over the whole batch (drop and note again cost two writes
    of a page and two walks of the batch, at every slice of a bulk ingest). The fetch that finds out whether
    anything waits runs with the notes in place: a crash inside librdkafka's consume would count against the
    batch, as one during the batch's own fetch would not."""
    dropped = False

    def drop_notes() -> None:
        nonlocal dropped
        if inflight is not None and not dropped:
            inflight.clear(offset_ranges(batch))
            dropped = True

    slicing.between(drop_notes)
    if dropped and inflight is not None:
        inflight.resume(offset_ranges(rest))


def _slices(records: list[Inbound], size: int) -> list[list[Inbound]]:
    size = size or len(records)
    return [records[start:start + size] for start in range(0, len(records), size)]
