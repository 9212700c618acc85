"""Maps the partitions a process owns to their shard indexes, one directory each."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from processors.exceptions import ConfigError
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from streams.exceptions import StateConfigError
from streams.wire.codec import STORED_DOCUMENT
from streams.stages.shard.restore import RestoreTracker
from streams.stages.kinds import INDEX

__all__ = ["ShardCheckpoint", "ShardStates", "PRIVATE_INFIX"]

PRIVATE_INFIX = ".private-"
"""Private copies are ``<partition>.private-<random>``, beside the shared ``<partition>``."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShardCheckpoint:
    """What a shard has applied: the last encoded offset and the ingest offset it derives from,
    and how many documents it may lack because the topic lost records before the shard applied
    them (``missing``, an upper bound, with ``missing_reason``). Kept with the data, so that a
    restart still says so; a rebuild from the beginning (``replay``) starts a shard without it."""

    encoded_offset: int = -1
    ingest_offset: int = -1
    missing: int = 0
    missing_reason: str = ""

    def to_bytes(self) -> bytes:
        data: dict[str, object] = {"encoded_offset": self.encoded_offset, "ingest_offset": self.ingest_offset}
        if self.missing:
            data |= {"missing": self.missing, "missing_reason": self.missing_reason}
        return json.dumps(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ShardCheckpoint:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(encoded_offset=int(data["encoded_offset"]), ingest_offset=int(data["ingest_offset"]),
                   missing=int(data.get("missing", 0)), missing_reason=str(data.get("missing_reason", "")))


class ShardStates:
    """Open shard indexes by partition, under ``<state_dir>/<flow>/index/<partition>``.

    Shared by the index path (which applies and restores) and the search path (which must
    not answer from a shard that is still restoring), so both see one ``restore`` tracker.

    With ``private_when_locked`` (the index stage), a shard whose directory another process
    still holds (a previous owner that is hung, not dead, on a shared state dir) is restored
    into a private directory ``<partition>.private-<random>`` from the topic instead of failing: its
    partition has moved here, and waiting for the lock would leave the shard unserved. The
    private copy is deleted on close; the shared directory is never touched meanwhile.
    """

    def __init__(self, *, root: Path, flow: str, config: CompoundIndexerConfig,
                 private_when_locked: bool = False, source: Path | None = None) -> None:
        """:param source: the flow YAML, named in the command that rebuilds a shard built with other settings."""
        self._dir = Path(root) / flow / INDEX.name
        self._source = source
        self._config = config
        self._private_when_locked = private_when_locked
        self._open: dict[int, CompoundIndexer] = {}
        self._checkpoints: dict[int, ShardCheckpoint] = {}
        self._private: dict[int, Path] = {}
        self.set_aside: dict[int, Path] = {}
        """Where ``destroy(keep_aside=True)`` moved each partition's previous state."""
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
        logger.warning(f"shard {partition}: {shared} is held by another process (a previous owner that has not let "
                       "go); restoring a private copy from the topic", extra={"partition": partition})
        return self._open_private(partition)

    def _open_private(self, partition: int) -> CompoundIndexer:
        """A new, empty private copy; unique names, so processes on a shared volume never collide."""
        self._remove_abandoned_copies(partition)
        private = self._dir / f"{partition}{PRIVATE_INFIX}{uuid.uuid4().hex[:12]}"
        self._private[partition] = private
        return self._warm(private)

    def _warm(self, path: Path) -> CompoundIndexer:
        """:raises StateConfigError: if the shard was built with another dim or metric, saying how to rebuild."""
        index = CompoundIndexer(self._config, path=path, codec=STORED_DOCUMENT)
        try:
            index.warm_up()
        except ConfigError as exc:
            index.close()  # lets go of RocksDB's lock: a replay may delete the shard now
            raise StateConfigError(
                f"{exc}. Stop the index stage, then run `streamsearch replay {self._source or 'FLOW.yml'} "
                f"--from-beginning` (it rebuilds from the encoded topic; a new dim means a new model: "
                f"`streamsearch reindex`), or give the flow a new state_dir") from exc
        return index

    def _remove_abandoned_copies(self, partition: int) -> None:
        """Private copies whose owner is gone (kill -9 before closing them): RocksDB's lock
        on them is free. Judged by the lock, not by a pid, which other containers may reuse."""
        for copy in self._dir.glob(f"{partition}{PRIVATE_INFIX}*"):
            if copy not in self._private.values() and _abandoned(copy):
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

    def destroy(self, partition: int, *, keep_aside: bool = False) -> ShardCheckpoint:
        """Delete a shard's state, or with ``keep_aside`` move it to ``<p>.set-aside-<time>`` (state
        the topic can no longer rebuild is never deleted unasked), and open it empty.

        Opening it first takes RocksDB's lock, so a shard another process holds is never
        deleted under it (a directory removed with its LOCK file would let both proceed).
        """
        try:
            self.open(partition)
        except StateConfigError:  # built with other settings, and its lock was free: it may go
            pass
        path, private = self.path(partition), partition in self._private
        self.close(partition)  # a private copy is deleted by closing it
        if not private:
            if keep_aside and path.exists():
                aside = path.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}")
                path.rename(aside)
                self.set_aside[partition] = aside
            else:
                shutil.rmtree(path, ignore_errors=True)
            return self.open(partition)
        # Stay private: the shared directory, if its lock was freed meanwhile, holds old state.
        index = self._open_private(partition)
        self._open[partition] = index
        self._checkpoints[partition] = ShardCheckpoint.from_bytes(index.checkpoint())
        self.restore.start(partition)
        return self._checkpoints[partition]

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


def _abandoned(copy: Path, min_age_s: float = 60.0) -> bool:
    """Nobody holds the copy's RocksDB lock (a POSIX record lock, as RocksDB takes it). A copy
    without a LOCK file counts only when old: its owner may be creating it right now."""
    lock = copy / "LOCK"
    if not lock.exists():
        return time.time() - copy.stat().st_mtime > min_age_s
    with open(lock, "a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.lockf(handle, fcntl.LOCK_UN)
    return True
