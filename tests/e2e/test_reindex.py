"""Reindex: a new index version (other segmentation) is built from the ingest topic while the
serving version answers every query; queries switch once it has caught up, clients follow
without a restart, an operator can switch back, and the old version can then be stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from processors.document import Document
from streams.kafka.admin import ensure_topics
from streams.flow.parse import load_flow
from streams.kafka.settings import KafkaSettings
from streams.local.brokers import LocalBroker
from streams.local.runtime import LocalRuntime
from streams.wire.records import SearchReply
from streams.wire.topics import FlowTopics
from streams.ops.versions import claim_serving, read_serving
from tests.e2e.fixtures import SEGMENTER, FlowFactory, corpus_with_unique_sentences, sentence_flow_yaml, stage_logs
from tests.e2e.recovery import read_shards, wait_applied

pytestmark = pytest.mark.kafka

V1 = sentence_flow_yaml(shards=2)
"""Version 1: sentence chunks, one vector per sentence."""

V2 = """
# Version 2: one vector per whole document, no segmenter.
name: {name}
version: 2
stages:
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [r], max_length: 256, normalize: true}
  index:
    uses: CompoundIndexer
    with: {dim: 384, metric: inner_product}
    shards: 2
  join: {}
search:
  top_k: 3
"""

BEFORE, DURING = 24, 8


def _cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs)  # type: ignore[call-overload]


def _wait_for(
        condition: Callable[[], object], what: str, timeout: float = 300.0, *,
        why: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f}s\n{why()}"
        time.sleep(0.2)


def _query(doc: Document) -> str:
    """The document's opening words: close to its own root embedding and to its first sentences."""
    return " ".join((doc.text or "").split()[:40])


def test_reindex_builds_a_new_version_and_switches_queries_when_it_has_caught_up(
        broker: LocalBroker, tmp_path: Path) -> None:
    name = f"r{uuid.uuid4().hex[:8]}"
    v1_path, v2_path = tmp_path / "v1.yml", tmp_path / "v2.yml"
    v1_path.write_text(V1.replace("{name}", name))
    v2_path.write_text(V2.replace("{name}", name))
    corpus = [doc for doc, _ in corpus_with_unique_sentences(BEFORE + DURING)]
    runtime = LocalRuntime(load_flow(v1_path), flow_path=v1_path, state_dir=tmp_path / "v1").start()
    reindex: subprocess.Popen[str] | None = None
    replies: list[SearchReply] = []
    failures: list[str] = []
    stop = threading.Event()
    try:
        client = runtime.client()
        runtime.wait_ready(client, timeout=180)
        wait_applied(client, client.index(corpus[:BEFORE]))

        def search_throughout() -> None:
            i = 0
            while not stop.is_set():
                try:
                    replies.append(client.search(_query(corpus[i % BEFORE]), timeout_s=10))
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                i += 1

        searcher = threading.Thread(target=search_throughout)
        searcher.start()
        out = tmp_path / "reindex.out"
        with open(out, "w") as sink:
            reindex = _cli("reindex", "--flow", str(v2_path), "--state-dir", str(tmp_path / "v2"), "--timeout", "600",
                           stdout=sink, stderr=subprocess.STDOUT)

        def explain() -> str:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((tmp_path / "v2" / "logs").glob("*.log")))
            return f"{out.read_text()}\n{logs}"

        _wait_for(lambda: "building version 2" in out.read_text() or reindex.poll() is not None, "the plan",
                  why=explain)
        assert f"from {BEFORE} records" in out.read_text(), explain()
        during = client.index(corpus[BEFORE:])  # written while version 2 builds: both versions get them
        _wait_for(lambda: "serves queries now" in out.read_text() or reindex.poll() is not None, "the switch",
                  why=explain)
        assert reindex.poll() is None, explain()
        _wait_for(lambda: client.version == 2, "the client following the switch")
        switched_at = len(replies)
        _wait_for(lambda: len(replies) > switched_at + 5, "searches after the switch")
        stop.set()
        searcher.join()

        # Every search was answered, complete, by one version then the other, never back.
        assert failures == [], failures[:3]
        assert all(not r.partial for r in replies), [r for r in replies if r.partial][:2]
        versions = [r.version for r in replies]
        assert versions[0] == 1 and versions[-1] == 2, versions
        assert versions == sorted(versions), versions

        # The new version holds every document, written before and during the reindex, and
        # answers for each of them.
        wait_applied(client, during)
        for doc in corpus:
            reply = client.search(_query(doc), timeout_s=20)
            assert reply.version == 2 and not reply.partial, reply
            assert doc.id in [m.id for m in reply.docs[0].matches], (doc.id, [m.id for m in reply.docs[0].matches])

        status = subprocess.run([sys.executable, "-m", "streams.cli", "status", "--flow", str(v1_path)],
                                capture_output=True, text=True, timeout=120)
        assert f"flow {name} version 1 (not serving: version 2 is)" in status.stdout, status.stdout + status.stderr

        # An operator can switch back while version 1 still runs, and forward again.
        back = subprocess.run([sys.executable, "-m", "streams.cli", "versions", "--flow", name, "--serve", "1"],
                              capture_output=True, text=True, timeout=60)
        assert back.returncode == 0 and "version 1 serves" in back.stdout, back.stdout + back.stderr
        _wait_for(lambda: client.version == 1, "the client following the switch back")
        assert client.search(_query(corpus[0]), timeout_s=10).version == 1
        forward = subprocess.run([sys.executable, "-m", "streams.cli", "versions", "--flow", name, "--serve", "2"],
                                 capture_output=True, text=True, timeout=60)
        assert forward.returncode == 0 and "replaced version 1" in forward.stdout, forward.stdout + forward.stderr
        _wait_for(lambda: client.version == 2, "the client following the switch forward")

        # Version 1 can retire: with its stages stopped, a new client still gets complete answers.
        assert runtime.local_flow is not None
        runtime.local_flow.stop()
        client.close()
        with runtime.client() as fresh:
            reply = fresh.search(_query(corpus[-1]), timeout_s=20)
            assert reply.version == 2 and not reply.partial, reply
            assert corpus[-1].id in [m.id for m in reply.docs[0].matches], reply
        reindex.terminate()  # Ctrl-C: the reindex command stops version 2's stages and exits cleanly
        assert reindex.wait(60) == 0, explain()
        print(out.read_text())
    finally:
        stop.set()
        if reindex is not None and reindex.poll() is None:
            reindex.terminate()  # stops version 2's supervised stages
            reindex.wait(60)
        runtime.stop()

    # Version 2 is its own index: root-level vectors, no sentence chunks; version 1 kept its own.
    old = read_shards(tmp_path / "v1", name, 2, runtime.flow.stage("index").config)
    new_flow = load_flow(v2_path)
    new = read_shards(tmp_path / "v2", f"{name}.v2", 2, new_flow.stage("index").config)
    assert set(new.docs) == {doc.id for doc in corpus}, stage_logs(runtime)
    assert all(not doc.chunks for doc in new.docs.values())
    assert new.vectors == len(corpus)
    assert all(old.docs[doc.id].chunks for doc in corpus)


