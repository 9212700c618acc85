"""Hybrid retrieval quality in-process, every fusion and depth in one run: dense (all-MiniLM-L6-v2 as
``streams/flows/beir.yml`` embeds: mean pooling, max_length 256, normalised, exact inner product) and BM25
(``processors.index.lexical``) over a BEIR corpus, fused by ``processors.rankers.fusion`` as the joiner
fuses, scored over the test queries: nDCG@10, recall@100, and the paired bootstrap 95 % CI of the nDCG@10
difference to dense (the baseline, same run). The pipeline answers the same lists (the 1-vs-4-shard tests;
``streamsearch eval --retrieval`` printed the same dense, lexical and dbsf figures): this is how the
defaults were compared without indexing each corpus once per setting.

    python benchmarks/fusion_quality.py [--corpus scifact --corpus nfcorpus] [--cache DIR] [--split test]
    python benchmarks/fusion_quality.py --select bm25 --split train     # how the defaults were chosen:
    python benchmarks/fusion_quality.py --select fusion --split train   # BM25 with the fusions, then every fusion
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from setup import SCIFACT, machine
from tqdm import tqdm

from processors.document import Direction, Document, Score
from processors.encoders.transformer import TransformerEncoder
from processors.evaluators.bootstrap import paired_bootstrap
from processors.evaluators.metrics import ndcg_at_k, recall_at_k
from processors.index.lexical import B, K1, Analyzer, CorpusStats, LexicalIndex
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


@dataclass(frozen=True)
class Bm25:
    """The lexical arm's two constants (``CompoundIndexerConfig.bm25_k1``/``bm25_b``)."""

    k1: float = K1
    b: float = B


@dataclass
class Arms:
    """One corpus's queries of a split: their judgements, dense top 1,000, and the lexical index that ranks
    them for any BM25 constants (scoring is a search-time choice: the index is built once)."""

    qrels: dict[str, dict[str, int]]
    dense: dict[str, Ranked]
    ids: list[str]
    terms: dict[str, list[str]]
    index: LexicalIndex
    stats: CorpusStats
    _lexical: dict[Bm25, dict[str, Ranked]] = field(default_factory=dict)

    def lexical(self, bm25: Bm25 = Bm25()) -> dict[str, Ranked]:
        """Per query, the lexical top 1,000 (document id, score) under these constants."""
        if bm25 not in self._lexical:
            self._lexical[bm25] = {query: [(self.ids[v], float(s)) for v, s in zip(*self.index.search(
                terms, self.stats, 1000, k1=bm25.k1, b=bm25.b))] for query, terms in self.terms.items()}
        return self._lexical[bm25]


def arm_lists(folder: Path, cache: Path, split: str = "test") -> Arms:
    """The arms of the corpus in ``folder`` for the queries of ``split``."""
    dataset = load_beir(folder, split)
    docs = sorted(dataset.corpus, key=lambda d: d.id)
    ids = [d.id for d in docs]
    queries = sorted(q for q in dataset.queries if q in dataset.qrels)
    corpus = embed([d.text or "" for d in docs], cache / f"{folder.name}_docs.npy")
    asked = embed([dataset.queries[q] for q in queries], cache / f"{folder.name}_{split}_queries.npy")
    analyzer, lexical = Analyzer(), LexicalIndex()
    for vid, doc in enumerate(docs):
        lexical.add(vid, analyzer.counts(doc.text or ""))
    dense = {}
    similarities = asked @ corpus.T
    for row, query in enumerate(queries):
        top = np.lexsort((np.arange(len(ids)), -similarities[row]))[:1000]
        dense[query] = [(ids[j], float(similarities[row, j])) for j in top]
    return Arms({q: dataset.qrels[q] for q in queries}, dense, ids,
                {q: analyzer.terms(dataset.queries[q]) for q in queries}, lexical, lexical.stats())


def fused(dense: Ranked, bm25: Ranked, config: FusionConfig, top_k: int = 100) -> list[str]:
    """What the joiner replies (``top_k``) for these arm lists."""
    candidates: dict[str, Document] = {}
    for arm, ranked in ((DENSE_ARM, dense[:config.depth]), (LEXICAL_ARM, bm25[:config.depth])):
        for doc_id, value in ranked:
            candidates.setdefault(doc_id, Document(id=doc_id)).scores[arm] = Score(value, arm, Direction.SIMILARITY)
    return [match.id for match in fuse(list(candidates.values()), config, top_k)]


FUSION_GRID = ([FusionConfig("dbsf", depth=d) for d in DEPTHS]
               + [FusionConfig("rrf", rrf_k=k, depth=d) for k in (10, 30, 60, 100) for d in DEPTHS]
               + [FusionConfig("linear", dense_weight=w, depth=d) for w in (0.3, 0.4, 0.5, 0.6, 0.7) for d in DEPTHS])
