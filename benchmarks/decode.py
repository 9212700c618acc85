"""What the bounded pre-scan adds to decoding a record (``streams/wire/prescan.py``).

For three typical records: the pre-scan alone, fastavro's reader alone, and ``Codec.decode``
(pre-scan, reader, dataclasses), each the fastest of many timeit rounds, in microseconds.

    python benchmarks/decode.py [--rounds 150]
"""

from __future__ import annotations

import argparse
import io
import timeit

import fastavro
import numpy as np
from setup import machine

from processors.document import Direction, Document, Score
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST
from streams.wire.limits import DECODE_LIMITS
from streams.wire.prescan import prescan
from streams.wire.records import PartialResult, Request


def records() -> list[tuple[str, object, object]]:
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
    return [("Document, 10 chunks x 384-d", DOCUMENT, document), ("Request, one query", REQUEST, request),
            ("PartialResult, 10 matches", PARTIAL_RESULT, part)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=150)
    args = parser.parse_args()
    print(machine())
    print(f"{'record':30s} {'bytes':>6s} {'pre-scan':>9s} {'fastavro':>9s} {'decode()':>9s} {'share':>6s}")
    for name, codec, value in records():
        data = codec.encode(value)  # type: ignore[attr-defined]
        root, schema = codec._scan_root, codec.schema  # type: ignore[attr-defined]

        def best(call) -> float:  # type: ignore[no-untyped-def]
            return min(timeit.repeat(call, number=200, repeat=args.rounds)) / 200 * 1e6

        scan = best(lambda: prescan(data, root, DECODE_LIMITS, name))
        reader = best(lambda: fastavro.schemaless_reader(io.BytesIO(data), schema, None))
        decode = best(lambda: codec.decode(data))  # type: ignore[attr-defined]
        print(f"{name:30s} {len(data):6d} {scan:8.1f}µ {reader:8.1f}µ {decode:8.1f}µ {scan / decode:6.0%}")


if __name__ == "__main__":
    main()
