"""Maps the partitions a process owns to their shard indexes, one directory each."""

from __future__ import annotations

import json
import logging
import os
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

    With ``private_when_locked`` (the index stage), a shard whose directory another process
    still holds (a previous owner that is hung, not dead, on a shared state dir) is restored
    into a private directory ``<partition>.<pid>`` from the topic instead of failing: its
    partition has moved here, and waiting for the lock would leave the shard unserved. The
    private copy is deleted on close; the shared directory is never touched meanwhile.
    """

    def __init__(self, *, root: Path, flow: str, config: CompoundIndexerConfig,
                 private_when_locked: bool = False) -> None:
        self._dir = Path(root) / flow / "index"
        self._config = config
        self._private_when_locked = private_when_locked
        self._open: dict[int, CompoundIndexer] = {}
        self._checkpoints: dict[int, ShardCheckpoint] = {}
        self._private: dict[int, Path] = {}
        self.restore = RestoreTracker()

    def path(self, partition: int) -> Path:
        """The directory the shard is (or would be) open from."""
        return self._private.get(partition, self._dir / str(partition))

    def open(self, partition: int) -> ShardCheckpoint:
        """Open (or create) a shard, mark it restoring, and return its stored checkpoint."""
        if partition not in self._open:
            index = self._open_index(partition)
            self._open[partition] = index
            self._checkpoints[partition] = ShardCheckpoint.from_bytes(index.checkpoint())
            self.restore.start(partition)
        return self._checkpoints[partition]

    def _open_index(self, partition: int) -> CompoundIndexer:
        shared = self._dir / str(partition)
        try:
            return self._warm(shared)
        except Exception as exc:  # rocksdict raises a bare Exception for a held lock
            if not self._private_when_locked or not _is_lock_error(exc):
                raise
        self._remove_abandoned_copies(partition)
        private = self._dir / f"{partition}.{os.getpid()}"
        shutil.rmtree(private, ignore_errors=True)
        logger.warning(f"shard {partition}: {shared} is held by another process (a previous owner that has not let "
                       f"go); restoring a private copy in {private} from the topic", extra={"partition": partition})
        self._private[partition] = private
        return self._warm(private)

    def _warm(self, path: Path) -> CompoundIndexer:
        index = CompoundIndexer(self._config, path=path, codec=DOCUMENT)
        index.warm_up()
        return index

    def _remove_abandoned_copies(self, partition: int) -> None:
        """Private copies of processes that died before closing them (kill -9)."""
        for copy in self._dir.glob(f"{partition}.*"):
            pid = copy.name.rpartition(".")[2]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(copy, ignore_errors=True)

    def close(self, partition: int) -> None:
        index = self._open.pop(partition, None)
        self._checkpoints.pop(partition, None)
        self.restore.forget(partition)
        if index is not None:
            index.close()
        private = self._private.pop(partition, None)
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)

    def destroy(self, partition: int) -> ShardCheckpoint:
        """Delete a shard's state and open it empty (its topic no longer matches it).

        Opening it first takes RocksDB's lock, so a shard another process holds is never
        deleted under it (a directory removed with its LOCK file would let both proceed).
        """
        self.open(partition)
        path, private = self.path(partition), partition in self._private
        self.close(partition)  # a private copy is deleted by closing it
        if not private:
            shutil.rmtree(path, ignore_errors=True)
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


def _is_lock_error(exc: Exception) -> bool:
    """RocksDB's "IO error: While lock file: .../LOCK" (another process) or "lock hold by
    current process" (this one)."""
    message = str(exc)
    return message.startswith("IO error") and "/LOCK" in message


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