"""``--select fusion``: every fusion, its constant and the candidate depth (40 settings), under the default BM25."""
BM25_GRID: list[tuple[FusionConfig, Bm25 | None]] = [(config, Bm25(k1, b)) for config in (
    FusionConfig("dbsf", depth=100), FusionConfig("dbsf", depth=200), FusionConfig("rrf", depth=100),
    FusionConfig("linear", depth=100), FusionConfig("linear", depth=200))
    for k1 in (0.3, 0.45, 0.6, 0.75, 0.9, 1.2) for b in (0.5, 0.65, 0.75, 0.9)]
"""``--select bm25``: BM25's k1 and b (Lucene's 1.2 and 0.75 among them) under the fusions at their
default constants and 100 or 200 candidates (120 settings): the two are chosen together, since the
best k1 for BM25 alone is not the best for hybrid retrieval."""
GRIDS: dict[str, list[tuple[FusionConfig, Bm25 | None]]] = {
    "fusion": [(config, None) for config in FUSION_GRID], "bm25": BM25_GRID}
"""Each grid by name; a setting without BM25 constants has the default's."""


def label(config: FusionConfig, bm25: Bm25 | None = None) -> str:
    """A setting as the tables name it."""
    knob = {"rrf": f" k={config.rrf_k}", "linear": f" w={config.dense_weight}"}.get(config.method, "")
    lexical = "" if bm25 is None else f", BM25 k1={bm25.k1} b={bm25.b}"
    return f"{config.method}{knob}, {config.depth} candidates{lexical}"


def select(data: Path, corpora: list[str], split: str, cache: Path, grid: str) -> None:
    """Each setting of ``GRIDS[grid]`` by its mean nDCG@10 over the corpora's ``split`` queries, best first.

    Defaults are chosen this way on the training queries (``--split train``), never on the test queries
    the README reports, and as one setting for every corpus (a mean over them, each corpus weighing one).
    """
    per_corpus: dict[str, dict[str, float]] = {}
    for name in corpora:
        arms = arm_lists(data / name, cache, split)
        print(f"{name} {split}: {len(arms.qrels)} queries")
        for config, bm25 in tqdm(GRIDS[grid], desc=name, unit="setting"):
            lexical = arms.lexical(bm25 or Bm25())
            per_corpus.setdefault(label(config, bm25), {})[name] = float(np.mean(
                [ndcg_at_k(fused(arms.dense[q], lexical[q], config, 10), relevant, 10)
                 for q, relevant in arms.qrels.items()]))
    ranked = sorted(per_corpus.items(), key=lambda item: (-np.mean(list(item[1].values())), item[0]))
    print(f"| setting | mean nDCG@10 ({split}) | " + " | ".join(corpora) + " |")
    print("|---|---|" + "---|" * len(corpora))
    for name, scores in ranked:
        print(f"| {name} | {np.mean(list(scores.values())):.4f} | " + " | ".join(f"{scores[c]:.4f}" for c in corpora) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="append", help="a folder name beside SciFact's (default: scifact, nfcorpus)")
    parser.add_argument("--data", type=Path, default=SCIFACT.parent, help="the folder of the BEIR corpora")
    parser.add_argument("--cache", type=Path, default=Path(".streamsearch/bench-embeddings"))
    parser.add_argument("--split", default="test", help="the qrels whose queries are scored (default: test)")
    parser.add_argument("--select", nargs="?", const="fusion", choices=sorted(GRIDS),
                        help="rank every setting of a grid by its mean nDCG@10 over the corpora instead: the "
                             "fusions (default) or BM25's k1 and b with the fusions")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    corpora = args.corpus or ["scifact", "nfcorpus"]
    print(f"machine: {machine()}")
    if args.select:
        select(args.data, corpora, args.split, args.cache, args.select)
        return
    print("| corpus | retrieval | candidates | nDCG@10 | recall@100 | nDCG@10 - dense, 95 % CI |")
    print("|---|---|---|---|---|---|")
    for name in corpora:
        arms = arm_lists(args.data / name, args.cache, args.split)
        qrels, dense, bm25 = arms.qrels, arms.dense, arms.lexical()
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
            difference = None if run == "dense" else paired_bootstrap(baseline, per_query)
            interval = "" if difference is None else \
                f"{difference.mean:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}]"
            print(f"| {name} | {run} | {depth} | {np.mean(list(per_query.values())):.4f} | {recall:.4f} | {interval} |")


if __name__ == "__main__":
    main()
