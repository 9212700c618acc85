"""``huge_pages.py``: a flat index's vectors are collapsed into huge pages once their writes pause, the latest block
only, whole huge pages only; a refused range is tried again, a forgotten one never; a kernel without
``MADV_COLLAPSE`` is found out at start. With a recording ``madvise``, and in a child process with the kernel's."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from processors.index.huge_pages import (
    ATTEMPTS,
    HUGE_PAGE_BYTES,
    MADV_COLLAPSE,
    PageCollapser,
    collapse_refusal,
    kernel_collapses,
)

MiB = 1 << 20


class Recorded:
    """A ``madvise`` that notes its calls and answers with ``errno_code`` (0: success)."""

    def __init__(self, errno_code: int = 0) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.errno_code = errno_code

    def __call__(self, address: int, length: int, advice: int) -> int:
        self.calls.append((address, length, advice))
        if self.errno_code:
            ctypes.set_errno(self.errno_code)
            return -1
        return 0


def test_only_the_latest_range_of_an_index_is_collapsed_once_quiet_in_whole_huge_pages() -> None:
    madvise = Recorded()
    collapser = PageCollapser(madvise, quiet_s=1.0)
    base = 64 * HUGE_PAGE_BYTES
    collapser.grew(1, base + 4096, 10 * MiB)  # the first write: its range is superseded by the next
    collapser.grew(1, base + 4096, 20 * MiB + 5)
    collapser.grew(2, base + 100 * MiB, MiB)  # within no whole huge page: nothing to ask
    assert collapser.wait_idle(timeout=10)
    start = base + HUGE_PAGE_BYTES  # rounded up to a huge page
    end = (base + 4096 + 20 * MiB + 5) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES  # rounded down
    assert madvise.calls == [(start, end - start, MADV_COLLAPSE)]
    assert collapser.collapsed_bytes == end - start
    collapser.grew(1, base + 4096, 20 * MiB + 4096)  # no new whole huge page: collapsed already
    assert collapser.wait_idle(timeout=10) and len(madvise.calls) == 1


def test_writes_that_never_pause_are_collapsed_once_they_have_waited_the_longest_delay() -> None:
    madvise = Recorded()
    collapser = PageCollapser(madvise, quiet_s=1.0, max_delay_s=0.3)
    size, deadline = 8 * MiB, time.monotonic() + 10
    while not madvise.calls and time.monotonic() < deadline:  # a bulk write: a new huge page every 10 ms
        size += HUGE_PAGE_BYTES
        collapser.grew(1, 0, size)
        time.sleep(0.01)  # the writer's pace, not a wait for the collapser: a tight loop would starve its lock
    assert madvise.calls, "postponed past the longest delay"
    (address, length, _), = madvise.calls[:1]
    assert address == 0 and 8 * MiB < length <= size


def test_a_refused_range_is_tried_again_a_few_times_and_a_forgotten_one_never() -> None:
    busy = Recorded(errno.EAGAIN)
    collapser = PageCollapser(busy, quiet_s=0.05)
    collapser.grew(1, 0, 8 * MiB)
    assert collapser.wait_idle(timeout=30)
    assert busy.calls == [(0, 8 * MiB, MADV_COLLAPSE)] * ATTEMPTS and collapser.refused == ATTEMPTS
    assert collapser.collapsed_bytes == 0
    collapser.grew(1, 0, 8 * MiB + 4096)  # a trickle within the same huge pages: given up on, not asked again
    assert collapser.wait_idle(timeout=30) and len(busy.calls) == ATTEMPTS
    collapser.grew(1, 0, 10 * MiB)  # a new huge page: tried again
    assert collapser.wait_idle(timeout=30) and busy.calls[ATTEMPTS:] == [(0, 10 * MiB, MADV_COLLAPSE)] * ATTEMPTS

    madvise = Recorded()
    collapser = PageCollapser(madvise, quiet_s=1.0)
    collapser.grew(1, 0, 8 * MiB)
    collapser.forget(1)  # its index closed before the range was due
    assert collapser.wait_idle(timeout=10) and madvise.calls == []


def test_a_kernel_without_the_advice_or_a_process_denied_huge_pages_is_found_out_at_start() -> None:
    assert not kernel_collapses(Recorded(errno.EINVAL), prctl=lambda option: 0)
    assert "MADV_COLLAPSE" in (collapse_refusal(Recorded(errno.EINVAL), prctl=lambda option: 0) or "")  # says why
    assert "PR_SET_THP_DISABLE" in (collapse_refusal(Recorded(), prctl=lambda option: 1) or "")
    tried = Recorded()
    assert kernel_collapses(tried, prctl=lambda option: 0)
    (address, length, advice), = tried.calls  # of no bytes: the kernel's advice is asked about, not memory
    assert address % mmap.PAGESIZE == 0 and length == 0 and advice == MADV_COLLAPSE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_COLLAPSE) is Linux's")
def test_the_kernel_gives_one_answer_while_other_threads_map_and_unmap_memory() -> None:
    """A collapse tried as the probe was refused (EINVAL) whenever another thread mapped memory meanwhile: a stage
    starting its Kafka clients was told its kernel could not collapse, and the next stage that it could."""
    quiet = collapse_refusal()
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            with mmap.mmap(-1, 8 * MiB) as region:
                region[:1] = b"x"

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        answers = {collapse_refusal() for _ in range(50)}
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert answers == {quiet}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_COLLAPSE) is Linux's")
def test_a_flat_index_grown_in_a_process_that_collapses_ends_in_huge_pages_where_the_kernel_can() -> None:
    script = textwrap.dedent("""
        import json, numpy
        from processors.index.faiss_flat import FlatVectorIndex
        from processors.index.huge_pages import start_collapsing

        def huge_kib():
            return next(int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
                        if line.startswith("AnonHugePages:"))

        collapser = start_collapsing()  # None where the kernel does not collapse
        index = FlatVectorIndex(dim=256, metric="inner_product")
        block = numpy.ones((1024, 256), dtype=numpy.float32)  # 1 MiB: below numpy's own huge page requests
        before = huge_kib()
        for start in range(0, 48 * 1024, 1024):
            index.add(numpy.arange(start, start + 1024), block)
        assert collapser is None or collapser.wait_idle(timeout=120)
        thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().split("[")[1].split("]")[0]
        print(json.dumps({"thp": thp, "supported": collapser is not None, "gained_kib": huge_kib() - before,
                          "found": index.size, "collapsed": collapser.collapsed_bytes if collapser else 0,
                          "refused": collapser.refused if collapser else 0}))
    """)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}  # no GLIBC_TUNABLES: malloc asks for nothing
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                           check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    figures = json.loads(child.stdout.splitlines()[-1])
    assert figures["found"] == 48 * 1024
    if figures["supported"] and figures["collapsed"]:  # 48 MiB of vectors: their last block's whole huge pages
        assert figures["gained_kib"] >= 32 * 1024, figures
    elif figures["supported"]:  # the advice is there, the kernel refused each call (its log says so, once at INFO)
        assert figures["refused"] >= 1, figures
    elif figures["thp"] != "always":  # a kernel before 6.1, or a process denied huge pages: as malloc gave it
        assert figures["gained_kib"] < 8 * 1024, figures
