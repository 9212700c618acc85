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

So the vectors are written into ordinary pages, and once a shard's vectors have not grown for ``QUIET_S``, a
daemon thread asks the kernel to collapse them into huge pages (``madvise(MADV_COLLAPSE)``, Linux >= 6.1,
whatever ``/sys/kernel/mm/transparent_hugepage/enabled`` says, unless the process is denied huge pages).
``ctypes`` releases the GIL for the call. Not during a bulk write: a collapse holds the process's memory map
for each 2 MiB it copies, and a writer faulting in new pages meanwhile waits (in-process, collapsing at every
16 MiB of growth stalled 9-12 batches of 256 documents past 50 ms, against 1 without). A process opts in once
(:func:`start_collapsing`), as the index stage does at start: a library a user imports starts no thread.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import threading
import time
from collections.abc import Callable

import faiss

__all__ = ["HUGE_PAGE_BYTES", "MADV_COLLAPSE", "MIN_COLLAPSE_BYTES", "QUIET_S", "CodesWatch", "PageCollapser",
           "running_collapser", "start_collapsing"]

logger = logging.getLogger(__name__)

MADV_COLLAPSE = 25
"""``madvise``'s advice number for a synchronous collapse into transparent huge pages (Linux's ``mman-common.h``)."""

HUGE_PAGE_BYTES = 2 << 20
"""A transparent huge page on x86-64 and arm64 with 4 KiB base pages: only whole, aligned ones are collapsed."""

MIN_COLLAPSE_BYTES = 8 << 20
"""The least filled vectors an index must hold to be collapsed (about 5,500 384-d float32 vectors): a scan of
fewer takes well under a millisecond either way."""

QUIET_S = 1.0
"""How long a shard's vectors must not have grown before they are collapsed: a bulk write is done, or paused."""

Madvise = Callable[[int, int, int], int]
"""``madvise(address, length, advice)``: 0, or -1 with ``ctypes.get_errno()`` set."""


class PageCollapser:
    """One daemon thread that collapses each index's latest vectors once they have been quiet for ``quiet_s``.

    :param madvise: the system call (tests give another); None: libc's, through ``ctypes``.
    :param quiet_s: ``QUIET_S``.
    """

    def __init__(self, madvise: Madvise | None = None, *, quiet_s: float = QUIET_S) -> None:
        self._madvise = madvise or _libc_madvise()
        self._quiet_s = quiet_s
        self._pending: dict[int, tuple[int, int, float]] = {}
        """By index: the aligned range to collapse, and when its vectors last grew."""
        self._cond = threading.Condition()
        self._working = False
        self.supported = True
        """False once the kernel refused the advice (older than 6.1, or huge pages denied to the process)."""
        self.collapsed_bytes = 0
        """Bytes of ranges the kernel collapsed, or found collapsed already."""
        self.gone = 0
        """Ranges no longer mapped when their turn came: the index had grown into a new block since."""
        self._thread = threading.Thread(target=self._run, name="huge-page-collapse", daemon=True)
        self._thread.start()

    def grew(self, key: int, address: int, size: int) -> None:
        """The vectors of index ``key`` now fill ``size`` bytes from ``address``: collapse their whole huge pages
        once they have been quiet for ``quiet_s``. Called at every write: a lock and a dict entry."""
        start = -(-address // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        end = (address + size) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        if end <= start or not self.supported:
            return
        with self._cond:
            was_empty = not self._pending
            self._pending[key] = (start, end, time.monotonic())
            if was_empty:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or being collapsed; returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._working, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                start, end = self._next_quiet()
                self._working = True
            try:
                self._collapse(start, end)
            finally:
                with self._cond:
                    self._working = False
                    self._cond.notify_all()

    def _next_quiet(self) -> tuple[int, int]:
        """Under the lock: wait for a range whose index has been quiet for ``quiet_s``, and take it."""
        while True:
            self._cond.wait_for(lambda: bool(self._pending))
            now = time.monotonic()
            key, (start, end, grew_at) = min(self._pending.items(), key=lambda item: item[1][2])
            if now - grew_at >= self._quiet_s:
                del self._pending[key]
                return start, end
            self._cond.wait(self._quiet_s - (now - grew_at))

    def _collapse(self, start: int, end: int) -> None:
        if self._madvise(start, end - start, MADV_COLLAPSE) == 0:
            self.collapsed_bytes += end - start
            return
        code = ctypes.get_errno()
        if code == errno.ENOMEM:  # unmapped: the vector grew into a new block since, whose range is pending
            self.gone += 1
        elif code == errno.EINVAL and self.supported:
            self.supported = False
            with self._cond:
                self._pending.clear()
            logger.info("the kernel does not collapse memory into huge pages (MADV_COLLAPSE needs Linux 6.1): "
                        "the shards' vectors stay in 4 KiB pages, and flat scans take about a fifth longer")
        elif code != errno.EAGAIN:  # EAGAIN: busy for now; the next quiet spell covers the range again
            logger.debug("huge page collapse refused", extra={"errno": errno.errorcode.get(code, code)})


def _libc_madvise() -> Madvise:
    call = ctypes.CDLL(None, use_errno=True).madvise
    call.argtypes, call.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    return call  # type: ignore[no-any-return]


_COLLAPSER: PageCollapser | None = None
_START_LOCK = threading.Lock()


def start_collapsing() -> PageCollapser | None:
    """Start this process's collapser (once; later calls return it): call it in a process's entry point, never in a
    library a user's process imports. None where the libc has no ``madvise``."""
    global _COLLAPSER
    with _START_LOCK:
        if _COLLAPSER is None:
            try:
                _COLLAPSER = PageCollapser()
            except (OSError, AttributeError):
                logger.info("no madvise here: the shards' vectors stay in the pages malloc gave them")
                return None
            logger.info("the shards' vectors are collapsed into huge pages whenever their writes pause",
                        extra={"quiet_s": QUIET_S})
        return _COLLAPSER


def running_collapser() -> PageCollapser | None:
    """The collapser :func:`start_collapsing` started in this process, if any."""
    return _COLLAPSER


class CodesWatch:
    """Tells the process's collapser, after each write, where one flat index's vectors are (FAISS's ``codes``:
    float32 or float16 rows, one block that moves when it doubles) and how far they are filled."""

    def __init__(self) -> None:
        self._index: faiss.Index | None = None
        self._codes: object = None
        """``self._index``'s vectors (SWIG's view of the member, valid while the index lives: it is held here)."""

    def follow(self, index: faiss.Index) -> None:
        """After a write to ``index`` (an ``IndexIDMap`` of a flat index). Does nothing without a running collapser,
        for fewer than ``MIN_COLLAPSE_BYTES``, or for an index without host memory of its own (a GPU's)."""
        collapser = _COLLAPSER
        if collapser is None or not collapser.supported:
            return
        if index is not self._index:  # a new index (the float16 turn): found once, not at every write
            self._index = index
            self._codes = getattr(faiss.downcast_index(getattr(index, "index", index)), "codes", None)
        codes = self._codes
        if codes is None or not hasattr(codes, "data"):
            return
        size = int(codes.size())
        if size >= MIN_COLLAPSE_BYTES:
            collapser.grew(id(self), int(codes.data()), size)
