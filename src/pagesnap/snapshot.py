"""An immutable snapshot of one process's page tables at one moment, with totals and per-region totals."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from . import bits, procfs, reader, tracking
from .capabilities import Capabilities, capabilities
from .errors import AccessDenied, PagesnapError, ProcessGone, Unsupported
from .regions import classify, display_name
from .scan import pagemap_scan

if TYPE_CHECKING:
    from .delta import Delta

__all__ = ["Region", "Snapshot", "Totals", "snapshot"]

Method = Literal["auto", "read", "scan"]
U64 = npt.NDArray[np.uint64]

# Per-page classes come from the top byte of an entry (bits 56-63 of pagemap, with pagesnap's marks in 59-60).
_CODE = np.arange(256, dtype=np.int64)
_PRESENT = (_CODE & 0x80) != 0
_SWAP = ((_CODE & 0xC0) == 0x40) & ((_CODE & 0x04) == 0)  # not present, not a guard marker
_GUARD = (_CODE & 0x04) != 0
_ZERO = (_CODE & 0x08) != 0
_PMD = (_CODE & 0x10) != 0
_FILE = (_CODE & 0x20) != 0
_EXCLUSIVE = (_CODE & 0x01) != 0
_REAL = _PRESENT & ~_ZERO
# Columns of the per-region page counts, computed by one matrix product over the 256 classes.
_COLUMNS = ("present", "uss", "anon", "file", "thp", "zero", "swap", "guard")
_CLASS_MATRIX = np.stack(
    [
        _REAL,
        _REAL & _EXCLUSIVE,
        _REAL & ~_FILE,
        _REAL & _FILE,
        _REAL & _PMD,
        _PRESENT & _ZERO,
        _SWAP,
        _GUARD,
    ],
    axis=1,
).astype(np.int64)


@dataclass(frozen=True)
class Totals:
    """Memory in bytes, as the kernel accounts it in `smaps_rollup` (see the README for the exceptions).

    `pss` is None unless page counts were read; `thp` and `zero` are None when this kernel and user
    cannot tell (no PAGEMAP_SCAN and no visible PFNs).
    """

    rss: int  # resident pages, not counting the zero page or hugetlb (as smaps Rss)
    uss: int  # pages mapped only by this process, hugetlb included (Private_Clean+Private_Dirty+Private_Hugetlb)
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
        }


@dataclass(frozen=True)
class Snapshot(Totals):
    """The page tables of process `pid` at `taken_at`: totals, regions and compact per-page entries.

    Per-page arrays (read-only) let a later delta compare page by page: `vpn` holds the virtual page
    numbers of every present or swapped page in ascending order, `entries` their pagemap entries (with
    pagesnap's zero-page and PMD marks in bits 59-60), `page_flags` their KPF flags plus synthetic FILE,
    SWAPPED and MMAP_EXCLUSIVE bits (with `flags=True`), and `mapcounts` their kpagecount (with `counts=True`).
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
    vpn: U64 = field(repr=False, compare=False)
    entries: U64 = field(repr=False, compare=False)
    page_flags: U64 | None = field(repr=False, compare=False)
    mapcounts: npt.NDArray[np.uint32] | None = field(repr=False, compare=False)
    written: int | None = None  # bytes written since tracking started, with writes=True
    accessed: int | None = None  # bytes accessed since tracking started, with accessed=True
    cgroup_pages: Mapping[int, int] | None = None  # memory cgroup inode -> present pages, with cgroups=True
    notes: tuple[str, ...] = ()

    def __sub__(self, before: Snapshot) -> Delta:
        from .delta import diff

        return diff(before, self)

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
            "method": self.method,
            "page_size": self.page_size,
            "pfn_visible": self.pfn_visible,
            **self.metrics(),
            "written": self.written,
            "accessed": self.accessed,
        }
        if regions:
            data["regions"] = [region.to_dict() for region in self.regions]
        if self.flag_counts is not None:
            data["flags"] = dict(self.flag_counts)
        data["notes"] = list(self.notes)
        return data


def sum_totals(items: list[Region] | tuple[Region, ...]) -> Totals:
    """Add up the totals of several regions; a None in any makes that total None."""
    values: dict[str, Any] = {}
    for f in fields(Totals):
        column = [getattr(item, f.name) for item in items]
        values[f.name] = None if any(v is None for v in column) else sum(column)
    return Totals(**values)


