"""The main job itself, on a small corpus: it must answer while indexing and rank argparse high."""

from pathlib import Path

import pytest

from streams.demo.hello_world import EXAMPLE_QUERIES, run_hello_world
from streams.local.brokers import LocalBroker
from tests.e2e.fixtures import RAW_LIBRDKAFKA_LINE

pytestmark = pytest.mark.kafka


def test_hello_world_finds_argparse_for_command_line_parsing(broker: LocalBroker, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
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
    assert f"stage logs: {tmp_path / 'logs' / 'hello.*.log'}" in output
    raw = [line for line in capfd.readouterr().err.splitlines() if RAW_LIBRDKAFKA_LINE.match(line)]
    assert not raw, raw  # librdkafka's lines go through logging, never raw on the console
