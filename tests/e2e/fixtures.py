"""What end-to-end tests share: real flows on the session broker (the ``start_flow`` factory fixture,
registered by tests/conftest.py), the flows and corpus they run, the HTTP bridge in-process, and the
CLI run as a user would. What recovery tests check sits beside it, in tests/e2e/recovery.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from processors.document import Document
from processors.segmenters.sentence import Sentencizer, SentencizerConfig
from streams.demo.corpora import stdlib_docstrings
from streams.flow.parse import load_flow
from streams.local.brokers import LocalBroker
from streams.local.ports import free_port_block
from streams.local.runtime import LocalRuntime
from streams.local.supervisor import stage_log_files

FlowFactory = Callable[[str], LocalRuntime]


@pytest.fixture(scope="module")
def start_flow(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowFactory]:
    """Start a flow from YAML text (``{name}`` is replaced by a unique flow name) and wait
    until every stage answers; all flows started are stopped at the end of the module."""
    runtimes: list[LocalRuntime] = []

    def start(yaml_text: str) -> LocalRuntime:
        name = f"t{uuid.uuid4().hex[:8]}"
        folder = tmp_path_factory.mktemp(name)
        path = folder / "flow.yml"
        path.write_text(yaml_text.replace("{name}", name))
        runtime = LocalRuntime(load_flow(path), flow_path=path, state_dir=folder / "state").start()
        runtimes.append(runtime)
        client = runtime.client()
        try:
            runtime.wait_ready(client, timeout=180)
        finally:
            client.close()
        return runtime

    yield start
    for runtime in runtimes:
        runtime.stop()


RAW_LIBRDKAFKA_LINE = re.compile(r"%\d\|")
"""How librdkafka writes a line to stderr when no logger takes it: ``%4|<time>|GETPID|...``."""


def stage_logs(runtime: LocalRuntime, *, stacks: bool = False) -> str:
    """Every stage log of a runtime's flow version, for assertion messages.

    :param stacks: first ask each live stage process for every thread's stack (``SIGUSR1``, see
        ``streams/cli/group.py``), to show where a stage that stopped making progress waits.
    """
    files = stage_log_files(runtime.flow)
    if stacks and runtime.local_flow is not None:
        sizes = [path.stat().st_size for path in files]
        live = [proc.process for proc in runtime.local_flow.processes if proc.process.poll() is None]
        for process in live:
            process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(
                b"hread 0x" in path.read_bytes()[size:] for path, size in zip(files, sizes)) < len(live):
            time.sleep(0.1)
    tail = 12000 if stacks else 3000  # stacks are long: keep the log lines before them
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}" for path in files)


SEGMENTER = Sentencizer(SentencizerConfig(min_sent_len=3, punctuation=".,!?"))
"""The segmenter of ``SENTENCE_FLOW``: what decides which chunks the shards hold."""


def corpus_with_unique_sentences(count: int) -> list[tuple[Document, str]]:
    """Real docstrings that share no chunk under ``SENTENCE_FLOW``'s segmenter, each with its
    longest chunk (over 40 characters) as the query that must find it first.

    Two chosen documents holding the same chunk would tie on it, and either could come first
    (two docstrings share "Written by Marc-Andre Lemburg (mal@lemburg.com).").
    """
    chosen: list[tuple[Document, str]] = []
    seen: set[str] = set()
    for doc in stdlib_docstrings():
        doc = Document(id=f"std/{doc.id}", text=doc.text)
        chunks = [chunk.text or "" for chunk in SEGMENTER.run(docs=[doc]).docs[0].chunks]
        keys = {_chunk_key(text) for text in chunks}
        query = max(chunks, key=len, default="")
        if len(query) <= 40 or keys & seen:
            continue
        seen |= keys
        chosen.append((doc, query))
        if len(chosen) == count:
            return chosen
    raise AssertionError("not enough docstrings")


def _chunk_key(text: str) -> str:
    """Whitespace, case and end punctuation aside, chunks that embed alike compare equal."""
    return " ".join(text.split()).rstrip(".,!?").casefold()


SENTENCE_FLOW = """
name: {name}
stages:
  segment:
    uses: Sentencizer
    with: {min_sent_len: 3, punctuation: ".,!?"}
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [c], max_length: 128}
  index:
    uses: CompoundIndexer
    with: {dim: 384, metric: inner_product}
    shards: SHARDS
  join: {}
search:
  top_k: 3
"""


def sentence_flow_yaml(shards: int = 2, guarantee: str = "at_least_once") -> str:
    """A flow of sentence chunks, MiniLM, ``shards`` shards (``{name}`` still to fill in)."""
    return SENTENCE_FLOW.replace("SHARDS", str(shards)) + f"processing_guarantee: {guarantee}\n"


ROOT_FLOW = """
name: {name}
stages:
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [r], max_length: 128}
  index:
    uses: CompoundIndexer
    with: {dim: 384, metric: METRIC}
    ranker: {uses: Chunk2DocRanker, with: {aggregation: AGGREGATION, keep_chunks: 0}}
    shards: 2
  join: {}
