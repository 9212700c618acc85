"""The text encoder in-process, three ways in one run: forward passes by count (32 texts a pass, how
the encoder batched before token budgets: the baseline), by padded tokens (``batch_tokens`` 2,048,
the default), and by padded tokens with int8 dynamic quantisation (PyTorch's, weights per output
channel), which the encoder does not offer: this measures why.

Speed: texts per second on SciFact abstracts (title + text; most reach ``max_length`` 256) and on
their sentences (the Sentencizer's: short texts), the best of ``--rounds`` passes over the same texts
after a warm-up, the settings taking turns (all-MiniLM-L6-v2 as ``streams/flows/beir.yml`` configures it).
``--burst-load`` measures beside a neighbour that takes a quarter of a core in 3 ms bursts (as a broker
and the other stages of a flow do on the same cores) and ``--threads`` sets torch's threads: together
they show why an encode stage that shares its cores loses more than the CPU its neighbours take.

Quality (``--quality CORPUS``, repeatable): nDCG@10 over the corpus's test queries for float32 and for
int8, exact inner-product top 10 over every document as the flow ranks them, and the paired bootstrap
95 % CI of the difference. Issue 17 allows int8 only if SciFact's nDCG@10 moves by at most 0.005. Also
printed: how far int8 moves one text's embedding when the texts it shares a pass with change (its
activations are quantised with one scale per pass, padding included); float32's does not move.

    python benchmarks/encoder.py [--docs 400] [--rounds 3] [--batch-tokens N ...] [--threads N] [--burst-load]
                                 [--quality scifact --quality nfcorpus]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
from setup import FLOW, SCIFACT, machine, markdown_table, peak_rss_mib, scifact, shared_data

from processors.document import Document
from processors.encoders.transformer import TransformerEncoder
from processors.evaluators.bootstrap import paired_bootstrap
from processors.evaluators.metrics import ndcg_at_k
from processors.segmenters.sentence import Sentencizer
from streams.demo.corpora import load_beir
from streams.flow.parse import load_flow

CORPORA = {"scifact": SCIFACT, "nfcorpus": shared_data("nfcorpus")}
INT8_MOVE_ALLOWED = 0.005
"""The most SciFact's nDCG@10 may move for int8 to be offered (issue 17)."""
INT8 = ", int8"


