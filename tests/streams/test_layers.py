"""The package layers of ../shared/LAYOUT.md, checked by walking every import (module level and inside functions).

A rule broken names the importing file, its line and the import, so the fix starts from the failure message.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Rule:
    """Modules under `importer` never import a module under any of `forbidden` (dotted prefixes)."""

    importer: str
    forbidden: tuple[str, ...]
    why: str


KAFKA_CLIENTS = ("confluent_kafka",)
ABOVE_RUNTIME = ("streams.stages", "streams.flow", "streams.ops", "streams.client", "streams.local", "streams.demo",
                 "streams.cli")
RULES = (
    Rule("processors", ("streams",), "executors know documents, never the Kafka runtime"),
    Rule("streams.wire", KAFKA_CLIENTS + ("streams.kafka", "streams.runtime") + ABOVE_RUNTIME,
         "the wire format is bytes and records, readable without a Kafka client"),
    Rule("streams.kafka", ("streams.runtime",) + ABOVE_RUNTIME, "client wrappers know no stage"),
    Rule("streams.runtime", ("processors",) + ABOVE_RUNTIME, "the loop knows handlers, not what stages do"),
    Rule("streams.client", ("streams.stages", "streams.ops", "streams.local", "streams.demo", "streams.cli",
                            "streams.runtime", "processors.index", "processors.encoders"),
         "applications talk to a flow without the stage runtime, operator commands or local brokers"),
    Rule("streams.stages", ("streams.ops", "streams.client", "streams.local", "streams.demo", "streams.cli"),
         "a stage never calls operator commands, the client or the local brokers"),
    Rule("streams.ops", ("streams.local", "streams.demo", "streams.cli"), "operator actions run on any cluster"),
    Rule("streams.local", ("streams.demo", "streams.cli"), "only the CLI and the demo sit above everything"),
)


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    package = _module_of(path) if path.name == "__init__.py" else _module_of(path).rpartition(".")[0]
    return _imports_in(path.read_text(), package)


def _imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in `source`, relative imports resolved against `package`."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _violations(rule: Rule) -> list[str]:
    top = ROOT.joinpath(*rule.importer.split("."))
    files = [top.with_suffix(".py")] if top.with_suffix(".py").exists() else sorted(top.rglob("*.py"))
    broken = []
    for path in files:
        for line, module in _imports(path):
            if any(_under(module, bad) for bad in rule.forbidden):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return broken


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.importer)
def test_a_layer_imports_only_the_layers_below_it(rule: Rule) -> None:
    broken = _violations(rule)
    assert not broken, f"{rule.importer} must not import {', '.join(rule.forbidden)} ({rule.why}):\n" + "\n".join(broken)


def test_the_walk_sees_imports_inside_functions_and_relative_ones() -> None:
    """The checker itself: a late import inside a function and a relative import are both found."""
    source = "def late():\n    from confluent_kafka import Producer\n\nfrom ..runtime import loop\n"
    names = sorted(name for _, name in _imports_in(source, "streams.wire"))
    assert names == ["confluent_kafka.Producer", "streams.runtime.loop"]
