"""The batched reader: address ranges in, pagemap entries out (their pages kept as runs); PFN look-ups by runs.

Costs that shaped it (see the project's performance notes): one `pread` is about a microsecond, a pagemap
entry 1-30 ns, a kpageflags or kpagecount entry 50-100 ns in the kernel; a numpy call costs microseconds
whatever its size, and a pass over a page array a nanosecond or so a page. So entries are read straight
into the array that keeps them (small mappings batched, so each costs a pread and no numpy call), their
top bytes are kept beside them for the later passes, and virtual page numbers are kept as runs of
consecutive pages (a dense process has a few dozen) rather than 8 bytes a page. PFNs are looked up by
runs: the pieces that ascend by one in address order are sorted as units and coalesced, reading across
small gaps, so each coalesced run costs one `pread`; long reads are split over threads, since the kernel
work releases the GIL.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from . import bits
from .scan import pagemap_scan

__all__ = [
    "EntryArrays",
    "HugeRanges",
    "PageRuns",
    "ProcessExited",
    "intersect_ranges",
    "lookup_pfns",
    "read_entries",
    "read_scanned",
    "scan_mapped_ranges",
    "top_byte_view",
]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Ints = TypeVar("Ints", npt.NDArray[np.uint64], npt.NDArray[np.int64])
_Index = TypeVar("_Index", np.int64, np.int32)

CHUNK_ENTRIES = 1 << 17  # 1 MiB of pagemap per pread: as fast as larger reads, and fast on sparse maps
PFN_GAP = 16  # read across holes of up to this many PFNs rather than issue another pread (8-32 ran alike)
THREAD_MIN_ENTRIES = 1 << 16  # below this, a second thread costs more than it saves
THREAD_MIN_READ = 512  # nor when reads average fewer entries: the threads then mostly wait for the GIL
RANGE_GAP = 64  # read across gaps of up to this many pages between mappings: cheaper than another pread
_WINDOW_GRID = CHUNK_ENTRIES // 2  # scanned ranges read together start within one such block of pages
BATCH_RANGE_MAX = 1 << 12  # ranges of fewer pages share a batch; each pread then costs no numpy call
_PLAN_SLICE = 4096  # PFN reads turned into Python ints at a time
SLICE_LOOP_MAX = 64  # up to this many ranges, slicing in a loop beats building an index array
_MAPPED_TOP = np.uint8(bits.top_bits(bits.PM_SWAP))  # an entry whose top byte is >= this has PRESENT or SWAP set
_TOP_BYTE = 7 if sys.byteorder == "little" else 0  # where bits 56-63 of a uint64 sit among its bytes


class ProcessExited(Exception):
    """A read returned end-of-file inside the address space: the process has released its memory."""


def exclusive_cumsum(values: I64) -> I64:
    """0, values[0], values[0] + values[1], ...: where each of consecutive pieces of these sizes starts."""
    out = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


def concatenated_ranges(first: I64, length: I64, dtype: type[_Index]) -> npt.NDArray[_Index]:
    """`first[0], first[0] + 1, ..., first[0] + length[0] - 1, first[1], ...`: the ranges laid end to end."""
    total = int(length.sum())
    if len(first) * 1024 <= total:  # few long ranges: a slice each
        out = np.empty(total, dtype=dtype)
        position = 0
        for start, count in zip(first.tolist(), length.tolist(), strict=True):
            out[position : position + count] = np.arange(start, start + count, dtype=dtype)
            position += count
        return out
    # Many short ones: each range's offset from its position, repeated, plus the positions.
    out = np.repeat((first - exclusive_cumsum(length)[:-1]).astype(dtype), length)
    out += np.arange(total, dtype=dtype)
    return out


def coalesce(first: U64, end: U64, gap: int = 0) -> tuple[U64, U64]:
    """Merge sorted, disjoint `[first, end)` ranges that touch or lie within `gap` of each other."""
    if len(first) == 0:
        return first, end
    breaks = (first[1:] > end[:-1] + np.uint64(gap)).nonzero()[0] + 1
    starts = first[np.concatenate(([0], breaks))]
    ends = end[np.concatenate((breaks - 1, [len(end) - 1]))]
    return starts, ends


def intersect_ranges(a_first: Ints, a_end: Ints, b_first: Ints, b_end: Ints) -> tuple[Ints, Ints]:
    """The non-empty intersections of two lists of sorted, disjoint `[first, end)` ranges, in order."""
    # The ranges of `a` overlapping range j of `b` are a[lo[j]:hi[j]].
    lo = a_end.searchsorted(b_first, side="right").astype(np.int64)
    hi = a_first.searchsorted(b_end, side="left").astype(np.int64)
    count = np.maximum(hi - lo, 0)
    pairs = int(count.sum())
    if pairs == 0:
        return a_first[:0], a_end[:0]
    b_index = np.repeat(np.arange(len(b_first)), count)
    a_index = np.repeat(lo - exclusive_cumsum(count)[:-1], count) + np.arange(pairs)
    first = np.maximum(a_first[a_index], b_first[b_index])
    end = np.minimum(a_end[a_index], b_end[b_index])
    return first, end


def windows(first: U64, end: U64, gap: int, limit: int) -> tuple[U64, U64]:
    """At most `limit` windows covering sorted ranges: ranges within `gap` of each other joined, and then, if
    there are still too many, all but the `limit - 1` widest gaps between them bridged."""
    first, end = coalesce(first, end, gap)
    if len(first) > limit:
        widest = np.sort(np.argpartition(first[1:] - end[:-1], len(first) - limit)[len(first) - limit :])
        first = first[np.concatenate(([0], widest + 1))]
        end = end[np.concatenate((widest, [len(end) - 1]))]
    return first, end


# --- virtual pages as runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageRuns:
    """Ascending virtual page numbers kept as maximal runs of consecutive pages: 16 bytes a run, not 8 a page.

    Run `r` holds the pages at indexes `start[r]` to `start[r + 1] - 1`, numbered `first[r]`, `first[r] + 1`,
    and so on; `start` has one element more than `first`, the page count. Runs never touch: a block of
    consecutive pages is always inside one run.
    """

    first: U64
    start: I64

    @staticmethod
    def from_ranges(first: U64, end: U64) -> PageRuns:
        """The pages of sorted, disjoint, non-empty `[first, end)` ranges."""
        first, end = coalesce(first, end)
        return PageRuns(first, exclusive_cumsum((end - first).astype(np.int64)))

    @staticmethod
    def from_pages(vpn: U64) -> PageRuns:
        """The runs of an ascending array of page numbers."""
        if not len(vpn):
            return PageRuns(np.empty(0, dtype=np.uint64), np.zeros(1, dtype=np.int64))
        starts = np.concatenate(([0], ((vpn[1:] - vpn[:-1]) != np.uint64(1)).nonzero()[0] + 1))
        return PageRuns(vpn[starts], np.append(starts, len(vpn)).astype(np.int64))

    def __len__(self) -> int:
        return int(self.start[-1])

    @property
    def lengths(self) -> U64:
        return (self.start[1:] - self.start[:-1]).astype(np.uint64)

    def to_array(self) -> U64:
        """Every page number, in order: 8 bytes a page."""
        lengths = self.start[1:] - self.start[:-1]
        return concatenated_ranges(self.first.view(np.int64), lengths, np.int64).view(np.uint64)

    def indexes(self, first: U64, end: U64) -> I64:
        """The indexes of the pages in sorted, disjoint `[first, end)` ranges, each inside one run."""
        run = self.first.searchsorted(first, side="right") - 1
        offset = self.start[run] + (first - self.first[run]).astype(np.int64)
        return concatenated_ranges(offset, (end - first).astype(np.int64), np.int64)

    def same_pages(self, other: PageRuns) -> bool:
        return np.array_equal(self.first, other.first) and np.array_equal(self.start, other.start)

    def at(self, index: I64) -> U64:
        """The page numbers at the given indexes."""
        run = self.start.searchsorted(index, side="right") - 1
        return self.first[run] + (index - self.start[run]).astype(np.uint64)

    def index_of(self, vpn: U64) -> I64:
        """How many pages lie below each of the given page numbers (`searchsorted(to_array(), vpn)`)."""
        if not len(self.first):
            return np.zeros(len(vpn), dtype=np.int64)
        run = self.first.searchsorted(vpn, side="right") - 1
        below = run < 0  # before the first run
        run[below] = 0
        inside = np.minimum(vpn - self.first[run], self.lengths[run])  # a page past its run's end counts it all
        index: I64 = self.start[run] + inside.astype(np.int64)
        index[below] = 0
        return index

    def aligned_blocks(self, span: int) -> I64:
        """Indexes of the pages numbered a multiple of `span` whose whole block of `span` pages is here."""
        step = np.uint64(span)
        end = self.first + self.lengths
        head = (self.first + (step - np.uint64(1))) // step * step
        count = np.where(end >= head + step, (end - head) // step, np.uint64(0)).astype(np.int64)
        base = self.start[:-1] + (head - self.first).astype(np.int64)  # index of each run's first head
        block = concatenated_ranges(np.zeros(len(count), dtype=np.int64), count, np.int64)  # 0, 1, ... within each run
        index: I64 = base.repeat(count) + block * span
        return index


@dataclass
class EntryArrays:
    """The present and swapped pages of an address space: raw entries and, as runs, their virtual pages."""

    runs: PageRuns
    entry: U64
    top: U8  # bits 56-63 of each entry (PRESENT, SWAP, FILE, the marks, GUARD, UFFD_WP, EXCLUSIVE), kept in step

    @property
    def vpn(self) -> U64:
        return self.runs.to_array()

    def __len__(self) -> int:
        return len(self.entry)


def top_byte_view(words: U64) -> U8:
    """A view of bits 56-63 of each word: writing to it changes `words`."""
    return words.view(np.uint8)[_TOP_BYTE::8]


def mark_index_ranges(
    arrays: Sequence[npt.NDArray[np.unsignedinteger]], lo: I64, hi: I64, marks: Sequence[int]
) -> None:
    """`array[lo[i]:hi[i]] |= mark` for each range and each array with its mark (entries and their top bytes)."""
    if len(lo) > SLICE_LOOP_MAX:  # many: without the empty ones, and those that touch joined, they may be a few
        keep = hi > lo
        lo, hi = lo[keep], hi[keep]
        if not len(lo):
            return
        joined = (lo[1:] != hi[:-1]).nonzero()[0] + 1
        lo, hi = lo[np.concatenate(([0], joined))], hi[np.append(joined - 1, len(hi) - 1)]
    if len(lo) <= SLICE_LOOP_MAX:  # a slice each (an empty one changes nothing)
        for start, stop in zip(lo.tolist(), hi.tolist(), strict=True):
            for array, mark in zip(arrays, marks, strict=True):
                array[start:stop] |= array.dtype.type(mark)
        return
    index = concatenated_ranges(lo, hi - lo, np.int64)
    for array, mark in zip(arrays, marks, strict=True):
        array[index] |= array.dtype.type(mark)


def mark_ranges(vpn: U64, first: U64, end: U64) -> Mask:
    """A mask over sorted `vpn`: True where the page lies in one of the sorted, disjoint `[first, end)`."""
    mask = np.zeros(len(vpn), dtype=bool)
    lo = vpn.searchsorted(first, side="left").astype(np.int64)
    hi = vpn.searchsorted(end, side="left").astype(np.int64)
    keep = hi > lo
    lo, hi = lo[keep], hi[keep]
    if len(lo) <= SLICE_LOOP_MAX:
        for start, stop in zip(lo.tolist(), hi.tolist(), strict=True):
            mask[start:stop] = True
    else:
        mask[concatenated_ranges(lo, hi - lo, np.int64)] = True
    return mask


# --- reading pagemap -------------------------------------------------------------------------------------


class _EntryWriter:
    """Collects the mapped entries of pagemap ranges, and their top bytes, into arrays sized from the resident
    and swapped memory the process reports.

    Ranges are read back to back into a batch of up to CHUNK_ENTRIES entries: straight into the arrays'
    free tail when the batch fits there (a frozen process's present pages always do), else into a scratch
    buffer. Each batch is then filtered in one pass, so a small mapping costs a pread and no numpy call.
    """

    def __init__(self, capacity: int, total: int) -> None:
        self.entry = np.empty(max(capacity, 1024), dtype=np.uint64)
        self.top = np.empty(len(self.entry), dtype=np.uint8)
        self.size = 0  # entries kept so far
        self.unread = total  # entries still to read, so the last batch is no bigger than needed
        self.scratch: U64 | None = None
        self.batch: U64 | None = None  # where the batch being filled lands
        self.in_place = False  # ... which is self.entry[self.size:]
        self.filled = 0
        self.piece_page: list[int] = []  # first page of each pread in the batch
        self.piece_offset: list[int] = []  # and where it landed in the batch
        self.run_first: list[U64] = []
        self.run_length: list[I64] = []

    def read(self, fd: int, first: int, end: int) -> None:
        """Read the entries of pages `[first, end)`."""
        # A large range gets batches of its own: mostly dense, they then pass the one-comparison fast path.
        alone = end - first >= BATCH_RANGE_MAX
        if alone and self.filled:
            self._close_batch()
        position = first
        while position < end:
            batch = self.batch if self.batch is not None else self._open_batch(end - position if alone else self.unread)
            count = min(len(batch) - self.filled, end - position)
            landing = batch[self.filled : self.filled + count]
            got = os.preadv(fd, [memoryview(landing).cast("B")], position * 8) // 8  # type: ignore[arg-type]
            if got == 0:
                raise ProcessExited(position)
            self.piece_page.append(position)
            self.piece_offset.append(self.filled)
            self.filled += got
            self.unread -= got
            position += got
            if alone or self.filled == len(batch):
                self._close_batch()

    def _open_batch(self, wanted: int) -> U64:
        size = min(CHUNK_ENTRIES, max(wanted, 1))
        self.in_place = self.size + size <= len(self.entry)
        if self.in_place:
            self.batch = self.entry[self.size : self.size + size]
        else:
            if self.scratch is None or len(self.scratch) < size:
                self.scratch = np.empty(size, dtype=np.uint64)
            self.batch = self.scratch[:size]
        return self.batch

    def _close_batch(self) -> None:
        assert self.batch is not None
        chunk = self.batch[: self.filled]
        page = np.array(self.piece_page, dtype=np.uint64)
        offset = np.array([*self.piece_offset, self.filled], dtype=np.int64)
        # The top bytes are kept anyway; they also tell mapped entries (PRESENT or SWAP: >= 0x40) apart.
        if self.in_place:
            top = self.top[self.size : self.size + self.filled]
            top[:] = top_byte_view(chunk)
        else:
            top = np.ascontiguousarray(top_byte_view(chunk))
        if top.min() >= _MAPPED_TOP:
            self._keep(chunk, top, self.in_place)
            self._add_runs(page, offset[1:] - offset[:-1])
        else:
            index = (top >= _MAPPED_TOP).nonzero()[0]
            if len(index):
                self._keep(chunk[index], top[index], False)
                piece = offset.searchsorted(index, side="right") - 1
                runs = PageRuns.from_pages(page[piece] + (index - offset[piece]).astype(np.uint64))
                self._add_runs(runs.first, runs.start[1:] - runs.start[:-1])
        self.batch = None
        self.filled = 0
        self.piece_page.clear()
        self.piece_offset.clear()

    def read_huge(self, fd: int, first: int, end: int, mark: int, span: int, frames_visible: bool) -> None:
        """Fill in the entries of pages `[first, end)`: whole PMD-mapped huge pages of `span` pages whose
        subpages repeat the head's entry with the frame counting up (Linux 6.15+), so only the heads are read;
        `mark` is set on each. A head that is not present (the mapping changed since it was found) has its
        huge page read whole."""
        # A pread of 8 bytes returning a new bytes object costs less than any read into place, and this is a
        # pread per huge page; an entry cut short means end-of-file.
        pread = os.pread
        answers = b"".join([pread(fd, 8, offset) for offset in range(first * 8, end * 8, span * 8)])
        if len(answers) != (end - first) // span * 8:
            raise ProcessExited(first)
        heads = np.frombuffer(answers, dtype=np.uint64).copy()
        if bool((heads < np.uint64(bits.PM_PRESENT)).any()):
            self.unread += end - first
            self.read(fd, first, end)
            return
        if self.filled:
            self._close_batch()
        heads |= np.uint64(mark)
        self._reserve(end - first)
        entries = self.entry[self.size : self.size + end - first].reshape(len(heads), span)
        if frames_visible:
            np.add(heads[:, None], np.arange(span, dtype=np.uint64), out=entries)
        else:
            entries[:] = heads[:, None]
        top = self.top[self.size : self.size + end - first].reshape(len(heads), span)
        top[:] = top_byte_view(heads)[:, None]
        self.size += end - first
        self._add_runs(np.array([first], dtype=np.uint64), np.array([end - first], dtype=np.int64))

    def _keep(self, entries: U64, top: U8, in_place: bool) -> None:
        count = len(entries)
        if not in_place:
            self._reserve(count)
            self.entry[self.size : self.size + count] = entries
            self.top[self.size : self.size + count] = top
        self.size += count

    def _reserve(self, extra: int) -> None:
        need = self.size + extra
        if need > len(self.entry):
            capacity = max(need, 2 * len(self.entry))
            for name in ("entry", "top"):
                old = getattr(self, name)
                grown = np.empty(capacity, dtype=old.dtype)
                grown[: self.size] = old[: self.size]
                setattr(self, name, grown)

    def _add_runs(self, first: U64, length: I64) -> None:
        self.run_first.append(first)
        self.run_length.append(length)

    def finish(self) -> EntryArrays:
        if self.filled:
            self._close_batch()
        if self.run_first:
            first = np.concatenate(self.run_first)
            runs = PageRuns.from_ranges(first, first + np.concatenate(self.run_length).astype(np.uint64))
        else:
            runs = PageRuns.from_pages(np.empty(0, dtype=np.uint64))
        entry, top = self.entry[: self.size], self.top[: self.size]
        # Copy down only when much is unused, so the common frozen case keeps its single allocation.
        if self.size < len(self.entry) * 3 // 4:
            entry, top = entry.copy(), top.copy()
        return EntryArrays(runs, entry, top)


@dataclass(frozen=True)
class HugeRanges:
    """Page ranges `[first, end)` of whole PMD-mapped huge pages of `span` pages each, whose subpages repeat
    their head page's entry with the frame counting up (Linux 6.15+); `mark` is set on each range's entries."""

    first: list[int]
    end: list[int]
    mark: list[int]
    span: int
    frames_visible: bool


def read_entries(
    fd: int, page_ranges: Sequence[tuple[int, int]], capacity: int, huge: HugeRanges | None = None
) -> EntryArrays:
    """Read the pagemap entries of `[first_vpn, end_vpn)` ranges and keep the present or swapped ones.

    The `huge` ranges, which must lie inside the page ranges, cost a read per huge page: only their heads
    are read. Raises `ProcessExited` when the kernel answers end-of-file (the target released its address
    space).
    """
    huge_pieces = [] if huge is None else list(zip(huge.first, huge.end, range(len(huge.first)), strict=True))
    if huge_pieces:
        page_ranges = _subtract(page_ranges, [(first, end) for first, end, _ in huge_pieces])
    joined = _join_nearby(page_ranges, RANGE_GAP)
    out = _EntryWriter(capacity, sum(end - first for first, end in joined))
    for first, end, index in sorted([(first, end, -1) for first, end in joined] + huge_pieces):
        if huge is None or index < 0:
            out.read(fd, first, end)
        else:
            out.read_huge(fd, first, end, huge.mark[index], huge.span, huge.frames_visible)
    return out.finish()


def _subtract(page_ranges: Sequence[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The sorted, disjoint ranges with the sorted, disjoint holes (each inside one range) cut out."""
    result: list[tuple[int, int]] = []
    hole = 0
    for first, end in page_ranges:
        while hole < len(holes) and holes[hole][0] < end:
            if holes[hole][0] > first:
                result.append((first, holes[hole][0]))
            first = max(first, holes[hole][1])
            hole += 1
        if first < end:
            result.append((first, end))
    return result


def _join_nearby(page_ranges: Sequence[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Sorted ranges with those at most `gap` pages apart joined: neighbouring mappings (a library's segments)
    then cost one pread, and the entries between them read as unmapped, which the reader drops anyway."""
    joined: list[tuple[int, int]] = []
    for first, end in page_ranges:
        if joined and first - joined[-1][1] <= gap:
            joined[-1] = (joined[-1][0], max(end, joined[-1][1]))
        else:
            joined.append((first, end))
    return joined


def read_scanned(fd: int, first: U64, end: U64) -> EntryArrays:
    """Read the entries of the sorted, disjoint page ranges `[first, end)` that PAGEMAP_SCAN found mapped.

    A range alone is read straight into place. Ranges at most `RANGE_GAP` pages apart form a window that one
    pread fills into a buffer (scattered pages would otherwise cost a pread each), and are gathered from it
    into place a buffer at a time. A page that stopped being mapped since the scan (page cache reclaimed
    meanwhile) is dropped, as a read of the whole mapping would.
    """
    runs = PageRuns.from_ranges(first, end)
    entry = np.empty(len(runs), dtype=np.uint64)
    if not len(entry):
        return EntryArrays(runs, entry, np.empty(0, dtype=np.uint8))
    run_end = runs.first + runs.lengths
    # A window takes no range that starts past a line of a half-buffer grid, so it fits the buffer unless a
    # range in it is long; such windows, and single ranges, are read straight into place.
    grid = np.uint64(_WINDOW_GRID)
    breaks = (runs.first[1:] - run_end[:-1] > np.uint64(RANGE_GAP)) | (runs.first[1:] // grid != run_end[:-1] // grid)
    window_runs = np.concatenate(([0], breaks.nonzero()[0] + 1, [len(runs.first)])).astype(np.int64)
    window_first, window_end = runs.first[window_runs[:-1]], run_end[window_runs[1:] - 1]
    joined = ((window_runs[1:] - window_runs[:-1]) > 1) & (window_end - window_first <= np.uint64(CHUNK_ENTRIES))
    buffered = int((window_end - window_first)[joined].sum())
    _ScannedReader(fd, runs, entry, min(buffered, CHUNK_ENTRIES)).read(window_first, window_end, window_runs, joined)
    top = np.ascontiguousarray(top_byte_view(entry))
    if bool(top.min() < _MAPPED_TOP):  # the top bytes: an eighth of the memory to look through
        keep = top >= _MAPPED_TOP
        runs, entry, top = PageRuns.from_pages(runs.to_array()[keep]), entry[keep], top[keep]
    return EntryArrays(runs, entry, top)


class _ScannedReader:
    """Reads scanned ranges into their places in `entry`: alone, or several in one window through a buffer."""

    def __init__(self, fd: int, runs: PageRuns, entry: U64, buffer_size: int) -> None:
        self.fd = fd
        self.runs = runs
        self.entry = entry
        self.view = memoryview(entry).cast("B")  # type: ignore[arg-type]
        self.buffer = np.empty(buffer_size, dtype=np.uint64)
        self.buffer_view = memoryview(self.buffer).cast("B")  # type: ignore[arg-type]
        self.filled = 0
        self.pending: list[tuple[int, int, int]] = []  # (window's first page - its buffer offset, runs lo, hi)

    def read(self, window_first: U64, window_end: U64, window_runs: I64, joined: Mask) -> None:
        lo, hi = window_runs[:-1], window_runs[1:]
        together = zip(
            window_first[joined].tolist(),
            window_end[joined].tolist(),
            lo[joined].tolist(),
            hi[joined].tolist(),
            strict=True,
        )
        for page, end, first_run, end_run in together:
            if self.filled + end - page > len(self.buffer):
                self._gather()
            _pread_into(self.fd, self.buffer_view, self.filled, self.filled + end - page, page)
            self.pending.append((page - self.filled, first_run, end_run))
            self.filled += end - page
        self._gather()
        alone = ~joined
        self._read_alone(concatenated_ranges(lo[alone], hi[alone] - lo[alone], np.int64))

    def _read_alone(self, runs: I64) -> None:
        """Read each of `runs` straight into place, a pread each, in one comprehension: a sparse address space
        has thousands. A read cut short (the process's memory went away) is finished, or fails, alone."""
        preadv, fd, view, start = os.preadv, self.fd, self.view, self.runs.start
        begin, stop, offset = (
            (start[runs] * 8).tolist(),
            (start[runs + 1] * 8).tolist(),
            (self.runs.first[runs] * 8).tolist(),
        )
        spans = list(zip(begin, stop, offset, strict=True))
        done = [preadv(fd, [view[lo:hi]], at) for lo, hi, at in spans]
        if sum(done) == sum(stop) - sum(begin):
            return  # no read was cut short
        for (lo, hi, at), count in zip(spans, done, strict=True):
            if count != hi - lo:
                _pread_into(fd, view, (lo + count) // 8, hi // 8, (at + count) // 8)

    def _gather(self) -> None:
        """Copy the ranges of the buffered windows from the buffer to their places."""
        if not self.pending:
            return
        if sum(hi - lo for _, lo, hi in self.pending) <= SLICE_LOOP_MAX:  # a few: a slice copy each
            for origin, lo, hi in self.pending:
                starts = self.runs.start[lo : hi + 1].tolist()
                for first, begin, stop in zip(self.runs.first[lo:hi].tolist(), starts[:-1], starts[1:], strict=True):
                    at = (first - origin) * 8
                    self.view[begin * 8 : stop * 8] = self.buffer_view[at : at + (stop - begin) * 8]
        else:
            origins, lo, hi = np.array(self.pending, dtype=np.int64).T
            runs = concatenated_ranges(lo, hi - lo, np.int64)
            lengths = self.runs.start[runs + 1] - self.runs.start[runs]
            source = concatenated_ranges(
                self.runs.first[runs].astype(np.int64) - origins.repeat(hi - lo), lengths, np.int64
            )
            target = concatenated_ranges(self.runs.start[runs], lengths, np.int64)
            self.entry[target] = self.buffer[source]
        self.pending.clear()
        self.filled = 0


def _pread_into(fd: int, view: memoryview, begin: int, stop: int, page: int) -> None:
    """Read the entries of pages `page, page + 1, ...` into entries `begin` to `stop - 1` of `view`."""
    done = begin
    while done < stop:
        got = os.preadv(fd, [view[done * 8 : stop * 8]], (page + done - begin) * 8) // 8
        if got == 0:
            raise ProcessExited(page + done - begin)
        done += got


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


# --- PFN look-ups ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReadPlan:
    """Where to read PFN-indexed files, and where each looked-up PFN lands in the buffer read."""

    run_first: I64  # first PFN of each read
    run_offset: I64  # buffer position of each read, then the buffer size (so also each read's length)
    position: npt.NDArray[np.int32] | I64  # buffer position of each PFN asked for, in the order asked


def _plan_reads(pfns: U64, gap: int) -> _ReadPlan:
    """Cut the PFNs into pieces ascending by one (most memory is handed out in such runs), sort the pieces
    by frame, and join pieces whose frames overlap or lie at most `gap` missing frames apart into reads."""
    signed = pfns.view(np.int64)
    piece_start = np.concatenate(([0], ((signed[1:] - signed[:-1]) != 1).nonzero()[0] + 1))
    piece_length = np.diff(np.append(piece_start, len(pfns)))
    order = np.argsort(signed[piece_start])
    low = signed[piece_start[order]]
    del piece_start  # the arrays here are a word per piece, and a fragmented process has almost a piece a page
    reach = np.maximum.accumulate(low + piece_length[order])  # end (exclusive) of the frames so far
    breaks = (low[1:] > reach[:-1] + gap).nonzero()[0] + 1
    run_first = low[np.concatenate(([0], breaks))]
    run_end = reach[np.append(breaks - 1, len(low) - 1)]
    del reach
    run_offset = exclusive_cumsum(run_end - run_first)
    run_of_piece = np.zeros(len(low), dtype=np.int64)
    run_of_piece[breaks] = 1
    np.cumsum(run_of_piece, out=run_of_piece)
    low += run_offset[run_of_piece] - run_first[run_of_piece]  # now each piece's place in the buffer
    del run_of_piece
    piece_position = np.empty(len(low), dtype=np.int64)
    piece_position[order] = low
    del low, order
    # int32 positions when the buffer allows: half the memory, and np.take gathers with them fastest.
    small = run_offset[-1] < np.iinfo(np.int32).max
    position = concatenated_ranges(piece_position, piece_length, np.int32 if small else np.int64)
    return _ReadPlan(run_first, run_offset, position)


def _read_runs(paths: Sequence[str], plan: _ReadPlan, threads: int) -> list[U64]:
    """Each PFN-indexed file's entries for every read of the plan, the reads split over `threads` threads."""
    total = int(plan.run_offset[-1])
    buffers = [np.empty(total, dtype=np.uint64) for _ in paths]
    fds = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in paths]
    try:
        reads = len(plan.run_first)
        workers = threads if _threads_pay(total, reads) else 1
        # Split the reads so each worker reads about the same number of entries.
        cuts = plan.run_offset[:-1].searchsorted([total * k // workers for k in range(1, workers)]).tolist()
        bounds = list(zip([0, *cuts], [*cuts, reads], strict=True))
        errors: list[BaseException] = []

        def work(lo: int, hi: int) -> None:
            try:
                views = [memoryview(buffer).cast("B") for buffer in buffers]  # type: ignore[arg-type]
                # Python ints a slice at a time: a list of every read would cost ~100 bytes a read.
                for part in range(lo, hi, _PLAN_SLICE):
                    stop = min(part + _PLAN_SLICE, hi)
                    firsts = plan.run_first[part:stop].tolist()
                    offsets = plan.run_offset[part : stop + 1].tolist()
                    for first, offset, next_offset in zip(firsts, offsets, offsets[1:], strict=False):
                        for fd, view in zip(fds, views, strict=True):
                            landing = view[offset * 8 : next_offset * 8]
                            got = os.preadv(fd, [landing], first * 8)
                            if got < len(landing):  # past the last PFN the kernel dumps: no page there
                                landing[got:] = bytes(len(landing) - got)
            except BaseException as exc:  # re-raised in the calling thread
                errors.append(exc)

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
    return buffers


def _threads_pay(entries: int, reads: int) -> bool:
    """Whether splitting the reads over threads can pay: enough work, and reads long enough that handing the
    GIL over between them (at every read) costs little next to the kernel's work."""
    return entries >= THREAD_MIN_ENTRIES and reads >= 2 and entries >= reads * THREAD_MIN_READ


def lookup_pfns(paths: Sequence[str], pfns: U64, *, gap: int = PFN_GAP, threads: int = 2) -> list[U64]:
    """Look up each PFN in each of the PFN-indexed files `paths` (kpageflags, kpagecount, kpagecgroup).

    Returns one array per path, aligned with `pfns`. The PFNs are coalesced into runs that read across
    holes of up to `gap` missing PFNs (`gap=0`: only consecutive PFNs share a read); the runs are split
    over `threads` threads.
    """
    if len(pfns) == 0:
        return [np.empty(0, dtype=np.uint64) for _ in paths]
    plan = _plan_reads(pfns, gap)
    buffers = _read_runs(paths, plan, threads)
    if len(buffers[0]) == len(pfns) and len(plan.run_first) == 1 and bool(np.all(np.diff(plan.position) == 1)):
        return buffers  # the PFNs were consecutive and in order: the buffers are the answer
    return [np.take(buffer, plan.position) for buffer in buffers]
