"""The writer schema compiled for the bounded pre-scan (``streams/wire/prescan.py``): a tree of scan nodes that
the Python walk follows, and the flat program the compiled walk runs (``program.py``), registered by the tree's root.

A node is a tuple ``(kind, ...)``, its kind one of the constants below; a record's node is shared by every
reference to it, so a recursive schema compiles to a finite graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streams.wire.program import Program, compile_program

__all__ = ["CUT_FIELDS", "ScanNode", "compile_scan", "program_of"]

_NODE_RECORDS = frozenset({"streamsearch.Document"})
"""The records the caps count: the recursive Document."""

CUT_FIELDS: Mapping[str, frozenset[str]] = {"streamsearch.Document": frozenset({"embedding", "blob"})}
"""Fields whose values a scan can report as byte ranges (``prescan(cuts=...)``): what a shard's stored
document leaves out (its vectors are kept apart, its nodes' bytes not at all). Each is a union of null
and a value without nested records, so null written in its place is a valid encoding of the record."""

# Node kinds, the commonest first (the scan tests them in this order). OPTIONAL is a union of
# null and one other type: one zero byte, the commonest Document field. CUT is a field of CUT_FIELDS.
LEN, OPTIONAL_LEN, VARINT, SKIP, OPTIONAL, ARRAY, RECORD, UNION, ENUM, CUT = range(10)
_FIXED_SIZES = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_LEN_NODE = (LEN,)
NULL_NODE = (SKIP, 0)

ScanNode = tuple[Any, ...]
"""A compiled schema node, ``(kind, ...)``; a record's node is shared by every reference to it."""


# -- compiling a parsed schema into scan nodes -----------------------------------------------------


def compile_scan(schema: Any, *, constructors: Mapping[str, Callable[..., Any]] | None = None) -> ScanNode:
    """The pre-scan tree of a schema parsed by ``fastavro.parse_schema``, and its compiled program where
    ``_avro`` was built (:func:`program_of`), whose reader calls ``constructors`` by record name
    (:func:`streams.wire.program.compile_program`)."""
    root = _compile(schema, schema.get("__named_schemas", {}), {})
    program = compile_program(schema, documents=_NODE_RECORDS, cut_fields=CUT_FIELDS, constructors=constructors)
    if program is not None:
        _PROGRAMS[id(root)] = (root, program)
    return root


_PROGRAMS: dict[int, tuple[ScanNode, Program]] = {}
"""Compiled programs by ``id`` of their tree's root, the root kept alive beside its program."""


def program_of(root: ScanNode) -> Program | None:
    """The compiled program of a tree :func:`compile_scan` made; None where ``_avro`` was not built."""
    held = _PROGRAMS.get(id(root))
    return None if held is None else held[1]


def _compile(schema: Any, named: Mapping[str, Any], done: dict[str, Any]) -> ScanNode:
    """A parsed schema as nested tuples ``(kind, ...)``; a record is one shared node, so a
    Document's ``chunks`` point back at it."""
    if isinstance(schema, list):
        return _compile_union(schema, named, done)
    if isinstance(schema, str):
        if schema in done:
            return done[schema]
        schema = named.get(schema, {"type": schema})
    kind = schema["type"]
    if not isinstance(kind, str) or kind in named:
        return _compile(kind, named, done)
    if kind in _COMPOUND:
        return _COMPOUND[kind](schema, named, done)
    return _compile_primitive(schema)


def _compile_primitive(schema: Mapping[str, Any]) -> ScanNode:
    """A type that holds no other type."""
    kind = schema["type"]
    if kind in _FIXED_SIZES:
        return (SKIP, _FIXED_SIZES[kind])
    if kind in ("int", "long"):
        return (VARINT,)
    if kind in ("string", "bytes"):
        return _LEN_NODE
    if kind == "fixed":
        return (SKIP, schema["size"])
    if kind == "enum":
        return (ENUM, len(schema["symbols"]))
    raise TypeError(f"no pre-scan for Avro type {kind!r}")


def _compile_union(schema: list[Any], named: Mapping[str, Any], done: dict[str, Any]) -> ScanNode:
    branches = tuple(_compile(branch, named, done) for branch in schema)
    if len(branches) == 2 and branches[0] == NULL_NODE:
        return (OPTIONAL_LEN,) if branches[1] is _LEN_NODE else (OPTIONAL, branches[1])
    return (UNION, branches)


def _compile_array(schema: Mapping[str, Any], named: Mapping[str, Any], done: dict[str, Any]) -> ScanNode:
    items = _compile(schema["items"], named, done)
    if not _takes_bytes(items):  # a count could not be checked against the bytes left
        raise TypeError(f"the pre-scan cannot bound an array of zero-byte items: {schema}")
    return _array((items,))


def _compile_record(schema: Mapping[str, Any], named: Mapping[str, Any], done: dict[str, Any]) -> ScanNode:
    fields: list[Any] = []
    node = done[schema["name"]] = (RECORD, fields, schema["name"] in _NODE_RECORDS)
    cut = CUT_FIELDS.get(schema["name"], frozenset())
    for f in schema["fields"]:
        field = _compile(f["type"], named, done)
        fields.append(_cut(field, f"{schema['name']}.{f['name']}") if f["name"] in cut else field)
    return node


def _cut(node: ScanNode, name: str) -> ScanNode:
    """A field whose value a scan may cut out: a union of null and a value read in line (no record
    inside may nest, so its end is known without the walk's stack)."""
    if node[0] == OPTIONAL_LEN or (node[0] == OPTIONAL and _flat(node[1])):
        return (CUT, node)
    raise TypeError(f"{name} cannot be cut: it must be a union of null and a value holding no nested record")


def _flat(node: ScanNode) -> bool:
    """Whether ``_skip_flat`` reads the node whole: scalars, flat arrays, and records of those."""
    if node[0] == RECORD:
        return not node[2] and all(_flat(field) for field in node[1])
    return node[0] in (LEN, OPTIONAL_LEN, VARINT, SKIP, ENUM) or (node[0] == ARRAY and node[2])


def _compile_map(schema: Mapping[str, Any], named: Mapping[str, Any], done: dict[str, Any]) -> ScanNode:
    """An array of (key, value) items, as far as the scan is concerned."""
    return _array((_LEN_NODE, _compile(schema["values"], named, done)))


_COMPOUND = {"array": _compile_array, "map": _compile_map, "record": _compile_record, "error": _compile_record}
"""The types that hold others, by type name."""


def _array(items: tuple[Any, ...]) -> ScanNode:
    """An array node: its item's fields, and whether they are all strings or numbers (scanned in place)."""
    return (ARRAY, items, all(item[0] in (LEN, VARINT) for item in items))


def _takes_bytes(node: ScanNode) -> bool:
    if node[0] == SKIP:
        return bool(node[1])
    return node[0] != RECORD or any(_takes_bytes(f) for f in node[1])
