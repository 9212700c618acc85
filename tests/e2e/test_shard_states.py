"""Shard directories opened with settings other than those they were built with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from processors.index.compound import CompoundIndexerConfig
from streams.exceptions import EXIT_CONFIG, StateConfigError
from streams.flow.parse import load_flow
from streams.local.brokers import LocalBroker
from streams.local.runtime import LocalRuntime
from streams.stages.shard.states import ShardCheckpoint, ShardStates
from tests.e2e.fixtures import SENTENCE_FLOW, stage_logs

ROOT = Path(__file__).resolve().parents[2]


def states(root: Path, **config: object) -> ShardStates:
    return ShardStates(root=root, flow="f", config=CompoundIndexerConfig(dim=8, **config),  # type: ignore[arg-type]
                       private_when_locked=True, source=Path("flows/f.yml"))


class TestStoredSettings:
    @pytest.mark.parametrize("changed, named", [
        ({"metric": "l2"}, "was built with metric 'inner_product', now 'l2'"),
        ({"dim": 16}, "was built with dim 8, now 16"),
    ])
    def test_a_shard_built_with_other_settings_is_refused_in_one_line_naming_the_change_and_the_rebuild(
            self, tmp_path: Path, changed: dict[str, object], named: str) -> None:
        first = states(tmp_path)
        first.open(0)
        first.close_all()
        config = {"dim": 8, **changed}
        other = ShardStates(root=tmp_path, flow="f", config=CompoundIndexerConfig(**config),  # type: ignore[arg-type]
                            private_when_locked=True, source=Path("flows/f.yml"))
        with pytest.raises(StateConfigError) as refused:
            other.open(0)
        message = str(refused.value)
        assert named in message and "\n" not in message
        assert "`streamsearch replay flows/f.yml --from-beginning`" in message and "new state_dir" in message
        assert list((tmp_path / "f" / "index").iterdir()) == [tmp_path / "f" / "index" / "0"]  # no private copy

    def test_the_refused_shard_is_let_go_so_a_replay_rebuilds_it_for_the_new_settings(self, tmp_path: Path) -> None:
        first = states(tmp_path)
        first.open(0)
        first.close_all()
        stage = states(tmp_path, metric="l2")
        with pytest.raises(StateConfigError) as refused:  # held: its traceback keeps the failed index alive
            stage.open(0)
        replay = ShardStates(root=tmp_path, flow="f", config=CompoundIndexerConfig(dim=8, metric="l2"))
        assert replay.destroy(0) == ShardCheckpoint()  # RocksDB's lock was free: deleted and made anew
        replay.close_all()
        assert refused.value.__cause__ is not None
        assert stage.open(0) == ShardCheckpoint()
        stage.close_all()


@pytest.mark.kafka
def test_a_flow_restarted_with_another_metric_stops_its_index_stage_once_and_the_named_replay_rebuilds_it(
        broker: LocalBroker, tmp_path: Path) -> None:
    """Issue 11: the index stage crash-looped instead of saying once what changed and how to rebuild."""
    path = tmp_path / "flow.yml"
    yaml_text = SENTENCE_FLOW.replace("{name}", f"t{uuid.uuid4().hex[:8]}").replace("SHARDS", "1")
    path.write_text(yaml_text)
    state = tmp_path / "state"

    def run_index() -> LocalRuntime:
        return LocalRuntime(load_flow(path), flow_path=path, state_dir=state, stages=["index"]).start()

    def wait_for(condition: Callable[[], object], what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what}:\n{stage_logs(runtime)}"
            time.sleep(0.2)

    runtime = run_index()  # builds shard 0 with inner_product
    try:
        wait_for(lambda: (runtime.flow.state_dir / runtime.flow.topics.prefix / "index" / "0" / "CURRENT").exists(),
                 "shard 0 never opened")
    finally:
        runtime.stop()
    path.write_text(yaml_text.replace("metric: inner_product", "metric: l2"))
    runtime = run_index()
    try:
        assert runtime.local_flow is not None
        wait_for(lambda: runtime.local_flow.stopped, "the index stage did not stop")  # type: ignore[union-attr]
        time.sleep(2)  # the supervisor's watcher runs every 0.5 s: it had four chances to restart it
        stage = runtime.local_flow.find("index")
        assert stage.restarts == 0 and stage.process.returncode == EXIT_CONFIG
        reason = runtime.local_flow.stopped["index-0"]
        assert "was built with metric 'inner_product', now 'l2'" in reason, reason
        assert f"`streamsearch replay {path} --from-beginning`" in reason, reason
    finally:
        runtime.stop()
    replay = subprocess.run([sys.executable, "-m", "streams.cli", "replay", str(path), "--from-beginning",
                             "--state-dir", str(state)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert replay.returncode == 0, replay.stderr
    runtime = run_index()
    try:
        time.sleep(10)
        assert runtime.local_flow is not None and not runtime.local_flow.stopped, stage_logs(runtime)
        assert runtime.local_flow.find("index").process.poll() is None and runtime.local_flow.find("index").restarts == 0
    finally:
        runtime.stop()
    reopened = ShardStates(root=state, flow=load_flow(path).topics.prefix, config=CompoundIndexerConfig(metric="l2"))
    reopened.open(0)  # built with l2 now
    reopened.close_all()
