"""The CLI fails with one readable line and a non-zero exit code, never a traceback; and, run as a
user would from a directory of their own, it says what is true (running, searchable, why no reply)."""

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from processors.query.limits import REQUEST_LIMITS
from streams.local.brokers import BrokerKind, LocalBroker
from streams.local.ports import free_port_block
from streams.resources import EXAMPLE_FLOWS
from tests.e2e.fixtures import (
    CLI_DOCS,
    RAW_LIBRDKAFKA_LINE,
    Background,
    FlowFactory,
    root_flow_yaml,
    sentence_flow_yaml,
    user_cli,
    user_env,
)

ROOT = Path(__file__).resolve().parents[2]


def streamsearch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)


def test_bad_flow_yaml_reports_file_and_line(tmp_path: Path) -> None:
    flow = tmp_path / "bad.yml"
    flow.write_text("name: x\nstages:\n  encode:\n    uses: Nope\n  index: {}\n  join: {}\n")
    result = streamsearch("run", str(flow), "--stage", "encode")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"streamsearch: error: {flow}:4: stage encode: unknown executor 'Nope'; available: TransformerEncoder, ImageEncoder, CrossModalEncoder"]


def test_unreachable_broker_names_the_address(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "HOME": str(tmp_path)}
    result = streamsearch("search", "anything", "--timeout", "1", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("streamsearch: error: cannot reach Kafka at 127.0.0.1:1")


def test_invalid_jsonl_names_the_line(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text('{"id": 1, "text": "fine"}\n{"id": 2}\n')
    result = streamsearch("index", str(data), env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 1
    assert result.stderr.strip() == (f"streamsearch: error: {data}:2: need 'text', or fields (other string values) "
                                     "for a flow that maps them")


def test_multi_field_jsonl_is_read_for_a_flow_that_maps_fields(tmp_path: Path) -> None:
    """The JEP 3 example (no text) passes the reader, so the one error left is the absent broker;
    a number id that is not an integer is refused, saying to write it as a string."""
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "HOME": str(tmp_path)}
    books, flow = EXAMPLE_FLOWS / "jep3-books.jsonl", EXAMPLE_FLOWS / "jep3.yml"
    result = streamsearch("index", str(books), "--flow", str(flow), env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("streamsearch: error: cannot reach Kafka at 127.0.0.1:1")
    data = tmp_path / "books.jsonl"
    data.write_text('{"id": 10, "title": "the story of the art"}\n{"id": 11.5, "title": "hackers and painters"}\n')
    result = streamsearch("index", str(data), "--flow", str(flow), env=env)
    assert result.stderr.strip() == (f"streamsearch: error: {data}:2: 'id' 11.5 is a number but not an integer; "
                                     'write ids as strings, e.g. "id": "11.5"')
    data.write_text('{"id": "12", "author": "Gombrich"}\n')
    result = streamsearch("index", str(data), "--flow", str(flow), env=env)
    assert result.stderr.strip() == f"streamsearch: error: {data}:1: need 'text' or one of the flow's fields: title, summary"


# -- with a broker: run as a user would, from a directory outside the checkout ----------------------

FLOW_YAML = sentence_flow_yaml(shards=2).replace("{name}", "NAME")
"""The flow a user writes: sentence chunks, MiniLM, 2 shards (``NAME`` to fill in)."""

@dataclass
class RunningFlow:
    folder: Path
    run: Background
    bootstrap: str


@pytest.fixture(scope="module")
def flow_dir(broker_kind: BrokerKind, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFlow]:
    """`streamsearch run a.yml` in a fresh directory, no KAFKA_BOOTSTRAP_SERVERS: it starts the
    directory's local broker, over the stale address a crashed run left behind."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "a.yml").write_text(FLOW_YAML.replace("NAME", "clia"))
    (folder / ".streamsearch").mkdir()
    (folder / ".streamsearch" / "bootstrap").write_text("127.0.0.1:1")  # stale: nothing answers there
    run = Background(folder, "run", "a.yml", "--broker", broker_kind.value)
    try:
        starting = run.wait_for("flow 'clia' starting on broker ")
        bootstrap = starting.split("broker ", 1)[1].split(" ", 1)[0]
        assert "started here" in starting, starting
        yield RunningFlow(folder, run, bootstrap)
    finally:
        run.stop()


@pytest.mark.kafka
def test_run_says_running_once_every_stage_is_assigned(flow_dir: RunningFlow) -> None:
    running = flow_dir.run.wait_for("flow 'clia' running")
    assert running == "flow 'clia' running: every stage assigned, all 2 shards serving. Ctrl-C stops."
    assert flow_dir.run.lines.index(running) == 1  # after the "starting ..." line, nothing between
    assert (flow_dir.folder / ".streamsearch" / "bootstrap").read_text() == flow_dir.bootstrap  # the stale one replaced
    result = user_cli(flow_dir.folder, "search", "anything", "--flow", "clia", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert "partial" not in result.stdout, result.stdout  # every shard answers at once


@pytest.mark.kafka
def test_serving_a_version_nobody_runs_is_refused(flow_dir: RunningFlow) -> None:
    flow_dir.run.wait_for("flow 'clia' running")
    missing = user_cli(flow_dir.folder, "versions", "--flow", "clia", "--serve", "2")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"streamsearch: error: flow 'clia' has no version 2 on {flow_dir.bootstrap} (no topic clia.v2.query); "
        "start it with streamsearch run FLOW.yml"], missing.stderr
    served = user_cli(flow_dir.folder, "versions", "--flow", "clia", "--serve", "1")  # it runs: allowed
    assert served.returncode == 0 and "version 1 serves" in served.stdout, served.stderr


@pytest.mark.kafka
def test_status_takes_a_flow_name_like_every_other_command(flow_dir: RunningFlow) -> None:
    flow_dir.run.wait_for("flow 'clia' running")
    deadline = time.monotonic() + 60  # shards come from the stages' reports, published every 5 s
    while True:
        result = user_cli(flow_dir.folder, "status", "--flow", "clia", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        if len(report["shards"]) == 2:
            break
        assert time.monotonic() < deadline, report
    assert report["flow"] == "clia" and report["note"].startswith("known by name only")
    assert {t["name"] for t in report["topics"]} >= {"clia.ingest", "clia.encoded"}
    shown = user_cli(flow_dir.folder, "status", "--flow", "clia")
    assert shown.returncode == 0 and shown.stdout.splitlines()[0].startswith("flow clia version 1 (serving)"), shown


@pytest.mark.kafka
def test_index_wait_returns_when_searchable_and_search_names_the_index(flow_dir: RunningFlow) -> None:
    flow_dir.run.wait_for("flow 'clia' running")
    data = flow_dir.folder / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in CLI_DOCS.items()))
    indexed = user_cli(flow_dir.folder, "index", "docs.jsonl", "--flow", "clia", "--wait")
    assert indexed.returncode == 0, indexed.stderr
    assert indexed.stdout.splitlines()[-1] == "3 documents searchable by index version 1", indexed.stdout
    found = user_cli(flow_dir.folder, "search", "how long to bake bread", "--flow", "clia", "--top-k", "1")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.strip().splitlines()
    assert lines[1].split()[-1] == "bread", found.stdout  # read-your-writes: found right after --wait returned
    assert lines[-1].strip() == "answered by index version 1; scores: chunk2doc.max(faiss.flat_ip) (similarity)"


@pytest.mark.kafka
def test_index_wait_never_counts_a_document_that_yields_nothing_to_index(flow_dir: RunningFlow) -> None:
    """Issue 21: a text shorter than min_sent_len and a line without text gave no vector, yet
    `index --wait` said "3 documents searchable" and no search ever found them. Now a short text is
    one chunk (found), and a document with nothing to index is dead-lettered, named, and not counted."""
    flow_dir.run.wait_for("flow 'clia' running")
    data = flow_dir.folder / "short.jsonl"
    rows = [{"id": "toast", "text": "Ok"}, {"id": "blank", "text": "", "note": "no text at all"},
            {"id": "tides", "text": "The moon pulls the oceans. Tides rise twice a day."}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    indexed = user_cli(flow_dir.folder, "index", "short.jsonl", "--flow", "clia", "--wait")
    assert indexed.returncode == 1, indexed
    assert indexed.stdout.splitlines()[-1] == "2 documents searchable by index version 1", indexed.stdout
    assert indexed.stderr.strip().splitlines()[-1] == (
        "streamsearch: error: 1 of 3 documents were dead-lettered on the way and are not searchable: 'blank' by "
        "encode: BadDocumentError: document 'blank' has nothing to index: it has no text to embed and no embedding; "
        "no search could ever find it (`streamsearch dead-letters --flow clia`)"), indexed.stderr
    found = user_cli(flow_dir.folder, "search", "Ok", "--flow", "clia", "--top-k", "1")
    assert found.returncode == 0 and found.stdout.strip().splitlines()[1].split()[-1] == "toast", found.stdout


@pytest.mark.kafka
def test_top_k_is_bounded_by_the_one_limit_the_flow_applies(flow_dir: RunningFlow) -> None:
    """`--top-k` promises what the flow accepts (its help names max_top_k), and a refusal names it."""
    flow_dir.run.wait_for("flow 'clia' running")
    limit = REQUEST_LIMITS.max_top_k
    assert f"1..{limit} (max_top_k)" in " ".join(user_cli(flow_dir.folder, "search", "--help").stdout.split())
    accepted = user_cli(flow_dir.folder, "search", "bread", "--flow", "clia", "--top-k", str(limit))
    assert accepted.returncode == 0, accepted.stderr
    refused = user_cli(flow_dir.folder, "search", "bread", "--flow", "clia", "--top-k", str(limit + 1))
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"streamsearch: error: parameter 'top_k' is {limit + 1}; the limit max_top_k is {limit}"


@pytest.mark.kafka
def test_a_short_deadline_is_not_a_flow_that_does_not_run(flow_dir: RunningFlow) -> None:
    flow_dir.run.wait_for("flow 'clia' running")
    result = user_cli(flow_dir.folder, "search", "anything", "--flow", "clia", "--timeout", "0.001")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    # The flow answers a request it took up after its deadline (on the flow's clock) with the expiry.
    assert len(lines) == 1 and lines[0].startswith("streamsearch: error: RequestExpiredError: the encode stage took "
                                                   "the request up "), lines
    assert lines[0].endswith("after its deadline (a backlog, or a stage restarting): not searched; retry, or raise "
                             "the timeout"), lines


@pytest.mark.kafka
def test_a_second_run_in_the_directory_joins_its_broker_and_leaves_it(
        flow_dir: RunningFlow, broker_kind: BrokerKind) -> None:
    flow_dir.run.wait_for("flow 'clia' running")
    address = flow_dir.folder / ".streamsearch" / "bootstrap"
    (flow_dir.folder / "b.yml").write_text(FLOW_YAML.replace("NAME", "clib"))
    second = Background(flow_dir.folder, "run", str((flow_dir.folder / "b.yml").resolve()), "--broker", broker_kind.value)
    try:
        starting = second.wait_for("flow 'clib' starting on broker ")
        assert starting.startswith(
            f"flow 'clib' starting on broker {flow_dir.bootstrap} (this directory's local broker, started by "
            f"`streamsearch run` pid {flow_dir.run.process.pid}; it stops with that run)"), starting
        second.wait_for("flow 'clib' running")
        assert address.read_text() == flow_dir.bootstrap
        # Two flows, one state dir: each its own stage logs (both wrote logs/segment-0.log), as the line says.
        logs = Path(".streamsearch") / "state" / "logs"
        assert f"logs in {logs / 'clib.*.log'}; " in starting, starting
        assert "flow=clib" in (flow_dir.folder / logs / "clib.segment-0.log").read_text()
        assert "flow=clib" not in (flow_dir.folder / logs / "clia.segment-0.log").read_text()
        both = user_cli(flow_dir.folder, "versions", "--flow", "clib")
        assert both.returncode == 0 and both.stdout.startswith("flow 'clib': version 1 serves"), both.stderr
    finally:
        assert second.stop() == 0, second.stderr()
    assert address.read_text() == flow_dir.bootstrap  # the joiner leaves the address, and the broker, alone
    assert user_cli(flow_dir.folder, "search", "lava", "--flow", "clia").returncode == 0

    deadline = time.monotonic() + 60  # the memory-only broker knows no group members: reports age out in 15 s
    while True:
        stopped = user_cli(flow_dir.folder, "search", "anything", "--flow", "clib", "--timeout", "2")
        assert stopped.returncode == 1
        if "no stage" in stopped.stderr or time.monotonic() > deadline:
            break
    assert stopped.stderr.strip().splitlines() == [
        f"streamsearch: error: no reply: no stage of flow 'clib' is running on {flow_dir.bootstrap}; "
        "start it with streamsearch run FLOW.yml"]


@pytest.mark.kafka
def test_a_second_run_of_the_same_flow_in_the_directory_is_refused(flow_dir: RunningFlow) -> None:
    """It would start every stage again on the first run's shard state; capacity has its own command."""
    flow_dir.run.wait_for("flow 'clia' running")
    again = user_cli(flow_dir.folder, "run", "a.yml", timeout=60)
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        f"streamsearch: error: flow 'clia' already runs from this directory (`streamsearch run` pid "
        f"{flow_dir.run.process.pid}): a second run would start every stage again; to add capacity, "
        "`streamsearch run FLOW.yml --stage STAGE --replicas N`"], again.stderr


@pytest.mark.kafka
def test_serve_gives_the_status_command_report_and_refuses_a_busy_port(flow_dir: RunningFlow) -> None:
    flow_dir.run.wait_for("flow 'clia' running")
    port = free_port_block()
    server = Background(flow_dir.folder, "serve", "--flow", "a.yml", "--port", str(port))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=30)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.process.poll() is None, server.stderr()
                time.sleep(0.5)
        assert status.status_code == 200, status.text
        report = status.json()
        assert server.wait_for("serving flow 'clia': ") == (
            f"serving flow 'clia': search page http://127.0.0.1:{port}/ , API docs http://127.0.0.1:{port}/docs "
            "(Ctrl-C stops)")
        assert (report["flow"], report["fields"], report["note"], report["serving_version"]) == ("clia", [], None, 1)
        assert [(st["stage"], st["members"], len(st["lag"])) for st in report["stages"]] == [
            ("segment", 1, 2), ("encode", 1, 2), ("index", 1, 2), ("join", 1, 2)]
        assert sorted(sh["partition"] for sh in report["shards"]) == [0, 1]

        busy = user_cli(flow_dir.folder, "serve", "--flow", "clia", "--port", str(port))
        assert busy.returncode == 1
        assert busy.stderr.strip().splitlines() == [
            f"streamsearch: error: cannot serve on 127.0.0.1:{port}: Address already in use; choose another --port"]
    finally:
        server.stop()


@pytest.mark.kafka
def test_a_search_refused_before_sending_is_one_line(flow_dir: RunningFlow) -> None:
    flow_dir.run.wait_for("flow 'clia' running")
    for args, message in ((["   "], "query text 0 is empty or only whitespace"),
                          (["kafka", "--timeout", "1000"], "timeout_s must be in (0, 300] seconds"),
                          (["kafka", "--timeout", "0"], "timeout_s must be in (0, 300] seconds")):
        result = user_cli(flow_dir.folder, "search", *args, "--flow", "clia")
        assert result.returncode == 1 and result.stderr.strip().splitlines() == [
            f"streamsearch: error: {message}" + result.stderr.strip().split(message, 1)[1]], result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.kafka
def test_run_new_yml_takes_over_a_reindexed_version_from_the_reindex_command(flow_dir: RunningFlow) -> None:
    """The new version's stages first live in `reindex`; `run new.yml` in the same directory joins its
    broker and the new version's groups, so closing `reindex` leaves version 2 serving. (The flow
    serves version 1 again afterwards.)"""
    flow_dir.run.wait_for("flow 'clia' running")
    folder = flow_dir.folder
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in CLI_DOCS.items()))
    assert user_cli(folder, "index", "docs.jsonl", "--flow", "clia", "--wait").returncode == 0
    (folder / "b.yml").write_text(FLOW_YAML.replace("NAME", "clia").replace("max_length: 128", "max_length: 256")
                                  + "version: 2\n")
    # --allow-dead-letters: an earlier test of this module indexed a document with nothing to index ('blank').
    reindex = Background(folder, "reindex", "--flow", "b.yml", "--allow-dead-letters")
    takeover = None
    try:
        reindex.wait_for("version 2 of flow 'clia' serves queries now (was 1)")
        takeover = Background(folder, "run", "b.yml")
        assert "this directory's local broker" in takeover.wait_for("flow 'clia' starting on broker ")
        takeover.wait_for("flow 'clia' running")
        reindex.stop()
        for query, expected in (("sulfur dioxide from volcanic eruptions", "volcano"), ("bake bread with flour", "bread")):
            found = user_cli(folder, "search", query, "--flow", "clia", "--timeout", "20")
            assert found.returncode == 0, found.stderr + takeover.stderr()
            assert "answered by index version 2" in found.stdout and "partial" not in found.stdout, found.stdout
            assert found.stdout.strip().splitlines()[1].split()[-1] == expected, found.stdout
        assert takeover.stop() == 0
        _a_served_version_nobody_runs_is_named_with_its_fix(flow_dir)
    finally:
        reindex.stop()
        if takeover is not None:
            takeover.stop()


