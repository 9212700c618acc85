"""A parsed Avro schema compiled for ``streams/wire/_avro.c``: the program its walk, its reader and its writer run.

The C extension is built by ``pip install`` where a C compiler is (``pyproject.toml``, optional). Where it
was not, :func:`compile_program` returns None: ``prescan.py`` walks in Python and fastavro reads, as
before the extension existed. The program is a flat int32 array rather than the parsed schema's dicts,
so that the C side reads a node in a few words, and a record once however often it is referred to (a
Document's chunks point back at it). ``_avro.c``'s header lists each node kind's words.
"""

from __future__ import annotations

import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

try:
    from streams.wire import _avro
except ImportError:  # installed without a C compiler
    _avro = None

__all__ = ["COMPILED", "Program", "compile_program"]

COMPILED = _avro is not None
"""Whether the compiled walk, reader and writer are here."""

_LEN, _VARINT, _SKIP, _UNION, _ENUM, _ARRAY, _RECORD, _CUT = range(8)
"""Node kinds, as ``_avro.c`` numbers them."""
_FIXED_SIZES = {"null": (0, 0), "boolean": (1, 1), "float": (4, 2), "double": (8, 3)}
"""Types of a known size: (bytes, what the reader makes of them)."""
_FIXED = 4
"""What the reader makes of a ``fixed``: bytes."""
_MAX_CAP = 2**62
"""Caps above this are as good as none (a record under 2 GiB holds fewer Documents), and fit a C long long."""


@dataclass(frozen=True, slots=True)
class Program:
    """One writer schema, compiled: its words, the root's index among them, and the Python objects the
    words name by index (record field names, enum symbols)."""

    words: array.array
    root: int
    objects: tuple[Any, ...]

    def walk(self, data: bytes, max_depth: int, max_documents: int, cuts: list[Any] | None) -> tuple[int, bool] | None:
        """The pre-scan's walk (``prescan.py``): None if the record is refused, else the position after the
        root's value and whether a block of records was written with its size in bytes. The byte ranges
        of cut fields are appended to ``cuts``."""
        return _avro.walk(data, self.words, self.root, min(max_depth, _MAX_CAP), min(max_documents, _MAX_CAP), cuts)

    def read(self, data: bytes) -> Any:
        """What ``fastavro.schemaless_reader`` reads from a record the walk accepted, with this schema as
        the writer's and no reader schema.

        :raises ValueError: if the record ends early or has bytes left (the walk would have refused it).
        :raises UnicodeDecodeError: for a string that is not UTF-8, as fastavro raises it.
        :raises RecursionError: past Python's recursion limit (the walk's depth cap comes first).
        """
        return _avro.read(data, self.words, self.root, self.objects)

    def write(self, value: Any) -> bytes | None:
        """What ``fastavro.schemaless_writer`` writes for ``value`` (fastavro's form: dicts, lists, a union's
        ``(name, value)``), with this schema; None for a value it leaves to fastavro (``_avro.c``'s writer says
        which: a subclass, a tuple for an array, a missing field, an int for a double, ...), which the caller
        then writes with fastavro, getting the same bytes or fastavro's error. Logical types are not applied
        (none of our schemas has one: a schema that had would write its values as their underlying type)."""
        return _avro.write(value, self.words, self.root, self.objects)


def compile_program(schema: Any, *, documents: frozenset[str], cut_fields: Mapping[str, frozenset[str]],
                    constructors: Mapping[str, Callable[..., Any]] | None = None) -> Program | None:
    """The program of a schema parsed by ``fastavro.parse_schema``; None where ``_avro`` was not built.

    :param documents: the records the walk counts against the caps (the recursive Document).
    :param cut_fields: fields, by record name, whose non-null values the walk reports as byte ranges.
    :param constructors: by record name, what the reader calls with a record's field values in order,
        instead of making a dict (``streams/wire/documents.py``: a Document made at once, not a dict then a
        Document); the walk does not use them.
    """
    if _avro is None:
        return None
    compiler = _Compiler(schema.get("__named_schemas", {}), documents, cut_fields, constructors or {})
    root = compiler.place(schema)
    return Program(array.array("i", compiler.words), root, tuple(compiler.objects))


class _Compiler:
    """Places nodes in ``words`` as ``prescan._compile`` builds its tree, with what the reader needs too."""

    def __init__(self, named: Mapping[str, Any], documents: frozenset[str], cut_fields: Mapping[str, frozenset[str]],
                 constructors: Mapping[str, Callable[..., Any]]) -> None:
        self.words: list[int] = []
        self.objects: list[Any] = []
        self._named = named
        self._documents = documents
        self._cut_fields = cut_fields
        self._constructors = constructors
        self._records: dict[str, int] = {}

    def place(self, schema: Any) -> int:
        """The index of ``schema``'s node, placed now unless it is a record placed before."""
        if isinstance(schema, list):
            return self._node(_UNION, [len(schema)], schema)
        if isinstance(schema, str):
            if schema in self._records:
                return self._records[schema]
            schema = self._named.get(schema, {"type": schema})
        kind = schema["type"]
        if not isinstance(kind, str) or kind in self._named:
            return self.place(kind)
        if kind in ("record", "error"):
            return self._record(schema)
        if kind in ("array", "map"):
            items = [schema["items"]] if kind == "array" else ["string", schema["values"]]
            at = self._node(_ARRAY, [0, len(items)], items)
            self.words[at + 1] = all(self.words[child] in (_LEN, _VARINT) for child in self.words[at + 3:at + 3 + len(items)])
            return at
        if kind == "enum":
            return self._node(_ENUM, [len(schema["symbols"]), self._object(tuple(schema["symbols"]))], [])
        if kind == "fixed":
            return self._node(_SKIP, [schema["size"], _FIXED], [])
        if kind in _FIXED_SIZES:
            return self._node(_SKIP, list(_FIXED_SIZES[kind]), [])
        if kind in ("int", "long"):
            return self._node(_VARINT, [int(kind == "long")], [])
        if kind in ("string", "bytes"):
            return self._node(_LEN, [int(kind == "bytes")], [])
        raise TypeError(f"no compiled reader for Avro type {kind!r}")

    def _record(self, schema: Mapping[str, Any]) -> int:
        name = schema["name"]
        fields = schema["fields"]
        cut = self._cut_fields.get(name, frozenset())
        at = len(self.words)
        self._records[name] = at  # before its fields: a Document's chunks are Documents
        self.words.extend([_RECORD, int(name in self._documents), len(fields), *[0] * len(fields), 0, -1, 0])
        self.words[at + 3 + len(fields)] = self._object(tuple(f["name"] for f in fields))
        self.words[at + 5 + len(fields)] = self._object(name)
        if name in self._constructors:
            self.words[at + 4 + len(fields)] = self._object(self._constructors[name])
        for i, f in enumerate(fields):
            child = self.place(f["type"])
            if f["name"] in cut:
                child = self._node(_CUT, [child], [])
            self.words[at + 3 + i] = child
        return at

    def _node(self, kind: int, words: list[int], children: list[Any]) -> int:
        """A node of ``kind``, its own ``words``, then the indexes of ``children``, placed after it."""
        at = len(self.words)
        self.words.extend([kind, *words, *[0] * len(children)])
        first = at + 1 + len(words)
        for i, child in enumerate(children):
            self.words[first + i] = self.place(child)
        return at

    def _object(self, value: Any) -> int:
        self.objects.append(value)
        return len(self.objects) - 1
