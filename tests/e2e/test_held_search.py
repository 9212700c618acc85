"""A read-your-writes search held by its shard survives the partition moving to a new owner: the old owner's
query path commits no further than the held search (``Checkpoint.holds``), the new owner reads it again,
waits for its restore and the write, and answers it. Before, the old owner had committed past the search,
dropped it when the partition left, and the reply came partial at its deadline with that shard missing."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable

import numpy as np
import pytest

from processors.document import Document
from streams.client import IndexReceipt
from streams.local.ports import free_port_block
from streams.local.runtime import LocalRuntime
from streams.wire.partitioner import partition_of
from tests.e2e.fixtures import FlowFactory, scraped_metric, stage_logs

pytestmark = pytest.mark.kafka

DIM = 16
PORT = free_port_block(1)
FLOW = f"""name: "{{name}}"
stages:
  index:
    with: {{dim: {DIM}, metric: inner_product}}
    shards: 2
    metrics_port: {PORT}
  join: {{}}
search:
  timeout_s: 30
"""


def _on_partition_0(count: int) -> list[str]:
    return [doc_id for doc_id in (f"held-{i}" for i in range(1000)) if partition_of(doc_id.encode(), 2) == 0][:count]


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _wait_for(condition: Callable[[], bool], what: str, flow: LocalRuntime, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}\n{stage_logs(flow)}"
        time.sleep(0.05)


def test_a_search_held_for_a_write_is_answered_by_the_partitions_next_owner(start_flow: FlowFactory) -> None:
    flow = start_flow(FLOW)
    assert flow.local_flow is not None
    first, awaited = _on_partition_0(2)
    with flow.client() as writer, flow.client() as reader:
        receipt = writer.index([Document(id=first, embedding=_unit(1))])
        assert writer.search(vectors=_unit(1)[None, :], top_k=1, after=receipt, timeout_s=30).docs[0].matches
        ahead = IndexReceipt(offsets={0: receipt.offsets[0] + 1})  # the next write to partition 0: not made yet
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(reader.search, vectors=_unit(2)[None, :], top_k=1, after=ahead, timeout_s=30)
            _wait_for(lambda: scraped_metric(PORT, "streamsearch_held_searches") >= 1, "the search was never held", flow)
            old = flow.local_flow.find("index").process
            old.terminate()  # it commits and leaves its group; the supervisor starts the next owner
            old.wait(30)
            written = writer.index([Document(id=awaited, embedding=_unit(2))])
            assert written.offsets == ahead.offsets, "another write went to partition 0: the test's premise"
            reply = pending.result(timeout=60)
    assert flow.local_flow.find("index").process is not old and flow.local_flow.find("index").restarts == 1
    assert not reply.partial and not reply.stale_shards and not reply.restoring_shards, (reply, stage_logs(flow))
    assert [m.id for m in reply.docs[0].matches] == [awaited]
