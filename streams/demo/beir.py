"""``streamsearch eval``: index a BEIR corpus through the pipeline, query it, score it."""

from __future__ import annotations

import hashlib
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from processors.evaluators.bootstrap import BootstrapInterval, paired_bootstrap
from processors.evaluators.metrics import ndcg_at_k, precision_at_k, recall_at_k, reciprocal_rank
from processors.query.parameters import DEFAULT_FUSION, RETRIEVALS
from streams.client import Client, IndexReceipt
from streams.client.progress import index_with_progress
from streams.demo.corpora import BeirDataset, load_beir
from streams.flow.parse import load_flow
from streams.local.runtime import LocalRuntime
from streams.resources import EXAMPLE_FLOWS

__all__ = ["DEFAULT_EVAL_FLOW", "EvalReport", "EvalResult", "eval_flow_name", "run_eval"]

DEFAULT_EVAL_FLOW = EXAMPLE_FLOWS / "beir.yml"
QUERIES_PER_REQUEST = 16
BASELINE, _, HYBRID = RETRIEVALS
"""The retrieval another one is compared with (dense), and the one that fuses."""
IDS_ONLY = {"operator": "select", "stage": "index", "traversal_paths": ["m"], "parameters": {"fields": ["scores"]}}
"""Each shard's matches as ids and scores only: scoring needs no text, and a hybrid reply carries up to
``candidates`` documents per arm, shard and query (16 queries × 2 arms × 2 shards × 100 full SciFact texts
would be ~10 MB)."""


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Mean metrics over the evaluated queries, and nDCG@10 per query (for the paired comparison)."""

    queries: int
    ndcg_at_10: float
    recall_at_100: float
    precision_at_10: float
    mrr: float
    ndcg_at_10_per_query: Mapping[str, float] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class EvalReport:
    """One evaluation: the result of each retrieval run (dense first) and, for each other retrieval
    compared with dense, the paired bootstrap interval of its nDCG@10 difference (that one − dense)."""

    results: Mapping[str, EvalResult]
    differences: Mapping[str, BootstrapInterval] = field(default_factory=dict)
    fusion: str | None = None
    """How the hybrid run fused its arms; None without one."""

    def lines(self) -> list[str]:
        """What ``streamsearch eval`` prints: a dense run alone as it always did (one metric a line);
        a comparison as one row per run and the interval of the difference."""
        if not self.differences:
            (result,) = self.results.values()
            return [f"queries = {result.queries}", f"nDCG@10 = {result.ndcg_at_10:.5f}",
                    f"recall@100 = {result.recall_at_100:.5f}", f"P@10 = {result.precision_at_10:.5f}",
                    f"MRR = {result.mrr:.5f}"]
        label = {run: f"{run} ({self.fusion})" if run == HYBRID and self.fusion else run for run in self.results}
        width = max(len("retrieval"), *map(len, label.values()))
        return [f"queries = {next(iter(self.results.values())).queries}",
                f"{'retrieval':<{width}}  nDCG@10  recall@100",
                *(f"{label[run]:<{width}}  {r.ndcg_at_10:.5f}  {r.recall_at_100:.5f}" for run, r in self.results.items()),
                *(f"nDCG@10 {label[run]} - {BASELINE} = {d.mean:+.5f}, {d.confidence:.0%} CI [{d.low:+.5f}, "
                  f"{d.high:+.5f}] (paired bootstrap over the queries, {d.resamples} resamples)"
                  for run, d in self.differences.items())]


def run_eval(beir_dir: Path, *, flow_path: Path = DEFAULT_EVAL_FLOW, state_dir: Path | None = None,
             limit_queries: int | None = None, retrievals: Sequence[str] = (BASELINE,),
             fusion: str = DEFAULT_FUSION, print_fn: Callable[[str], None] = print) -> EvalReport:
    """Index the corpus, wait until every shard has applied it, send the test queries, score.

    Queries go as search requests of 16 with ``after=`` the index receipt, so no query can
    see a half-built index. The same index answers the queries once per retrieval (dense always, first),
    and the report compares each other one with dense.

    :param retrievals: some of ``RETRIEVALS``; lexical and hybrid need ``lexical: true`` in the flow.
    :param fusion: one of ``FUSIONS``, for hybrid.
    """
    dataset = load_beir(beir_dir)
    base = load_flow(flow_path)
    name = eval_flow_name(base.name, beir_dir, dataset, flow_path.read_bytes())
    flow_path = _flow_named(flow_path, name, (state_dir or base.state_dir) / "eval")
    flow = load_flow(flow_path)
    query_ids = sorted(dataset.queries, key=lambda q: (len(q), q))[:limit_queries]
    runs = list(dict.fromkeys((BASELINE, *retrievals)))
    with LocalRuntime(flow, flow_path=flow_path, state_dir=state_dir) as runtime:
        assert runtime.settings is not None
        client = runtime.client()
        try:
            runtime.wait_ready(client)
            print_fn(f"indexing {len(dataset.corpus)} documents from {beir_dir} through flow {flow.name!r} "
                     f"(its own topics and state: this corpus and flow YAML only)")
            receipt = index_with_progress(client, dataset.corpus, topics=runtime.flow.topics)
            rankings = {run: _rankings(client, dataset, query_ids, receipt, retrieval=run, fusion=fusion)
                        for run in runs}
        finally:
            client.close()
    results = {run: score(ranked, dataset.qrels) for run, ranked in rankings.items()}
    differences = {run: paired_bootstrap(results[BASELINE].ndcg_at_10_per_query, results[run].ndcg_at_10_per_query)
                   for run in runs if run != BASELINE}
    return EvalReport(results, differences, fusion if HYBRID in runs else None)


def _rankings(client: Client, dataset: BeirDataset, query_ids: list[str], receipt: IndexReceipt, *,
              retrieval: str, fusion: str) -> dict[str, list[str]]:
    """Each query's ranked document ids (top 100) as the flow answers them by ``retrieval``."""
    rankings: dict[str, list[str]] = {}
    for start in tqdm(range(0, len(query_ids), QUERIES_PER_REQUEST), desc=f"queries ({retrieval})", unit="batch"):
        batch = query_ids[start : start + QUERIES_PER_REQUEST]
        reply = client.search([dataset.queries[q] for q in batch], top_k=100, after=receipt, timeout_s=120,
                              retrieval=retrieval, fusion=fusion, parameters={"query_language": [IDS_ONLY]})
        if reply.partial:
            raise RuntimeError(f"partial reply during eval: missing {reply.missing_shards} {reply.errors}")
        for query_id, doc in zip(batch, reply.docs):
            rankings[query_id] = [match.id for match in doc.matches]
    return rankings


