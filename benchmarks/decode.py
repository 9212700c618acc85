"""Where decoding and encoding a record go (``streams/wire/prescan.py``, ``program.py``, ``codec.py``).

For four typical records, each the fastest of many timeit rounds, in microseconds: the pre-scan's walk
in Python and compiled (``_avro.c``), fastavro's reader and the compiled one, and ``Codec.decode``
(walk, reader, dataclasses, validation) as it runs: compiled where the install built it; then fastavro's
writer and the compiled one on the same value in fastavro's form, and ``Codec.encode`` (that form made,
then written). The Python walk and fastavro are the baseline, measured in the same run.

    python benchmarks/decode.py [--rounds 150]
"""

from __future__ import annotations

import argparse
import io
import timeit
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np
from setup import machine

from processors.document import Direction, Document, Score
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST, Codec
from streams.wire.limits import DECODE_LIMITS
from streams.wire.prescan import prescan_python
from streams.wire.scan_nodes import program_of
from streams.wire.records import PartialResult, Request


def records() -> list[tuple[str, Codec[Any], Any]]:
    rng = np.random.default_rng(0)
    chunks = [Document(id=f"d/{i}", parent_id="d", granularity=1, text=f"sentence {i} of the document",
                       offset=i, location=[i * 30, i * 30 + 30], embedding=rng.standard_normal(384).astype(np.float32))
              for i in range(10)]
    document = Document(id="d", text="some text " * 50, tags={"source": "x"}, chunks=chunks)
    request = Request("3f2a" * 8, "search", [Document(id="q0", text="what is a streaming search engine")],
                      "replies-abc", 1_700_000_000_000, {"top_k": 10, "filter_by": None}, {})
    matches = [Document(id=f"m{i}", text="match text " * 10, scores={"score": Score(0.5, "faiss", Direction.SIMILARITY)})
               for i in range(10)]
    part = PartialResult("r" * 32, 0, [0, 1], "replies", 1, {"top_k": 10}, [Document(id="q0", text="q", matches=matches)])
    vector = Document(id="v0000001", embedding=rng.standard_normal(384).astype(np.float32))
    return [("Document, 10 chunks x 384-d", DOCUMENT, document), ("Document, one 384-d vector", DOCUMENT, vector),
            ("Request, one query", REQUEST, request), ("PartialResult, 10 matches", PARTIAL_RESULT, part)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=150)
    args = parser.parse_args()
    print(machine())
    print(f"{'record':30s} {'bytes':>6s} {'walk: Python':>13s} {'compiled':>9s} {'read: fastavro':>15s} "
          f"{'compiled':>9s} {'decode()':>9s} {'write: fastavro':>16s} {'compiled':>9s} {'encode()':>9s}")
    for name, codec, value in records():
        print(row(name, codec, value, args.rounds))


def row(name: str, codec: Codec[Any], value: Any, rounds: int) -> str:
    """One record's figures, as a line of the table."""
    data = codec.encode(value)
    root, schema = codec._scan_root, codec.schema
    program = program_of(root)

    def best(call: Callable[[], object]) -> float:
        return min(timeit.repeat(call, number=200, repeat=rounds)) / 200 * 1e6

    walk = best(lambda: prescan_python(data, root, DECODE_LIMITS, name))
    reader = best(lambda: fastavro.schemaless_reader(io.BytesIO(data), schema, None))
    if program is not None:
        walk_c = f"{best(lambda: program.walk(data, 32, 100_000, None)):8.1f}µ"
        read_c = f"{best(lambda: program.read(data)):8.1f}µ"
    else:
        walk_c = read_c = f"{'not built':>9s}"
    decode = best(lambda: codec.decode(data))
    form = codec._to_avro(value)
    writer = best(lambda: fastavro.schemaless_writer(io.BytesIO(), schema, form))
    write_c = f"{best(lambda: program.write(form)):8.1f}µ" if program is not None else f"{'not built':>9s}"
    encode = best(lambda: codec.encode(value))
    return (f"{name:30s} {len(data):6d} {walk:12.1f}µ {walk_c} {reader:14.1f}µ {read_c} {decode:8.1f}µ "
            f"{writer:15.1f}µ {write_c} {encode:8.1f}µ")

if __name__ == "__main__":
    main()
