"""Grouping as Qdrant's search groups: groups by their best document, each with its best documents."""

from __future__ import annotations

from processors.document import Direction, Document, Score, TagValue
from processors.rankers.base import rank_key
from processors.rankers.grouping import GROUP_RANK, flatten, group_matches, group_value


def match(doc_id: str, score: float, **tags: TagValue) -> Document:
    return Document(id=doc_id, tags=dict(tags), scores={"score": Score(score, "test", Direction.SIMILARITY)})


RANKED = sorted([
    match("a1", 0.95, author="ann"), match("b1", 0.90, author="bob"), match("a2", 0.85, author="ann"),
    match("a3", 0.80, author="ann"), match("c1", 0.75, author="cy"), match("b2", 0.70, author="bob"),
    match("n1", 0.99), match("f1", 0.98, author=1.5), match("t1", 0.97, author=True),
], key=rank_key)


def ids(groups: list) -> list[tuple[object, list[str]]]:
    return [(g.value, [m.id for m in g.matches]) for g in groups]


class TestGrouping:
    def test_each_value_keeps_its_best_documents_and_groups_go_by_their_best(self) -> None:
        groups = group_matches(RANKED, tag="author", groups=10, group_size=2)
        assert ids(groups) == [("ann", ["a1", "a2"]), ("bob", ["b1", "b2"]), ("cy", ["c1"])]

    def test_top_groups_are_the_best_ones(self) -> None:
        assert ids(group_matches(RANKED, tag="author", groups=2, group_size=1)) == [("ann", ["a1"]), ("bob", ["b1"])]

    def test_missing_boolean_and_float_values_are_left_out_as_qdrant_does(self) -> None:
        assert group_value(match("x", 1.0, author=7), "author") == 7
        for doc_id in ("n1", "f1", "t1"):
            assert group_value(next(m for m in RANKED if m.id == doc_id), "author") is None
        grouped = {m.id for g in group_matches(RANKED, tag="author", groups=10, group_size=10) for m in g.matches}
        assert grouped == {"a1", "a2", "a3", "b1", "b2", "c1"}

    def test_equal_best_scores_order_groups_by_value_integers_first(self) -> None:
        tied = sorted([match("d1", 0.5, k="b"), match("d2", 0.5, k="a"), match("d3", 0.5, k=10),
                       match("d4", 0.5, k=2)], key=rank_key)
        assert [g.value for g in group_matches(tied, tag="k", groups=4, group_size=1)] == [2, 10, "a", "b"]

    def test_a_key_orders_groups_by_position_in_another_order(self) -> None:
        reordered = [m for m in RANKED if m.id in ("c1", "a1", "b1")][::-1]  # c1, b1, a1: not by score
        place = {m.id: float(i) for i, m in enumerate(reordered)}
        groups = group_matches(reordered, tag="author", groups=3, group_size=1, key=lambda m: place[m.id])
        assert [g.value for g in groups] == ["cy", "bob", "ann"]

    def test_flatten_puts_groups_in_order_with_their_value_and_rank(self) -> None:
        bare = [Document(id=m.id) for m in RANKED]  # the join stage's select took tags and scores away
        groups = group_matches(bare, tag="author", groups=2, group_size=2, sources=RANKED)
        flat = flatten(groups, "author")
        assert [(m.id, m.tags["author"], m.scores[GROUP_RANK].value) for m in flat] == [
            ("a1", "ann", 1.0), ("a2", "ann", 1.0), ("b1", "bob", 2.0), ("b2", "bob", 2.0)]
