"""Lexical and hybrid retrieval through Kafka, in flows without a model (each document and query brings
its vector): the shards publish their own statistics to ``<flow>.lexical-stats``, the join stage's
fan-out reads the topic as a table and attaches the corpus-wide sums to each request, every shard scores
with them, the joiner fuses. The same corpus in 1 and in 4 shards answers every SciFact query alike,
scores included, and equal to BM25 computed in-process over the whole corpus; per-shard statistics
would not (Weaviate #2918, Elasticsearch #24232).

The fan-out's table follows the shards' writes asynchronously (tens of ms), and ``after=receipt`` waits
for the shards only. So each test waits on a condition before asserting (:meth:`Corpus.settle`): a
sentinel document per shard gets a fresh term, and the flow's lexical answer for those terms must equal
the reference's. A shard writes its statistics in order, so once the fan-out scores a shard's sentinel
term right it holds every record that shard wrote before it."""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from processors.document import Document
from processors.index.lexical import Analyzer, LexicalIndex
from processors.query.parameters import FUSIONS
from streams.client import IndexReceipt
from streams.demo.corpora import load_beir
from streams.exceptions import RequestTimeoutError, SearchError
from streams.kafka.settings import KafkaSettings
from streams.local.runtime import LocalRuntime
from streams.local.supervisor import LocalFlow
from streams.wire.partitioner import partition_of
from streams.wire.records import SearchReply
from tests.e2e.fixtures import FlowFactory, cli, stage_logs

pytestmark = pytest.mark.kafka

DIM = 16
TOP_K = 10
BATCH = 16
"""Queries per search request."""
IN_FLIGHT = 3
"""Search requests sent and not answered yet, at most."""
HYBRID = {"retrieval": "hybrid", "candidates": 20}
LEXICAL = {"retrieval": "lexical"}
SETTLE_S = 90.0
ANALYZER = Analyzer()

FLOW = f"""name: "{{name}}"
stages:
  index:
    with: {{dim: {DIM}, metric: inner_product, lexical: true}}
    shards: SHARDS
  join: {{}}
search:
  timeout_s: 30
"""

Ranked = list[tuple[str, float]]


def scifact_folder() -> Path:
    """The offline SciFact copy the project shares (``/work/shared/data/scifact`` beside the checkout)."""
    for parent in Path(__file__).resolve().parents:
        folder = parent / "shared" / "data" / "scifact"
        if folder.is_dir():
            return folder
    raise AssertionError(f"no shared/data/scifact above {Path(__file__).resolve()}: the BEIR SciFact copy is missing")


def unit_vector(key: str) -> np.ndarray:
    """A pseudo-random unit vector, the same for the same key in every run and process."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    row = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return row / np.linalg.norm(row)


class Reference:
    """BM25 computed in-process over what the flow holds: each document is one unit (a root with text
    and a vector, no segmenter), scored with the whole corpus's statistics, ties by document id."""

    def __init__(self) -> None:
        self._index = LexicalIndex()
        self._units: dict[str, tuple[int, dict[str, int]]] = {}
        self._owner: dict[int, str] = {}
        self._next = 0

    def put(self, doc_id: str, text: str) -> None:
        self.delete(doc_id)
        counts = ANALYZER.counts(text)
        self._index.add(self._next, counts)
        self._units[doc_id] = (self._next, counts)
        self._owner[self._next] = doc_id
        self._next += 1

    def delete(self, doc_id: str) -> None:
        if doc_id in self._units:
            vid, counts = self._units.pop(doc_id)
            self._index.remove(vid, counts)

    def lexical(self, text: str, top_k: int = TOP_K) -> Ranked:
        vids, scores = self._index.search(ANALYZER.terms(text), self._index.stats(), top_k)
        found = sorted(((self._owner[int(vid)], float(score)) for vid, score in zip(vids, scores)),
                       key=lambda pair: (-pair[1], pair[0]))
        return found[:top_k]


def ranked(reply: SearchReply) -> list[Ranked]:
    """Per query, its matches' ids and scores, best first; the reply must be whole."""
    assert not reply.partial and not reply.errors and not reply.stale_shards, reply
    return [[(match.id, match.scores["score"].value) for match in query.matches] for query in reply.docs]