"""


def root_flow_yaml(metric: str = "inner_product", aggregation: str = "max") -> str:
    """A flow of one vector per document (no segmenter), 2 shards (``{name}`` still to fill in)."""
    return ROOT_FLOW.replace("METRIC", metric).replace("AGGREGATION", aggregation)


_PORT = free_port_block(5)
METRICS_PORTS = {"segment": _PORT, "encode": _PORT + 1, "index": _PORT + 2, "join": _PORT + 4}  # index: 2 replicas
PIPELINE_FLOW = """
name: {name}
stages:
  segment:
    uses: Sentencizer
    with: {min_sent_len: 3, punctuation: ".,!?"}
    metrics_port: SEGMENT_PORT
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [c], max_length: 128}
    metrics_port: ENCODE_PORT
  index:
    uses: CompoundIndexer
    with: {dim: 384, metric: inner_product}
    shards: 2
    replicas: 2
    metrics_port: INDEX_PORT
  join:
    metrics_port: JOIN_PORT
search:
  top_k: 5
""".replace("SEGMENT_PORT", str(METRICS_PORTS["segment"])).replace("ENCODE_PORT", str(METRICS_PORTS["encode"])).replace(
    "INDEX_PORT", str(METRICS_PORTS["index"])).replace("JOIN_PORT", str(METRICS_PORTS["join"]))
"""The small flow of test_pipeline, test_http and test_search_page: sentences, 2 shards, 2 index replicas,
a Prometheus port per stage (``METRICS_PORTS``; ``{name}`` still to fill in)."""


def scraped_metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples on a stage's /metrics page, filtered by labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the HTTP bridge in-process ------------------------------------------------------------------


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to the bridge in-process (httpx over ASGI), as a client of the flow would send it."""
    async def go() -> httpx.Response:
        async with bridge_client(app) as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


def bridge_client(app: FastAPI) -> httpx.AsyncClient:
    """An httpx client of the bridge ``app`` in-process (ASGI): no port, no server."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge", timeout=120)


# -- the CLI ------------------------------------------------------------------------------------


def cli(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    """A command run to its end from the checkout, on the broker at ``bootstrap``."""
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})


CLI_DOCS = {
    "volcano": "Volcanic eruptions release sulfur dioxide. Lava flows destroy the forest.",
    "violin": "The violin concerto was premiered in Leipzig. The audience applauded for minutes.",
    "bread": "The recipe needs two cups of flour. Bake the bread for forty minutes.",
}
"""Three short documents the CLI journeys index (id -> text)."""


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user who has not set KAFKA_BOOTSTRAP_SERVERS (the session broker's),
    running this tree's code: the commands run in another directory, where ``python -m`` would
    otherwise import whichever streamsearch is installed."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    tree = str(Path(__file__).resolve().parents[2])
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")])), **extra}


def user_cli(cwd: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A command run to its end in ``cwd``, as a user would (``env``: ``user_env()`` unless given)."""
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env if env is not None else user_env())


class Background:
    """A long-running command (``run``, ``serve``) started in ``cwd``; its stdout lines collected."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.stderr_path = cwd / f"stderr-{args[0]}-{time.monotonic_ns()}.txt"
        self._stderr = self.stderr_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=cwd, text=True,
                                        env=env if env is not None else user_env(),
                                        stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 400) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if line.startswith(prefix)]
            if found:
                return found[0]
            assert self.process.poll() is None, f"exited {self.process.returncode}: {self.lines}\n{self.stderr()}"
            time.sleep(0.2)
        raise AssertionError(f"no line {prefix!r} within {timeout}s: {self.lines}\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-4000:]

    def stop(self) -> int:
        """SIGTERM, as a user's Ctrl-C or a service manager would; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(120)
        self._reader.join(10)
        self._stderr.close()
        return code


def stop_within(process: subprocess.Popen[bytes], timeout: float, logs: list[Path]) -> None:
    """Wait ``timeout`` seconds for a ``streamsearch`` process that was told to stop; if it lingers, ask
    it and its stage processes for every thread's stack (``kill -USR1``, ``streams.cli.main``), kill them,
    and fail with the stacks: a slow stop is a bug to read, not a wait to raise."""
    try:
        process.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    pids = [process.pid, *map(int, children)]
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all("most recent call first" in log.read_text(errors="replace")
                                                   for log in logs if log.exists()):
        time.sleep(0.2)  # polling interval of a condition: the dumps written
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-6000:]}" for log in logs if log.exists())
    raise AssertionError(f"pid {process.pid} still running {timeout:.0f} s after it was told to stop:\n{tails}")


def picture(shape: str, colour: tuple[int, int, int]) -> bytes:
    """A PNG of a coloured disc or of coloured stripes on a pale ground: images an image flow tells apart."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 192), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    if shape == "disc":
        draw.ellipse((70, 40, 190, 160), fill=colour)
    else:
        for x in range(0, 256, 32):
            draw.rectangle((x, 0, x + 14, 192), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
