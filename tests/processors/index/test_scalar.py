"""Field indexes answer every filter as a plain evaluation of MongoDB's rules over the documents' tags would,
through adds, removals and compaction."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from processors.index.scalar import ScalarIndex
from processors.query.filter import Combination, Comparison, Filter, stored_value, stored_values

SCHEMA = {"year": "number", "genre": "keyword", "published": "date", "open": "boolean"}
GENRES = ["drama", "comedy", "noir", "Drama", "ü", ""]


def random_tags(rng: random.Random) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    if rng.random() < 0.8:
        tags["year"] = rng.choice([rng.randint(1990, 2025), rng.randint(1990, 2025) + 0.5, "n/a", float("nan")])
    if rng.random() < 0.8:
        tags["genre"] = rng.choice([rng.choice(GENRES), rng.choice(GENRES), 5])
    if rng.random() < 0.7:
        tags["published"] = f"20{rng.randint(10, 24)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
    if rng.random() < 0.6:
        tags["open"] = rng.choice([True, False, "true"])
    return tags


def random_filter(rng: random.Random, depth: int = 0) -> Filter:
    if depth < 3 and rng.random() < 0.4:
        operator = rng.choice(["$and", "$or", "$not"])
        count = 1 if operator == "$not" else rng.randint(2, 3)
        return Combination(operator, tuple(random_filter(rng, depth + 1) for _ in range(count)))  # type: ignore[arg-type]
    field = rng.choice(list(SCHEMA))
    kind = SCHEMA[field]
    value = {"year": lambda: rng.randint(1985, 2030), "genre": lambda: rng.choice(GENRES + ["absent"]),
             "published": lambda: f"20{rng.randint(10, 24)}-0{rng.randint(1, 9)}-15",
             "open": lambda: rng.choice([True, False])}[field]
    operators = {"keyword": ["$eq", "$ne", "$in", "$nin", "$exists"], "boolean": ["$eq", "$ne", "$exists"]}.get(
        kind, ["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists"])
    operator = rng.choice(operators)
    if operator == "$exists":
        return Comparison(field, operator, rng.random() < 0.5)
    if operator in ("$in", "$nin"):
        return Comparison(field, operator, tuple(value() for _ in range(rng.randint(1, 4))))
    return Comparison(field, operator, value())


def accepts(parsed: Filter, tags: dict[str, Any]) -> bool:
    """MongoDB's rules, written plainly: $ne/$nin negate $eq/$in; a value not of the field's type is none."""
    if isinstance(parsed, Combination):
        results = [accepts(part, tags) for part in parsed.parts]
        return not results[0] if parsed.operator == "$not" else (all(results) if parsed.operator == "$and"
                                                                  else any(results))
    kind = SCHEMA[parsed.field]
    values = stored_values(kind, tags[parsed.field]) if parsed.field in tags else []  # type: ignore[arg-type]
    if parsed.operator == "$exists":
        return bool(values) == parsed.value
    if parsed.operator in ("$ne", "$nin"):
        return not accepts(Comparison(parsed.field, "$eq" if parsed.operator == "$ne" else "$in", parsed.value), tags)
    wanted = [stored_value(kind, v) for v in (parsed.value if parsed.operator == "$in" else (parsed.value,))]  # type: ignore[arg-type]
    test = {"$eq": lambda v: v in wanted, "$in": lambda v: v in wanted, "$gt": lambda v: v > wanted[0],
            "$gte": lambda v: v >= wanted[0], "$lt": lambda v: v < wanted[0], "$lte": lambda v: v <= wanted[0]}
    return any(test[parsed.operator](v) for v in values)


def indexed_values(tags: dict[str, Any]) -> dict[str, list[Any]]:
    return {name: kept for name, kind in SCHEMA.items() if name in tags
            and (kept := stored_values(kind, tags[name]))}  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(4))
def test_every_filter_selects_what_a_plain_evaluation_accepts_through_adds_and_removals(seed: int) -> None:
    rng = random.Random(seed)
    index = ScalarIndex(SCHEMA)
    documents: dict[int, tuple[list[int], dict[str, Any]]] = {}
    next_vid = 0
    for round_ in range(6):
        for number in range(600):
            vids = list(range(next_vid, next_vid + rng.randint(1, 3)))  # chunks share their document's tags
            next_vid = vids[-1] + 1 + rng.randint(0, 2)  # ids never reused, not always dense
            tags = random_tags(rng)
            index.add(vids, indexed_values(tags))
            documents[vids[0]] = (vids, tags)
        gone = rng.sample(sorted(documents), len(documents) // 2)  # past half dead: compaction runs
        index.remove([vid for key in gone for vid in documents.pop(key)[0]])
        assert len(index) == sum(len(vids) for vids, _ in documents.values())
        for _ in range(40):
            parsed = random_filter(rng)
            expected = sorted(vid for vids, tags in documents.values() if accepts(parsed, tags) for vid in vids)
            assert index.select(parsed).tolist() == expected, (round_, parsed)


def test_ids_must_grow_and_removing_unknown_ids_changes_nothing() -> None:
    index = ScalarIndex(SCHEMA)
    index.add([5, 6], {"year": [2001.0]})
    with pytest.raises(ValueError, match="ascending"):
        index.add([6], {})
    index.remove([1, 7, 99])
    assert index.select(Comparison("year", "$exists", True)).tolist() == [5, 6]
    assert index.select(Comparison("genre", "$in", ("never seen",))).dtype == np.int64