class Flow:
    """One running flow with ``lexical: true`` and its client."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime
        self.client = runtime.client()
        self.partitions = runtime.flow.topics.partitions

    def search(self, queries: Sequence[str], parameters: Mapping[str, object],
               vectors: Callable[[int], np.ndarray] | None = None) -> list[Ranked]:
        """Every query's top ``TOP_K``, ``BATCH`` queries per request, ``IN_FLIGHT`` requests at a time (more
        would wait behind each other on the shards past their deadline); ``vectors(i)`` is query i's vector
        (a hybrid search needs one)."""
        answers: list[Ranked] = []
        pending: deque[concurrent.futures.Future[SearchReply]] = deque()
        for start in range(0, len(queries), BATCH):
            rows = range(start, min(start + BATCH, len(queries)))
            matrix = None if vectors is None else np.stack([vectors(i) for i in rows])
            pending.append(self.client.search_async([queries[i] for i in rows], vectors=matrix, top_k=TOP_K,
                                                    timeout_s=60, parameters=parameters))
            if len(pending) == IN_FLIGHT:
                answers += ranked(pending.popleft().result(timeout=90))
        while pending:
            answers += ranked(pending.popleft().result(timeout=90))
        return answers

    def settle(self, receipt: IndexReceipt, probe: str, expected: Ranked) -> None:
        """Wait until every shard applied ``receipt`` and the lexical answer to ``probe`` is ``expected``;
        a shard restarting (no reply, or ``restoring``) is asked again."""
        deadline = time.monotonic() + SETTLE_S
        last: object = None
        while time.monotonic() < deadline:
            try:
                reply = self.client.search(probe, top_k=len(expected), after=receipt, timeout_s=10,
                                           parameters=LEXICAL)
            except (RequestTimeoutError, SearchError) as exc:  # a stage restarting: no answer in time; ask again
                last = exc
                continue
            if reply.partial or reply.stale_shards:
                last = reply
                if reply.restoring_shards:
                    time.sleep(0.2)  # polling interval: a restoring shard answers at once
                continue
            last = ranked(reply)[0]
            if last == expected:
                return
        raise AssertionError(f"the lexical answer to {probe!r} of the flow with {self.partitions} shard(s) never "
                             f"equalled the reference's within {SETTLE_S}s:\nflow      {last}\nreference {expected}"
                             f"\n{stage_logs(self.runtime)}")

    def close(self) -> None:
        self.client.close()


class Corpus:
    """The same documents in one or more flows, and the reference their lexical answers must equal."""

    def __init__(self, flows: Sequence[Flow]) -> None:
        self.flows = list(flows)
        self.reference = Reference()
        self.sentinels = _sentinel_ids(max(flow.partitions for flow in flows))
        self._rounds = 0

    def index(self, docs: dict[str, str]) -> list[IndexReceipt]:
        """Upsert ``docs`` (id -> text; each with its id's vector) in every flow; a receipt per flow."""
        batch = [Document(id=doc_id, text=text, embedding=unit_vector(doc_id)) for doc_id, text in docs.items()]
        receipts = [flow.client.index(batch) for flow in self.flows]
        for doc_id, text in docs.items():
            self.reference.put(doc_id, text)
        return receipts

    def delete(self, ids: Sequence[str]) -> list[IndexReceipt]:
        for doc_id in ids:
            self.reference.delete(doc_id)
        return [flow.client.delete(ids) for flow in self.flows]

    def settle(self, receipts: Sequence[IndexReceipt]) -> None:
        """Wait until every shard applied its flow's receipt and each fan-out's statistics hold every shard's writes.

        Each sentinel (one per shard) gets a term no earlier round used, written after the receipts; a probe
        of those terms is answered as the reference answers it only once the table holds every record the
        shards wrote up to their sentinel (each shard writes its partition of the topic in order)."""
        self._rounds += 1
        texts = {doc_id: f"zsentinel{self._rounds:04d}x{i}" for i, doc_id in enumerate(self.sentinels)}
        after = [receipt.merge(sentinel) for receipt, sentinel in zip(receipts, self.index(texts))]
        probe = " ".join(texts.values())
        expected = self.reference.lexical(probe, top_k=len(texts))
        assert sorted(doc_id for doc_id, _ in expected) == sorted(texts)
        for flow, receipt in zip(self.flows, after):
            flow.settle(receipt, probe, expected)

    def close(self) -> None:
        for flow in self.flows:
            flow.close()


def _sentinel_ids(partitions: int) -> list[str]:
    """One document id per partition (of ``partitions``): each shard of a flow with as many or fewer gets one."""
    ids: dict[int, str] = {}
    for i in range(10_000):
        doc_id = f"sentinel-{i}"
        ids.setdefault(partition_of(doc_id.encode(), partitions), doc_id)
        if len(ids) == partitions:
            return [ids[p] for p in range(partitions)]
    raise AssertionError("no sentinel id for every partition")


def flow_yaml(shards: int) -> str:
    return FLOW.replace("SHARDS", str(shards))


# -- 1 and 4 shards answer every SciFact query alike ----------------------------------------------


@pytest.fixture(scope="module")
def scifact(start_flow: FlowFactory) -> Iterator[tuple[Corpus, dict[str, str]]]:
    """The SciFact corpus in a 1-shard and in a 4-shard flow, statistics settled; and the test queries."""
    dataset = load_beir(scifact_folder())
    corpus = Corpus([Flow(start_flow(flow_yaml(shards))) for shards in (1, 4)])
    try:
        corpus.settle(corpus.index({doc.id: doc.text or "" for doc in dataset.corpus}))
        yield corpus, dataset.queries
    finally:
        corpus.close()


def test_one_and_four_shards_answer_every_scifact_query_alike(scifact: tuple[Corpus, dict[str, str]]) -> None:
    corpus, queries = scifact
    one, four = corpus.flows
    assert len(queries) == 300
    ids = sorted(queries)
    texts = [queries[query_id] for query_id in ids]
    expected = [corpus.reference.lexical(text) for text in texts]
    assert sum(1 for answer in expected if len(answer) == TOP_K) >= 295  # what is compared is there

    def query_vector(i: int) -> np.ndarray:
        return unit_vector(f"query/{ids[i]}")

    def in_both(parameters: Mapping[str, object]) -> list[list[Ranked]]:
        """Both flows' answers, asked at once (each flow's stages are processes of their own)."""
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda flow: flow.search(texts, parameters, query_vector), (one, four)))

    for flow, answers in zip((one, four), in_both(LEXICAL)):
        wrong = [(ids[i], got[:3], want[:3]) for i, (got, want) in enumerate(zip(answers, expected)) if got != want]
        assert not wrong, f"{flow.partitions} shard(s): {len(wrong)} of 300 queries differ from BM25 over the " \
                          f"whole corpus, e.g. {wrong[:3]}"
    for fusion in FUSIONS:
        fused_one, fused_four = in_both({**HYBRID, "fusion": fusion})
        assert all(len(answer) == TOP_K for answer in fused_one)
        wrong = [(ids[i], a[:3], b[:3]) for i, (a, b) in enumerate(zip(fused_one, fused_four)) if a != b]
        assert not wrong, f"{fusion}: {len(wrong)} of 300 queries fuse otherwise in 4 shards, e.g. {wrong[:3]}"


