"""Bounded decoding: a record checked against its caps (``streams/wire/limits.py``) before fastavro's reader runs.

fastavro's reader recurses in C once per nested record, so a Document nested thousands deep
would overflow the stack, and it allocates what a declared length says before reading it. The
pre-scan walks the writer schema's binary encoding with an explicit stack: it checks the caps
and that every declared length fits in the bytes left, and copies nothing (strings are skipped).

The walk runs compiled (``streams/wire/_avro.c``, built with the package; ``program.py``) where it was
built, and in this module's Python otherwise. The Python walk is the reference: it walks again any record the
compiled one refuses, so that every message comes from here.
"""

from __future__ import annotations

from typing import Any

from streams.exceptions import SerdeError
from streams.wire.limits import DecodeLimits, DocumentBudget
from streams.wire.program import Program
from streams.wire.scan_nodes import (
    ARRAY,
    CUT,
    ENUM,
    LEN,
    NULL_NODE,
    OPTIONAL,
    OPTIONAL_LEN,
    RECORD,
    SKIP,
    VARINT,
    ScanNode,
    program_of,
)

__all__ = ["Cuts", "prescan", "prescan_python"]

class Cuts(list[tuple[int, int]]):
    """Byte ranges ``[start, end)`` of a record, in order: the non-null values of ``CUT_FIELDS``, union index
    included.

    ``sized`` is set when the walk met a block of records written with its size in bytes (a negative item
    count, which the Avro spec allows a writer): a range cut out inside it would leave that size wrong, so
    such a record's ranges must not be cut out."""

    __slots__ = ("sized",)

    def __init__(self) -> None:
        super().__init__()
        self.sized = False


# -- reading the binary encoding -------------------------------------------------------------------


