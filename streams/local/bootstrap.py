"""One local broker per working directory: the ``run`` that starts it owns it, later ones join it.

``.streamsearch/bootstrap`` holds the broker's address, for ``index``, ``search`` and the user.
``.streamsearch/broker.lock`` is locked (``flock``) by the owning process for as long as it runs
and holds its pid: a second ``run`` sees that the directory's broker has an owner and joins it
instead of starting another, and only the owner removes the address. The kernel drops the lock
when the owner dies, even by SIGKILL, so the next ``run`` replaces a stale address.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from streams.exceptions import BrokerError
from streams.kafka.settings import BOOTSTRAP_FILE

__all__ = ["BOOTSTRAP_FILE", "LOCK_FILE", "RUNS_FOLDER", "JoinedBroker", "DirectoryBroker", "FlowRunLock"]

logger = logging.getLogger(__name__)

LOCK_FILE = Path(".streamsearch") / "broker.lock"
"""Locked by the process that started the directory's local broker, while it runs; holds its pid."""


RUNS_FOLDER = Path(".streamsearch") / "runs"
"""``<flow version prefix>.lock``: locked by the ``run`` of that flow version in this directory, holding its pid."""


@dataclass(frozen=True, slots=True)
class JoinedBroker:
    """A running broker of this directory that another process started."""

    bootstrap_servers: str
    owner_pid: int | None
    """The ``run`` that owns it and stops it when it stops; None when its owner is gone."""


class DirectoryBroker:
    """This process's claim on the working directory's local broker: join it, or own it."""

    def __init__(self, folder: Path = BOOTSTRAP_FILE.parent) -> None:
        self._bootstrap = Path(folder) / BOOTSTRAP_FILE.name
        self._lock_path = Path(folder) / LOCK_FILE.name
        self._lock: IO[str] | None = None
        self._published: str | None = None

    @property
    def owned(self) -> bool:
        return self._lock is not None

    def claim(self, *, wait_s: float = 180.0) -> JoinedBroker | None:
        """Join the directory's broker if it answers; else become its owner.

        While another process owns the directory but its broker is not up yet (it is starting),
        wait for it rather than start a second one.

        :param wait_s: how long to wait for another owner's broker to come up.
        :returns: the broker to join, or None: this process owns the directory now and must
            start a broker and :meth:`publish` its address.
        :raises BrokerError: if the owner's broker does not answer within ``wait_s``.
        """
        self._bootstrap.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            lock = open(self._lock_path, "a+")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                owner_alive = False
            except BlockingIOError:
                owner_alive = True
            address = self._answering_address()
            if address is not None:
                owner = self._owner_pid(lock) if owner_alive else None
                lock.close()  # a broker whose run died (or predates the lock) is joined, never owned
                return JoinedBroker(address, owner)
            if not owner_alive:
                lock.seek(0)
                lock.truncate()
                lock.write(f"{os.getpid()}\n")
                lock.flush()
                self._lock = lock
                return None
            owner = self._owner_pid(lock)
            lock.close()
            if time.monotonic() > deadline:
                raise BrokerError(f"the local broker of `streamsearch run` (pid {owner}) in {Path.cwd()} did not "
                                  f"answer within {wait_s:.0f}s; stop that run or start this one elsewhere")
            if not told:
                logger.info("waiting for the local broker another run in this directory starts",
                            extra={"owner_pid": owner})
                told = True
            time.sleep(0.5)

    def publish(self, bootstrap_servers: str) -> None:
        """Write the owned broker's address, atomically (a reader never sees half of it)."""
        assert self.owned, "claim() the directory first"
        partial = self._bootstrap.with_name(f"{self._bootstrap.name}.{os.getpid()}")
        partial.write_text(bootstrap_servers)
        os.replace(partial, self._bootstrap)
        self._published = bootstrap_servers

    def release(self) -> None:
        """Remove the address this process published (after its broker stopped), then let go of
        the directory. Idempotent; a process that joined releases nothing."""
        if self._published is not None:
            try:
                if self._bootstrap.read_text().strip() == self._published:
                    self._bootstrap.unlink()
            except FileNotFoundError:
                pass
            self._published = None
        if self._lock is not None:
            self._lock.truncate(0)
            self._lock.close()  # closing drops the flock
            self._lock = None

    def _answering_address(self) -> str | None:
        """The recorded address if a broker answers there, else None (absent or stale)."""
        try:
            address = self._bootstrap.read_text().strip()
        except FileNotFoundError:
            return None
        return address if address and _answers(address) else None

    @staticmethod
    def _owner_pid(lock: IO[str]) -> int | None:
        lock.seek(0)
        text = lock.read().strip()
        return int(text) if text.isdigit() else None


class FlowRunLock:
    """One ``run`` of a flow version per directory: a second would start every stage again, sharing
    the first one's shard state directories. Capacity is added with ``run FLOW.yml --stage S
    --replicas N`` (or a run on another host); the kernel drops the lock when the run dies."""

    def __init__(self, prefix: str, folder: Path = RUNS_FOLDER) -> None:
        self._path = Path(folder) / f"{prefix}.lock"
        self._prefix = prefix
        self._lock: IO[str] | None = None

    def acquire(self) -> None:
        """:raises BrokerError: naming the running ``run``'s pid, if there is one."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self._path, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = DirectoryBroker._owner_pid(lock)
            lock.close()
            raise BrokerError(f"flow {self._prefix!r} already runs from this directory (`streamsearch run` pid "
                              f"{owner}): a second run would start every stage again; to add capacity, "
                              f"`streamsearch run FLOW.yml --stage STAGE --replicas N`") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.truncate(0)
            self._lock.close()
            self._lock = None


def _answers(bootstrap_servers: str) -> bool:
    """A Kafka broker answers metadata requests at one of these addresses. A closed port is
    refused at once; only an open one costs a metadata request."""
    from streams.kafka.admin import check_broker
    from streams.kafka.settings import QUIET_LIBRDKAFKA, KafkaSettings

    for address in bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                break
        except (OSError, ValueError):
            continue
    else:
        return False
    try:
        check_broker(KafkaSettings(bootstrap_servers, {"logger": QUIET_LIBRDKAFKA}), timeout=5.0)
    except BrokerError:
        return False
    return True