# -- a rare term; upserts, deletes, a kill -9 and a replay -----------------------------------------


@pytest.fixture(scope="module")
def small(start_flow: FlowFactory) -> Iterator[Corpus]:
    """A 2-shard flow for the tests that write: each indexes its own documents."""
    corpus = Corpus([Flow(start_flow(flow_yaml(2)))])
    yield corpus
    corpus.close()


RARE = "rs7903146"
RARE_QUERY = f"{RARE} diabetes"


def test_lexical_finds_an_exact_rare_term_dense_misses(small: Corpus) -> None:
    """The document's only link to the query is an identifier, and its vector points away from the query's:
    dense ranks it last, lexical first, and reciprocal rank fusion keeps it in the top 3 (only the two
    documents both arms found can pass it)."""
    query_vector = unit_vector("rare/query")
    docs = {f"rare/{i:02d}": f"Cohort {i} of the regional health survey: sleep, diet and exercise." for i in range(30)}
    docs |= {"rare/diabetes-a": "Diabetes, exercise and blood pressure in the regional health survey of older adults.",
             "rare/diabetes-b": "Diet, diabetes and sleep: what the survey of older adults in three towns found."}
    target = "rare/target"
    docs[target] = f"Carriers of {RARE} were followed for twelve years."
    batch = [Document(id=doc_id, text=text, embedding=-query_vector if doc_id == target else unit_vector(doc_id))
             for doc_id, text in docs.items()]
    [receipt] = [flow.client.index(batch) for flow in small.flows]
    for doc_id, text in docs.items():
        small.reference.put(doc_id, text)
    small.settle([receipt])
    [flow] = small.flows
    expected = small.reference.lexical(RARE_QUERY)
    assert expected[0][0] == target and len(expected) == 3  # the premise: the rare term outweighs the common one

    def vectors(_: int) -> np.ndarray:
        return query_vector

    [lexical] = flow.search([RARE_QUERY], LEXICAL)
    assert lexical == expected
    everything = flow.client.search(vectors=query_vector[None, :], top_k=100, timeout_s=60).docs[0].matches
    assert everything[-1].id == target  # dense: last of all
    [dense] = flow.search([RARE_QUERY], {"retrieval": "dense"}, vectors)
    assert target not in {doc_id for doc_id, _ in dense}
    [fused] = flow.search([RARE_QUERY], {"retrieval": "hybrid", "fusion": "rrf"}, vectors)
    assert target in {doc_id for doc_id, _ in fused[:3]}, fused


