"""``status`` counts records behind, not offsets: under ``exactly_once`` each transaction's commit
marker takes an offset no consumer receives, and a caught-up stage used to show a lag of 1 per
partition for good."""

import time

import pytest

from processors.document import Document
from streams.ops.status import collect_status
from tests.e2e.fixtures import FlowFactory, sentence_flow_yaml
from tests.e2e.recovery import wait_applied

pytestmark = pytest.mark.kafka


def test_a_caught_up_exactly_once_flow_shows_no_lag(start_flow: FlowFactory) -> None:
    runtime = start_flow(sentence_flow_yaml(guarantee="exactly_once"))
    assert runtime.settings is not None
    with runtime.client() as client:
        receipt = client.index([Document(id=f"lag-{i}", text=f"Lag check document number {i}.") for i in range(8)])
        wait_applied(client, receipt)
    deadline = time.monotonic() + 60  # the stages' last commits land after the shards applied the documents
    while True:
        report = collect_status(runtime.settings, runtime.flow)
        lags = {s.stage: [p.lag for p in s.lag] for s in report.stages}
        if all(lag == 0 for stage in lags.values() for lag in stage):
            break
        assert time.monotonic() < deadline, f"lag never reached 0: {lags}"
        time.sleep(0.5)  # the next status read, not synchronisation: the loop waits on the condition
    offsets_behind = {s.stage: [p.high_watermark - max(p.committed, 0) for p in s.lag] for s in report.stages}
    assert any(gap > 0 for gaps in offsets_behind.values() for gap in gaps), \
        f"no commit marker behind any committed offset: the test shows nothing ({offsets_behind})"
