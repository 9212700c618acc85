"""The crash-loop breaker: what a stage process was working on when it died.

A record that kills the process (a native library's segfault, an abort, memory exhaustion) is
never dead-lettered by the ordinary failure path, because nothing survives to catch it: the
supervisor restarts the stage, it reads the same record and dies again, for good. So before a
batch is processed each stage notes, per partition, the offsets it is working on in a small file,
and removes the note when the batch is through. A process that starts and finds a note over the
offsets it is about to process knows its predecessor died on them:

1. first crash over a range: process it again as usual (the crash may have had another cause);
2. ``crash_limit`` crashes over a range: process it record by record, noting each record alone;
3. a record noted alone that was in flight at a crash: dead-letter it with the reason
   "crashed the stage N times (signal)", unprocessed. Nothing else is skipped.

Notes must survive the process, not the machine: no fsync. A note is one write into its file, padded to
a page (:data:`NOTE_BYTES`), over an open descriptor, and a batch through blanks that page (:data:`NO_NOTE`):
a write of one page cannot be torn by the process's death, and the pair costs two system calls a batch where
a temporary file, a rename and an unlink cost five (on a query path, a note for every query). Blanking in
place, not truncating, keeps the file's size, so neither write changes its metadata: a truncate and the
next write extending the file again took 9 us together on ext4, two writes in place 1.8. A note longer than
a page (many poisoned offsets) is written with an atomic rename instead, and emptied by a truncate.

A process may restart before the offsets its predecessor died on (an index stage resumes from its shard's
stored checkpoint, and a shard's last writes may have been only in memory): the predecessor's note is then kept
as it is, and the batches before it go unnoted, until one reaches its offsets and is judged against it.

The signal comes from ``faulthandler``, which each stage process points at a file named after its
pid; a process killed by SIGKILL (the OOM killer) leaves no report and is named so.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import operator
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

__all__ = ["DEFAULT_CRASH_LIMIT", "NOTE_BYTES", "NO_NOTE", "CrashLoopError", "InFlightLog", "InFlightVerdict", "Ranges",
           "offset_ranges"]

logger = logging.getLogger(__name__)

NOTE_BYTES = 4096
"""A note's size on disk: one page, written by one ``pwrite`` at offset 0 (a process killed during it
leaves the old page or the new one, never a mix)."""

NO_NOTE = b" " * NOTE_BYTES
"""A page that notes nothing: blanks, which no JSON reader takes for a note (``_read``: none)."""

NO_OFFSET = -1
"""The first and last offsets of a note over none: kept for its counts, never judged (no batch overlaps it)."""

DEFAULT_CRASH_LIMIT = 2
"""Crashes over the same offsets before a batch is isolated, and the killing record dead-lettered."""

_FATAL = re.compile(r"Fatal Python error: (.+)")


class _Record(Protocol):
    topic: str
    partition: int
    offset: int


class CrashLoopError(Exception):
    """The reason a record that kept killing the stage process is dead-lettered."""


@dataclass(frozen=True, slots=True)
class InFlightVerdict:
    """What to do with a batch, given the notes its predecessor left."""

    poisoned: dict[tuple[str, int, int], str]
    """(topic, partition, offset) → the dead-letter reason: records that killed the stage."""
    isolate: bool
    """Process the rest record by record, noting each alone."""
    lettered: frozenset[tuple[str, int, int]] = frozenset()
    """Poisoned records already dead-lettered by a process that died later: skip them."""
    crashed: bool = False
    """A process died with some of these offsets in flight (this batch carries a crash count)."""


Ranges = dict[tuple[str, int], tuple[int, int]]
"""(topic, partition) → the first and last offsets noted on it."""


def offset_ranges(records: Sequence[_Record]) -> Ranges:
    """The first and last offsets of ``records`` on each (topic, partition).

    A batch of one partition (an index stage's, mostly) is read with ``attrgetter`` and ``min``/``max``, in C:
    256 records took 83 us in the loop below."""
    if not records:
        return {}
    keys = set(map(_PARTITION_OF, records))
    if len(keys) == 1:
        offsets = list(map(_OFFSET_OF, records))
        return {keys.pop(): (min(offsets), max(offsets))}
    ranges: Ranges = {}
    for record in records:
        key, offset = (record.topic, record.partition), record.offset
        known = ranges.get(key)
        if known is None:
            ranges[key] = (offset, offset)
        elif offset > known[1]:  # the usual: a partition's records come in offset order
            ranges[key] = (known[0], offset)
        elif offset < known[0]:
            ranges[key] = (offset, known[1])
    return ranges


_PARTITION_OF = operator.attrgetter("topic", "partition")
_OFFSET_OF = operator.attrgetter("offset")


class InFlightLog:
    """Notes of in-flight offsets for one consumer group, under ``directory``.

    :param directory: where the notes and the fault reports live (the stage's state dir).
    :param group: the consumer group whose partitions the notes are about.
    :param crash_limit: crashes over the same offsets before isolating them (≥ 1).
    """

    def __init__(self, directory: Path, group: str, *, crash_limit: int = DEFAULT_CRASH_LIMIT) -> None:
        self._dir = Path(directory)
        self._group = group
        self._limit = max(1, crash_limit)
        self._faults: dict[int, str] = {}
        self._paths: dict[tuple[str, int], Path] = {}
        self._fds: dict[Path, int] = {}
        self._ahead: set[tuple[str, int]] = set()
        """(topic, partition)s whose file holds a dead predecessor's note over offsets after every batch read
        since: kept, unjudged, until a batch reaches them. A process can restart before the offsets its
        predecessor died on (an index stage resumes from its shard's stored checkpoint, whose last writes may
        have been only in memory); noting the batches before would overwrite the note, and a record that
        kills every process that reaches it would never be counted."""
        self._alone: tuple[str, int] | None = None
        """The (topic, partition) whose note names one record alone (:meth:`begin_record`)."""
        self._dir.mkdir(parents=True, exist_ok=True)

    # -- notes -------------------------------------------------------------------------------

    def _path(self, topic: str, partition: int) -> Path:
        path = self._paths.get((topic, partition))
        if path is None:
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{self._group}__{topic}__{partition}")
            path = self._paths[(topic, partition)] = self._dir / f"{safe}.json"
        return path

    def _fd(self, path: Path) -> tuple[int, int]:
        """An open descriptor of the note file and its size; reopened when the file it names was
        replaced (a long note's rename, another process's) or removed (``abandon``)."""
        fd = self._fds.get(path)
        if fd is not None:
            status = os.fstat(fd)
            if status.st_nlink > 0:
                return fd, status.st_size
            os.close(fd)
        fd = self._fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        return fd, os.fstat(fd).st_size

    def _read(self, topic: str, partition: int) -> dict | None:  # type: ignore[type-arg]
        try:
            fd, size = self._fd(self._path(topic, partition))
            note = json.loads(os.pread(fd, max(size, 1), 0))
            return {"first": int(note["first"]), "last": int(note["last"]), "crashes": int(note["crashes"]),
                    "pid": int(note["pid"]), "poisoned": {int(k): str(v) for k, v in note.get("poisoned", {}).items()},
                    "lettered": [int(o) for o in note.get("lettered", [])]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _write(self, topic: str, partition: int, first: int, last: int, crashes: int,
               poisoned: dict[int, str] | None = None, lettered: Sequence[int] = ()) -> None:
        """Write a note over the partition's file, unless a dead predecessor's note lies ahead there (``_ahead``):
        that one is kept for the batch that reaches it, whatever notes this process would make meanwhile."""
        if (topic, partition) in self._ahead:
            return
        path = self._path(topic, partition)
        note = json.dumps({"first": first, "last": last, "crashes": crashes, "pid": os.getpid(),
                           "poisoned": {str(k): v for k, v in (poisoned or {}).items()},
                           "lettered": sorted(lettered)}).encode()
        fd, size = self._fd(path)
        if len(note) <= NOTE_BYTES and size <= NOTE_BYTES:
            os.pwrite(fd, note.ljust(NOTE_BYTES), 0)  # JSON allows the trailing blanks
            return
        staged = path.with_suffix(f".{os.getpid()}.tmp")
        staged.write_bytes(note)
        os.replace(staged, path)  # the descriptor now names the old file: _fd reopens

    def begin(self, records: Sequence[_Record]) -> InFlightVerdict:
        """Note the batch's offsets, per partition, and judge it against what a dead predecessor noted."""
        poisoned: dict[tuple[str, int, int], str] = {}
        lettered: set[tuple[str, int, int]] = set()
        isolate = crashed = False
        self._alone = None
        for (topic, partition), (first, last) in offset_ranges(records).items():
            note = self._read(topic, partition)
            if note is not None and note["pid"] != os.getpid() and last < note["first"]:
                self._ahead.add((topic, partition))  # records its predecessor got through: not noted
                continue
            self._ahead.discard((topic, partition))
            crashes, known, done = 0, {}, []
            if note is not None and note["pid"] != os.getpid() and note["first"] <= last and first <= note["last"]:
                # What the dead process had judged still holds for the offsets this batch has again.
                known = {o: why for o, why in note["poisoned"].items() if first <= o <= last}
                done = [o for o in note["lettered"] if first <= o <= last]
                crashes = note["crashes"] + 1  # the process that wrote it died working on these offsets
                crashed = True
                signal = self.fault_of(note["pid"])
                logger.warning(f"{topic}[{partition}] offsets {note['first']}..{note['last']} were in flight when "
                               f"the stage process died ({signal}); crash {crashes} over them",
                               extra={"topic": topic, "partition": partition})
                alone = note["first"] == note["last"]
                if alone and crashes >= self._limit:
                    known[note["first"]] = f"crashed the stage {crashes} times ({signal})"
                    crashes = 0  # the rest of the batch starts afresh
                elif alone or crashes >= self._limit:
                    isolate = True  # find the record that kills it; a lone one keeps its count
            poisoned.update({(topic, partition, o): why for o, why in known.items()})
            lettered.update((topic, partition, o) for o in done)
            self._write(topic, partition, first, last, crashes, known, done)
        return InFlightVerdict(poisoned, isolate, frozenset(lettered), crashed)

    def begin_record(self, record: _Record) -> None:
        """In isolation, note one record alone: if it kills the process, the next one dead-letters it.

        The note of the partition noted alone before, when it is another, is set over no offset (its count, its
        poisoned and lettered offsets kept, for its next record): its record went through, and a lone record's note
        left in place would have a crash on this partition counted against it, and dead-letter it, innocent."""
        key = (record.topic, record.partition)
        if self._alone is not None and self._alone != key and (before := self._read(*self._alone)) is not None:
            self._write(*self._alone, NO_OFFSET, NO_OFFSET, before["crashes"], before["poisoned"], before["lettered"])
        self._alone = key
        note = self._read(record.topic, record.partition) or {"crashes": 0, "poisoned": {}, "lettered": []}
        self._write(record.topic, record.partition, record.offset, record.offset, note["crashes"],
                    note["poisoned"], note["lettered"])

    def lettered(self, records: Sequence[_Record]) -> None:
        """These poisoned records are in the dead-letter topic (delivered): a later crash must not send them again."""
        for record in records:
            note = self._read(record.topic, record.partition)
            if note is not None:
                self._write(record.topic, record.partition, note["first"], note["last"], note["crashes"],
                            note["poisoned"], [*note["lettered"], record.offset])

    def abandon(self) -> None:
        """This process stops on an exception of its own (a broker outage, say), not killed by a record:
        drop its notes, so that its exit is not counted as a crash over them."""
        for path in self._dir.glob("*.json"):
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink(missing_ok=True)
            except (OSError, ValueError, AttributeError):
                continue

    def resume(self, ranges: Mapping[tuple[str, int], tuple[int, int]]) -> None:
        """Note again the rest of a batch (its :func:`offset_ranges`) whose notes :meth:`clear` dropped between
        two of its slices. Nothing is read or judged: :meth:`begin` judged the batch (only one without a crash
        count is sliced), and its partitions stayed this process's meanwhile (the loop does not poll their
        consumer between slices). A fifth of ``begin``'s cost, paid at a slice where a query ran."""
        for (topic, partition), (first, last) in ranges.items():
            self._write(topic, partition, first, last, 0)

    def end(self, records: Sequence[_Record]) -> None:
        """The batch is through (outputs delivered, offsets committed): forget its notes."""
        self.clear(set(map(_PARTITION_OF, records)))

    def clear(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Forget the notes of these (topic, partition)s: :meth:`end`'s, for a batch's partitions known already.
        A page is blanked in place (:data:`NO_NOTE`), a longer note's file emptied. A predecessor's note ahead
        of them is kept (``_ahead``)."""
        for topic, partition in partitions:
            if (topic, partition) in self._ahead:
                continue
            try:
                fd, size = self._fd(self._path(topic, partition))
                if size == NOTE_BYTES:
                    os.pwrite(fd, NO_NOTE, 0)
                elif size:
                    os.ftruncate(fd, 0)
            except OSError:
                continue  # the directory went away: nothing is noted there

    # -- fault reports -----------------------------------------------------------------------

    def _fault_path(self, pid: int) -> Path:
        return self._dir / f"fault-{pid}.log"

    def enable_fault_reports(self) -> IO[str]:
        """Point ``faulthandler`` at this process's report file (kept open for the process's life)."""
        report = open(self._fault_path(os.getpid()), "w")  # noqa: SIM115 - faulthandler needs it open
        faulthandler.enable(file=report)
        return report

    def disable_fault_reports(self, report: IO[str] | None) -> None:
        """A clean exit: no fault to report."""
        if report is not None:
            faulthandler.disable()
            report.close()
            self._fault_path(os.getpid()).unlink(missing_ok=True)

    def fault_of(self, pid: int) -> str:
        """How process ``pid`` died, from its fault report."""
        if pid not in self._faults:
            path = self._fault_path(pid)
            try:
                text = path.read_text(errors="replace")
                path.unlink(missing_ok=True)  # read once: the process is gone
            except OSError:
                text = ""
            match = _FATAL.search(text)
            self._faults[pid] = match.group(1).strip() if match else "no fault report: killed, e.g. SIGKILL or out of memory"
        return self._faults[pid]