def _a_served_version_nobody_runs_is_named_with_its_fix(flow_dir: RunningFlow) -> None:
    """Version 2 serves, its run has stopped, version 1 still runs: CLI and HTTP name the version
    and the command that switches back (not 'no stage running', not 'broker unavailable'),
    `versions` lists both, and that command brings answers back."""
    folder = flow_dir.folder
    why = (f"no reply: version 2 of flow 'clia' serves queries but none of its stages runs on {flow_dir.bootstrap}; "
           "version 1 runs: switch back with `streamsearch versions --flow clia --serve 1`, or start version 2's "
           "stages (`streamsearch run` of its YAML)")
    deadline = time.monotonic() + 60  # the stopped run's consumers leave their groups as they close
    while True:
        searched = user_cli(folder, "search", "lava", "--flow", "clia", "--timeout", "2")
        if searched.stderr.strip().splitlines() == [f"streamsearch: error: {why}"] or time.monotonic() > deadline:
            break
    assert searched.returncode == 1 and searched.stderr.strip().splitlines() == [f"streamsearch: error: {why}"], \
        searched.stderr
    listed = user_cli(folder, "versions", "--flow", "clia")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1:] == [
        "  version 1: stages running: encode, index, join",
        "  version 2 (serving): no stage runs  <- serving, but no stage answers: searches get no reply"], listed.stdout
    port = free_port_block()
    server = Background(folder, "serve", "--flow", "clia", "--port", str(port))
    try:
        server.wait_for("serving flow 'clia': ")
        answer = httpx.post(f"http://127.0.0.1:{port}/search", json={"texts": "lava", "deadline_s": 2}, timeout=60)
        assert (answer.status_code, answer.json()["detail"]) == (503, why), answer.text
    finally:
        server.stop()
    assert user_cli(folder, "versions", "--flow", "clia", "--serve", "1").returncode == 0
    back = user_cli(folder, "search", "lava", "--flow", "clia", "--timeout", "20")
    assert back.returncode == 0 and "answered by index version 1" in back.stdout, back.stdout + back.stderr


