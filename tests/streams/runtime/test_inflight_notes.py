"""The crash-loop breaker's notes on disk: one page written in place, a long note by rename, and what
another process left always read (no broker: the crash itself is ``test_crash_loop.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from streams.runtime.inflight import NO_NOTE, NOTE_BYTES, InFlightLog, InFlightVerdict


class Record:
    def __init__(self, offset: int, partition: int = 0) -> None:
        self.topic, self.partition, self.offset = "t", partition, offset


def _note(path: Path) -> dict | None:  # type: ignore[type-arg]
    data = path.read_bytes()
    return json.loads(data) if data.strip() else None


def test_a_note_is_one_page_in_place_and_a_batch_through_blanks_it(tmp_path: Path) -> None:
    log = InFlightLog(tmp_path, "g")
    log.begin([Record(5), Record(9)])
    path = tmp_path / "g__t__0.json"
    inode = path.stat().st_ino
    assert path.stat().st_size == NOTE_BYTES
    assert _note(path) == {"first": 5, "last": 9, "crashes": 0, "pid": os.getpid(), "poisoned": {}, "lettered": []}
    log.end([Record(5), Record(9)])
    assert path.read_bytes() == NO_NOTE and path.stat().st_size == NOTE_BYTES  # blanked in place, not truncated
    dead = {"first": 5, "last": 9, "crashes": 0, "pid": 1, "poisoned": {}, "lettered": []}
    with path.open("r+b") as file:  # over the page, as a process of that pid would
        file.write(json.dumps(dead).encode().ljust(NOTE_BYTES))
    assert log.begin([Record(5)]).crashed  # another process's note over these offsets: a crash
    log.end([Record(5)])
    assert log.begin([Record(5), Record(9)]) == InFlightVerdict({}, False)  # the blank page after it: none
    log.end([Record(5), Record(9)])
    log.begin([Record(10)])
    assert _note(path)["first"] == 10 and path.stat().st_ino == inode  # the same file, written in place


def test_a_note_longer_than_a_page_is_renamed_into_place_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "g__t__0.json"
    reasons = {str(offset): "crashed the stage 2 times (" + "x" * 100 + ")" for offset in range(100)}
    path.write_text(json.dumps({"first": 0, "last": 99, "crashes": 1, "pid": 1, "poisoned": reasons}))
    log = InFlightLog(tmp_path, "g")
    verdict = log.begin([Record(offset) for offset in range(100)])
    assert len(verdict.poisoned) == 100  # what the dead process judged still holds
    long_note = _note(path)
    assert path.stat().st_size > NOTE_BYTES and len(long_note["poisoned"]) == 100 and long_note["pid"] == os.getpid()
    log.end([Record(0)])
    assert path.read_bytes() == b""  # a longer note's file is emptied
    log.begin([Record(100)])  # a short note again goes in place
    assert path.stat().st_size == NOTE_BYTES and _note(path)["first"] == 100


def test_a_note_another_process_renamed_over_the_open_file_is_the_one_read(tmp_path: Path) -> None:
    """Two processes of a stage may share the directory: one's rename must not leave the other
    reading, or writing, the file it replaced."""
    log = InFlightLog(tmp_path, "g")
    log.begin([Record(5)])
    log.end([Record(5)])
    path = tmp_path / "g__t__0.json"
    staged = tmp_path / "other.tmp"
    staged.write_text(json.dumps({"first": 7, "last": 7, "crashes": 1, "pid": 1}))
    os.replace(staged, path)
    verdict = log.begin([Record(7)])
    assert list(verdict.poisoned) == [("t", 0, 7)]  # a lone record that crashed twice
    assert _note(path)["pid"] == os.getpid()  # and the note written after it is in the file now named


def test_offset_ranges_cover_each_partitions_first_and_last_offset_in_any_order() -> None:
    from streams.runtime.inflight import offset_ranges

    assert offset_ranges([Record(7), Record(3, partition=1), Record(5), Record(4, partition=1), Record(9),
                          Record(2)]) == {("t", 0): (2, 9), ("t", 1): (3, 4)}
    assert offset_ranges([Record(7), Record(5), Record(9), Record(6)]) == {("t", 0): (5, 9)}  # one partition
    other = Record(8)
    other.topic = "u"  # one partition number, two topics: two ranges
    assert offset_ranges([Record(7), other, Record(3)]) == {("t", 0): (3, 7), ("u", 0): (8, 8)}
    assert offset_ranges([]) == {}


def test_a_dead_predecessors_note_ahead_of_the_batches_is_kept_until_one_reaches_it(tmp_path: Path) -> None:
    """An index stage resumes from its shard's stored checkpoint, which a crash can leave behind the offsets the
    dead process was on: the batches before them must not overwrite its note, or the crash is never counted."""
    path = tmp_path / "g__t__0.json"
    dead = {"first": 100, "last": 103, "crashes": 1, "pid": 1, "poisoned": {}, "lettered": []}
    path.write_text(json.dumps(dead))
    log = InFlightLog(tmp_path, "g")
    before = [Record(offset) for offset in range(90, 96)]
    verdict = log.begin(before)
    assert not verdict.crashed and not verdict.isolate and _note(path) == dead
    log.clear([("t", 0)])
    log.resume({("t", 0): (93, 95)})
    log.end(before)
    assert _note(path) == dead  # neither noted over nor emptied
    verdict = log.begin([Record(offset) for offset in range(96, 102)])
    assert verdict.crashed and verdict.isolate  # the second crash over those offsets: found record by record
    assert _note(path)["pid"] == os.getpid() and _note(path)["crashes"] == 2


def test_in_isolation_a_crash_on_one_partition_is_never_counted_against_another_partitions_last_record(
        tmp_path: Path) -> None:
    """Record by record over two partitions: the first partition's last record went through before the second's
    killed the process. Its note, left naming that record alone, had the crash counted against it, and the next
    process dead-lettered it, innocent; it is set over no offset when the next record noted alone is elsewhere."""
    batch = [Record(10), Record(11), Record(20, partition=1), Record(21, partition=1)]
    for partition, (first, last) in ((0, (10, 11)), (1, (20, 21))):
        dead = {"first": first, "last": last, "crashes": 1, "pid": 1, "poisoned": {}, "lettered": []}
        (tmp_path / f"g__t__{partition}.json").write_text(json.dumps(dead))
    log = InFlightLog(tmp_path, "g", crash_limit=2)
    assert log.begin(batch).isolate  # the second crash over both ranges: record by record
    for record in batch[:3]:
        log.begin_record(record)  # ... and the process dies on offset 20 of partition 1
    for path in tmp_path.glob("g__*.json"):  # as that dead process left them
        with path.open("r+b") as file:
            note = json.loads(file.read())
            file.seek(0)
            file.write(json.dumps({**note, "pid": 1}).encode().ljust(NOTE_BYTES))
    verdict = InFlightLog(tmp_path, "g", crash_limit=2).begin(batch)
    assert set(verdict.poisoned) == {("t", 1, 20)}, verdict.poisoned