def test_reindex_never_switches_to_a_version_that_is_not_newer_or_lost_documents(
        start_flow: FlowFactory, tmp_path: Path) -> None:
    runtime = start_flow(V1)
    name = runtime.flow.name
    with runtime.client() as client:
        wait_applied(client, client.index([doc for doc, _ in corpus_with_unique_sentences(6)]))
    same = tmp_path / "same.yml"
    same.write_text(V1.replace("{name}", name))
    result = subprocess.run([sys.executable, "-m", "streams.cli", "reindex", "--flow", str(same), "--no-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "version 1 is not above the serving version 1" in lines[0], result.stderr
    assert "set `version: 2`" in lines[0]

    # A version whose segmenter refuses documents (one chunk at most): those are dead-lettered, so the
    # new version lacks them however "caught up" it is. It must not serve. (An index dim the model
    # does not produce is refused before anything starts: tests/e2e/test_cli.py.)
    corpus = [doc for doc, _ in corpus_with_unique_sentences(6)]
    refused = sum(1 for doc in corpus if len(SEGMENTER.run(docs=[doc]).docs[0].chunks) > 1)
    assert refused, "the corpus needs documents of several sentences"
    one_chunk = tmp_path / "one-chunk.yml"
    one_chunk.write_text(V1.replace("{name}", name) + "version: 2\nmax_chunks_per_document: 1\n")
    result = subprocess.run([sys.executable, "-m", "streams.cli", "reindex", "--flow", str(one_chunk),
                             "--state-dir", str(tmp_path / "v2"), "--timeout", "300"],
                            capture_output=True, text=True, timeout=420)
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"streamsearch: error: version 2 caught up but dead-lettered {refused} records "
                            "(first: stage segment: "), result.stderr
    assert "version 1 keeps serving" in error, error
    assert f"`streamsearch reindex --flow {one_chunk} --allow-dead-letters` resumes this version and switches" \
        in error and "--serve 2" not in error, error  # not a switch to a version whose stages stop with reindex
    with runtime.client() as client:
        reply = client.search("anything", timeout_s=10)
        assert reply.version == 1 and not reply.partial and reply.docs[0].matches
    letters = subprocess.run([sys.executable, "-m", "streams.cli", "dead-letters", "--flow", str(one_chunk)],
                             capture_output=True, text=True, timeout=120)
    assert letters.returncode == 0, letters.stderr
    from_ingest = [line for line in letters.stdout.splitlines() if f"\t{name}.ingest[" in line]
    assert len(from_ingest) == refused and all("max_chunks_per_document=1" in line for line in from_ingest), \
        letters.stdout

    # Fixing the executors but keeping `version: 2` would mix two builds in one version's topics and state.
    fixed = tmp_path / "fixed.yml"
    fixed.write_text(V2.replace("{name}", name))
    result = subprocess.run([sys.executable, "-m", "streams.cli", "reindex", "--flow", str(fixed), "--no-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"streamsearch: error: version 2 of flow {name!r} was built before with other executors; its topics and "
        "state hold their output: give the new flow YAML a new `version:`"], result.stderr


def test_the_oldest_existing_version_serves_when_none_is_named(kafka_settings: KafkaSettings) -> None:
    """Stages of a new version deployed before its reindex must not take over the flow."""
    older, fresh = f"c{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, FlowTopics(older, 1).shapes())
    ensure_topics(kafka_settings, FlowTopics(older, 1, 3).shapes())
    assert claim_serving(kafka_settings, FlowTopics(older, 1, 3)).version == 1
    assert read_serving(kafka_settings, older).version == 1  # type: ignore[union-attr]
    ensure_topics(kafka_settings, FlowTopics(fresh, 1, 2).shapes())
    assert claim_serving(kafka_settings, FlowTopics(fresh, 1, 2)).version == 2  # a flow's first version serves


def test_versions_of_an_unknown_flow_is_one_clear_line(broker: LocalBroker) -> None:
    result = subprocess.run([sys.executable, "-m", "streams.cli", "versions", "--flow", "nosuchflow"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"streamsearch: error: no flow 'nosuchflow' on {broker.bootstrap_servers} (no topic nosuchflow.ingest); "
        "start it with streamsearch run FLOW.yml"]
