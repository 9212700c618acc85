"""When a shard may answer searches: restoring until it has read its partition to the end.

A shard that was just opened (a restart, a partition moved here, a rebuild) holds state up
to its stored offset, which may be far behind ``<flow>.encoded``. It restores first: it
applies its partition up to the high watermark its consumer saw in a fetch response (the
embedded broker's ListOffsets answer is wrong; a fetch response's is right), or until the
consumer reports the end of the partition. Only then does it answer searches from its
state; until then its parts say ``restoring``.

It also notices a stored offset past the end of the topic (the topic was recreated or
truncated, or the memory-only broker restarted): Kafka answers such a fetch with
OFFSET_OUT_OF_RANGE, the embedded broker with an empty fetch, so a position that stays past
the high watermark for ``grace_s`` counts too. The shard is then rebuilt, not crash-looped.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RestoreTracker", "Verdict"]


class Verdict(enum.Enum):
    CAUGHT_UP = "caught_up"
    BEYOND_END = "beyond_end"


@dataclass(slots=True)
class _Shard:
    restoring: bool = True
    started: float = 0.0
    beyond_end_since: float | None = None


class RestoreTracker:
    """Per partition: restoring or serving, and whether its position looks past the end."""

    def __init__(self, *, grace_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace_s = grace_s
        self._clock = clock
        self._shards: dict[int, _Shard] = {}

    def start(self, partition: int) -> None:
        """The shard was opened or rebuilt: it restores before it serves."""
        self._shards[partition] = _Shard(restoring=True, started=self._clock())

    def forget(self, partition: int) -> None:
        self._shards.pop(partition, None)

    def is_restoring(self, partition: int) -> bool:
        shard = self._shards.get(partition)
        return shard is not None and shard.restoring

    def restoring(self) -> list[int]:
        return sorted(p for p, s in self._shards.items() if s.restoring)

    def seconds_restoring(self, partition: int) -> float:
        shard = self._shards.get(partition)
        return self._clock() - shard.started if shard is not None else 0.0

    def end_reached(self, partition: int) -> bool:
        """The consumer reached the end of the partition; True if that ends a restore."""
        shard = self._shards.get(partition)
        if shard is None or not shard.restoring:
            return False
        shard.restoring = False
        shard.beyond_end_since = None
        return True

    def observe(self, partition: int, next_offset: int, low: int, high: int) -> Verdict | None:
        """Compare the next offset the shard will apply with the partition's watermarks.

        :param next_offset: the stored offset + 1, or -1 when the shard holds nothing yet.
        :param low: the log start offset from the last fetch response (< 0: none yet).
        :param high: the high watermark from the last fetch response (< 0: none yet).
        """
        shard = self._shards.get(partition)
        if shard is None or high < 0:
            return None
        position = next_offset if next_offset >= 0 else max(low, 0)
        if position > high:
            now = self._clock()
            if shard.beyond_end_since is None:
                shard.beyond_end_since = now
            elif now - shard.beyond_end_since >= self._grace_s:
                return Verdict.BEYOND_END
            return None
        shard.beyond_end_since = None
        if shard.restoring and position >= high:
            shard.restoring = False
            return Verdict.CAUGHT_UP
        return None
