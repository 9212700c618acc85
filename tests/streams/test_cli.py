"""The CLI fails with one readable line and a non-zero exit code, never a traceback."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def streamsearch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)


def test_bad_flow_yaml_reports_file_and_line(tmp_path: Path) -> None:
    flow = tmp_path / "bad.yml"
    flow.write_text("name: x\nstages:\n  encode:\n    uses: Nope\n  index: {}\n  join: {}\n")
    result = streamsearch("run", str(flow), "--stage", "encode")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"streamsearch: error: {flow}:4: stage encode: unknown executor 'Nope'; available: TransformerEncoder"]


def test_unreachable_broker_names_the_address(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "HOME": str(tmp_path)}
    result = streamsearch("search", "anything", "--timeout", "1", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("streamsearch: error: cannot reach Kafka at 127.0.0.1:1")


def test_invalid_jsonl_names_the_line(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text('{"id": 1, "text": "fine"}\n{"id": 2}\n')
    result = streamsearch("index", str(data), env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 1
    assert result.stderr.strip() == f"streamsearch: error: {data}:2: need an object with 'id' and 'text'"