# --- taking a snapshot ----------------------------------------------------------------------------------


@dataclass
class _PageData:
    arrays: reader.EntryArrays
    method: str
    zero_known: bool
    pmd_known: bool
    page_flags: U64 | None = None
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
    """
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
    procfs.check_address_space(pid)
    command = _command(pid)
    fd = procfs.open_proc(pid, "pagemap")
    try:
        freezer = procfs.frozen(pid) if freeze else contextlib.nullcontext(False)
        with freezer as was_frozen:
            taken_at = time.time()
            maps = procfs.read_maps(pid)
            shmem_devs = set(caps.shmem_devices) | procfs.mount_devices(pid, frozenset({"tmpfs"}))
            huge_devs = set(caps.hugetlb_devices) | procfs.mount_devices(pid, frozenset({"hugetlbfs"}))
            kinds = [classify(entry, shmem_devs, huge_devs) for entry in maps]
            data = _read_pages(pid, fd, maps, kinds, caps, method)
            if flags or counts or cgroups:
                _read_pfn_files(data, flags=flags, counts=counts, cgroups=cgroups)
            if writes:
                ranges = _user_ranges(maps, caps.page_size)
                span = (ranges[0][0] * caps.page_size, ranges[-1][1] * caps.page_size) if ranges else (0, 0)
                data.written = tracking.written_mask(fd, data.arrays, caps, method, span)
            if accessed:
                data.referenced = tracking.referenced_by_region(pid)
            tracking.apply_tracking(pid, track)
    except reader.ProcessExited:
        raise ProcessGone(f"process {pid} exited while its page tables were being read", pid) from None
    except OSError as exc:
        raise procfs.translate_os_error(exc, pid, "the page tables") from exc
    finally:
        os.close(fd)
    if freeze and not was_frozen and pid != os.getpid():
        data.notes.append("not every thread stopped within the timeout: the snapshot may not be atomic")
    return _build(pid, command, taken_at, bool(was_frozen), maps, kinds, data, caps)


def _command(pid: int) -> str:
    with contextlib.suppress(PagesnapError):
        raw = procfs.read_proc_text(pid, "cmdline")
        if raw:
            command = " ".join(part for part in raw.split("\0") if part)
            # One line, bounded: it labels reports and failure messages.
            command = command.replace("\n", "\\n").replace("\t", " ")
            return command if len(command) <= 200 else command[:197] + "..."
        return f"[{procfs.read_proc_text(pid, 'comm').strip()}]"
    return ""


def _user_ranges(maps: list[procfs.MapsEntry], page_size: int) -> list[tuple[int, int]]:
    # [vsyscall] lies above the task size, where pagemap reads return end-of-file.
    return [(m.start // page_size, m.end // page_size) for m in maps if m.path != "[vsyscall]"]


def _capacity(pid: int) -> int:
    _, resident = procfs.read_statm(pid)
    swap_kb = 0
    for line in procfs.read_proc_text(pid, "status").splitlines():
        if line.startswith("VmSwap:"):
            swap_kb = int(line.split()[1])
    return resident + swap_kb * 1024 // os.sysconf("SC_PAGE_SIZE") + 1024


def _choose_method(pid: int, caps: Capabilities, method: Method) -> str:
    if method != "auto":
        return method
    if not caps.pagemap_scan:
        return "read"
    size, resident = procfs.read_statm(pid)
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
    chosen = _choose_method(pid, caps, method)
    if chosen == "scan" and ranges:
        rows = reader.scan_mapped_ranges(fd, ranges[0][0] * page, max(end for _, end in ranges) * page, page)
        first, end = reader.coalesce(rows[:, 0].copy(), rows[:, 1].copy())
        wanted = list(zip(first.tolist(), end.tolist(), strict=True))
        arrays = reader.read_entries(fd, wanted, int((rows[:, 1] - rows[:, 0]).sum()) + 1)
        zero_rows = rows[(rows[:, 2] & np.uint64(bits.PAGE_IS_PFNZERO)) != 0]
        huge_rows = rows[(rows[:, 2] & np.uint64(bits.PAGE_IS_HUGE)) != 0]
        _apply_marks(arrays, zero_rows, bits.MARK_ZERO)
        _apply_marks(arrays, huge_rows, bits.MARK_PMD)
        return _PageData(arrays, "scan", zero_known=True, pmd_known=True)
    arrays = reader.read_entries(fd, ranges, _capacity(pid))
    data = _PageData(arrays, "read", zero_known=True, pmd_known=True)
    _resolve_zero_pages(fd, data, maps, kinds, caps)
    _resolve_pmd_pages(fd, data, maps, kinds, caps)
    return data


def _apply_marks(arrays: reader.EntryArrays, rows: U64, mark: int) -> None:
    if len(rows) and len(arrays):
        inside = reader.mark_ranges(arrays.vpn, rows[:, 0], rows[:, 1])
        arrays.entry[inside] |= np.uint64(mark)


def _region_index(arrays: reader.EntryArrays, maps: list[procfs.MapsEntry], page: int) -> npt.NDArray[np.intp]:
    starts = np.array([m.start // page for m in maps], dtype=np.uint64)
    return np.searchsorted(arrays.vpn, starts, side="left")


def _kind_mask(
    arrays: reader.EntryArrays, maps: list[procfs.MapsEntry], kinds: list[str], page: int, wanted: set[str]
) -> npt.NDArray[np.bool_]:
    """True for pages inside regions of the wanted kinds."""
    bounds = np.append(_region_index(arrays, maps, page), len(arrays))
    per_region = np.array([kind in wanted for kind in kinds], dtype=bool)
    return np.repeat(per_region, np.diff(bounds))


def _scan_marks(
    fd: int, arrays: reader.EntryArrays, candidates: npt.NDArray[np.bool_], category: int, page: int, mark: int
) -> None:
    """Ask PAGEMAP_SCAN which candidate pages have `category` and mark them."""
    vpn = arrays.vpn[candidates]
    first, end = reader.coalesce(vpn, vpn + np.uint64(1), gap=512)
    if len(first) > 64:  # one wide ioctl beats many small ones
        first, end = first[:1], end[-1:]
    for lo, hi in zip(first.tolist(), end.tolist(), strict=True):
        rows = pagemap_scan(fd, lo * page, hi * page, category_mask=category, return_mask=category)
        shift = np.uint64(page.bit_length() - 1)
        hits = reader.mark_ranges(arrays.vpn, rows[:, 0] >> shift, rows[:, 1] >> shift)
        arrays.entry[hits & candidates] |= np.uint64(mark)


def _resolve_zero_pages(
    fd: int, data: _PageData, maps: list[procfs.MapsEntry], kinds: list[str], caps: Capabilities
) -> None:
    """Mark zero-page entries. Only shared anonymous-looking and FILE pages in anonymous regions can be."""
    arrays = data.arrays
    if not len(arrays):
        return
    top = arrays.entry >> np.uint64(56)
    small = (top & np.uint64(0xA1)) == np.uint64(0x80)  # present, not FILE, not exclusive
    anon_regions = _kind_mask(arrays, maps, kinds, caps.page_size, {"anon", "heap", "stack"})
    huge = ((top & np.uint64(0xA0)) == np.uint64(0xA0)) & anon_regions  # FILE in anonymous memory
    candidates = small | huge
    if not candidates.any():
        return
    if caps.pagemap_scan:
        _scan_marks(fd, arrays, candidates, bits.PAGE_IS_PFNZERO, caps.page_size, bits.MARK_ZERO)
        return
    if caps.pfn_visible and caps.zero_pfn is not None:
        pfn = arrays.entry & np.uint64(bits.PM_PFN_MASK)
        arrays.entry[small & (pfn == np.uint64(caps.zero_pfn))] |= np.uint64(bits.MARK_ZERO)
        if not huge.any():
            return
        if caps.kpageflags:
            (flags,) = reader.lookup_pfns(["/proc/kpageflags"], pfn[huge])
            is_zero = (flags >> np.uint64(bits.KPF_BITS["ZERO_PAGE"])) & np.uint64(1) != 0
            index = np.flatnonzero(huge)[is_zero]
            arrays.entry[index] |= np.uint64(bits.MARK_ZERO)
            return
    data.zero_known = False
    data.notes.append(
        "zero pages cannot be told apart here (no PAGEMAP_SCAN and no visible PFNs): "
        "rss may include them and zero is unknown"
    )


def _resolve_pmd_pages(
    fd: int, data: _PageData, maps: list[procfs.MapsEntry], kinds: list[str], caps: Capabilities
) -> None:
    """Mark pages of PMD-mapped huge pages; candidates are fully present, aligned 512-page blocks."""
    arrays = data.arrays
    span = caps.page_size // 8  # entries per PMD-mapped page: a page table holds page_size / 8 entries
    if caps.thp_mode == "never" and not any(kind == "shmem" for kind in kinds):
        return
    if len(arrays) < span:
        return
    heads = np.flatnonzero((arrays.vpn & np.uint64(span - 1)) == 0)
    heads = heads[heads + span - 1 < len(arrays)]
    full = arrays.vpn[heads + span - 1] == arrays.vpn[heads] + np.uint64(span - 1)
    heads = heads[full]
    present = (arrays.entry[heads] >> np.uint64(63)) != 0
    heads = heads[present]
    if caps.pfn_visible:
        pfn_head = arrays.entry[heads] & np.uint64(bits.PM_PFN_MASK)
        pfn_tail = arrays.entry[heads + span - 1] & np.uint64(bits.PM_PFN_MASK)
        aligned = (pfn_head & np.uint64(span - 1)) == 0
        heads = heads[aligned & (pfn_tail == pfn_head + np.uint64(span - 1))]
    if not len(heads):
        return
    candidates = np.zeros(len(arrays), dtype=bool)
    blocks = (heads[:, None] + np.arange(span)[None, :]).ravel()
    candidates[blocks] = True
    if caps.pagemap_scan:
        _scan_marks(fd, arrays, candidates, bits.PAGE_IS_HUGE, caps.page_size, bits.MARK_PMD)
        return
    if caps.pfn_visible and caps.kpageflags:
        pfn = arrays.entry[heads] & np.uint64(bits.PM_PFN_MASK)
        (flags,) = reader.lookup_pfns(["/proc/kpageflags"], pfn)
        thp_head = (flags >> np.uint64(bits.KPF_BITS["THP"])) & np.uint64(1) != 0
        thp_head &= (flags >> np.uint64(bits.KPF_BITS["COMPOUND_HEAD"])) & np.uint64(1) != 0
        blocks = (heads[thp_head][:, None] + np.arange(span)[None, :]).ravel()
        arrays.entry[blocks] |= np.uint64(bits.MARK_PMD)
        return
    data.pmd_known = False
    data.notes.append("huge page mappings cannot be seen here (no PAGEMAP_SCAN and no visible PFNs): thp is unknown")


def _read_pfn_files(data: _PageData, *, flags: bool, counts: bool, cgroups: bool) -> None:
    arrays = data.arrays
    present = np.flatnonzero(arrays.entry >= np.uint64(bits.PM_PRESENT))
    pfns = arrays.entry[present] & np.uint64(bits.PM_PFN_MASK)
    wanted = {"/proc/kpageflags": flags, "/proc/kpagecount": counts, "/proc/kpagecgroup": cgroups}
    paths = [path for path, asked in wanted.items() if asked]
    results = dict(zip(paths, reader.lookup_pfns(paths, pfns), strict=True))
    if flags:
        page_flags = np.zeros(len(arrays), dtype=np.uint64)
        page_flags[present] = results["/proc/kpageflags"]
        entry = arrays.entry
        page_flags |= entry & np.uint64(bits.PM_FILE)
        not_guard = (entry & np.uint64(bits.PM_GUARD)) == 0
        page_flags |= (entry & np.uint64(bits.PM_SWAP)) * not_guard.astype(np.uint64)
        page_flags |= (entry & np.uint64(bits.PM_EXCLUSIVE)) << np.uint64(7)
        data.page_flags = page_flags
    if counts:
        mapcounts = np.zeros(len(arrays), dtype=np.uint32)
        mapcounts[present] = results["/proc/kpagecount"]
        data.mapcounts = mapcounts
    if cgroups:
        inodes, pages = np.unique(results["/proc/kpagecgroup"], return_counts=True)
        data.cgroup_pages = dict(zip(inodes.tolist(), pages.tolist(), strict=True))


def _flag_counts(page_flags: U64) -> Mapping[str, int]:
    values, counts = np.unique(page_flags, return_counts=True)
    names = {**bits.ALL_KPF_BITS, **bits.SYNTHETIC_FLAG_BITS}
    result = dict.fromkeys(names, 0)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        for name, bit in names.items():
            if value >> bit & 1:
                result[name] += count
    return MappingProxyType(result)


def _build(
    pid: int,
    command: str,
    taken_at: float,
    was_frozen: bool,
    maps: list[procfs.MapsEntry],
    kinds: list[str],
    data: _PageData,
    caps: Capabilities,
) -> Snapshot:
    arrays = data.arrays
    page = caps.page_size
    bounds = np.append(_region_index(arrays, maps, page), len(arrays))
    region_of_page = np.repeat(np.arange(len(maps)), np.diff(bounds))
    top = (arrays.entry >> np.uint64(56)).astype(np.int64)
    histogram = np.bincount(region_of_page * 256 + top, minlength=len(maps) * 256).reshape(len(maps), 256)
    pages = histogram @ _CLASS_MATRIX  # (regions, columns)
    pss_fixed: npt.NDArray[np.int64] | None = None
    if data.mapcounts is not None:
        # As the kernel: PAGE_SIZE << 12 divided by the mapcount per page, summed, then shifted back.
        counted = data.mapcounts.astype(np.int64)
        share = np.where(counted > 0, (page << 12) // np.maximum(counted, 1), 0)
        pss_fixed = np.bincount(region_of_page, weights=share, minlength=len(maps)).astype(np.int64)
    written_pages = None
    if data.written is not None:
        written_pages = np.bincount(region_of_page[data.written], minlength=len(maps))

    regions = []
    column = {name: index for index, name in enumerate(_COLUMNS)}
    for index, (entry, kind) in enumerate(zip(maps, kinds, strict=True)):
        row = pages[index]
        hugetlb = kind == "hugetlb"
        real = int(row[column["present"]])
        regions.append(
            Region(
                rss=0 if hugetlb else real * page,
                uss=int(row[column["uss"]]) * page,
                pss=None if pss_fixed is None else (0 if hugetlb else int(pss_fixed[index]) >> 12),
                swap=int(row[column["swap"]]) * page,
                anon=0 if hugetlb else int(row[column["anon"]]) * page,
                file=int(row[column["file"]]) * page if kind not in ("shmem", "hugetlb") else 0,
                shmem=int(row[column["file"]]) * page if kind == "shmem" else 0,
                thp=None if not data.pmd_known else (0 if hugetlb else int(row[column["thp"]]) * page),
                zero=None if not data.zero_known else int(row[column["zero"]]) * page,
                hugetlb=real * page if hugetlb else 0,
                start=entry.start,
                end=entry.end,
                perms=entry.perms,
                offset=entry.offset,
                dev=entry.dev,
                inode=entry.inode,
                name=display_name(entry),
                kind=kind,
                written=None if written_pages is None else int(written_pages[index]) * page,
                accessed=None if data.referenced is None else data.referenced.get(entry.start, 0),
            )
        )
    totals = sum_totals(regions)
    pss = None
    if pss_fixed is not None:
        hugetlb_rows = np.array([kind == "hugetlb" for kind in kinds], dtype=bool)
        pss = int(pss_fixed[~hugetlb_rows].sum()) >> 12
    flag_counts = _flag_counts(data.page_flags) if data.page_flags is not None else None
    for array in (arrays.vpn, arrays.entry, data.page_flags, data.mapcounts):
        if array is not None:
            array.flags.writeable = False
    return Snapshot(
        rss=totals.rss,
        uss=totals.uss,
        pss=pss,
        swap=totals.swap,
        anon=totals.anon,
        file=totals.file,
        shmem=totals.shmem,
        thp=totals.thp,
        zero=totals.zero,
        hugetlb=totals.hugetlb,
        pid=pid,
        command=command,
        taken_at=taken_at,
        frozen=was_frozen,
        method=data.method,
        page_size=page,
        pfn_visible=caps.pfn_visible,
        regions=tuple(regions),
        flag_counts=flag_counts,
        vpn=arrays.vpn,
        entries=arrays.entry,
        page_flags=data.page_flags,
        mapcounts=data.mapcounts,
        written=None if written_pages is None else int(written_pages.sum()) * page,
        accessed=None if data.referenced is None else sum(r.accessed or 0 for r in regions),
        cgroup_pages=None if data.cgroup_pages is None else MappingProxyType(data.cgroup_pages),
        notes=tuple(data.notes),
    )
