"""A shard's flat vectors moved into transparent huge pages once its writes pause, off the thread that serves it.

A flat scan reads every vector of the shard at each search; in 2 MiB pages instead of 4 KiB ones the same scan
takes about a fifth less (one TLB entry maps what 512 did; ``README.md``, "A shard's vectors in huge pages").
Until 2026-12-07 the index stage asked ``malloc`` for huge pages on all it mapped (``glibc.malloc.hugetlb=1``).
That put their cost on the write path: FAISS holds the vectors in a ``std::vector`` that doubles, and each page of
the new block, of the heap's regrowth and of the vectors appended faulted in as a fresh 2 MiB page. On a virtual
machine whose kernel reports free memory back to its host (this one: Firecracker, ``page_reporting_order=11``)
a fresh huge page faults through to the host: one ``add`` at 130,848 vectors took 610 ms, and an index stage
catching up on 200,000 pre-embedded documents spent 7.4-8.9 s of its main thread's CPU with the tunable against
6.0-7.1 without (three runs each, in turns).

So the vectors are written into ordinary pages, and once a shard's vectors have grown by less than a huge page
for ``QUIET_S``, a daemon thread asks the kernel to collapse their whole huge pages (``madvise(MADV_COLLAPSE)``,
Linux >= 6.1, whatever ``/sys/kernel/mm/transparent_hugepage/enabled`` says, unless the process is denied huge
pages). ``ctypes`` releases the GIL for the call. Not during a bulk write, unless it has lasted ``MAX_DELAY_S``: a
collapse holds the process's memory map for each 2 MiB it copies, and a writer faulting in new pages meanwhile
waits (in-process, collapsing at every 16 MiB of growth stalled 9-12 batches of 256 documents past 50 ms, against 1
without). A trickle of writes is no bulk: its new huge pages are collapsed a second after each fills. A process opts
in once (:func:`start_collapsing`), as the index stage does at start: a library a user imports starts no thread.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import faiss

__all__ = ["ATTEMPTS", "HUGE_PAGE_BYTES", "MADV_COLLAPSE", "MAX_DELAY_S", "MIN_COLLAPSE_BYTES", "PR_GET_THP_DISABLE",
           "QUIET_S", "CodesWatch", "PageCollapser", "collapse_refusal", "kernel_collapses", "start_collapsing"]

logger = logging.getLogger(__name__)

MADV_COLLAPSE = 25
"""``madvise``'s advice number for a synchronous collapse into transparent huge pages (Linux's ``mman-common.h``)."""

HUGE_PAGE_BYTES = 2 << 20
"""A transparent huge page on x86-64 and arm64 with 4 KiB base pages: only whole, aligned ones are collapsed."""

MIN_COLLAPSE_BYTES = 8 << 20
"""The least filled vectors an index must hold to be collapsed (about 5,500 384-d float32 vectors): a scan of
fewer takes well under a millisecond either way."""

QUIET_S = 1.0
"""How long a shard's vectors must have grown by less than a huge page before they are collapsed: a bulk write is
done or paused, or the writes are a trickle."""

MAX_DELAY_S = 30.0
"""The longest a range waits for a quiet spell: writes adding a huge page each ``QUIET_S`` (about 2,700 384-d float16
vectors a second) would otherwise keep a shard in 4 KiB pages for as long as they last. A collapse then stalls such
writes now and then, at most once in this long."""

ATTEMPTS = 3
"""Collapses of one range the kernel may refuse (busy, no free huge page, a range changing under it, another thread
mapping memory meanwhile) before it is left until its index grows again; each attempt after a quiet spell as long
again."""

Madvise = Callable[[int, int, int], int]
"""``madvise(address, length, advice)``: 0, or -1 with ``ctypes.get_errno()`` set."""


@dataclasses.dataclass(slots=True)
class _Range:
    """An index's vectors to collapse: whole huge pages from ``start`` to ``end``."""

    start: int
    end: int
    due: float
    """When to collapse them (monotonic seconds): ``QUIET_S`` after they last grew by a huge page or more."""
    since: float
    """When the range was first asked for (monotonic seconds): ``due`` is never later than ``MAX_DELAY_S`` after."""
    attempts: int = 0