@pytest.mark.kafka
def test_only_the_run_that_started_the_broker_removes_its_address(flow_dir: RunningFlow) -> None:
    flow_dir.run.wait_for("flow 'clia' running")
    assert flow_dir.run.stop() == 0, flow_dir.run.stderr()
    assert not (flow_dir.folder / ".streamsearch" / "bootstrap").exists()
    raw = [line for line in flow_dir.run.stderr_path.read_text().splitlines() if RAW_LIBRDKAFKA_LINE.match(line)]
    assert not raw, raw  # librdkafka's lines go through logging (structured), never as they come
    gone = user_cli(flow_dir.folder, "search", "anything", "--flow", "clia")
    assert gone.returncode == 1 and gone.stderr.startswith("streamsearch: error: no broker"), gone.stderr


@pytest.mark.kafka
def test_search_shows_a_root_level_match_by_its_title_and_the_start_of_its_text(
        broker: LocalBroker, start_flow: FlowFactory, tmp_path: Path) -> None:
    """Issue 21: a flow without a segmenter (one vector per document, as streams/flows/beir.yml) printed
    bare ids; its matches carry no chunk to show. Now the title tag and the text's first 120
    characters (whitespace collapsed, cut at a word) say what was found."""
    runtime = start_flow(root_flow_yaml())
    try:
        env = user_env(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers)
        rows = [{"id": "42", "title": "Kafka Streams", "text": (
                    "A client library for building applications\n\nand microservices, where the input and output "
                    "data are stored in Kafka clusters. It combines the simplicity of writing Java applications.")},
                {"id": "7", "text": "Bake the bread\n\n   for forty minutes."}]
        (tmp_path / "docs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        indexed = user_cli(tmp_path, "index", "docs.jsonl", "--flow", runtime.flow.name, "--wait", env=env)
        assert indexed.returncode == 0, indexed.stderr
        for query, expected in (
                ("a library for stream processing applications on Kafka", [
                    "  1. ", "42", "           ↳ Kafka Streams — A client library for building applications and "
                    "microservices, where the input and output data are stored in Kafka …"]),
                ("how long to bake bread", ["  1. ", "7", "           ↳ Bake the bread for forty minutes."])):
            found = user_cli(tmp_path, "search", query, "--flow", runtime.flow.name, "--top-k", "1", env=env)
            assert found.returncode == 0, found.stderr
            lines = found.stdout.strip().splitlines()
            assert (lines[1][:5], lines[1].split()[-1], lines[2]) == tuple(expected), found.stdout
    finally:
        runtime.stop()


@pytest.mark.kafka
def test_an_unknown_flow_is_refused_in_one_line_and_nothing_is_created(broker: LocalBroker, tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient

    env = user_env(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"id": "d", "text": "some text"}) + "\n")
    (tmp_path / "nosuch.yml").write_text(FLOW_YAML.replace("NAME", "nosuch"))
    refused = f"streamsearch: error: no flow 'nosuch' on {broker.bootstrap_servers} (no topic nosuch.ingest); " \
              "start it with streamsearch run FLOW.yml"
    for command in (["index", "docs.jsonl", "--flow", "nosuch"], ["index", "docs.jsonl", "--flow", "nosuch.yml"],
                    ["search", "hello", "--flow", "nosuch"], ["versions", "--flow", "nosuch"],
                    ["dead-letters", "--flow", "nosuch"], ["serve", "--flow", "nosuch", "--port", "0"],
                    ["status", "--flow", "nosuch.yml"], ["status", "--flow", "nosuch"]):
        result = user_cli(tmp_path, *command, env=env, timeout=60)
        assert (result.returncode, result.stderr.strip().splitlines()) == (1, [refused]), (command, result.stderr)
    topics = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=10).topics
    assert not [name for name in topics if name.startswith("nosuch.")]


