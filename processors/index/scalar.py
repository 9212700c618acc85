"""A shard's field indexes: the filterable tag values of its documents, by vector id, in columns.

A filter (``processors.query.filter``) is answered here with the ids of the vectors it allows, which
the vector and BM25 searches are then restricted to (a pre-filter). Every vector of a document carries
its root's values, so a chunk-level search filters on its document's tags.

Layout: one row per live vector (ids ascending, as they are given), and per field one float64 column
aligned with the rows, NaN where a document has no value (tags are scalars: the Avro schema holds no
lists). A comparison is one vectorised test over a column, a combination boolean algebra over the
rows: at 100,000 vectors a range costs about 0.1 ms (``benchmarks/filtered_search.py``). Keywords
are dictionary-coded, dates are seconds since the epoch, booleans 0/1.

It is derived state: the values are stored in RocksDB with the document (``store.py``), in the same
write, and this is rebuilt from them when the shard opens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from processors.query.filter import Combination, Comparison, FieldSchema, FieldType, Filter, stored_value

__all__ = ["FieldValues", "ScalarIndex"]

FieldValues = Mapping[str, Sequence[Any]]
"""A document's indexed values: field -> its values in the stored form (``stored_values``)."""

_COMPACT_AT = 1024
"""Dead rows tolerated before compaction is considered (and then only past half of all rows)."""


class _Growing:
    """A numpy array that grows by doubling: appends are amortised O(1), reads are views."""

    def __init__(self, dtype: Any) -> None:
        self._data = np.empty(64, dtype=dtype)
        self.size = 0

    def extend(self, values: Sequence[Any] | np.ndarray) -> None:
        count = len(values)
        if self.size + count > len(self._data):
            grown = np.empty(max(2 * len(self._data), self.size + count), dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : self.size + count] = values
        self.size += count

    @property
    def view(self) -> np.ndarray:
        return self._data[: self.size]

    def replace(self, values: np.ndarray) -> None:
        self._data = np.array(values, dtype=self._data.dtype)
        if not len(self._data):
            self._data = np.empty(64, dtype=self._data.dtype)
        self.size = len(values)


class _Column:
    """One field's values, row by row; NaN where a row has none (keywords as codes)."""

    def __init__(self, field_type: FieldType) -> None:
        self.type = field_type
        self.values = _Growing(np.float64)
        self.codes: dict[str, int] = {}  # keyword -> code; codes are never reused while the index lives

    def encode(self, value: Any, *, add: bool) -> float:
        """A stored-form value as its float; a keyword never seen is NaN unless ``add``."""
        if self.type == "keyword":
            code = self.codes.get(value)
            if code is None and add:
                code = self.codes[value] = len(self.codes)
            return math.nan if code is None else float(code)
        return float(value)

    def matching(self, operator: str, value: Any) -> np.ndarray:
        """Per row: whether ``operator`` (``$eq $in $gt $gte $lt $lte $exists``) accepts its value; a row
        without one is accepted by ``$exists: false`` only."""
        values = self.values.view
        if operator == "$exists":
            present = ~np.isnan(values)
            return present if value else ~present
        if operator in ("$eq", "$in"):
            wanted = [code for member in (value if operator == "$in" else (value,))
                      if not math.isnan(code := self.encode(stored_value(self.type, member), add=False))]
            if not wanted:
                return np.zeros(len(values), dtype=np.bool_)
            return values == wanted[0] if len(wanted) == 1 else np.isin(values, wanted)
        bound = float(stored_value(self.type, value))  # type: ignore[arg-type]  # checked by check_filter
        with np.errstate(invalid="ignore"):  # NaN (no value) compares False, as it should
            return {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less,
                    "$lte": np.less_equal}[operator](values, bound)


class ScalarIndex:
    """The field indexes of one shard, evaluated with numpy.

    :param schema: the filterable fields and their types; values of undeclared tags are not kept.
    """

    def __init__(self, schema: FieldSchema) -> None:
        self.schema = dict(schema)
        self._vids = _Growing(np.int64)  # row -> vector id, ascending
        self._live = _Growing(np.bool_)
        self._dead = 0
        self._columns = {name: _Column(kind) for name, kind in self.schema.items()}

    def __len__(self) -> int:
        """Live vectors (rows)."""
        return self._vids.size - self._dead

    def add(self, vids: Sequence[int], values: FieldValues) -> None:
        """Add one document's vectors, each with the document's values.

        :param vids: new vector ids, above every id added before (ids are given in ascending order).
        :param values: its fields' stored-form values (one each: the first of a list); fields not in the
            schema are ignored.
        """
        if not len(vids):
            return
        if self._vids.size and vids[0] <= self._vids.view[-1]:
            raise ValueError("ScalarIndex: vector ids must be added in ascending order, never reused")
        self._vids.extend(vids)
        self._live.extend(np.ones(len(vids), dtype=np.bool_))
        for name, column in self._columns.items():
            members = values.get(name) or ()
            value = column.encode(members[0], add=True) if members else math.nan
            column.values.extend(np.full(len(vids), value))

    def remove(self, vids: Iterable[int]) -> None:
        """Forget these vectors (absent ids are ignored); compacts once most rows are dead."""
        wanted = np.fromiter(vids, dtype=np.int64)
        known = self._vids.view
        if not len(wanted) or not len(known):  # every write of new documents only: nothing to look for
            return
        wanted = np.unique(wanted)  # an id given twice is one row
        rows = np.searchsorted(known, wanted)
        rows = rows[(rows < len(known)) & (known[np.minimum(rows, len(known) - 1)] == wanted)]
        live = self._live.view
        rows = rows[live[rows]]
        live[rows] = False
        self._dead += len(rows)
        if self._dead > _COMPACT_AT and 2 * self._dead > self._vids.size:
            self._compact()

    def select(self, parsed: Filter) -> np.ndarray:
        """The ids of the live vectors whose document ``parsed`` accepts, ascending (int64).

        :raises KeyError: for a field not in the schema (``check_filter`` refuses it before a shard sees it).
        """
        return self._vids.view[self._mask(parsed) & self._live.view]

    def _mask(self, parsed: Filter) -> np.ndarray:
        """Per row: whether ``parsed`` holds (dead rows included; ``select`` drops them)."""
        if isinstance(parsed, Combination):
            masks = [self._mask(part) for part in parsed.parts]
            if parsed.operator == "$not":
                return ~masks[0]
            return np.logical_and.reduce(masks) if parsed.operator == "$and" else np.logical_or.reduce(masks)
        return self._compare(parsed)

    def _compare(self, comparison: Comparison) -> np.ndarray:
        column = self._columns[comparison.field]
        if comparison.operator in ("$ne", "$nin"):
            return ~column.matching("$eq" if comparison.operator == "$ne" else "$in", comparison.value)
        return column.matching(comparison.operator, comparison.value)

    def _compact(self) -> None:
        """Drop dead rows, keeping the order of the rest."""
        live = self._live.view.copy()
        for column in self._columns.values():
            column.values.replace(column.values.view[live])
        self._vids.replace(self._vids.view[live])
        self._live.replace(np.ones(self._vids.size, dtype=np.bool_))
        self._dead = 0
