"""Hybrid retrieval quality in-process, every fusion and depth in one run: dense (all-MiniLM-L6-v2 as
``streams/flows/beir.yml`` embeds: mean pooling, max_length 256, normalised, exact inner product) and BM25
(``processors.index.lexical``) over a BEIR corpus, fused by ``processors.rankers.fusion`` as the joiner
fuses, scored over the test queries: nDCG@10, recall@100, and the paired bootstrap 95 % CI of the nDCG@10
difference to dense (the baseline, same run). The pipeline answers the same lists (the 1-vs-4-shard tests;
``streamsearch eval --retrieval`` printed the same dense, lexical and dbsf figures): this is how the
defaults were compared without indexing each corpus once per setting.

    python benchmarks/fusion_quality.py [--corpus scifact --corpus nfcorpus] [--cache DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from setup import SCIFACT, machine
from tqdm import tqdm

from processors.document import Direction, Document, Score
from processors.encoders.transformer import TransformerEncoder
from processors.evaluators.bootstrap import paired_bootstrap
from processors.evaluators.metrics import ndcg_at_k, recall_at_k
from processors.index.lexical import Analyzer, LexicalIndex
from processors.query.parameters import FUSIONS
from processors.rankers.fusion import DENSE_ARM, LEXICAL_ARM, FusionConfig, fuse
from streams.demo.beir import DEFAULT_EVAL_FLOW
from streams.demo.corpora import load_beir
from streams.flow.parse import load_flow

DEPTHS = (20, 50, 100, 200)
Ranked = list[tuple[str, float]]


def embed(texts: list[str], cache: Path) -> np.ndarray:
    """Rows of the beir.yml encoder, cached (a corpus takes minutes on 2 cores)."""
    if cache.exists():
        return np.load(cache)
    encoder = TransformerEncoder(load_flow(DEFAULT_EVAL_FLOW).stage("encode").config)
    encoder.warm_up()
    rows = np.concatenate([encoder.encode_texts(texts[i:i + 64])
                           for i in tqdm(range(0, len(texts), 64), desc=cache.stem, unit="batch")])
    np.save(cache, rows)
    return rows


def arm_lists(folder: Path, cache: Path) -> tuple[dict[str, dict[str, int]], dict[str, Ranked], dict[str, Ranked]]:
    """Qrels, and per test query the dense and the lexical top 1,000 (document id, score)."""
    dataset = load_beir(folder)
    docs = sorted(dataset.corpus, key=lambda d: d.id)
    ids = [d.id for d in docs]
    queries = sorted(q for q in dataset.queries if q in dataset.qrels)
    corpus = embed([d.text or "" for d in docs], cache / f"{folder.name}_docs.npy")
    asked = embed([dataset.queries[q] for q in queries], cache / f"{folder.name}_queries.npy")
    analyzer, lexical = Analyzer(), LexicalIndex()
    for vid, doc in enumerate(docs):
        lexical.add(vid, analyzer.counts(doc.text or ""))
    stats = lexical.stats()
    dense, bm25 = {}, {}
    similarities = asked @ corpus.T
    for row, query in enumerate(queries):
        top = np.lexsort((np.arange(len(ids)), -similarities[row]))[:1000]
        dense[query] = [(ids[j], float(similarities[row, j])) for j in top]
        vids, scores = lexical.search(analyzer.terms(dataset.queries[query]), stats, 1000)
        bm25[query] = [(ids[v], float(s)) for v, s in zip(vids, scores)]
    return {q: dataset.qrels[q] for q in queries}, dense, bm25


def fused(dense: Ranked, bm25: Ranked, config: FusionConfig) -> list[str]:
    """What the joiner replies (top 100) for these arm lists."""
    candidates: dict[str, Document] = {}
    for arm, ranked in ((DENSE_ARM, dense[:config.depth]), (LEXICAL_ARM, bm25[:config.depth])):
        for doc_id, value in ranked:
            candidates.setdefault(doc_id, Document(id=doc_id)).scores[arm] = Score(value, arm, Direction.SIMILARITY)
    return [match.id for match in fuse(list(candidates.values()), config, 100)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="append", help="a folder name beside SciFact's (default: scifact, nfcorpus)")
    parser.add_argument("--cache", type=Path, default=Path(".streamsearch/bench-embeddings"))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print("| corpus | retrieval | candidates | nDCG@10 | recall@100 | nDCG@10 - dense, 95 % CI |")
    print("|---|---|---|---|---|---|")
    for name in args.corpus or ["scifact", "nfcorpus"]:
        qrels, dense, bm25 = arm_lists(SCIFACT.parent / name, args.cache)
        runs: dict[tuple[str, str], dict[str, list[str]]] = {
            ("dense", ""): {q: [d for d, _ in dense[q][:100]] for q in qrels},
            ("lexical", ""): {q: [d for d, _ in bm25[q][:100]] for q in qrels}}
        for method in FUSIONS:
            for depth in DEPTHS:
                config = FusionConfig(method=method, depth=depth)
                runs[(f"hybrid ({method})", str(depth))] = {q: fused(dense[q], bm25[q], config) for q in qrels}
        baseline = {q: ndcg_at_k(runs[("dense", "")][q], qrels[q], 10) for q in qrels}
        for (run, depth), ranked in runs.items():
            per_query = {q: ndcg_at_k(ranked[q], qrels[q], 10) for q in qrels}
            recall = float(np.mean([recall_at_k(ranked[q], qrels[q], 100) for q in qrels]))
            interval = "" if run == "dense" else (lambda d: f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]")(
                paired_bootstrap(baseline, per_query))
            print(f"| {name} | {run} | {depth} | {np.mean(list(per_query.values())):.4f} | {recall:.4f} | {interval} |")


if __name__ == "__main__":
    main()
