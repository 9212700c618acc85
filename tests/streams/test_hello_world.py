"""The main job itself, on a small corpus: it must answer while indexing and rank argparse high."""

from pathlib import Path

import pytest

from streams.hello_world import EXAMPLE_QUERIES, run_hello_world

pytestmark = pytest.mark.kafka


def test_hello_world_finds_argparse_for_command_line_parsing(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    printed: list[str] = []
    replies = run_hello_world(limit=120, state_dir=tmp_path, top_k=3, print_fn=printed.append)
    reply = replies["parse command line arguments"]
    assert not reply.partial
    top = [m.id for m in reply.docs[EXAMPLE_QUERIES.index("parse command line arguments")].matches]
    assert "argparse" in top or "getopt" in top[:1], top
    assert top[0] in {"argparse", "getopt", "optparse"}
    output = "\n".join(printed)
    assert "while indexing" in output and "final answers" in output
    assert "search page and HTTP API: http://127.0.0.1:" in output
    # Every match is printed with its score and the sentence that matched.
    assert "↳" in output