def int8_dynamic(encoder: TransformerEncoder) -> TransformerEncoder:
    """The encoder with every ``nn.Linear`` of its model dynamically quantised to int8 (weights per
    output channel: per tensor moved the embeddings three times as far). ``torch.ao.quantization`` is
    deprecated in favour of torchao but works in torch 2.13; its warnings are silenced."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    encoder.warm_up()
    loaded = encoder._loaded  # a benchmark may reach in: the encoder offers no int8
    assert loaded is not None
    linears = {name: per_channel_dynamic_qconfig for name, module in loaded.model.named_modules()  # type: ignore[attr-defined]
               if isinstance(module, torch.nn.Linear)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.model = quantize_dynamic(loaded.model, linears, dtype=torch.qint8)
    return encoder


def settings(budgets: Sequence[int]) -> dict[str, TransformerEncoder]:
    """The encoders compared, all from the flow's own configuration: by count, by each token budget
    (the flow's default when none is given), and int8 at the default budget."""
    flow = load_flow(FLOW).stage("encode").config
    compared = {"by count (32 texts a pass)": TransformerEncoder(dataclasses.replace(flow, batch_tokens=10**9))}
    for budget in budgets or [flow.batch_tokens]:
        compared[f"by tokens ({budget} a pass)"] = TransformerEncoder(dataclasses.replace(flow, batch_tokens=budget))
    compared[f"by tokens ({flow.batch_tokens} a pass){INT8}"] = int8_dynamic(TransformerEncoder(flow))
    return compared


BURST_LOAD = """
import time
while True:
    started = time.perf_counter()
    while time.perf_counter() - started < 0.003:
        pass
    time.sleep(0.009)
"""
"""A neighbour that wants a quarter of a core in 3 ms bursts, as a broker and the other stages do."""


@contextmanager
def burst_load() -> Iterator[None]:
    neighbour = subprocess.Popen([sys.executable, "-c", BURST_LOAD])
    try:
        yield
    finally:
        neighbour.kill()
        neighbour.wait()


def sentences(docs: Sequence[Document]) -> list[str]:
    segmented = Sentencizer().run(docs=docs).docs
    return [chunk.text or "" for doc in segmented for chunk in doc.chunks if chunk.text]


def seconds(encoder: TransformerEncoder, texts: list[str]) -> float:
    started = time.perf_counter()
    encoder.encode_texts(texts)
    return time.perf_counter() - started


def speed(docs: Sequence[Document], rounds: int, budgets: Sequence[int]) -> None:
    """Rounds interleave the settings, so that a neighbour's burst of load costs each of them alike;
    each keeps its best round (the one least disturbed)."""
    sets = {"abstracts": [doc.text or "" for doc in docs], "sentences": sentences(docs)}
    encoders = settings(budgets)
    for encoder in encoders.values():
        encoder.warm_up()
        encoder.encode_texts(sets["abstracts"][:64])
    best = {label: dict.fromkeys(sets, float("inf")) for label in encoders}
    for round_number in range(rounds):
        for label, encoder in encoders.items():
            for name, texts in sets.items():
                best[label][name] = min(best[label][name], seconds(encoder, texts))
        print(f"  round {round_number + 1} of {rounds} done", flush=True)
    rates = {label: {name: len(texts) / best[label][name] for name, texts in sets.items()} for label in encoders}
    baseline = next(iter(rates.values()))
    rows = []
    for label, rate in rates.items():
        # int8 is also compared with float32 at the same budget, so that the budget's gain is not counted twice.
        same = rates.get(label.removesuffix(INT8)) if label.endswith(INT8) else None
        rows.append((label, [f"{rate[name]:.1f} ({rate[name] / baseline[name]:.2f}×"
                             + (f"; {rate[name] / same[name]:.2f}× float32)" if same else ")") for name in sets]))
    flow = load_flow(FLOW).stage("encode").config
    counter = next(iter(encoders.values()))
    counts = {name: np.mean(np.minimum(counter.count_tokens(texts), flow.max_length)) for name, texts in sets.items()}
    columns = [f"{name} ({len(texts)}, {counts[name]:.0f} tokens mean): texts/s" for name, texts in sets.items()]
    print(markdown_table(columns, rows))


def ndcg_per_query(encoder: TransformerEncoder, corpus: str, label: str) -> dict[str, float]:
    dataset = load_beir(CORPORA[corpus])
    started = time.perf_counter()
    documents = encoder.encode_texts([doc.text or "" for doc in dataset.corpus])
    print(f"  {corpus} {label}: {len(dataset.corpus)} documents in {time.perf_counter() - started:.0f} s",
          flush=True)
    ids = [doc.id for doc in dataset.corpus]
    query_ids = list(dataset.queries)
    queries = encoder.encode_texts([dataset.queries[q] for q in query_ids])
    scores = queries @ documents.T
    ndcg = {}
    for row, query_id in zip(scores, query_ids):
        # Top 10 by score, equal scores by document id, as the pipeline orders them.
        top = sorted(np.argpartition(-row, 10)[:20], key=lambda i: (-row[i], ids[i]))[:10]
        ndcg[query_id] = ndcg_at_k([ids[i] for i in top], dataset.qrels[query_id], 10)
    return ndcg


def quality(corpora: Sequence[str]) -> None:
    flow = load_flow(FLOW).stage("encode").config
    exact_encoder, int8_encoder = TransformerEncoder(flow), int8_dynamic(TransformerEncoder(flow))
    query, neighbour = "do statins lower cholesterol", " ".join(["membrane proteins move lipids in liver cells"] * 30)
    for label, encoder in (("float32", exact_encoder), ("int8", int8_encoder)):
        alone, beside = encoder.encode_texts([query])[0], encoder.encode_texts([query, neighbour])[0]
        print(f"  {label}: one query embedded alone and beside a {flow.max_length}-token text: cosine {alone @ beside:.4f}")
    rows = []
    for corpus in corpora:
        exact = ndcg_per_query(exact_encoder, corpus, "float32")
        int8 = ndcg_per_query(int8_encoder, corpus, "int8")
        interval = paired_bootstrap(exact, int8)
        within = -INT8_MOVE_ALLOWED <= interval.low and interval.high <= INT8_MOVE_ALLOWED
        verdict = " (interval within ±0.005)" if within else " (interval reaches past ±0.005)"
        rows.append((corpus, [f"{np.mean(list(exact.values())):.4f}", f"{np.mean(list(int8.values())):.4f}",
                              f"{interval.mean:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]{verdict}"]))
    print(markdown_table(["nDCG@10 float32", "nDCG@10 int8", "int8 − float32, 95 % CI"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=400, help="SciFact documents for the speed table")
    parser.add_argument("--rounds", type=int, default=3, help="passes per setting, interleaved; the best is kept")
    parser.add_argument("--batch-tokens", type=int, action="append", default=[],
                        help="a token budget to compare (repeatable; default: the flow's)")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's, one per core)")
    parser.add_argument("--burst-load", action="store_true",
                        help="measure speed beside a process that takes a quarter of a core in 3 ms bursts")
    parser.add_argument("--quality", action="append", choices=sorted(CORPORA), default=[],
                        help="score float32 against int8 on this corpus (repeatable; minutes each)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{machine()}; torch threads {torch.get_num_threads()}; load average at start: {os.getloadavg()[0]:.2f}")
    docs, _ = scifact(args.docs)
    with burst_load() if args.burst_load else nullcontext():
        if args.burst_load:
            print("beside a neighbour taking a quarter of a core in 3 ms bursts")
        speed(docs, args.rounds, args.batch_tokens)
    if args.quality:
        quality(args.quality)
    print(f"load average at end: {os.getloadavg()[0]:.2f}; peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
