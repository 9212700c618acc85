"""Grouping: one query's ranked matches as groups of a tag's distinct values, each with its best documents.

As Qdrant's search groups (``group_by``, ``limit`` groups of at most ``group_size`` points each): a group's
place is its best document's, groups by score (ties by the group value), documents inside a group best
first; ``group_size`` is best-effort (a value with fewer matching documents gives a smaller group). Like
Qdrant, only string and integer values group (Qdrant's keyword and integer payloads): a document whose tag
is missing, a boolean or a float is left out of the reply. Tags are the root documents' top-level ``tags``
(one value each: there are no list tags, so a document is in one group at most).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from processors.document import Direction, Document, Score
from processors.rankers.base import rank_key

__all__ = ["GROUP_RANK", "Group", "GroupValue", "flatten", "group_matches", "group_value"]

GroupValue = str | int
"""What a document can be grouped by: a string or an integer tag."""

GROUP_RANK = "group.rank"
"""The score name of a grouped match's group's place in the reply (1 = the best group; ``op_name``
``grouping.rank``, a distance: smaller is better)."""


@dataclass(frozen=True, slots=True)
class Group:
    """One distinct value and its best documents, best first."""

    value: GroupValue
    matches: tuple[Document, ...]


def group_value(doc: Document, tag: str) -> GroupValue | None:
    """The value ``doc`` is grouped by, or None when it has none that groups (missing, boolean, float)."""
    value = doc.tags.get(tag)
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def group_matches(ranked: Sequence[Document], *, tag: str, groups: int, group_size: int,
                  key: Callable[[Document], float] | None = None,
                  sources: Sequence[Document] | None = None) -> list[Group]:
    """The best ``groups`` groups of ``ranked`` by the tag ``tag``.

    :param ranked: one query's matches, best first (ties by document id), each document once.
    :param key: a document's place, smaller first: by default its ranking score's (``Score.sort_key``);
        for a list in another order (MMR's) its position. Groups are ordered by their best document's key,
        ties by the value (integers before strings, each in natural order).
    :param sources: where each match's tags and score are read (aligned with ``ranked``): the matches before
        the join stage's operations, which may have selected those fields away; default ``ranked``.
    """
    read = list(sources) if sources is not None else list(ranked)
    place = key or (lambda doc: rank_key(doc)[0])
    members: dict[GroupValue, list[int]] = {}
    for i, doc in enumerate(read):
        value = group_value(doc, tag)
        if value is not None:
            members.setdefault(value, []).append(i)
    order = sorted(members, key=lambda value: (place(read[members[value][0]]), _value_key(value)))[:groups]
    return [Group(value, tuple(ranked[i] for i in members[value][:group_size])) for value in order]


def flatten(groups: Sequence[Group], tag: str) -> list[Document]:
    """The groups' documents group by group, each carrying its group's value in ``tags[tag]`` (restored if the
    join stage's operations took it away) and its group's place as the score :data:`GROUP_RANK`."""
    return [dataclasses.replace(doc, tags={**doc.tags, tag: group.value}, scores={
        **doc.scores, GROUP_RANK: Score(float(rank), "grouping.rank", Direction.DISTANCE)})
        for rank, group in enumerate(groups, start=1) for doc in group.matches]


def _value_key(value: GroupValue) -> tuple[int, int, str]:
    """A total order over mixed values: integers first, by value, then strings."""
    return (0, value, "") if isinstance(value, int) else (1, 0, value)
