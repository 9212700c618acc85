"""A stage's or client's producer asks for its producer id before its first record (``StageProducer.connect``):
made by that record, it held it ~0.5 s while librdkafka's idempotent producer waited for the id."""

from __future__ import annotations

import json

from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from tests.fixtures import wait_until


def _assigned(producer: StageProducer, reports: list[str]) -> bool:
    producer.poll(0.05)  # serves the statistics callback
    return any(json.loads(report).get("eos", {}).get("idemp_state") == "Assigned" for report in reports)


def test_a_connected_producer_holds_its_producer_id_before_its_first_record(kafka_settings: KafkaSettings) -> None:
    reports: list[str] = []
    producer = StageProducer(kafka_settings, **{"statistics.interval.ms": 100, "stats_cb": reports.append})
    producer.connect()
    try:
        wait_until(lambda: _assigned(producer, reports), "no producer id came without a record")
        assert not producer.pending  # nothing was produced for it
    finally:
        producer.close()


def test_a_transactional_producer_is_left_to_its_first_use(kafka_settings: KafkaSettings) -> None:
    producer = StageProducer(kafka_settings, **{"transactional.id": "never-used"})
    producer.connect()  # no init_transactions here: it blocks, and fences an older instance with the same id
    assert producer._producer is None