class PageCollapser:
    """One daemon thread that collapses each index's latest vectors once they have been quiet for ``quiet_s``.

    :param madvise: the system call (tests give another); None: libc's, through ``ctypes``.
    :param quiet_s: ``QUIET_S``.
    :param max_delay_s: ``MAX_DELAY_S``.
    """

    def __init__(self, madvise: Madvise | None = None, *, quiet_s: float = QUIET_S,
                 max_delay_s: float = MAX_DELAY_S) -> None:
        self._madvise = madvise or _libc_madvise()
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._pending: dict[int, _Range] = {}
        self._done: dict[int, tuple[int, int]] = {}
        """By index: the range last collapsed, not asked for again until it grows by a huge page or moves."""
        self._cond = threading.Condition()
        self._working: int | None = None
        """The index whose range is being collapsed; None when idle, or when it was forgotten meanwhile."""
        self._busy = False
        self.collapsed_bytes = 0
        """Bytes of ranges the kernel collapsed, or found collapsed already."""
        self.refused = 0
        """Collapses the kernel refused (``errno``: ``EAGAIN``, ``ENOMEM``; ``EINVAL`` for a range that changed, or
        while another thread of the process mapped or unmapped memory)."""
        self._thread = threading.Thread(target=self._run, name="huge-page-collapse", daemon=True)
        self._thread.start()

    def grew(self, key: int, address: int, size: int) -> None:
        """The vectors of index ``key`` now fill ``size`` bytes from ``address``: collapse their whole huge pages once
        they have grown by less than one for ``quiet_s``. Called at every write: a lock and a few comparisons."""
        start = -(-address // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        end = (address + size) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        if end <= start or self._done.get(key) == (start, end):
            return
        now = time.monotonic()
        with self._cond:
            known = self._pending.get(key)
            if known is None or known.start != start:  # first asked for, or the vectors moved to a new block
                self._pending[key] = _Range(start, end, now + self._quiet_s, since=now)
            elif end > known.end:  # still growing, by whole huge pages: later, but not past MAX_DELAY_S
                known.end = end
                known.due = min(now + self._quiet_s, known.since + self._max_delay_s)
            else:
                return
            self._cond.notify_all()

    def forget(self, key: int) -> None:
        """Index ``key`` is gone: its range is no longer its vectors."""
        with self._cond:
            self._pending.pop(key, None)
            self._done.pop(key, None)
            if self._working == key:
                self._working = None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or being collapsed; returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                key, due = self._next_due()
                self._working, self._busy = key, True
            try:
                collapsed = self._collapse(due.start, due.end)
            except Exception:  # never the thread's end: the vectors stay as they are
                logger.exception("huge page collapse failed")
                collapsed = False
            with self._cond:
                forgotten, self._working, self._busy = self._working != key, None, False
                again = self._pending.get(key)
                if forgotten:
                    pass
                elif collapsed or due.attempts + 1 >= ATTEMPTS:  # either way, not asked again until it changes
                    self._done[key] = (due.start, due.end)
                    if again is not None and (again.start, again.end) == (due.start, due.end):
                        del self._pending[key]  # a write meanwhile that added no huge page
                elif again is None:  # none newer came meanwhile: try again after a longer quiet spell
                    self._pending[key] = dataclasses.replace(
                        due, due=time.monotonic() + self._quiet_s * (due.attempts + 2), attempts=due.attempts + 1)
                self._cond.notify_all()

    def _next_due(self) -> tuple[int, _Range]:
        """Under the lock: wait for the range due first, and take it."""
        while True:
            self._cond.wait_for(lambda: bool(self._pending))
            key, first = min(self._pending.items(), key=lambda item: item[1].due)
            wait = first.due - time.monotonic()
            if wait <= 0:
                del self._pending[key]
                return key, first
            self._cond.wait(wait)

    def _collapse(self, start: int, end: int) -> bool:
        if self._madvise(start, end - start, MADV_COLLAPSE) == 0:
            self.collapsed_bytes += end - start
            return True
        self.refused += 1
        reason = errno.errorcode.get(ctypes.get_errno(), "?")
        if self.refused == 1:  # once at INFO: a kernel that has the advice but refuses every collapse is seen
            logger.info("the kernel refused a huge page collapse; the shard's vectors stay in 4 KiB pages until a "
                        "later one succeeds", extra={"errno": reason, "mib": (end - start) >> 20})
        else:
            logger.debug("huge page collapse refused", extra={"errno": reason})
        return False


def _libc_madvise() -> Madvise:
    call = ctypes.CDLL(None, use_errno=True).madvise
    call.argtypes, call.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    return call  # type: ignore[no-any-return]


PR_GET_THP_DISABLE = 42
"""``prctl`` option: 1 if this process is denied transparent huge pages (``PR_SET_THP_DISABLE``, inherited)."""


def collapse_refusal(madvise: Madvise | None = None, prctl: Callable[[int], int] | None = None) -> str | None:
    """Why this kernel does not collapse memory into huge pages for this process, or None where it does.

    Asked of the kernel, not of memory: ``madvise`` of no bytes answers ``EINVAL`` only for an advice it does not
    have (before Linux 6.1, or built without transparent huge pages), and ``prctl`` tells a process denied huge
    pages. A real collapse would not do as a probe: the kernel refuses one with ``EINVAL`` too while another
    thread maps or unmaps memory (a stage starting its Kafka clients: the probe of 2 MiB said "no" to one stage
    and "yes" to the next on the same machine).
    """
    try:
        call = madvise or _libc_madvise()
        with mmap.mmap(-1, mmap.PAGESIZE) as page:
            first = ctypes.c_char.from_buffer(page)
            address = ctypes.addressof(first)  # page-aligned, as madvise wants
            del first  # no view of the buffer left when the mapping closes
            if call(address, 0, MADV_COLLAPSE) != 0:
                return (f"madvise has no MADV_COLLAPSE here ({errno.errorcode.get(ctypes.get_errno(), '?')}: Linux "
                        "before 6.1, or built without transparent huge pages)")
    except (OSError, AttributeError, ValueError, TypeError, BufferError) as error:
        return f"madvise could not be tried: {error}"
    try:
        denied = (prctl or _thp_disabled)(PR_GET_THP_DISABLE) == 1
    except (OSError, AttributeError, TypeError) as error:
        return f"prctl could not be asked: {error}"
    return "this process is denied huge pages (prctl PR_SET_THP_DISABLE, inherited from its parent)" if denied else None


def _thp_disabled(option: int) -> int:
    call = ctypes.CDLL(None, use_errno=True).prctl
    call.argtypes, call.restype = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong), \
        ctypes.c_int
    return int(call(option, 0, 0, 0, 0))