def eval_flow_name(flow_name: str, beir_dir: Path, dataset: BeirDataset, flow_yaml: bytes) -> str:
    """The flow an evaluation indexes into: named after the corpus and a hash of its documents and of
    the flow YAML, so that an index only ever holds one corpus built one way. Indexing another corpus
    (or the same one with another model) into a flow that holds documents already would mix them:
    NFCorpus measured after SciFact in one flow gave nDCG@10 0.280 instead of 0.317.

    :returns: ``<flow>-<corpus folder>-<8 hex digits>``, a legal topic prefix.
    """
    digest = hashlib.sha256(flow_yaml)
    for doc in sorted(dataset.corpus, key=lambda d: d.id):
        digest.update(f"{len(doc.id)}:{doc.id}{len(doc.text or '')}:{doc.text or ''}".encode())
    corpus = re.sub(r"[^A-Za-z0-9_-]+", "-", beir_dir.resolve().name).strip("-")[:40] or "corpus"
    return f"{flow_name}-{corpus}-{digest.hexdigest()[:8]}"


def _flow_named(flow_path: Path, name: str, folder: Path) -> Path:
    """A copy of the flow YAML under another name, for the stage processes to load."""
    data = yaml.safe_load(flow_path.read_text(encoding="utf-8"))
    data["name"] = name
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"{name}.yml"
    copy.write_text(f"# {flow_path.resolve()} under the name of one evaluated corpus (streamsearch eval)\n"
                    + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return copy


def score(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> EvalResult:
    """Mean nDCG@10, recall@100, P@10 and MRR over the ranked queries, and nDCG@10 per query."""
    ids = sorted(rankings)
    per_query = {q: ndcg_at_k(rankings[q], qrels[q], 10) for q in ids}
    return EvalResult(
        queries=len(ids),
        ndcg_at_10=statistics.fmean(per_query.values()),
        recall_at_100=statistics.fmean(recall_at_k(rankings[q], qrels[q], 100) for q in ids),
        precision_at_10=statistics.fmean(precision_at_k(rankings[q], qrels[q], 10) for q in ids),
        mrr=statistics.fmean(reciprocal_rank(rankings[q], qrels[q]) for q in ids),
        ndcg_at_10_per_query=per_query,
    )