def _varint_tail(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte had the continuation bit: (zigzag value, next pos)."""
    value, shift = first & 0x7F, 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"a varint at byte {pos} runs over 10 bytes")


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, next pos)."""
    byte = data[pos]
    if byte < 0x80:
        value, pos = byte, pos + 1
    elif data[pos + 1] < 0x80:  # two bytes: lengths of embeddings, most offsets
        value, pos = (byte & 0x7F) | (data[pos + 1] << 7), pos + 2
    else:
        value, pos = _varint_tail(data, pos + 1, byte)
    return (value >> 1) ^ -(value & 1), pos


def _block(data: bytes, pos: int) -> tuple[int, int]:
    """An array or map block's item count (0 ends the array), checked against the bytes left."""
    byte = data[pos]
    if byte < 0x80 and not byte & 1:  # a count under 64
        count, pos = byte >> 1, pos + 1
    else:
        count, pos = _long(data, pos)
    if count < 0:  # a block with its size in bytes; the items follow all the same
        count = -count
        size, pos = _long(data, pos)
        if not 0 <= size <= len(data) - pos:
            raise ValueError(f"a block of {size} bytes at byte {pos} with {len(data) - pos} bytes left")
    if count > len(data) - pos:  # every item takes at least one byte (checked by _compile)
        raise ValueError(f"a block of {count} items at byte {pos} with {len(data) - pos} bytes left")
    return count, pos


def _skip_bytes(data: bytes, pos: int, byte: int) -> int:
    """Past a string or bytes value whose length's first byte, at ``pos - 1``, was ``byte``."""
    if byte > 0x7F:
        length, pos = _long(data, pos - 1)
    else:
        length = (byte >> 1) ^ -(byte & 1)
    if not 0 <= length <= len(data) - pos:
        raise ValueError(f"a length of {length} at byte {pos} with {len(data) - pos} bytes left")
    return pos + length


def _skip_optional_bytes(data: bytes, pos: int) -> int:
    """Past a union of null and a string or bytes value."""
    byte = data[pos]
    if byte == 0:
        return pos + 1
    if byte == 2:
        pos += 1
    else:  # a longer varint, or no branch
        index, pos = _long(data, pos)
        if index == 0:
            return pos
        if index != 1:
            raise ValueError(f"union branch {index} at byte {pos} of 2")
    return _skip_bytes(data, pos + 1, data[pos])


def _scan_flat(data: bytes, pos: int, count: int, items: tuple[Any, ...]) -> int:
    """Skip the blocks of an array or map of strings and numbers, the first block's count read."""
    end = len(data)
    while count:
        for _ in range(count):
            for item in items:
                byte = data[pos]
                if byte > 0x7F:
                    length, pos = _long(data, pos)
                else:
                    length, pos = (byte >> 1) ^ -(byte & 1), pos + 1
                if item[0] == LEN:
                    if not 0 <= length <= end - pos:
                        raise ValueError(f"a length of {length} at byte {pos} with {end - pos} bytes left")
                    pos += length
        count, pos = _block(data, pos)
    return pos


def _skip_flat(data: bytes, pos: int, node: ScanNode) -> int:
    """Past a value ``_flat`` accepts, checked as the walk would check it."""
    kind = node[0]
    if kind == RECORD:
        for field in node[1]:
            pos = _skip_flat(data, pos, field)
        return pos
    if kind == LEN:
        return _skip_bytes(data, pos + 1, data[pos])
    if kind == OPTIONAL_LEN:
        return _skip_optional_bytes(data, pos)
    if kind == VARINT:
        return _long(data, pos)[1]
    if kind == SKIP:
        return pos + node[1]
    if kind == ENUM:
        index, pos = _long(data, pos)
        if not 0 <= index < node[1]:
            raise ValueError(f"enum symbol {index} at byte {pos} of {node[1]}")
        return pos
    # a flat ARRAY
    if data[pos] == 0:
        return pos + 1
    count, pos = _block(data, pos)
    return _scan_flat(data, pos, count, node[1]) if count else pos


def _skip_cut(data: bytes, pos: int, node: ScanNode, cuts: Cuts | None) -> int:
    """Past a ``CUT`` field's union; its range is added to ``cuts`` unless it is null."""
    if data[pos] == 0:
        return pos + 1
    start = pos
    inner = node[1]
    if inner[0] == OPTIONAL_LEN:
        pos = _skip_optional_bytes(data, pos)
    else:
        index, pos = _long(data, pos)
        if index == 1:
            pos = _skip_flat(data, pos, inner[1])
        elif index != 0:
            raise ValueError(f"union branch {index} at byte {pos} of 2")
    if cuts is not None:
        cuts.append((start, pos))
    return pos


# -- the walk ----------------------------------------------------------------------------------------


def prescan(data: bytes, root: ScanNode, limits: DecodeLimits, name: str, cuts: Cuts | None = None) -> None:
    """Walk one record without recursion or copies, so nothing unbounded reaches fastavro.

    :param root: the writer schema's tree (:func:`compile_scan`).
    :param name: the record type, for messages.
    :param cuts: if given, the byte ranges of the non-null values of ``CUT_FIELDS`` are appended to it, in
        order: what a shard's stored form of the record leaves out, found by the walk that checks it anyway.
    :raises DecodeLimitError: if Documents nest deeper or are more than ``limits`` allow.
    :raises SerdeError: on a length or count larger than the bytes left, or malformed bytes.
    """
    program = program_of(root)
    if program is not None and _compiled_accepts(program, data, limits, cuts):
        return
    prescan_python(data, root, limits, name, cuts)


def _compiled_accepts(program: Program, data: bytes, limits: DecodeLimits, cuts: Cuts | None) -> bool:
    """Whether the compiled walk accepts the record whole; if so, ``cuts`` holds its ranges, else nothing."""
    walked = program.walk(data, limits.max_document_depth, limits.max_documents, cuts)
    if walked is not None and walked[0] == len(data):
        if cuts is not None:
            cuts.sized = walked[1]
        return True
    if cuts is not None:
        del cuts[:]
        cuts.sized = False
    return False


def prescan_python(data: bytes, root: ScanNode, limits: DecodeLimits, name: str, cuts: Cuts | None = None) -> None:
    """:func:`prescan`'s walk in Python: the reference the compiled walk is tested against, and the one
    that says why a record is refused."""
    end = len(data)
    try:
        pos = _walk(data, root, DocumentBudget(limits, name), cuts)
    except IndexError:
        raise SerdeError(f"malformed {name} record: truncated") from None
    except ValueError as exc:
        raise SerdeError(f"malformed {name} record: {exc}") from None
    if pos > end:
        raise SerdeError(f"malformed {name} record: truncated")
    if pos != end:
        raise SerdeError(f"malformed {name} record: {end - pos} bytes left after decoding")


def _walk(data: bytes, root: ScanNode, documents: DocumentBudget, cuts: Cuts | None) -> int:
    """The position after ``root``'s value. Scalars are skipped in line (the hot path); a node
    holding others opens a sequence of them. Frames on the stack: ``(seq, i)`` resumes a sequence
    of fields, ``[node, left]`` an array or map block, None leaves a Document."""
    pos = 0
    end = len(data)
    seq: Any = (root,)
    i = 0
    stack: list[Any] = []
    while True:
        n = len(seq)
        while i < n:
            node = seq[i]
            i += 1
            kind = node[0]
            if kind == LEN:
                byte = data[pos]
                if byte > 0x7F:
                    pos = _skip_bytes(data, pos + 1, byte)
                else:  # a length under 64, in line: ids, most texts
                    length = (byte >> 1) ^ -(byte & 1)
                    pos += 1
                    if not 0 <= length <= end - pos:
                        raise ValueError(f"a length of {length} at byte {pos} with {end - pos} bytes left")
                    pos += length
            elif kind == OPTIONAL_LEN:
                pos = pos + 1 if data[pos] == 0 else _skip_optional_bytes(data, pos)
            elif kind == VARINT:
                pos = _long(data, pos)[1] if data[pos] > 0x7F else pos + 1
            elif kind == SKIP:
                pos += node[1]
            elif kind == CUT:
                pos = pos + 1 if data[pos] == 0 else _skip_cut(data, pos, node, cuts)
            elif kind == ARRAY and data[pos] == 0:  # empty: most tags, scores, locations, matches
                pos += 1
            else:
                opened, pos = _open(data, pos, node, (seq, i), documents, stack, cuts)
                if opened is not None:
                    seq, i, n = opened, 0, len(opened)
        if not stack:
            return pos
        seq, i, pos = _resume(data, pos, stack, documents, cuts)


def _open(data: bytes, pos: int, node: ScanNode, resume: tuple[Any, int], documents: DocumentBudget,
          stack: list[Any], cuts: Cuts | None) -> tuple[Any, int]:
    """A node that holds others: (the sequence to walk next, ``resume`` pushed to come back to;
    or None if the node was read whole), and the next pos."""
    kind = node[0]
    if kind == ARRAY:
        return _open_array(data, pos, node, resume, stack, cuts)
    if kind == RECORD:
        stack.append(resume)
        if node[2]:
            documents.enter()
            stack.append(None)
        return node[1], pos
    if kind == ENUM:
        index, pos = _long(data, pos)
        if not 0 <= index < node[1]:
            raise ValueError(f"enum symbol {index} at byte {pos} of {node[1]}")
        return None, pos
    # OPTIONAL or UNION: scan the chosen branch as a sequence of one
    if data[pos] == 0 and kind == OPTIONAL:
        return None, pos + 1
    index, pos = _long(data, pos)
    branches = (NULL_NODE, node[1]) if kind == OPTIONAL else node[1]
    if not 0 <= index < len(branches):
        raise ValueError(f"union branch {index} at byte {pos} of {len(branches)}")
    stack.append(resume)
    return (branches[index],), pos


def _open_array(data: bytes, pos: int, node: ScanNode, resume: tuple[Any, int], stack: list[Any],
                cuts: Cuts | None) -> tuple[Any, int]:
    if data[pos] == 0:  # empty
        return None, pos + 1
    if cuts is not None and not node[2] and data[pos] & 1:  # a negative count: the block's size follows
        cuts.sized = True
    count, pos = _block(data, pos)
    if count == 0:  # written in more than one byte
        return None, pos
    if node[2]:
        return None, _scan_flat(data, pos, count, node[1])
    stack.append(resume)
    stack.append([node, count - 1])
    return node[1], pos


def _resume(data: bytes, pos: int, stack: list[Any], documents: DocumentBudget,
            cuts: Cuts | None) -> tuple[Any, int, int]:
    """Pop frames up to a sequence to go on with: (sequence, index in it, pos); an empty sequence
    once the stack is empty."""
    while stack:
        frame = stack.pop()
        if frame is None:
            documents.depth -= 1
        elif type(frame) is list:
            if frame[1] == 0:
                if cuts is not None and data[pos] & 1:  # a negative count: the next block's size follows
                    cuts.sized = True
                frame[1], pos = _block(data, pos)
                if frame[1] == 0:
                    continue
            frame[1] -= 1
            stack.append(frame)
            return frame[0][1], 0, pos
        else:
            return frame[0], frame[1], pos
    return (), 0, pos
