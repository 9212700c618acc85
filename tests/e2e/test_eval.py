"""``streamsearch eval`` measures an index that holds exactly its corpus, whatever the directory's
broker already holds: two corpora evaluated one after the other in one directory do not mix."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TOPICS = {
    "volcano": ("volcanic eruptions release sulfur dioxide",
                "Volcanoes emit gases such as sulfur dioxide when they erupt, and lava buries the land."),
    "violin": ("the violin concerto premiered in Leipzig",
               "A concerto for violin and orchestra had its first performance in Leipzig in 1845."),
    "bread": ("bake the bread for forty minutes",
              "Loaves of bread go into a hot oven and bake for about forty minutes until brown."),
}


def _beir(folder: Path, docs: dict[str, str], queries: dict[str, str], qrels: dict[str, str]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                                 for i, t in docs.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                               + "".join(f"{q}\t{d}\t1\n" for q, d in qrels.items()))
    return folder


def _eval(cwd: Path, beir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}  # the directory's local broker
    return subprocess.run([sys.executable, "-m", "streams.cli", "eval", "--beir", str(beir)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=540)


@pytest.mark.kafka
def test_a_second_corpus_is_evaluated_on_an_index_of_its_own(tmp_path: Path) -> None:
    # Corpus A holds B's queries word for word: mixed into B's index, they would outrank B's answers.
    first = _beir(tmp_path / "first", {f"a-{k}": q for k, (q, _) in TOPICS.items()},
                  {f"qa-{k}": q for k, (q, _) in TOPICS.items()}, {f"qa-{k}": f"a-{k}" for k in TOPICS})
    second = _beir(tmp_path / "second", {f"b-{k}": d for k, (_, d) in TOPICS.items()},
                   {f"qb-{k}": q for k, (q, _) in TOPICS.items()}, {f"qb-{k}": f"b-{k}" for k in TOPICS})
    work = tmp_path / "work"
    work.mkdir()
    names = []
    for corpus in (first, second):
        result = _eval(work, corpus)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "queries = 3" in result.stdout and "nDCG@10 = 1.00000" in result.stdout, result.stdout
        names.append(re.search(r"through flow '([^']+)'", result.stdout + result.stderr).group(1))  # type: ignore[union-attr]
    assert names[0].startswith("beir-first-") and names[1].startswith("beir-second-")
    assert (work / ".streamsearch" / "state" / "eval" / f"{names[1]}.yml").is_file()
