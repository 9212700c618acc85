"""The README's replay journey on the local default, as a user runs it from a directory of their own:
index, stop the flow, replay into another state dir (the command starts the directory's broker from
its log, since the flow's run took it down), run with that state dir: every document is served, and
no shard is set aside (the run finds the same broker, not an empty one)."""

import json
from pathlib import Path

import pytest

from tests.e2e.fixtures import CLI_DOCS, Background, sentence_flow_yaml, user_cli

pytestmark = pytest.mark.kafka


def test_replay_into_another_state_dir_then_run_with_it(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(sentence_flow_yaml(shards=2).replace("{name}", "rpl"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in CLI_DOCS.items()))
    first = Background(tmp_path, "run", "a.yml", "--broker", "kafka")
    try:
        first.wait_for("flow 'rpl' running")
        indexed = user_cli(tmp_path, "index", "docs.jsonl", "--flow", "rpl", "--wait")
        assert indexed.returncode == 0, indexed.stderr
    finally:
        assert first.stop() == 0, first.stderr()

    replayed = user_cli(tmp_path, "replay", "a.yml", "--state-dir", "other")
    assert replayed.returncode == 0, replayed.stderr
    shards = [line for line in replayed.stdout.splitlines() if line.strip().startswith("shard ")]
    assert replayed.stdout.startswith("replayed ") and len(shards) == 2, replayed.stdout
    assert sum(int(line.split(": ")[1].split()[0]) for line in shards) == len(CLI_DOCS), replayed.stdout
    assert not (tmp_path / ".streamsearch" / "bootstrap").exists()  # the broker replay started is stopped again

    second = Background(tmp_path, "run", "a.yml", "--state-dir", "other", "--broker", "kafka")
    try:
        second.wait_for("flow 'rpl' running")
        for query, expected in (("sulfur dioxide from volcanic eruptions", "volcano"), ("bake bread with flour", "bread")):
            found = user_cli(tmp_path, "search", query, "--flow", "rpl", "--timeout", "20")
            assert found.returncode == 0 and "partial" not in found.stdout, found.stdout + found.stderr
            assert found.stdout.strip().splitlines()[1].split()[-1] == expected, found.stdout
        assert not list((tmp_path / "other").rglob("*set-aside*")), sorted((tmp_path / "other").rglob("*"))
    finally:
        assert second.stop() == 0, second.stderr()


def test_replay_where_nothing_ever_ran_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(sentence_flow_yaml(shards=2).replace("{name}", "never"))
    result = user_cli(tmp_path, "replay", "a.yml")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "streamsearch: error: no broker: nothing runs here and no local broker log is in .streamsearch/state/kafka "
        "(flow 'never' never ran in this directory on Apache Kafka); set KAFKA_BOOTSTRAP_SERVERS or start the flow "
        "with `streamsearch run FLOW.yml`"], result.stderr
