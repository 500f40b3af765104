"""Page accounting for a snapshot: which pages are which, and what each region holds.

`read_pages` reads a process's entries (through the front end that suits it) and resolves what the entries
alone leave open: which pages map the zero page, and which belong to PMD-mapped huge pages. `read_pfn_files`
adds kpageflags, kpagecount and kpagecgroup for the present pages. `region_metrics` then counts each
region's pages by class, as smaps accounts them.

Pages are classified by the top byte of their entry (bits 56-63: the kernel's flags, with pagewalk's marks
in 59-60), through tables of the 256 possible bytes: a region's pages are counted per byte, and the counts
turned into metrics by one matrix product.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

from . import bits, procfs, reader
from .capabilities import Capabilities
from .scan import pagemap_scan

__all__ = [
    "ANON_KINDS",
    "Method",
    "PageData",
    "count_flags",
    "read_pages",
    "read_pfn_files",
    "region_metrics",
    "user_ranges",
]

Method = Literal["auto", "read", "scan"]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
_Word = TypeVar("_Word", np.uint64, np.uint32)

# The flags and marks as top-byte masks.
_TOP_PRESENT = bits.top_bits(bits.PM_PRESENT)
_TOP_SWAP = bits.top_bits(bits.PM_SWAP)
_TOP_FILE = bits.top_bits(bits.PM_FILE)
_TOP_PMD = bits.top_bits(bits.MARK_PMD)
_TOP_ZERO = bits.top_bits(bits.MARK_ZERO)
_TOP_GUARD = bits.top_bits(bits.PM_GUARD)
_TOP_UFFD_WP = bits.top_bits(bits.PM_UFFD_WP)
_TOP_EXCLUSIVE = bits.top_bits(bits.PM_EXCLUSIVE)

# Per-page classes of each of the 256 top bytes.
_CODE = np.arange(256, dtype=np.int64)
_PRESENT = (_CODE & _TOP_PRESENT) != 0
# Not present, and not a guard or userfaultfd write-protect marker: markers are no memory.
_SWAP = ((_CODE & (_TOP_PRESENT | _TOP_SWAP)) == _TOP_SWAP) & ((_CODE & (_TOP_GUARD | _TOP_UFFD_WP)) == 0)
_ZERO = (_CODE & _TOP_ZERO) != 0
_PMD = (_CODE & _TOP_PMD) != 0
_FILE = (_CODE & _TOP_FILE) != 0
_EXCLUSIVE = (_CODE & _TOP_EXCLUSIVE) != 0
_REAL = _PRESENT & ~_ZERO
# The page classes each metric counts, as columns over the 256 top bytes.
_CLASSES = {
    "present": _REAL,
    "uss": _REAL & _EXCLUSIVE,
    "uss_file": _REAL & _EXCLUSIVE & _FILE,
    "anon": _REAL & ~_FILE,
    "file": _REAL & _FILE,
    "thp": _REAL & _PMD,
    "zero": _PRESENT & _ZERO,
    "swap": _SWAP,
    "none": np.zeros(256, dtype=bool),  # what a metric counts in a kind of region where it is always 0
}
# The Totals metrics read from the page counts (PSS comes from kpagecount), and the class each counts in a
# region of each kind: hugetlb pages count only as hugetlb (and in USS and swap), a shmem region's pages as
# shmem rather than file. A metric missing from a kind is 0 there.
_COUNTED = ("rss", "uss", "uss_file", "swap", "anon", "file", "shmem", "thp", "zero", "hugetlb")
_SOURCES = {
    "other": {
        "rss": "present", "uss": "uss", "uss_file": "uss_file", "swap": "swap", "anon": "anon", "file": "file",
        "thp": "thp", "zero": "zero",
    },
    "shmem": {
        "rss": "present", "uss": "uss", "uss_file": "uss_file", "swap": "swap", "anon": "anon", "shmem": "file",
        "thp": "thp", "zero": "zero",
    },
    "hugetlb": {"uss": "uss", "uss_file": "uss_file", "swap": "swap", "zero": "zero", "hugetlb": "present"},
}  # fmt: skip
# One (256, metrics) matrix per kind: a region's histogram times its kind's matrix gives its page counts. Counts
# are exact in float64 (below 2**53), where numpy multiplies matrices ten times faster than in int64.
_METRIC_MATRICES = {
    kind: np.stack([_CLASSES[sources.get(name, "none")] for name in _COUNTED], axis=1).astype(np.float64)
    for kind, sources in _SOURCES.items()
}

ANON_KINDS = frozenset({"anon", "heap", "stack"})  # region kinds of anonymous memory
# Top bytes that may be a zero page: present, not FILE, not exclusive (the zero page); in anonymous regions
# also present and FILE (the huge zero page is not an anonymous folio, so it reads as FILE).
# Pages already marked as a zero page are no candidates.
_ZERO_SMALL = (_CODE & (_TOP_PRESENT | _TOP_FILE | _TOP_EXCLUSIVE | _TOP_ZERO)) == _TOP_PRESENT
_ZERO_IN_ANON = _ZERO_SMALL | ((_CODE & (_TOP_PRESENT | _TOP_FILE | _TOP_ZERO)) == (_TOP_PRESENT | _TOP_FILE))
_MOVED_MAX = 1 << 12  # pages marked after counting whose counts are corrected one by one; above, all are recounted
_HUGE_PROBE_MIN = 1  # whole huge pages a mapping must hold to be probed
_SCAN_GAP = 512  # candidates this many pages apart share a PAGEMAP_SCAN window...
_SCAN_WINDOWS = 64  # ...and at most this many windows are scanned, the widest gaps between them skipped


@dataclass(frozen=True)
class _CodeRuns:
    """Runs of pages with equal top bytes, none crossing a region boundary, in page order."""

    first: I64  # index of each run's first page
    length: I64
    code: npt.NDArray[np.intp]  # the top byte
    region: npt.NDArray[np.intp]


@dataclass(frozen=True)
class _Histogram:
    """Pages per region and top byte, for the top bytes some page has: a process has a handful of them, and
    a column for each of the 256 would cost 2 KiB a region."""

    codes: npt.NDArray[np.intp]  # the top bytes counted, ascending
    counts: npt.NDArray[np.float64]  # (regions, codes), exact float64 counts


@dataclass
class PageData:
    """A snapshot's pages as read, with what was resolved about them and looked up for them."""

    arrays: reader.EntryArrays
    bounds: I64  # index of each region's first page, then the page count
    method: str
    code_runs: _CodeRuns  # of the top bytes as read, before the read path resolves zero and PMD pages
    # Pages marked since, with their top bytes before: the counts are corrected for them. None once too many
    # were marked: the runs are then found again.
    moved: list[tuple[I64, U8]] | None = field(default_factory=list)
    zero_known: bool = True
    pmd_known: bool = True
    page_flags: U64 | None = None
    withheld_flags: tuple[str, ...] = ()  # flags this kernel misreports: cleared, and not counted
    mapcounts: npt.NDArray[np.uint32] | None = None
    written: npt.NDArray[np.bool_] | None = None
    referenced: dict[int, int] | None = None
    cgroup_pages: dict[int, int] | None = None
    notes: list[str] = field(default_factory=list)