def test_run_against_an_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(FLOW_YAML.replace("NAME", "clia"))
    env = user_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    for command in (["run", "a.yml"], ["run", "a.yml", "--stage", "join"]):
        result = user_cli(tmp_path, *command, env=env, timeout=60)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("streamsearch: error: cannot reach Kafka at 127.0.0.1:1"), lines


def test_an_index_dim_the_encoder_does_not_produce_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """Not discovered per document at the shard (every one dead-lettered): one line at start, no broker,
    whether the whole flow runs or one stage joins."""
    (tmp_path / "dim.yml").write_text(FLOW_YAML.replace("NAME", "clidim").replace("dim: 384", "dim: 8"))
    for command in (["run", "dim.yml"], ["run", "dim.yml", "--stage", "index"], ["reindex", "--flow", "dim.yml"]):
        result = user_cli(tmp_path, *command, env=user_env(), timeout=60)
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines() == [
            "streamsearch: error: dim.yml: stages.index.with.dim is 8, but the encoder (TransformerEncoder) produces "
            "384-d vectors; set dim: 384 (or use a model of 8 dimensions)"], command
    assert not (tmp_path / ".streamsearch").exists() and not (tmp_path / "state").exists()


def test_version_is_printed() -> None:
    from importlib.metadata import version

    result = streamsearch("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"streamsearch {version('streamsearch')}")


def test_a_typo_in_the_search_defaults_names_the_key_and_the_likely_one(tmp_path: Path) -> None:
    flow = tmp_path / "typo.yml"
    flow.write_text(FLOW_YAML.replace("NAME", "typo") + "search:\n  topk: 5\n")
    result = streamsearch("run", str(flow), env=user_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"))
    line = len(FLOW_YAML.splitlines()) + 2
    assert (result.returncode, result.stderr.strip().splitlines()) == (1, [
        f"streamsearch: error: {flow}:{line}: search: unknown key 'topk' (did you mean 'top_k'?); known: top_k, "
        "timeout_s, chunk_oversample, retrieval, fusion, fetch_wait_ms"]), result.stderr


def test_replicas_beyond_the_partitions_are_a_warning(tmp_path: Path) -> None:
    flow = tmp_path / "wide.yml"
    flow.write_text(FLOW_YAML.replace("NAME", "wide").replace("  join: {}", "  join: {replicas: 3}"))
    assert "join: {replicas: 3}" in flow.read_text()
    result = user_cli(tmp_path, "run", str(flow), env=user_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"), timeout=60)
    lines = result.stderr.strip().splitlines()
    assert lines[0] == ("streamsearch: warning: 3 replicas of stage 'join' but 2 partitions: 1 will stay idle "
                        "(raise the index's shards to use them)"), lines
    assert lines[1].startswith("streamsearch: error: cannot reach Kafka at 127.0.0.1:1")
