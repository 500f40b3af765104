"""An immutable snapshot of one process's page tables at one moment, with totals and per-region totals."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt

from . import bits, procfs, reader, tracking
from .capabilities import Capabilities, capabilities
from .errors import AccessDenied, PagewalkError, ProcessGone, Unsupported
from .freeze import frozen
from .regions import classify, display_name
from .scan import pagemap_scan

if TYPE_CHECKING:
    from .delta import Delta

__all__ = ["Region", "Snapshot", "Totals", "snapshot"]

Method = Literal["auto", "read", "scan"]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
_Word = TypeVar("_Word", np.uint64, np.uint32)

# Per-page classes come from the top byte of an entry (bits 56-63 of pagemap, with pagewalk's marks in 59-60).
_CODE = np.arange(256, dtype=np.int64)
_PRESENT = (_CODE & 0x80) != 0
# Not present, and not a guard (0x04) or userfaultfd write-protect (0x02) marker: markers are no memory.
_SWAP = ((_CODE & 0xC0) == 0x40) & ((_CODE & 0x06) == 0)
_GUARD = (_CODE & 0x04) != 0
_ZERO = (_CODE & 0x08) != 0
_PMD = (_CODE & 0x10) != 0
_FILE = (_CODE & 0x20) != 0
_EXCLUSIVE = (_CODE & 0x01) != 0
_REAL = _PRESENT & ~_ZERO
# Columns of the per-region page counts, computed by one matrix product over the 256 classes.
_COLUMNS = ("present", "uss", "uss_file", "anon", "file", "thp", "zero", "swap", "guard")
_CLASS_MATRIX = np.stack(
    [
        _REAL,
        _REAL & _EXCLUSIVE,
        _REAL & _EXCLUSIVE & _FILE,
        _REAL & ~_FILE,
        _REAL & _FILE,
        _REAL & _PMD,
        _PRESENT & _ZERO,
        _SWAP,
        _GUARD,
    ],
    axis=1,
).astype(np.float64)


@dataclass(frozen=True)
class Totals:
    """Memory in bytes, as the kernel accounts it in `smaps_rollup` (see the README for the exceptions).

    `pss` is None unless page counts were read; `thp` and `zero` are None when this kernel and user
    cannot tell (no PAGEMAP_SCAN and no visible PFNs).
    """

    rss: int  # resident pages, not counting the zero page or hugetlb (as smaps Rss)
    uss: int  # pages mapped only by this process, hugetlb included (Private_Clean+Private_Dirty+Private_Hugetlb)
    # The part of USS in page cache and shared memory: other processes move it by mapping the same files.
    uss_file: int
    pss: int | None  # proportional set size (as smaps Pss): needs kpagecount
    swap: int  # swapped-out pages (guard markers and other non-swap entries excluded where visible)
    anon: int  # resident anonymous pages (as smaps Anonymous)
    file: int  # resident page cache of regular files
    shmem: int  # resident shared memory: shared anonymous, tmpfs, memfd, SysV
    thp: int | None  # resident pages in PMD-mapped transparent huge pages (AnonHugePages + Shmem/FilePmdMapped)
    zero: int | None  # pages mapping the shared zero page or huge zero page (not in Rss)
    hugetlb: int  # hugetlb pages mapped (in USS when private, never in Rss)

    def metrics(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in fields(Totals)}


@dataclass(frozen=True)
class Region(Totals):
    """One mapping of the process (a line of `/proc/PID/maps`) and its memory."""

    start: int
    end: int
    perms: str
    offset: int
    dev: tuple[int, int]
    inode: int
    name: str  # path, label such as [heap] or [anon:NAME], or [anon]
    kind: str  # anon, heap, stack, file, shmem, hugetlb or special
    written: int | None = None  # bytes written since tracking started (snapshot(writes=True))
    accessed: int | None = None  # bytes accessed since tracking started (snapshot(accessed=True))
    accessed_anon: int | None = None  # of which in anonymous regions, which only this process can mark

    @property
    def size(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "perms": self.perms,
            "offset": self.offset,
            "dev": f"{self.dev[0]:02x}:{self.dev[1]:02x}",
            "inode": self.inode,
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            **self.metrics(),
            "written": self.written,
            "accessed": self.accessed,
            "accessed_anon": self.accessed_anon,
        }


@dataclass(frozen=True)
class Snapshot(Totals):
    """The page tables of process `pid` at `taken_at`: totals, regions and compact per-page entries.

    Per-page arrays (read-only) let a later delta compare page by page: `vpn` holds the virtual page
    numbers of every present or swapped page in ascending order, `entries` their pagemap entries (with
    pagewalk's zero-page and PMD marks in bits 59-60), `page_flags` their KPF flags plus synthetic FILE,
    SWAPPED and MMAP_EXCLUSIVE bits (with `flags=True`), and `mapcounts` their kpagecount (with `counts=True`).
    `vpn` is built on each access from `vpn_runs`, the same pages kept as runs of consecutive pages.
    """

    pid: int
    command: str
    taken_at: float
    frozen: bool
    method: str
    page_size: int
    pfn_visible: bool
    regions: tuple[Region, ...]
    flag_counts: Mapping[str, int] | None  # pages per flag name, with flags=True
    vpn_runs: reader.PageRuns = field(repr=False, compare=False)
    entries: U64 = field(repr=False, compare=False)
    page_flags: U64 | None = field(repr=False, compare=False)
    mapcounts: npt.NDArray[np.uint32] | None = field(repr=False, compare=False)
    written: int | None = None  # bytes written since tracking started, with writes=True
    accessed: int | None = None  # bytes accessed since tracking started, with accessed=True
    accessed_anon: int | None = None  # of which in anonymous regions (heap, stacks, anonymous maps)
    cgroup_pages: Mapping[int, int] | None = None  # memory cgroup inode -> present pages, with cgroups=True
    notes: tuple[str, ...] = ()
    start_time: int | None = None  # clock ticks after boot: with `pid`, names the process for good
    exe: str | None = None  # the program it ran (None when unreadable): changes when the process calls exec
    peak_rss: int | None = None  # VmHWM: the highest RSS since the high-water mark was last reset
    peak_reset: bool = False  # this snapshot reset the high-water mark (track=("peak",)) after reading it

    def __sub__(self, before: Snapshot) -> Delta:
        from .delta import diff

        return diff(before, self)

    @property
    def vpn(self) -> U64:
        """The virtual page number of each of `entries`, ascending (a new read-only array, 8 bytes a page)."""
        vpn = self.vpn_runs.to_array()
        vpn.flags.writeable = False
        return vpn

    @property
    def present_pages(self) -> int:
        return int(np.count_nonzero(self.entries >= np.uint64(bits.PM_PRESENT)))

    def regions_matching(self, pattern: str) -> list[Region]:
        """Regions whose name matches `pattern`: exactly, as a glob, or as the file's base name."""
        found = []
        for region in self.regions:
            names = (region.name, os.path.basename(region.name))
            if pattern in names or any(fnmatch.fnmatchcase(name, pattern) for name in names):
                found.append(region)
        return found

    def totals_for(self, pattern: str) -> Totals:
        """The summed totals of the regions matching `pattern` (see `regions_matching`)."""
        return sum_totals(self.regions_matching(pattern))

    def to_dict(self, *, regions: bool = True) -> dict[str, Any]:
        """A JSON-ready dict: the keys documented in the README."""
        data: dict[str, Any] = {
            "pid": self.pid,
            "command": self.command,
            "taken_at": self.taken_at,
            "frozen": self.frozen,
            "start_time": self.start_time,
            "exe": self.exe,
            "method": self.method,
            "page_size": self.page_size,
            "pfn_visible": self.pfn_visible,
            **self.metrics(),
            "written": self.written,
            "accessed": self.accessed,
            "accessed_anon": self.accessed_anon,
            "peak_rss": self.peak_rss,
        }
        if regions:
            data["regions"] = [region.to_dict() for region in self.regions]
        if self.flag_counts is not None:
            data["flags"] = dict(self.flag_counts)
        data["notes"] = list(self.notes)
        return data


def sum_totals(items: Sequence[Totals]) -> Totals:
    """Add up the totals of several regions (or snapshots); a None in any makes that total None."""
    values: dict[str, Any] = {}
    for f in fields(Totals):
        column = [getattr(item, f.name) for item in items]
        values[f.name] = None if any(v is None for v in column) else sum(column)
    return Totals(**values)


# --- taking a snapshot ----------------------------------------------------------------------------------

_ANON_KINDS = frozenset({"anon", "heap", "stack"})
_TOP_PRESENT = 0x80  # bits 56-63 of an entry as one byte: PRESENT is its top bit
# Top bytes that may be a zero page: present, not FILE, not exclusive (the zero page); in anonymous regions
# also present and FILE (the huge zero page is not an anonymous folio, so it reads as FILE).
_ZERO_SMALL = (_CODE & 0xA1) == 0x80
_ZERO_IN_ANON = _ZERO_SMALL | ((_CODE & 0xA0) == 0xA0)
_SCAN_GAP = 512  # candidates this many pages apart share a PAGEMAP_SCAN window...
_SCAN_WINDOWS = 64  # ...and at most this many windows are scanned, the widest gaps between them skipped


@dataclass(frozen=True)
class _CodeRuns:
    """Runs of pages with equal top bytes, none crossing a region boundary, in page order."""

    first: I64  # index of each run's first page
    length: I64
    code: npt.NDArray[np.intp]  # the top byte
    region: npt.NDArray[np.intp]


@dataclass
class _PageData:
    arrays: reader.EntryArrays
    bounds: I64  # index of each region's first page, then the page count
    method: str
    code_runs: _CodeRuns  # of the top bytes as read, before any mark
    histogram: npt.NDArray[np.float64]  # pages per region and top byte, kept in step with the marks
    stale: set[int] = field(default_factory=set)  # regions marked since `histogram` counted them
    zero_known: bool = True
    pmd_known: bool = True
    page_flags: U64 | None = None
    withheld_flags: tuple[str, ...] = ()  # flags this kernel misreports: cleared, and not counted
    mapcounts: npt.NDArray[np.uint32] | None = None
    written: npt.NDArray[np.bool_] | None = None
    referenced: dict[int, int] | None = None
    cgroup_pages: dict[int, int] | None = None
    notes: list[str] = field(default_factory=list)


def snapshot(
    pid: int,
    *,
    flags: bool = False,
    counts: bool = False,
    cgroups: bool = False,
    freeze: bool = True,
    method: Method = "auto",
    writes: bool = False,
    accessed: bool = False,
    track: Iterable[str] = (),
    tree: bool = False,
) -> Snapshot:
    """Take a consistent snapshot of the page tables of process `pid`.

    `flags=True` also reads `/proc/kpageflags` for every present page (`snap.flag_counts`), and
    `counts=True` reads `/proc/kpagecount` for PSS, and `cgroups=True` `/proc/kpagecgroup` for the pages
    per memory cgroup (`snap.cgroup_pages`); they need CAP_SYS_ADMIN and raise `AccessDenied` naming it
    otherwise. With `freeze=True` the process is stopped with SIGSTOP until every thread shows
    stopped, and always resumed. `method` picks the front end: "read" walks each mapping's pagemap,
    "scan" asks PAGEMAP_SCAN (6.7+) for the populated ranges first; "auto" scans sparse address spaces.

    Tracking: `track=("writes", "accessed")` starts tracking pages written (soft-dirty) and accessed right
    after this snapshot, while the process is still stopped. A later snapshot with `writes=True` records
    the pages written since (`snap.written`, per region too), and with `accessed=True` the bytes accessed
    since. Write tracking needs a kernel with CONFIG_MEM_SOFT_DIRTY and raises `Unsupported` without it.
    `track=("peak",)` resets the RSS high-water mark; every snapshot reads it (`snap.peak_rss`).

    `tree=True` snapshots `pid` and all its descendants, stopped together: a `TreeSnapshot` with the
    summed totals and `.processes` (see `pagewalk.tree`).
    """
    if tree:
        from .tree import snapshot_tree

        return snapshot_tree(
            pid, flags=flags, counts=counts, freeze=freeze, method=method, writes=writes, accessed=accessed, track=track
        )
    procfs.check_platform()
    pid = procfs.check_pid(pid)
    if method not in ("auto", "read", "scan"):
        raise ValueError(f"method must be 'auto', 'read' or 'scan', not {method!r}")
    caps = capabilities()
    if flags and (missing := caps.missing_for_flags()):
        raise AccessDenied(f"cannot read page flags of process {pid}: {missing}", pid)
    if counts and (missing := caps.missing_for_pss()):
        raise AccessDenied(f"cannot compute PSS of process {pid}: {missing}", pid)
    if cgroups and (missing := caps.missing_for_cgroups()):
        raise AccessDenied(f"cannot read the memory cgroups of process {pid}'s pages: {missing}", pid)
    if method == "scan" and not caps.pagemap_scan:
        raise Unsupported(
            f"method='scan' needs the PAGEMAP_SCAN ioctl (Linux 6.7+); this kernel is {caps.kernel}: "
            "use method='read' or 'auto'",
            pid,
        )
    track = tuple(track)
    tracking.check_tracking(track, pid)
    if writes:
        tracking.require_soft_dirty(pid, caps)
    procfs.check_thread_group_leader(pid)
    procfs.check_address_space(pid)
    command = ""  # read while the process is stopped, after its accessed bits: see below
    started, exe = procfs.start_time(pid), procfs.executable(pid)
    notes = []
    if freeze and _walks_too_much(pid, caps, method):
        limit = f"{_FREEZE_WALK_LIMIT >> 40} TiB"
        if caps.pagemap_scan:
            method = "scan"
            notes.append(
                f"method='read' would walk over {limit} of address space page by page while the process is "
                "stopped: it was scanned (PAGEMAP_SCAN) instead"
            )
        else:
            freeze = False
            notes.append(
                f"the address space is over {limit} and this kernel lacks PAGEMAP_SCAN: walking it page by page "
                "would keep the process stopped for long, so it was read while running"
            )
    fd = procfs.open_proc(pid, "pagemap")
    try:
        freezer = frozen([pid]) if freeze else contextlib.nullcontext(None)
        with freezer as freeze_result:
            taken_at = time.time()
            maps = procfs.read_maps(pid)
            kinds = _classify(pid, maps, caps)
            data = _read_pages(pid, fd, maps, kinds, caps, method)
            if flags or counts or cgroups:
                _read_pfn_files(data, caps, flags=flags, counts=counts, cgroups=cgroups)
            if writes:
                ranges = _user_ranges(maps, caps.page_size)
                span = (ranges[0][0] * caps.page_size, ranges[-1][1] * caps.page_size) if ranges else (0, 0)
                data.written = tracking.written_mask(fd, data.arrays, caps, method, span)
            if accessed:
                data.referenced = tracking.referenced_by_region(pid)
            # Reading the command line reads the process's stack: after the accessed bits are read and before
            # they are cleared, so the measurement never counts a page it touched itself.
            command = _command(pid)
            peak_rss = tracking.read_peak(pid)
            peak_unknown = tracking.apply_tracking(pid, track)
    except reader.ProcessExited:
        raise ProcessGone(f"process {pid} exited while its page tables were being read", pid) from None
    except OSError as exc:
        raise procfs.translate_os_error(exc, pid, "the page tables") from exc
    finally:
        os.close(fd)
    _check_same_process(pid, started, maps)
    data.notes[:0] = notes
    if freeze_result is not None:
        data.notes.extend(note for note in freeze_result.notes if pid != os.getpid())
    was_frozen = freeze_result is not None and freeze_result.methods.get(pid) != "self" and freeze_result.complete
    if peak_unknown:
        data.notes.append(peak_unknown)
    snap = _build(pid, command, taken_at, was_frozen, maps, kinds, data, caps, identity=(started, exe))
    return replace(snap, peak_rss=peak_rss, peak_reset="peak" in track and peak_unknown is None)


# Walking pagemap costs about a second per TiB of address space: above this, never while the process is stopped.
_FREEZE_WALK_LIMIT = 1 << 40


def _walks_too_much(pid: int, caps: Capabilities, method: Method) -> bool:
    """Whether the read front end would walk more than `_FREEZE_WALK_LIMIT` of address space."""
    if method == "scan" or (method == "auto" and caps.pagemap_scan):
        return False  # "auto" scans sparse address spaces, and only they are this big
    size_pages, _ = procfs.read_statm(pid)
    return size_pages * caps.page_size > _FREEZE_WALK_LIMIT


def _check_same_process(pid: int, started: int, maps: list[procfs.MapsEntry]) -> None:
    """After reading: raise unless the pid still names the process it named before (and it had memory)."""
    try:
        now = procfs.start_time(pid)
    except ProcessGone:
        raise ProcessGone(f"process {pid} exited while its page tables were being read", pid) from None
    if now != started:
        raise ProcessGone(f"process {pid} exited while being read, and its pid now names another process", pid)
    if not maps:  # only a process that is leaving has no mappings at all
        procfs.check_address_space(pid)
        raise ProcessGone(f"process {pid} exited while its page tables were being read", pid)


def _command(pid: int) -> str:
    with contextlib.suppress(PagewalkError):
        raw = procfs.read_proc_text(pid, "cmdline")
        if raw:
            command = " ".join(part for part in raw.split("\0") if part)
            # One line, bounded: it labels reports and failure messages.
            command = command.replace("\n", "\\n").replace("\t", " ")
            return command if len(command) <= 200 else command[:197] + "..."
        return f"[{procfs.read_proc_text(pid, 'comm').strip()}]"
    return ""


def _classify(pid: int, maps: list[procfs.MapsEntry], caps: Capabilities) -> list[str]:
    # Internal shmem and hugetlb files have a device of their own (caps), so only real files are looked up.
    internal = {*caps.shmem_devices, *caps.hugetlb_devices}
    seen = {entry.dev for entry in maps if entry.path.startswith("/") and entry.dev not in internal}
    mounts = procfs.mount_devices_by_type(pid, ("tmpfs", "hugetlbfs"), seen)
    shmem_devs = set(caps.shmem_devices) | mounts["tmpfs"]
    huge_devs = set(caps.hugetlb_devices) | mounts["hugetlbfs"]
    return [classify(entry, shmem_devs, huge_devs) for entry in maps]


def _user_ranges(maps: list[procfs.MapsEntry], page_size: int) -> list[tuple[int, int]]:
    # [vsyscall] lies above the task size, where pagemap reads return end-of-file.
    return [(m.start // page_size, m.end // page_size) for m in maps if m.path != "[vsyscall]"]


def _capacity(pid: int, resident: int) -> int:
    swap_kb = int((procfs.status_field(pid, "VmSwap") or "0 kB").split()[0])
    return resident + swap_kb * 1024 // os.sysconf("SC_PAGE_SIZE") + 1024


def _choose_method(size: int, resident: int, caps: Capabilities, method: Method) -> str:
    if method != "auto":
        return method
    if not caps.pagemap_scan:
        return "read"
    # Dense address spaces read fastest mapping by mapping; sparse ones (big reservations) by scanning.
    return "read" if resident * 4 >= size else "scan"


def _read_pages(
    pid: int,
    fd: int,
    maps: list[procfs.MapsEntry],
    kinds: list[str],
    caps: Capabilities,
    method: Method,
) -> _PageData:
    page = caps.page_size
    ranges = _user_ranges(maps, page)
    size, resident = procfs.read_statm(pid)
    if _choose_method(size, resident, caps, method) == "scan" and ranges:
        rows = reader.scan_mapped_ranges(fd, ranges[0][0] * page, max(end for _, end in ranges) * page, page)
        data = _page_data(reader.read_scanned(fd, rows[:, 0], rows[:, 1]), maps, page, "scan")
        _mark_rows(data, rows, bits.PAGE_IS_PFNZERO, bits.MARK_ZERO)
        _mark_rows(data, rows, bits.PAGE_IS_HUGE, bits.MARK_PMD)
        return data
    data = _page_data(reader.read_entries(fd, ranges, _capacity(pid, resident)), maps, page, "read")
    _resolve_zero_pages(fd, data, kinds, caps)
    _resolve_pmd_pages(fd, data, kinds, caps)
    return data


def _page_data(arrays: reader.EntryArrays, maps: list[procfs.MapsEntry], page: int, method: str) -> _PageData:
    starts = np.array([m.start // page for m in maps], dtype=np.uint64)
    bounds = np.append(arrays.runs.index_of(starts), len(arrays))
    runs = _code_runs(arrays.top, bounds)
    return _PageData(arrays, bounds, method, runs, _histogram(runs, len(maps)))


def _mark(data: _PageData, lo: I64, hi: I64, mark: int) -> None:
    """Set `mark` on the pages at indexes `[lo, hi)`, in the entries and their top bytes alike."""
    reader.mark_index_ranges((data.arrays.entry, data.arrays.top), lo, hi, (mark, mark >> 56))
    keep = hi > lo
    _touch_regions(data, lo[keep], hi[keep] - 1)


def _mark_pages(data: _PageData, index: I64, mark: int) -> None:
    data.arrays.entry[index] |= np.uint64(mark)
    data.arrays.top[index] |= np.uint8(mark >> 56)
    _touch_regions(data, index, index)


def _touch_regions(data: _PageData, first: I64, last: I64) -> None:
    """Note the regions holding pages `first[i]` to `last[i]` as changed since their histogram was counted."""
    if len(first):
        lo = np.searchsorted(data.bounds, first, side="right") - 1
        hi = np.searchsorted(data.bounds, last, side="right") - 1
        for low, high in set(zip(lo.tolist(), hi.tolist(), strict=True)):
            data.stale.update(range(low, high + 1))


def _mark_rows(data: _PageData, rows: U64, category: int, mark: int) -> None:
    """Mark the pages of the PAGEMAP_SCAN rows (in pages) that have `category`."""
    chosen = rows[(rows[:, 2] & np.uint64(category)) != 0]
    if len(chosen):
        runs = data.arrays.runs
        _mark(data, runs.index_of(chosen[:, 0]), runs.index_of(chosen[:, 1]), mark)


def _scan_marks(fd: int, data: _PageData, first: U64, end: U64, category: int, mark: int, page: int) -> None:
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


def _zero_candidates(data: _PageData, kinds: list[str]) -> tuple[I64, I64]:
    """Index ranges `[lo, hi)` of the pages that may map a zero page: present, not FILE and not exclusive
    (the zero page), or present and FILE in an anonymous region (the huge zero page)."""
    runs = data.code_runs
    anonymous = np.array([kind in _ANON_KINDS for kind in kinds], dtype=bool)
    possible = np.where(anonymous[runs.region], _ZERO_IN_ANON[runs.code], _ZERO_SMALL[runs.code])
    lo = runs.first[possible]
    return lo, lo + runs.length[possible]


def _index_ranges_as_pages(pages: reader.PageRuns, lo: I64, hi: I64) -> tuple[U64, U64]:
    """The page ranges `[first, end)` of the index ranges `[lo, hi)`, split where the pages stop being consecutive."""
    lo, hi = reader.intersect_ranges(pages.start[:-1], pages.start[1:], lo, hi)
    first = pages.at(lo)
    return first, first + (hi - lo).astype(np.uint64)


def _resolve_zero_pages(fd: int, data: _PageData, kinds: list[str], caps: Capabilities) -> None:
    """Mark zero-page entries. Only shared anonymous-looking and FILE pages in anonymous regions can be."""
    lo, hi = _zero_candidates(data, kinds)
    if not len(lo):
        return
    if caps.pagemap_scan:
        first, end = _index_ranges_as_pages(data.arrays.runs, lo, hi)
        _scan_marks(fd, data, first, end, bits.PAGE_IS_PFNZERO, bits.MARK_ZERO, caps.page_size)
        return
    if caps.pfn_visible and caps.zero_pfn is not None:
        candidates = reader.concatenated_ranges(lo, hi - lo, np.int64)
        entry = data.arrays.entry
        small = (data.arrays.top[candidates] & np.uint8(0xA1)) == np.uint8(0x80)
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
    data.zero_known = False
    data.notes.append(
        "zero pages cannot be told apart here (no PAGEMAP_SCAN and no visible PFNs): "
        "rss may include them and zero is unknown"
    )


def _pmd_candidates(data: _PageData, caps: Capabilities, span: int) -> I64:
    """First indexes of the aligned blocks of `span` pages that may be PMD-mapped: every page there, the
    first present and, where PFNs show, the frames aligned and consecutive."""
    entry = data.arrays.entry
    heads: I64 = data.arrays.runs.aligned_blocks(span)
    heads = heads[data.arrays.top[heads] >= np.uint8(_TOP_PRESENT)]
    if caps.pfn_visible:
        pfn_head = entry[heads] & np.uint64(bits.PM_PFN_MASK)
        pfn_tail = entry[heads + span - 1] & np.uint64(bits.PM_PFN_MASK)
        aligned = (pfn_head & np.uint64(span - 1)) == 0
        heads = heads[aligned & (pfn_tail == pfn_head + np.uint64(span - 1))]
    return heads


def _resolve_pmd_pages(fd: int, data: _PageData, kinds: list[str], caps: Capabilities) -> None:
    """Mark pages of PMD-mapped huge pages; candidates are fully present, aligned 512-page blocks."""
    span = caps.page_size // 8  # entries per PMD-mapped page: a page table holds page_size / 8 entries
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


def _read_pfn_files(data: _PageData, caps: Capabilities, *, flags: bool, counts: bool, cgroups: bool) -> None:
    entry = data.arrays.entry
    present_mask = data.arrays.top >= np.uint8(_TOP_PRESENT)
    # Usually every page is present: then no index array, and the look-ups are the per-page arrays.
    present = None if bool(present_mask.all()) else np.flatnonzero(present_mask)
    pfns = (entry if present is None else entry[present]) & np.uint64(bits.PM_PFN_MASK)
    wanted = {"/proc/kpageflags": flags, "/proc/kpagecount": counts, "/proc/kpagecgroup": cgroups}
    paths = [path for path, asked in wanted.items() if asked]
    results = dict(zip(paths, reader.lookup_pfns(paths, pfns), strict=True))
    del pfns
    if flags:
        page_flags = _per_page(results["/proc/kpageflags"], present, len(entry), np.uint64)
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


def _exclusive_from_mapcounts(data: _PageData) -> None:
    """Decide the exclusivity of PMD-mapped pages from their map counts, as smaps does.

    From Linux 6.15, pagemap gives every subpage of a PMD-mapped THP the head page's exclusivity; after a
    fork and a partial copy that is wrong for every subpage but the head.
    """
    assert data.mapcounts is not None
    top = data.arrays.top
    huge = np.flatnonzero((top & np.uint8(0x90)) == np.uint8(0x90))  # PRESENT and pagewalk's PMD mark
    if not len(huge):
        return
    exclusive = (top[huge] & np.uint8(0x01)) != 0
    should_be = data.mapcounts[huge] == 1
    wrong = huge[exclusive != should_be]
    if not len(wrong):
        return
    data.arrays.entry[wrong] ^= np.uint64(bits.PM_EXCLUSIVE)
    top[wrong] ^= np.uint8(0x01)
    _touch_regions(data, wrong, wrong)


def _synthetic_flags(top: U8) -> U8:
    """Bits 56-63 of each page's flags word from its entry's top byte: FILE (bit 61) as is, SWAPPED (62) from
    SWAP unless a guard or userfaultfd marker (58, 57), MMAP_EXCLUSIVE (63) from EXCLUSIVE (56). No KPF flag
    lives there."""
    swapped = top & np.uint8(0x40)
    swapped &= ~(top << np.uint8(4))  # GUARD (0x04) shifted onto SWAP (0x40) clears it
    swapped &= ~(top << np.uint8(5))  # ... and so does UFFD_WP (0x02)
    exclusive = top << np.uint8(7)  # EXCLUSIVE (0x01) onto 0x80; the other bits shift out of the byte
    result: U8 = (top & np.uint8(0x20)) | swapped | exclusive
    return result


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
    starts = np.concatenate(([0], np.flatnonzero(values[1:] != values[:-1]) + 1))
    lengths = np.diff(np.append(starts, len(values)))
    run_values = values[starts]
    distinct = np.unique(run_values)  # a sort; finding each run's value in it is cheaper than return_inverse
    which = np.searchsorted(distinct, run_values)
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
    """The runs of equal top bytes of each region's pages. A region whose bytes are all equal (most memory:
    a dense mapping) is found by two vectorised reductions and is one run; only the others are compared page
    by page, gathered into one array."""
    filled = np.flatnonzero(bounds[1:] > bounds[:-1])
    if not len(filled):
        empty = np.zeros(0, dtype=np.intp)
        return _CodeRuns(empty.astype(np.int64), empty.astype(np.int64), empty, empty)
    lo, hi = bounds[filled], bounds[filled + 1]
    low = np.minimum.reduceat(top, lo)  # the regions between filled ones are empty: each slice is one region
    uniform = low == np.maximum.reduceat(top, lo)
    first, length, code, region = lo[uniform], (hi - lo)[uniform], low[uniform].astype(np.intp), filled[uniform]
    mixed = np.flatnonzero(~uniform)
    if len(mixed):
        pages = np.concatenate([top[a:b] for a, b in zip(lo[mixed].tolist(), hi[mixed].tolist(), strict=True)])
        offset = reader.exclusive_cumsum(hi[mixed] - lo[mixed])
        edge = np.empty(len(pages), dtype=bool)
        np.not_equal(pages[1:], pages[:-1], out=edge[1:])
        edge[offset[:-1]] = True
        starts = np.flatnonzero(edge)
        which = np.searchsorted(offset, starts, side="right") - 1
        first = np.concatenate((first, lo[mixed][which] + (starts - offset[which])))
        length = np.concatenate((length, np.diff(np.append(starts, len(pages)))))
        code = np.concatenate((code, pages[starts].astype(np.intp)))
        region = np.concatenate((region, filled[mixed][which]))
        order = np.argsort(first, kind="stable")
        first, length, code, region = first[order], length[order], code[order], region[order]
    return _CodeRuns(first, length, code, region)


def _histogram(runs: _CodeRuns, regions: int) -> npt.NDArray[np.float64]:
    """Pages per region and top byte, shape (regions, 256), as exact float64 counts."""
    histogram = np.bincount(runs.region * 256 + runs.code, weights=runs.length, minlength=regions * 256)
    return histogram.reshape(regions, 256).astype(np.float64, copy=False)


def _region_histograms(data: _PageData) -> npt.NDArray[np.float64]:
    """Pages per region and top byte, recounting the regions marked since the histogram was made."""
    for region in sorted(data.stale):
        lo, hi = int(data.bounds[region]), int(data.bounds[region + 1])
        runs = _code_runs(data.arrays.top[lo:hi], np.array([0, hi - lo], dtype=np.int64))
        data.histogram[region] = _histogram(runs, 1)[0]
    data.stale.clear()
    return data.histogram


def _sums_by_region(values: I64, bounds: I64) -> I64:
    """The sum of `values` over each region's slice of pages."""
    running = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=running[1:])
    result: I64 = running[bounds[1:]] - running[bounds[:-1]]
    return result


def _region_metrics(
    data: _PageData, kinds: list[str], page: int, pss_fixed: I64 | None
) -> dict[str, list[int] | list[None]]:
    """Each `Totals` metric of each region in bytes, as smaps accounts it: hugetlb pages count only as
    hugetlb (and in USS and swap), a shmem region's pages as shmem rather than file."""
    # Counts are exact in float64 (below 2**53), where numpy multiplies matrices ten times faster than in int64.
    counts = _region_histograms(data) @ _CLASS_MATRIX
    pages = counts.astype(np.int64) * page  # (regions, columns)
    column = dict(zip(_COLUMNS, pages.T, strict=True))
    hugetlb = np.array([kind == "hugetlb" for kind in kinds], dtype=bool)
    shmem = np.array([kind == "shmem" for kind in kinds], dtype=bool)
    unknown: list[None] = [None] * len(kinds)
    pss: list[int] | list[None] = unknown if pss_fixed is None else np.where(hugetlb, 0, pss_fixed >> 12).tolist()
    return {
        "rss": np.where(hugetlb, 0, column["present"]).tolist(),
        "uss": column["uss"].tolist(),
        "uss_file": column["uss_file"].tolist(),
        "pss": pss,
        "swap": column["swap"].tolist(),
        "anon": np.where(hugetlb, 0, column["anon"]).tolist(),
        "file": np.where(shmem | hugetlb, 0, column["file"]).tolist(),
        "shmem": np.where(shmem, column["file"], 0).tolist(),
        "thp": np.where(hugetlb, 0, column["thp"]).tolist() if data.pmd_known else unknown,
        "zero": column["zero"].tolist() if data.zero_known else unknown,
        "hugetlb": np.where(hugetlb, column["present"], 0).tolist(),
    }


def _pss_fixed(data: _PageData, page: int) -> I64:
    """Each region's PSS in bytes << 12. As the kernel: PAGE_SIZE << 12 divided by each page's mapcount, summed."""
    assert data.mapcounts is not None
    counted = data.mapcounts.astype(np.int64)
    share = np.where(counted > 0, (page << 12) // np.maximum(counted, 1), 0)
    return _sums_by_region(share, data.bounds)


def _new_region(values: Iterable[tuple[str, Any]]) -> Region:
    # Region's generated __init__ only stores its 20 fields, each through object.__setattr__ as the class is
    # frozen: ten times slower than filling the instance dict directly, for every mapping of every snapshot.
    region: Region = object.__new__(Region)
    region.__dict__.update(values)
    return region


assert not hasattr(Region, "__slots__") and not hasattr(Region, "__post_init__")  # what _new_region relies on


def _regions(
    maps: list[procfs.MapsEntry],
    kinds: list[str],
    metrics: dict[str, list[int] | list[None]],
    data: _PageData,
    page: int,
) -> tuple[Region, ...]:
    written: list[int] | list[None] = [None] * len(maps)
    if data.written is not None:
        written = (np.diff(np.searchsorted(np.flatnonzero(data.written), data.bounds)) * page).tolist()
    referenced = data.referenced
    names = (
        *metrics,
        *("start", "end", "perms", "offset", "dev", "inode", "name", "kind", "written", "accessed", "accessed_anon"),
    )
    regions = []
    for entry, kind, values, written_bytes in zip(
        maps, kinds, zip(*metrics.values(), strict=True), written, strict=True
    ):
        accessed = None if referenced is None else referenced.get(entry.start, 0)
        # smaps tells Referenced per mapping only: an anonymous mapping's pages are this process's alone, a file
        # mapping's page cache is marked by any process reading the file.
        accessed_anon = None if accessed is None else (accessed if kind in _ANON_KINDS else 0)
        static = (entry.start, entry.end, entry.perms, entry.offset, entry.dev, entry.inode, display_name(entry))
        row = (*values, *static, kind, written_bytes, accessed, accessed_anon)
        regions.append(_new_region(zip(names, row, strict=True)))
    return tuple(regions)


def _total(values: list[int] | list[None]) -> int | None:
    """The sum over the regions, or None when the metric is unknown."""
    return None if None in values else sum(cast(list[int], values))


def _build(
    pid: int,
    command: str,
    taken_at: float,
    was_frozen: bool,
    maps: list[procfs.MapsEntry],
    kinds: list[str],
    data: _PageData,
    caps: Capabilities,
    *,
    identity: tuple[int | None, str | None],
) -> Snapshot:
    arrays = data.arrays
    page = caps.page_size
    pss_fixed = None if data.mapcounts is None else _pss_fixed(data, page)
    metrics = _region_metrics(data, kinds, page, pss_fixed)
    regions = _regions(maps, kinds, metrics, data, page)
    totals = {name: _total(values) for name, values in metrics.items()}
    if pss_fixed is not None:  # the snapshot's PSS is rounded once, not per region
        hugetlb_rows = np.array([kind == "hugetlb" for kind in kinds], dtype=bool)
        totals["pss"] = int(pss_fixed[~hugetlb_rows].sum()) >> 12
    flag_counts = count_flags(data.page_flags, data.withheld_flags) if data.page_flags is not None else None
    for array in (arrays.runs.first, arrays.runs.start, arrays.entry, data.page_flags, data.mapcounts):
        if array is not None:
            array.flags.writeable = False
    written = None if data.written is None else sum(region.written or 0 for region in regions)
    return Snapshot(
        **totals,  # type: ignore[arg-type]
        pid=pid,
        command=command,
        taken_at=taken_at,
        frozen=was_frozen,
        method=data.method,
        page_size=page,
        pfn_visible=caps.pfn_visible,
        regions=regions,
        flag_counts=flag_counts,
        vpn_runs=arrays.runs,
        entries=arrays.entry,
        page_flags=data.page_flags,
        mapcounts=data.mapcounts,
        written=written,
        accessed=None if data.referenced is None else sum(r.accessed or 0 for r in regions),
        accessed_anon=None if data.referenced is None else sum(r.accessed_anon or 0 for r in regions),
        cgroup_pages=None if data.cgroup_pages is None else MappingProxyType(data.cgroup_pages),
        notes=tuple(data.notes),
        start_time=identity[0],
        exe=identity[1],
    )
