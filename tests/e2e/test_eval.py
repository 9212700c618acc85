"""``streamsearch eval`` measures an index that holds exactly its corpus, whatever the directory's
broker already holds: two corpora evaluated one after the other in one directory do not mix."""

import json
import os
import re
import subprocess
import sys
import threading
import time
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


def _descendants(pid: int) -> set[int]:
    """The live processes below ``pid`` (from /proc: each process's parent is field 4 of its stat)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while we read
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.kafka
def test_a_terminated_eval_stops_its_stages_and_says_so(tmp_path: Path) -> None:
    """SIGTERM (a CI timeout, ``kill``, a service manager) stops ``eval`` like Ctrl-C: its stage processes and the
    broker it started stop too (they used to run on, orphaned), and it exits 130 in one line."""
    # Long enough that it cannot finish before it is terminated once its indexing shows: encoding 2,000 texts
    # of ~250 tokens takes over a minute here (3 texts took 1 s, and CI twice saw an eval end first).
    filler = {f"f-{i}": " ".join([TOPICS["volcano"][1]] * 15) + f" {i}" for i in range(2000)}
    corpus = _beir(tmp_path / "corpus", {**{f"d-{k}": d for k, (_, d) in TOPICS.items()}, **filler},
                   {f"q-{k}": q for k, (q, _) in TOPICS.items()}, {f"q-{k}": f"d-{k}" for k in TOPICS})
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    process = subprocess.Popen([sys.executable, "-m", "streams.cli", "eval", "--beir", str(corpus)], cwd=work, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(process.stderr.fileno(), 65536), b"")))
    reader.start()  # drains the pipe as the eval writes, so that it never blocks on a full one
    try:
        deadline = time.monotonic() + 300
        while b"indexed:" not in b"".join(chunks):  # its documents are being indexed: its stages all run
            assert process.poll() is None and time.monotonic() < deadline, b"".join(chunks)[-2000:]
            time.sleep(0.2)
        started = _descendants(process.pid)
        assert len({pid for pid in started if b"--stage" in _cmdline(pid)}) >= 3  # encode, index, join
        process.terminate()
        process.wait(timeout=120)
    finally:
        process.kill()
        reader.join()
    err = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 130 and err.strip().endswith("streamsearch: interrupted"), err[-2000:]
    assert not [pid for pid in started if _alive(pid)], "processes outlived the eval that started them"