QUOKKA, WOMBAT, PLATYPUS = "lexe2e/quokka", "lexe2e/wombat", "lexe2e/platypus"
PROBES = 20
"""SciFact test queries whose lexical answers are compared after each step."""


def test_upserts_and_deletes_keep_the_lexical_side_in_step(small: Corpus, kafka_settings: KafkaSettings) -> None:
    [flow] = small.flows
    dataset = load_beir(scifact_folder())
    words = {"diabet", RARE, "quokka", "wombat", "platypus"}  # none of another test's or this test's own words
    base = {doc.id: doc.text or "" for doc in dataset.corpus[:300] if not words & set(ANALYZER.terms(doc.text or ""))}
    probes = sorted(dataset.queries.values())[:PROBES] + ["quokka", "wombat", "platypus", "island burrows prey"]
    animals = {QUOKKA: "Quokka counts on Rottnest Island declined.", WOMBAT: "Wombat digestion gives cubic faeces.",
               PLATYPUS: "Platypus electroreception detects prey."}

    def answers() -> dict[str, Ranked]:
        return dict(zip(probes, flow.search(probes, LEXICAL)))

    def assert_reference(step: str) -> dict[str, Ranked]:
        found = answers()
        wrong = {query: (got[:3], small.reference.lexical(query)[:3]) for query, got in found.items()
                 if got != small.reference.lexical(query)}
        assert not wrong, f"after {step}: {len(wrong)} of {len(probes)} lexical answers differ from the reference: {wrong}"
        return found

    small.settle(small.index(base | animals))
    before = assert_reference("indexing")
    assert [doc_id for doc_id, _ in before["wombat"]] == [WOMBAT]

    receipts = small.index({QUOKKA: "Wombat burrows collapse after heavy rain."})
    receipts = [a.merge(b) for a, b in zip(receipts, small.delete([PLATYPUS]))]
    small.settle(receipts)
    after = assert_reference("an update and a delete")
    assert after["quokka"] == [] and after["platypus"] == []
    assert {doc_id for doc_id, _ in after["wombat"]} == {QUOKKA, WOMBAT}
    assert dict(after["wombat"])[WOMBAT] < dict(before["wombat"])[WOMBAT]  # "wombat" in 2 documents now: lower idf

    assert flow.runtime.local_flow is not None
    process = flow.runtime.local_flow.find("index").process
    process.kill()  # SIGKILL: no commit, no clean close of RocksDB or the producer
    process.wait()
    deadline = time.monotonic() + 60
    while flow.runtime.local_flow.find("index").process is process:  # the supervisor restarts it
        assert time.monotonic() < deadline, "the supervisor did not restart the index stage"
        time.sleep(0.1)  # polling interval of a condition: the new process
    receipts = small.index({WOMBAT: "Wombat digestion gives cubic faeces; wombats dig burrows."})
    small.settle(receipts)
    assert_reference("kill -9 of the index stage and its restart")

    _replay(flow.runtime, kafka_settings)
    small.settle([IndexReceipt()])
    assert_reference("streamsearch replay")


def _replay(runtime: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    """Stop the stages, rebuild the shards with ``streamsearch replay`` as a user would, start the stages again."""
    assert runtime.local_flow is not None
    runtime.local_flow.stop()
    replayed = cli("replay", str(runtime.flow_path), "--state-dir", str(runtime.flow.state_dir),
                   bootstrap=kafka_settings.bootstrap_servers)
    assert replayed.returncode == 0 and replayed.stdout.startswith("replayed "), replayed.stdout + replayed.stderr
    runtime.local_flow = LocalFlow(runtime.flow, flow_path=runtime.flow_path,
                                   bootstrap_servers=kafka_settings.bootstrap_servers,
                                   log_dir=runtime.flow.state_dir / "logs").start()