def user_ranges(maps: Sequence[procfs.MapsEntry], page_size: int) -> list[tuple[int, int]]:
    # [vsyscall] lies above the task size, where pagemap reads return end-of-file.
    return [(m.start // page_size, m.end // page_size) for m in maps if m.path != "[vsyscall]"]


def user_span(maps: Sequence[procfs.MapsEntry]) -> tuple[int, int] | None:
    """The addresses from the first user mapping's start to the last one's end (None without any): the maps
    are in address order, and [vsyscall], above the task size, is listed last."""
    user = maps[:-1] if maps and maps[-1].path == "[vsyscall]" else maps
    return (user[0].start, user[-1].end) if user else None


def _choose_method(memory: procfs.MemoryStatus, caps: Capabilities, method: Method) -> str:
    if method != "auto":
        return method
    if not caps.pagemap_scan:
        return "read"
    # Dense address spaces read fastest mapping by mapping; sparse ones (big reservations) by scanning.
    return "read" if memory.resident * 4 >= memory.size else "scan"


def read_pages(
    fd: int,
    maps: Sequence[procfs.MapsEntry],
    kinds: list[str],
    caps: Capabilities,
    method: Method,
    memory: procfs.MemoryStatus,
) -> PageData:
    """The entries of the pages in `maps`, read through pagemap `fd`, with zero and PMD-mapped pages resolved;
    `memory` (read while the process is stopped, as the rest) sizes the arrays and picks the front end."""
    page = caps.page_size
    span = user_span(maps)
    if _choose_method(memory, caps, method) == "scan" and span:
        rows = reader.scan_mapped_ranges(fd, *span, page)
        arrays = reader.read_scanned(fd, rows[:, 0], rows[:, 1])
        _mark_scanned(arrays, rows)  # before the pages are counted, so they are counted once
        return _page_data(arrays, maps, page, "scan")
    ranges = user_ranges(maps, page)
    huge = _huge_ranges(fd, ranges, caps)
    capacity = (memory.resident + memory.swap) // page + 1024
    data = _page_data(reader.read_entries(fd, ranges, capacity, huge), maps, page, "read")
    _resolve_zero_pages(fd, data, kinds, caps)
    _resolve_pmd_pages(fd, data, kinds, caps)
    return data


def _huge_ranges(fd: int, ranges: list[tuple[int, int]], caps: Capabilities) -> reader.HugeRanges | None:
    """The PMD-mapped huge pages of the mappings whose first whole huge page is one, where the kernel gives
    every subpage its head's entry (6.15+): reading one entry per huge page then says all a full read would.

    pagemap costs a few nanoseconds per subpage entry where the kernel's own walk reads one PMD; a probe of
    one huge page per large mapping keeps the cost off mappings of small pages.
    """
    if not (caps.pagemap_scan and caps.pmd_entries_from_head):
        return None
    page, span = caps.page_size, bits.pmd_pages(caps.page_size)
    present_huge = bits.PAGE_IS_PRESENT | bits.PAGE_IS_HUGE
    first: list[int] = []
    end: list[int] = []
    mark: list[int] = []
    for lo, hi in ranges:
        head, tail = -(-lo // span) * span, hi // span * span
        if tail - head < _HUGE_PROBE_MIN * span:
            continue
        if not len(pagemap_scan(fd, head * page, (head + span) * page, category_mask=present_huge)):
            continue
        rows = pagemap_scan(fd, head * page, tail * page, category_mask=present_huge, return_mask=bits.PAGE_IS_PFNZERO)
        for start, stop, category in rows.tolist():
            block_first, block_end = -(-start // page // span) * span, stop // page // span * span
            if block_first < block_end:
                first.append(block_first)
                end.append(block_end)
                mark.append(bits.MARK_PMD | (bits.MARK_ZERO if category & bits.PAGE_IS_PFNZERO else 0))
    return reader.HugeRanges(first, end, mark, span, caps.pfn_visible) if first else None


def _page_data(arrays: reader.EntryArrays, maps: Sequence[procfs.MapsEntry], page: int, method: str) -> PageData:
    starts = np.array([m.start // page for m in maps], dtype=np.uint64)
    bounds = np.append(arrays.runs.index_of(starts), len(arrays))
    return PageData(arrays, bounds, method, _code_runs(arrays.top, bounds))


def _mark(data: PageData, lo: I64, hi: I64, mark: int) -> None:
    """Set `mark` on the pages at indexes `[lo, hi)`, in the entries and their top bytes alike."""
    keep = hi > lo
    lo, length = lo[keep], (hi - lo)[keep]
    if int(length.sum()) <= _MOVED_MAX:
        _mark_pages(data, reader.concatenated_ranges(lo, length, np.int64), mark)
        return
    _mark_arrays(data.arrays, lo, lo + length, mark)
    data.moved = None


def _mark_pages(data: PageData, index: I64, mark: int) -> None:
    _note_moved(data, index)
    data.arrays.entry[index] |= np.uint64(mark)
    data.arrays.top[index] |= np.uint8(bits.top_bits(mark))


def _note_moved(data: PageData, index: I64) -> None:
    """Note that the top bytes of the pages at `index` are about to change."""
    if data.moved is None:
        return
    if sum(len(pages) for pages, _ in data.moved) + len(index) > _MOVED_MAX:
        data.moved = None
    else:
        data.moved.append((index, data.arrays.top[index]))


def _mark_arrays(arrays: reader.EntryArrays, lo: I64, hi: I64, mark: int) -> None:
    reader.mark_index_ranges((arrays.entry, arrays.top), lo, hi, (mark, bits.top_bits(mark)))


_SCAN_MARKS = ((bits.PAGE_IS_PFNZERO, bits.MARK_ZERO), (bits.PAGE_IS_HUGE, bits.MARK_PMD))


def _mark_scanned(arrays: reader.EntryArrays, rows: U64) -> None:
    """Mark the zero pages and PMD-mapped pages among the PAGEMAP_SCAN rows (in pages) as such."""
    chosen = ((rows[:, 2] & np.uint64(bits.PAGE_IS_PFNZERO | bits.PAGE_IS_HUGE)) != 0).nonzero()[0]
    if not len(chosen):
        return
    bounds = arrays.runs.index_of(rows[chosen, :2].ravel()).reshape(-1, 2)
    categories = rows[chosen, 2]
    for category, mark in _SCAN_MARKS:
        has = (categories & np.uint64(category)) != 0
        if bool(has.any()):
            _mark_arrays(arrays, bounds[has, 0], bounds[has, 1], mark)


def _scan_marks(fd: int, data: PageData, first: U64, end: U64, category: int, mark: int, page: int) -> None:
    """Mark the pages of the candidate ranges `[first, end)` (every page of them read) that PAGEMAP_SCAN puts
    in `category`. Nearby candidates share one ioctl; only the answer inside the candidates counts, so a
    window may be wider than they are."""
    shift = np.uint64(page.bit_length() - 1)
    window_first, window_end = reader.windows(first, end, _SCAN_GAP, _SCAN_WINDOWS)
    found = [
        pagemap_scan(fd, lo * page, hi * page, category_mask=category, return_mask=category)
        for lo, hi in zip(window_first.tolist(), window_end.tolist(), strict=True)
    ]
    rows = np.concatenate(found) if found else np.empty((0, 3), dtype=np.uint64)
    if len(rows):
        hit_first, hit_end = reader.intersect_ranges(rows[:, 0] >> shift, rows[:, 1] >> shift, first, end)
        runs = data.arrays.runs
        _mark(data, runs.index_of(hit_first), runs.index_of(hit_end), mark)


def _zero_candidates(data: PageData, kinds: list[str]) -> tuple[I64, I64]:
    """Index ranges `[lo, hi)` of the pages that may map a zero page: present, not FILE and not exclusive
    (the zero page), or present and FILE in an anonymous region (the huge zero page). The kernel's own
    mappings ([vdso], [vvar]) never map it, though their pages look shared: they are left out."""
    runs = data.code_runs
    anonymous = np.array([kind in ANON_KINDS for kind in kinds], dtype=bool)
    special = np.array([kind == "special" for kind in kinds], dtype=bool)
    possible = np.where(anonymous[runs.region], _ZERO_IN_ANON[runs.code], _ZERO_SMALL[runs.code])
    possible &= ~special[runs.region]
    lo = runs.first[possible]
    return lo, lo + runs.length[possible]


def _index_ranges_as_pages(pages: reader.PageRuns, lo: I64, hi: I64) -> tuple[U64, U64]:
    """The page ranges `[first, end)` of the index ranges `[lo, hi)`, split where the pages stop being consecutive."""
    lo, hi = reader.intersect_ranges(pages.start[:-1], pages.start[1:], lo, hi)
    first = pages.at(lo)
    return first, first + (hi - lo).astype(np.uint64)


def _resolve_zero_pages(fd: int, data: PageData, kinds: list[str], caps: Capabilities) -> None:
    """Mark zero-page entries. Only shared anonymous-looking and FILE pages in anonymous regions can be.

    Where PFNs show, a small candidate is the zero page when its frame is, which costs no system call;
    the huge zero page (a FILE candidate) is then found by kpageflags. Otherwise PAGEMAP_SCAN tells both.
    """
    lo, hi = _zero_candidates(data, kinds)
    if not len(lo):
        return
    if caps.pfn_visible and caps.zero_pfn is not None and (caps.kpageflags or not caps.pagemap_scan):
        candidates = reader.concatenated_ranges(lo, hi - lo, np.int64)
        entry = data.arrays.entry
        small = _ZERO_SMALL[data.arrays.top[candidates]]
        pages = candidates[small]
        _mark_pages(
            data, pages[(entry[pages] & np.uint64(bits.PM_PFN_MASK)) == np.uint64(caps.zero_pfn)], bits.MARK_ZERO
        )
        huge = candidates[~small]
        if not len(huge):
            return
        if caps.kpageflags:
            (flags,) = reader.lookup_pfns(["/proc/kpageflags"], entry[huge] & np.uint64(bits.PM_PFN_MASK))
            is_zero = (flags >> np.uint64(bits.KPF_BITS["ZERO_PAGE"])) & np.uint64(1) != 0
            _mark_pages(data, huge[is_zero], bits.MARK_ZERO)
            return
    if caps.pagemap_scan:
        first, end = _index_ranges_as_pages(data.arrays.runs, lo, hi)
        _scan_marks(fd, data, first, end, bits.PAGE_IS_PFNZERO, bits.MARK_ZERO, caps.page_size)
        return
    data.zero_known = False
    data.notes.append(
        "zero pages cannot be told apart here (no PAGEMAP_SCAN and no visible PFNs): "
        "rss may include them and zero is unknown"
    )


def _pmd_candidates(data: PageData, caps: Capabilities, span: int) -> I64:
    """First indexes of the aligned blocks of `span` pages that may be PMD-mapped: every page there, the
    first present and, where PFNs show, the frames aligned and consecutive."""
    entry = data.arrays.entry
    heads: I64 = data.arrays.runs.aligned_blocks(span)
    top = data.arrays.top[heads]
    heads = heads[(top >= np.uint8(_TOP_PRESENT)) & ((top & np.uint8(_TOP_PMD)) == 0)]  # marked ones are known
    if caps.pfn_visible:
        pfn_head = entry[heads] & np.uint64(bits.PM_PFN_MASK)
        pfn_tail = entry[heads + span - 1] & np.uint64(bits.PM_PFN_MASK)
        aligned = (pfn_head & np.uint64(span - 1)) == 0
        heads = heads[aligned & (pfn_tail == pfn_head + np.uint64(span - 1))]
    return heads


def _resolve_pmd_pages(fd: int, data: PageData, kinds: list[str], caps: Capabilities) -> None:
    """Mark pages of PMD-mapped huge pages; candidates are fully present, aligned 512-page blocks."""
    span = bits.pmd_pages(caps.page_size)
    if caps.thp_mode == "never" and not any(kind == "shmem" for kind in kinds):
        return
    if len(data.arrays) < span:
        return
    heads = _pmd_candidates(data, caps, span)
    if not len(heads):
        return
    if caps.pagemap_scan:
        first = data.arrays.runs.at(heads)
        first, end = reader.coalesce(first, first + np.uint64(span))
        _scan_marks(fd, data, first, end, bits.PAGE_IS_HUGE, bits.MARK_PMD, caps.page_size)
        return
    if caps.pfn_visible and caps.kpageflags:
        (flags,) = reader.lookup_pfns(["/proc/kpageflags"], data.arrays.entry[heads] & np.uint64(bits.PM_PFN_MASK))
        thp_head = (flags >> np.uint64(bits.KPF_BITS["THP"])) & np.uint64(1) != 0
        thp_head &= (flags >> np.uint64(bits.KPF_BITS["COMPOUND_HEAD"])) & np.uint64(1) != 0
        heads = heads[thp_head]
        _mark(data, heads, heads + span, bits.MARK_PMD)
        return
    data.pmd_known = False
    data.notes.append("huge page mappings cannot be seen here (no PAGEMAP_SCAN and no visible PFNs): thp is unknown")


def read_pfn_files(data: PageData, caps: Capabilities, *, flags: bool, counts: bool, cgroups: bool) -> None:
    entry = data.arrays.entry
    present_mask = data.arrays.top >= np.uint8(_TOP_PRESENT)
    # Usually every page is present: then no index array, and the look-ups are the per-page arrays.
    present = None if bool(present_mask.all()) else present_mask.nonzero()[0]
    pfns = (entry if present is None else entry[present]) & np.uint64(bits.PM_PFN_MASK)
    huge_heads = _huge_heads(data, caps) if flags else None
    per_page_flags = flags and huge_heads is None
    wanted = {"/proc/kpageflags": per_page_flags, "/proc/kpagecount": counts, "/proc/kpagecgroup": cgroups}
    paths = [path for path, asked in wanted.items() if asked]
    results = dict(zip(paths, reader.lookup_pfns(paths, pfns), strict=True)) if paths else {}
    del pfns
    if flags:
        if huge_heads is None:
            page_flags = _per_page(results["/proc/kpageflags"], present, len(entry), np.uint64)
        else:
            page_flags = _flags_by_folio(data, huge_heads, bits.pmd_pages(caps.page_size))
        reader.top_byte_view(page_flags)[:] |= _synthetic_flags(data.arrays.top)
        for name in bits.KPF_BITS:
            if reason := caps.missing_for_flag(name):
                page_flags &= ~np.uint64(1 << bits.KPF_BITS[name])
                data.withheld_flags += (name,)
                data.notes.append(f"page flag {name} is not reported: {reason}")
        data.page_flags = page_flags
    if counts:
        data.mapcounts = _per_page(results["/proc/kpagecount"], present, len(entry), np.uint32)
        _exclusive_from_mapcounts(data)
    if cgroups:
        inodes, pages = np.unique(results["/proc/kpagecgroup"], return_counts=True)
        data.cgroup_pages = dict(zip(inodes.tolist(), pages.tolist(), strict=True))


def _huge_heads(data: PageData, caps: Capabilities) -> I64 | None:
    """Indexes of the first pages of the PMD-mapped huge pages, where their other pages' kpageflags may be
    derived from them; None where there are none, or where the kernel reads flags page by page (before 6.10:
    taken here from 6.15, as for the entries)."""
    if not caps.pmd_entries_from_head:
        return None
    span = bits.pmd_pages(caps.page_size)
    heads = data.arrays.runs.aligned_blocks(span)
    present_pmd = np.uint8(_TOP_PRESENT | _TOP_PMD)
    heads = heads[(data.arrays.top[heads] & present_pmd) == present_pmd]
    return heads if len(heads) else None


_KPF_HEAD = np.uint64(1 << bits.KPF_BITS["COMPOUND_HEAD"])
_KPF_TAIL = np.uint64(1 << bits.KPF_BITS["COMPOUND_TAIL"])


def _flags_by_folio(data: PageData, heads: I64, span: int) -> U64:
    """kpageflags of every page, looked up for all but the subpages of PMD-mapped huge pages after the first.

    From Linux 6.10 kpageflags reports a large folio's flags for each of its pages: only COMPOUND_HEAD or
    COMPOUND_TAIL, and HWPOISON outside hugetlb, are the page's own (and BUDDY, OFFLINE and PGTABLE, which
    no mapped page has). A PMD-mapped subpage after the first is a tail with the first one's other flags,
    the first being the head or, inside a larger hugetlb page, a tail itself.
    """
    entry, top = data.arrays.entry, data.arrays.top
    blocks = reader.concatenated_ranges(heads, np.full(len(heads), span, dtype=np.int64), np.int64).reshape(-1, span)
    looked_up = top >= np.uint8(_TOP_PRESENT)
    looked_up[blocks[:, 1:]] = False
    index = looked_up.nonzero()[0]
    (found,) = reader.lookup_pfns(["/proc/kpageflags"], entry[index] & np.uint64(bits.PM_PFN_MASK))
    page_flags = np.zeros(len(entry), dtype=np.uint64)
    page_flags[index] = found
    page_flags[blocks[:, 1:]] = ((page_flags[heads] & ~_KPF_HEAD) | _KPF_TAIL)[:, None]
    return page_flags


def _exclusive_from_mapcounts(data: PageData) -> None:
    """Decide the exclusivity of PMD-mapped pages from their map counts, as smaps does.

    From Linux 6.15, pagemap gives every subpage of a PMD-mapped THP the head page's exclusivity; after a
    fork and a partial copy that is wrong for every subpage but the head.
    """
    assert data.mapcounts is not None
    top = data.arrays.top
    present_pmd = np.uint8(_TOP_PRESENT | _TOP_PMD)
    huge = ((top & present_pmd) == present_pmd).nonzero()[0]
    if not len(huge):
        return
    exclusive = (top[huge] & np.uint8(_TOP_EXCLUSIVE)) != 0
    should_be = data.mapcounts[huge] == 1
    wrong = huge[exclusive != should_be]
    if not len(wrong):
        return
    _note_moved(data, wrong)
    data.arrays.entry[wrong] ^= np.uint64(bits.PM_EXCLUSIVE)
    top[wrong] ^= np.uint8(_TOP_EXCLUSIVE)


def _synthetic_flags(top: U8) -> U8:
    """Bits 56-63 of each page's flags word from its entry's top byte: FILE as is, SWAPPED from SWAP unless a
    guard or userfaultfd marker, MMAP_EXCLUSIVE from EXCLUSIVE. No KPF flag lives there."""
    swapped = top & np.uint8(_TOP_SWAP)
    swapped &= ~(top << np.uint8(_SHIFT_GUARD_TO_SWAP))  # a guard marker shifted onto SWAP clears it
    swapped &= ~(top << np.uint8(_SHIFT_UFFD_TO_SWAP))  # ... and so does a userfaultfd one
    exclusive = top << np.uint8(_SHIFT_EXCLUSIVE_TO_SYNTHETIC)  # the other bits shift out of the byte
    result: U8 = (top & np.uint8(_TOP_FILE)) | swapped | exclusive
    return result


def _bit(mask: int) -> int:
    return mask.bit_length() - 1


# The synthetic flags sit where pagemap has FILE and SWAP, and MMAP_EXCLUSIVE where it has PRESENT.
assert bits.SYNTHETIC_FLAG_BITS["FILE"] == _bit(bits.PM_FILE)
assert bits.SYNTHETIC_FLAG_BITS["SWAPPED"] == _bit(bits.PM_SWAP)
_SHIFT_GUARD_TO_SWAP = _bit(bits.PM_SWAP) - _bit(bits.PM_GUARD)
_SHIFT_UFFD_TO_SWAP = _bit(bits.PM_SWAP) - _bit(bits.PM_UFFD_WP)
_SHIFT_EXCLUSIVE_TO_SYNTHETIC = bits.SYNTHETIC_FLAG_BITS["MMAP_EXCLUSIVE"] - _bit(bits.PM_EXCLUSIVE)


def _per_page(values: U64, present: I64 | None, size: int, dtype: type[_Word]) -> npt.NDArray[_Word]:
    """Values looked up for the present pages, spread over every page (zero where not present)."""
    if present is None:
        return values.astype(dtype, copy=False)
    spread = np.zeros(size, dtype=dtype)
    spread[present] = values
    return spread


def _value_counts(values: U64) -> tuple[U64, I64]:
    """The distinct values and how often each occurs. Neighbouring pages mostly share their flags, so runs
    of equal values are counted first and only the runs' values sorted."""
    if not len(values):
        return values, np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], (values[1:] != values[:-1]).nonzero()[0] + 1))
    lengths = np.diff(np.append(starts, len(values)))
    run_values = values[starts]
    distinct = np.unique(run_values)  # a sort; finding each run's value in it is cheaper than return_inverse
    which = distinct.searchsorted(run_values)
    return distinct, np.bincount(which, weights=lengths, minlength=len(distinct)).astype(np.int64)


def count_flags(page_flags: U64, withheld: Collection[str] = ()) -> Mapping[str, int]:
    """Pages per flag (KPF and synthetic) in `page_flags`; `withheld` flags are left out: unknown, not zero."""
    values, counts = _value_counts(page_flags)
    names = {name: bit for name, bit in bits.FLAG_BITS.items() if name not in withheld}
    result = dict.fromkeys(names, 0)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        for name, bit in names.items():
            if value >> bit & 1:
                result[name] += count
    return MappingProxyType(result)


def _code_runs(top: U8, bounds: I64) -> _CodeRuns:
    """The runs of equal top bytes of each region's pages: a run ends where the byte changes or a region starts.

    One pass over the bytes costs a fraction of a nanosecond a page, far below what the kernel spends on the
    entries; a fixed handful of numpy calls keeps a small process's snapshot cheap too."""
    count = len(top)
    if not count:
        empty = np.zeros(0, dtype=np.intp)
        return _CodeRuns(empty.astype(np.int64), empty.astype(np.int64), empty, empty)
    edge = np.empty(count, dtype=bool)
    edge[0] = True
    np.not_equal(top[1:], top[:-1], out=edge[1:])
    region_start = bounds[:-1]
    edge[region_start[region_start < count]] = True
    first = edge.nonzero()[0]
    length = np.concatenate((first[1:], [count])) - first
    # Empty regions share their index with the next one: the last region starting there holds the run.
    region = bounds.searchsorted(first, side="right") - 1
    return _CodeRuns(first, length, top[first].astype(np.intp), region)


def _histogram(region: npt.NDArray[np.intp], code: npt.NDArray[np.intp], pages: I64, regions: int) -> _Histogram:
    """Pages per region and top byte, from counts of `pages` (negative ones subtract) by region and byte."""
    seen = np.zeros(256, dtype=bool)
    seen[code] = True
    codes = seen.nonzero()[0]
    column = np.zeros(256, dtype=np.intp)
    column[codes] = np.arange(len(codes))
    counts = np.bincount(region * len(codes) + column[code], weights=pages, minlength=regions * len(codes))
    return _Histogram(codes, counts.astype(np.float64, copy=False).reshape(regions, len(codes)))


def _final_histogram(data: PageData, regions: int) -> _Histogram:
    """Pages per region and top byte, the read path's marks included."""
    runs = data.code_runs if data.moved is not None else _code_runs(data.arrays.top, data.bounds)
    if not data.moved:  # nothing marked since the runs were found, or the runs found again
        return _histogram(runs.region, runs.code, runs.length, regions)
    # Each moved page leaves the count of its byte before and joins that of its byte now (a page moved twice
    # left the first byte it had).
    index, first = np.unique(np.concatenate([pages for pages, _ in data.moved]), return_index=True)
    before = np.concatenate([top for _, top in data.moved])[first].astype(np.intp)
    region = data.bounds.searchsorted(index, side="right") - 1
    ones = np.ones(len(index), dtype=np.int64)
    return _histogram(
        np.concatenate((runs.region, region, region)),
        np.concatenate((runs.code, before, data.arrays.top[index].astype(np.intp))),
        np.concatenate((runs.length, -ones, ones)),
        regions,
    )


def _sums_by_region(values: I64, bounds: I64) -> I64:
    """The sum of `values` over each region's slice of pages."""
    running = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=running[1:])
    result: I64 = running[bounds[1:]] - running[bounds[:-1]]
    return result


Metrics = dict[str, list[int] | list[None]]


def region_metrics(data: PageData, kinds: list[str], page: int) -> tuple[Metrics, dict[str, int | None]]:
    """Each `Totals` metric of each region in bytes, as smaps accounts it, and the snapshot's totals.

    A metric unknown here is None in every region and in the totals.
    """
    histogram = _final_histogram(data, len(kinds))
    counts = histogram.counts @ _METRIC_MATRICES["other"][histogram.codes]
    for kind in ("shmem", "hugetlb"):
        if kind in kinds:  # most processes map neither: look in C first
            rows = [index for index, each in enumerate(kinds) if each == kind]
            counts[rows] = histogram.counts[rows] @ _METRIC_MATRICES[kind][histogram.codes]
    pages = counts.astype(np.int64) * page  # (regions, metrics)
    metrics: Metrics = dict(zip(_COUNTED, pages.T.tolist(), strict=True))
    totals: dict[str, int | None] = dict(zip(_COUNTED, pages.sum(axis=0).tolist(), strict=True))
    unknown: list[None] = [None] * len(kinds)
    for name, known in (("thp", data.pmd_known), ("zero", data.zero_known)):
        if not known:
            metrics[name], totals[name] = unknown, None
    if data.mapcounts is None:
        metrics["pss"], totals["pss"] = unknown, None
    else:
        hugetlb = np.array([kind == "hugetlb" for kind in kinds], dtype=bool)
        pss_fixed = np.where(hugetlb, 0, _pss_fixed(data, page))
        metrics["pss"] = (pss_fixed >> 12).tolist()
        totals["pss"] = int(pss_fixed.sum()) >> 12  # the snapshot's PSS is rounded once, not per region
    return metrics, totals


def _pss_fixed(data: PageData, page: int) -> I64:
    """Each region's PSS in bytes << 12. As the kernel: PAGE_SIZE << 12 divided by each page's mapcount, summed."""
    assert data.mapcounts is not None
    counted = data.mapcounts.astype(np.int64)
    share = np.where(counted > 0, (page << 12) // np.maximum(counted, 1), 0)
    return _sums_by_region(share, data.bounds)
