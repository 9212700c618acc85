"""A Jina 3 Flow (gRPC gateway) with one numpy executor: exact inner product over one growing
matrix, row = id (``ExactIndex``, as ``peers.py``'s in-process numpy). The peers' workload
(``peer_workload.py``) in the ``.bench/jina`` virtualenv, which ``peers.py`` creates and runs
this in; prints the figures as one JSON line.

    .bench/jina/bin/python benchmarks/peer_jina.py DATA_DIR
"""

import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("JINA_OPTOUT_TELEMETRY", "1")
os.environ.setdefault("JINA_LOG_LEVEL", "ERROR")

import numpy as np
from docarray import BaseDoc, DocList
from docarray.typing import NdArray
from jina import Client, Executor, Flow, requests
from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_workload import ExactIndex, Token, child_main
from setup import DIM


class Vector(BaseDoc):
    embedding: NdArray[DIM]


class Query(BaseDoc):
    embedding: NdArray[DIM]
    top_k: int = 10
    matches: list[int] = Field(default_factory=list)


class NumpyIndexer(Executor):
    """Upserts by id (ids are integers); searches answer ``matches``, best first. (Jina reads the
    endpoints' annotations at run time: no ``from __future__ import annotations`` here.)"""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.exact = ExactIndex()

    @requests(on="/index")
    def index(self, docs: DocList[Vector], **_: object) -> DocList[Vector]:
        self.exact.upsert(np.array([int(doc.id) for doc in docs]), np.stack([doc.embedding for doc in docs]))
        return DocList[Vector]()  # an acknowledgement: nothing to send back

    @requests(on="/search")
    def search(self, docs: DocList[Query], **_: object) -> DocList[Query]:
        for doc in docs:
            doc.matches = self.exact.top(doc.embedding, doc.top_k)
        return docs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JinaFlow:
    """One gRPC client per thread (a Jina client runs its own event loop)."""

    upserts = True

    def __init__(self) -> None:
        self.name = f"Jina {version('jina')} Flow, numpy executor"
        self.port = free_port()
        self._local = threading.local()

    def _client(self) -> "Client":
        if not hasattr(self._local, "client"):
            self._local.client = Client(host="127.0.0.1", port=self.port, protocol="grpc")
        return self._local.client

    def start(self) -> float:
        started = time.perf_counter()
        self.flow = Flow(port=self.port, protocol="grpc").add(uses=NumpyIndexer)
        self.flow.start()
        return time.perf_counter() - started

    def insert(self, ids: np.ndarray, vectors: np.ndarray, *, upsert: bool = False) -> Token:
        docs = DocList[Vector]([Vector(id=str(i), embedding=v) for i, v in zip(ids, vectors)])
        self._client().post("/index", inputs=docs, request_size=len(docs), return_type=DocList[Vector])
        return None

    def wait_searchable(self, tokens: Sequence[Token], probe: np.ndarray) -> None:
        pass  # a write is acknowledged once the executor has applied it

    def search(self, vector: np.ndarray, k: int, after: Token | None = None) -> list[int]:
        reply = self._client().post("/search", inputs=DocList[Query]([Query(embedding=vector, top_k=k)]),
                                    return_type=DocList[Query])
        return list(reply[0].matches)

    def stop(self) -> None:
        self.flow.close()


if __name__ == "__main__":
    child_main(JinaFlow())