def kernel_collapses(madvise: Madvise | None = None, prctl: Callable[[int], int] | None = None) -> bool:
    """Whether this kernel collapses memory into huge pages for this process (:func:`collapse_refusal`)."""
    return collapse_refusal(madvise, prctl) is None


def _thp_setting() -> str:
    """The system's transparent huge page mode (the bracketed word of ``enabled``), for the log: "unknown" without
    sysfs."""
    try:
        words = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text(encoding="ascii").split()
    except OSError:
        return "unknown"
    return next((word.strip("[]") for word in words if word.startswith("[")), "unknown")


_COLLAPSER: PageCollapser | None = None
_START_LOCK = threading.Lock()


def start_collapsing() -> PageCollapser | None:
    """Start this process's collapser (once; later calls return it): call it in a process's entry point, never in a
    library a user's process imports. None where the kernel does not collapse (:func:`kernel_collapses`)."""
    global _COLLAPSER
    with _START_LOCK:
        if _COLLAPSER is None:
            refusal = collapse_refusal()
            if refusal is not None:
                logger.info("the kernel does not collapse memory into huge pages here: the shards' vectors stay in "
                            "4 KiB pages, and flat scans take about a fifth longer",
                            extra={"reason": refusal, "thp": _thp_setting(), "release": os.uname().release})
                return None
            _COLLAPSER = PageCollapser()
            logger.info("the shards' vectors are collapsed into huge pages whenever their writes pause",
                        extra={"quiet_s": QUIET_S})
        return _COLLAPSER


class CodesWatch:
    """Tells the process's collapser, after each write, where one flat index's vectors are (FAISS's ``codes``:
    float32 or float16 rows, one block that moves when it doubles) and how far they are filled; its range is
    forgotten when the watch (its flat index) is."""

    def __init__(self) -> None:
        self._index: faiss.Index | None = None
        self._codes: object = None
        """``self._index``'s vectors (SWIG's view of the member, valid while the index lives: it is held here)."""
        self._forget: weakref.finalize | None = None

    def follow(self, index: faiss.Index) -> None:
        """After a write to ``index`` (an ``IndexIDMap`` of a flat index). Does nothing without a running collapser,
        for fewer than ``MIN_COLLAPSE_BYTES``, or for an index without host memory of its own (a GPU's)."""
        collapser = _COLLAPSER
        if collapser is None:
            return
        if index is not self._index:  # a new index (the float16 turn): found once, not at every write
            self._index = index
            self._codes = getattr(faiss.downcast_index(getattr(index, "index", index)), "codes", None)
        codes = self._codes
        if codes is None or not hasattr(codes, "data"):
            return
        size = int(codes.size())
        if size >= MIN_COLLAPSE_BYTES:
            if self._forget is None:
                self._forget = weakref.finalize(self, collapser.forget, id(self))
            collapser.grew(id(self), int(codes.data()), size)
