"""Maps the partitions a process owns to their shard indexes, one directory each."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from streams.serde import DOCUMENT
from streams.state.restore import RestoreTracker

__all__ = ["ShardCheckpoint", "ShardStates"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShardCheckpoint:
    """What a shard has applied: the last encoded offset and the ingest offset it derives from."""

    encoded_offset: int = -1
    ingest_offset: int = -1

    def to_bytes(self) -> bytes:
        return json.dumps({"encoded_offset": self.encoded_offset, "ingest_offset": self.ingest_offset}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ShardCheckpoint:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(encoded_offset=int(data["encoded_offset"]), ingest_offset=int(data["ingest_offset"]))


class ShardStates:
    """Open shard indexes by partition, under ``<state_dir>/<flow>/index/<partition>``.

    Shared by the index path (which applies and restores) and the search path (which must
    not answer from a shard that is still restoring), so both see one ``restore`` tracker.
    """

    def __init__(self, *, root: Path, flow: str, config: CompoundIndexerConfig) -> None:
        self._dir = Path(root) / flow / "index"
        self._config = config
        self._open: dict[int, CompoundIndexer] = {}
        self._checkpoints: dict[int, ShardCheckpoint] = {}
        self.restore = RestoreTracker()

    def path(self, partition: int) -> Path:
        return self._dir / str(partition)

    def open(self, partition: int) -> ShardCheckpoint:
        """Open (or create) a shard, mark it restoring, and return its stored checkpoint."""
        if partition not in self._open:
            index = CompoundIndexer(self._config, path=self.path(partition), codec=DOCUMENT)
            index.warm_up()
            self._open[partition] = index
            self._checkpoints[partition] = ShardCheckpoint.from_bytes(index.checkpoint())
            self.restore.start(partition)
        return self._checkpoints[partition]

    def close(self, partition: int) -> None:
        index = self._open.pop(partition, None)
        self._checkpoints.pop(partition, None)
        self.restore.forget(partition)
        if index is not None:
            index.close()

    def destroy(self, partition: int) -> ShardCheckpoint:
        """Delete a shard's state and open it empty (its topic no longer matches it).

        Opening it first takes RocksDB's lock, so a shard another process holds is never
        deleted under it (a directory removed with its LOCK file would let both proceed).
        """
        self.open(partition)
        self.close(partition)
        shutil.rmtree(self.path(partition), ignore_errors=True)
        return self.open(partition)

    def close_all(self) -> None:
        for partition in list(self._open):
            self.close(partition)

    def get(self, partition: int) -> CompoundIndexer | None:
        return self._open.get(partition)

    def checkpoint(self, partition: int) -> ShardCheckpoint:
        return self._checkpoints.get(partition, ShardCheckpoint())

    def set_checkpoint(self, partition: int, checkpoint: ShardCheckpoint) -> None:
        self._checkpoints[partition] = checkpoint

    def partitions(self) -> Iterator[int]:
        return iter(sorted(self._open))
