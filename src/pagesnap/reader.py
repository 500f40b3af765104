"""The batched reader: address ranges in, numpy arrays of pagemap entries out; PFN look-ups by sorted runs.

Costs that shaped it (see the project's performance notes): one `pread` is about a microsecond, a pagemap
entry 1-30 ns, a kpageflags or kpagecount entry about 100 ns in the kernel. So pagemap is read in 1 MiB
chunks into one reused buffer, and PFNs are sorted and coalesced into runs (reading across small gaps) so
that each run costs one `pread`, split over threads since the kernel work releases the GIL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import bits
from .scan import pagemap_scan

__all__ = ["EntryArrays", "ProcessExited", "lookup_pfns", "read_entries", "scan_mapped_ranges"]

U64 = npt.NDArray[np.uint64]

CHUNK_ENTRIES = 1 << 17  # 1 MiB of pagemap per pread: as fast as larger reads, and fast on sparse maps
PFN_GAP = 32  # read across holes of up to this many PFNs rather than issue another pread
THREAD_MIN_ENTRIES = 1 << 16  # below this, a second thread costs more than it saves
_MAPPED = np.uint64(bits.PM_SWAP)  # an entry >= this has PRESENT or SWAP set


class ProcessExited(Exception):
    """A read returned end-of-file inside the address space: the process has released its memory."""


@dataclass
class EntryArrays:
    """The present and swapped pages of an address space: virtual page numbers and raw entries."""

    vpn: U64
    entry: U64

    def __len__(self) -> int:
        return len(self.vpn)


class _Growable:
    """Two parallel uint64 arrays that grow by doubling; sized from statm so a frozen target never grows."""

    def __init__(self, capacity: int) -> None:
        self.vpn = np.empty(max(capacity, 1024), dtype=np.uint64)
        self.entry = np.empty_like(self.vpn)
        self.size = 0

    def reserve(self, extra: int) -> None:
        need = self.size + extra
        if need > len(self.vpn):
            capacity = max(need, 2 * len(self.vpn))
            self.vpn = np.resize(self.vpn, capacity)
            self.entry = np.resize(self.entry, capacity)

    def finish(self) -> EntryArrays:
        # Copy down only when much is unused, so the common frozen case keeps its single allocation.
        if self.size < len(self.vpn) * 3 // 4:
            return EntryArrays(self.vpn[: self.size].copy(), self.entry[: self.size].copy())
        return EntryArrays(self.vpn[: self.size], self.entry[: self.size])


def read_entries(fd: int, page_ranges: Sequence[tuple[int, int]], capacity: int) -> EntryArrays:
    """Read the pagemap entries of `[first_vpn, end_vpn)` ranges and keep the present or swapped ones.

    Raises `ProcessExited` when the kernel answers end-of-file (the target released its address space).
    """
    buf = np.empty(CHUNK_ENTRIES, dtype=np.uint64)
    view = memoryview(buf).cast("B")  # type: ignore[arg-type]
    out = _Growable(capacity)
    for first, end in page_ranges:
        position = first
        while position < end:
            count = min(CHUNK_ENTRIES, end - position)
            got = os.preadv(fd, [view[: count * 8]], position * 8) // 8
            if got == 0:
                raise ProcessExited(position)
            chunk = buf[:got]
            out.reserve(got)
            start = out.size
            if chunk[0] >= _MAPPED and chunk[-1] >= _MAPPED and bool(chunk.min() >= _MAPPED):
                out.vpn[start : start + got] = np.arange(position, position + got, dtype=np.uint64)
                out.entry[start : start + got] = chunk
                out.size += got
            else:
                index = np.flatnonzero(chunk >= _MAPPED)
                found = len(index)
                if found:
                    np.add(index, position, out=out.vpn[start : start + found], casting="unsafe")
                    np.take(chunk, index, out=out.entry[start : start + found])
                    out.size += found
            position += got
    return out.finish()


def scan_mapped_ranges(fd: int, start: int, end: int, page_size: int) -> U64:
    """PAGEMAP_SCAN rows `(first_vpn, end_vpn, categories)` of present or swapped pages in `[start, end)`.

    Categories kept: PRESENT, SWAPPED, PFNZERO, HUGE, so zero pages and PMD mappings come for free.
    """
    rows = pagemap_scan(
        fd,
        start,
        end,
        category_anyof_mask=bits.PAGE_IS_PRESENT | bits.PAGE_IS_SWAPPED,
        return_mask=bits.PAGE_IS_PRESENT | bits.PAGE_IS_SWAPPED | bits.PAGE_IS_PFNZERO | bits.PAGE_IS_HUGE,
    )
    shift = np.uint64(page_size.bit_length() - 1)
    rows[:, 0] >>= shift
    rows[:, 1] >>= shift
    return rows


def coalesce(first: U64, end: U64, gap: int = 0) -> tuple[U64, U64]:
    """Merge sorted `[first, end)` ranges that touch or lie within `gap` of each other."""
    if len(first) == 0:
        return first, end
    breaks = np.flatnonzero(first[1:] > end[:-1] + np.uint64(gap)) + 1
    starts = first[np.concatenate(([0], breaks))]
    ends = end[np.concatenate((breaks - 1, [len(end) - 1]))]
    return starts, ends


def mark_ranges(vpn: U64, first: U64, end: U64) -> npt.NDArray[np.bool_]:
    """A mask over sorted `vpn`: True where the page lies in one of the sorted, disjoint `[first, end)`."""
    lo = np.searchsorted(vpn, first, side="left")
    hi = np.searchsorted(vpn, end, side="left")
    size = len(vpn) + 1
    edges = np.bincount(lo, minlength=size) - np.bincount(hi, minlength=size)
    return np.cumsum(edges[:-1]) > 0


def lookup_pfns(paths: Sequence[str], pfns: U64, *, gap: int = PFN_GAP, threads: int = 2) -> list[U64]:
    """Look up each PFN in each of the PFN-indexed files `paths` (kpageflags, kpagecount, kpagecgroup).

    Returns one array per path, aligned with `pfns`. PFNs are sorted and coalesced into runs that read
    across gaps of up to `gap` entries; the runs are split over `threads` threads.
    """
    if len(pfns) == 0:
        return [np.empty(0, dtype=np.uint64) for _ in paths]
    ordered = np.sort(pfns)
    breaks = np.flatnonzero(np.diff(ordered) > np.uint64(gap)) + 1
    run_first = ordered[np.concatenate(([0], breaks))]
    run_last = ordered[np.concatenate((breaks - 1, [len(ordered) - 1]))]
    run_length = (run_last - run_first + np.uint64(1)).astype(np.int64)
    run_offset = np.concatenate(([0], np.cumsum(run_length)[:-1]))
    total = int(run_offset[-1] + run_length[-1])

    buffers = [np.zeros(total, dtype=np.uint64) for _ in paths]
    fds = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in paths]
    try:
        firsts = run_first.tolist()
        lengths = run_length.tolist()
        offsets = run_offset.tolist()
        workers = threads if threads > 1 and total >= THREAD_MIN_ENTRIES and len(firsts) > 1 else 1
        # Split the runs so each worker reads about the same number of entries.
        cuts = np.searchsorted(run_offset, [total * k // workers for k in range(1, workers)]).tolist()
        bounds = list(zip([0, *cuts], [*cuts, len(firsts)], strict=True))
        errors: list[BaseException] = []

        def work(lo: int, hi: int) -> None:
            try:
                views = [memoryview(buffer).cast("B") for buffer in buffers]  # type: ignore[arg-type]
                for run in range(lo, hi):
                    first, length, offset = firsts[run], lengths[run], offsets[run]
                    for fd, view in zip(fds, views, strict=True):
                        os.preadv(fd, [view[offset * 8 : (offset + length) * 8]], first * 8)
            except BaseException as exc:  # re-raised in the calling thread
                errors.append(exc)

        if workers == 1:
            work(0, len(firsts))
        else:
            pool = [threading.Thread(target=work, args=bound, daemon=True) for bound in bounds[1:]]
            for thread in pool:
                thread.start()
            work(*bounds[0])
            for thread in pool:
                thread.join()
        if errors:
            raise errors[0]
    finally:
        for fd in fds:
            os.close(fd)

    run_index = np.searchsorted(run_first, pfns, side="right") - 1
    position = run_offset[run_index] + (pfns - run_first[run_index]).astype(np.int64)
    return [buffer[position] for buffer in buffers]
