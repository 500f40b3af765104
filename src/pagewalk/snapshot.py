"""An immutable snapshot of one process's page tables at one moment, with totals and per-region totals."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from . import _accounting, bits, procfs, reader, tracking
from ._accounting import ANON_KINDS, Method, PageData, count_flags
from .capabilities import Capabilities, capabilities
from .errors import AccessDenied, PagewalkError, ProcessGone, Unsupported
from .freeze import frozen
from .regions import classify, display_name

if TYPE_CHECKING:
    from .delta import Delta

__all__ = ["Method", "Region", "Snapshot", "Totals", "snapshot"]

U64 = npt.NDArray[np.uint64]


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
    pidfd_inode: int | None = None  # names it apart from a process given its pid within the same tick (6.9+)
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
    started = procfs.check_address_space(pid)
    command = ""  # read while the process is stopped, after its accessed bits: see below
    exe = procfs.executable(pid)
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
    if not freeze:  # freezing checks it
        procfs.check_thread_group_leader(pid)
    fd = procfs.open_proc(pid, "pagemap")
    try:
        freezer = frozen([pid]) if freeze else contextlib.nullcontext(None)
        with freezer as freeze_result:
            taken_at = time.time()
            maps = procfs.read_maps(pid)
            layout = _layout(pid, maps, caps)
            memory = procfs.memory_status(pid)
            data = _accounting.read_pages(fd, maps, layout.kinds, caps, method, memory)
            if flags or counts or cgroups:
                _accounting.read_pfn_files(data, caps, flags=flags, counts=counts, cgroups=cgroups)
            if writes:
                span = _accounting.user_span(maps) or (0, 0)
                data.written = tracking.written_mask(fd, data.arrays, caps, method, span)
            if accessed:
                data.referenced = tracking.referenced_by_region(pid)
            # Reading the command line reads the process's stack: after the accessed bits are read and before
            # they are cleared, so the measurement never counts a page it touched itself.
            command = _command(pid)
            peak_unknown = tracking.apply_tracking(pid, track)
            # Before resuming: a process woken by the resume may take the CPU from a read right after it. The
            # check then confirms the pidfd was of this process.
            inode = procfs.pidfd_inode(pid)
            _check_same_process(pid, started, maps)
    except reader.ProcessExited:
        raise _address_space_gone(pid, started) from None
    except OSError as exc:
        if exc.errno == errno.ESRCH:  # what PAGEMAP_SCAN answers once the address space is gone
            raise _address_space_gone(pid, started) from None
        raise procfs.translate_os_error(exc, pid, "the page tables") from exc
    finally:
        os.close(fd)
    data.notes[:0] = notes
    if freeze_result is not None:
        data.notes.extend(note for note in freeze_result.notes if pid != os.getpid())
    was_frozen = freeze_result is not None and freeze_result.methods.get(pid) != "self" and freeze_result.complete
    if peak_unknown:
        data.notes.append(peak_unknown)
    peak = (memory.peak_resident, "peak" in track and peak_unknown is None)
    return _build(pid, command, taken_at, was_frozen, layout, data, caps, identity=(started, exe, inode), peak=peak)


# Walking pagemap costs about a second per TiB of address space: above this, never while the process is stopped.
_FREEZE_WALK_LIMIT = 1 << 40


def _walks_too_much(pid: int, caps: Capabilities, method: Method) -> bool:
    """Whether the read front end would walk more than `_FREEZE_WALK_LIMIT` of address space."""
    if method == "scan" or (method == "auto" and caps.pagemap_scan):
        return False  # "auto" scans sparse address spaces, and only they are this big
    size_pages, _ = procfs.read_statm(pid)
    return size_pages * caps.page_size > _FREEZE_WALK_LIMIT


def _address_space_gone(pid: int, started: int) -> ProcessGone:
    """The error for a read that found the process's address space gone: it exited, or it is still there
    and ran another program (exec), which gives it a new address space."""
    try:
        replaced = procfs.start_time(pid) == started and not procfs.is_leaving(pid)
    except PagewalkError:
        replaced = False
    if replaced:
        return ProcessGone(
            f"process {pid} started another program (exec) while its page tables were being read: the memory "
            "it had is gone; snapshot it again once the new program runs",
            pid,
        )
    return ProcessGone(f"process {pid} exited while its page tables were being read", pid)


def _check_same_process(pid: int, started: int, maps: Sequence[procfs.MapsEntry]) -> None:
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


_RegionKey = tuple[tuple[Any, ...], int | None, int | None]  # a region's metrics, bytes written and accessed


@dataclass(eq=False)
class _Layout:
    """What a snapshot derives from the maps alone: each mapping's kind, and the fields of its `Region` that do
    not depend on its pages."""

    maps: Sequence[procfs.MapsEntry]
    files: frozenset[tuple[int, int]]  # the devices of the file mappings
    devices: tuple[frozenset[tuple[int, int]], frozenset[tuple[int, int]]]  # shmem and hugetlb file devices
    kinds: list[str]
    fixed: list[dict[str, Any]]
    # The last snapshot's regions and the values each was built from. A Region is immutable, so a mapping whose
    # pages count the same again gets the same object. One attribute, replaced whole, so that threads sharing
    # the layout never pair regions with another snapshot's values.
    last: tuple[list[_RegionKey], tuple[Region, ...]] | None = None


# By the identity of the parsed maps, which stay one object while a process's maps text is unchanged: repeated
# snapshots of a process mostly see the same mappings.
_LAYOUTS: dict[int, _Layout] = {}
_LAYOUTS_MAX = 8
# What stays allocated once every snapshot is dropped is bounded: a layout costs about 0.6 KB a mapping, and its
# last regions another 1.2 KB, so the layouts kept hold at most this many mappings, and only layouts this small
# keep their regions (a process with more builds them anew, a few microseconds each, among its many reads).
_LAYOUTS_MAPPINGS_MAX = 65_536
_REUSED_MAPPINGS_MAX = 4_096


def _layout(pid: int, maps: Sequence[procfs.MapsEntry], caps: Capabilities) -> _Layout:
    """The layout of `maps`: the one kept for them while the mounts' devices are the same, else a new one."""
    known = _LAYOUTS.get(id(maps))
    if known is not None and known.maps is not maps:
        known = None
    files = known.files if known is not None else frozenset(entry.dev for entry in maps if entry.path.startswith("/"))
    # Internal shmem and hugetlb files have a device of their own (caps), so only real files are looked up.
    seen = files.difference(caps.shmem_devices, caps.hugetlb_devices)
    mounts = procfs.mount_devices_by_type(pid, ("tmpfs", "hugetlbfs"), seen)
    devices = (
        frozenset(caps.shmem_devices) | mounts["tmpfs"],
        frozenset(caps.hugetlb_devices) | mounts["hugetlbfs"],
    )
    if known is not None and known.devices == devices:
        return known
    kinds = [classify(entry, *devices) for entry in maps]
    fixed = [
        {
            "start": entry.start,
            "end": entry.end,
            "perms": entry.perms,
            "offset": entry.offset,
            "dev": (entry.dev_major, entry.dev_minor),
            "inode": entry.inode,
            "name": display_name(entry),
            "kind": kind,
        }
        for entry, kind in zip(maps, kinds, strict=True)
    ]
    kept = sum(len(known.maps) for known in list(_LAYOUTS.values()))  # a copy: other threads may add
    if len(_LAYOUTS) >= _LAYOUTS_MAX or kept + len(maps) > _LAYOUTS_MAPPINGS_MAX:
        _LAYOUTS.clear()  # one step, so snapshots in other threads never see it half done
    _LAYOUTS[id(maps)] = layout = _Layout(maps, files, devices, kinds, fixed)
    return layout


def _regions(layout: _Layout, metrics: _accounting.Metrics, data: PageData, page: int) -> tuple[Region, ...]:
    count = len(layout.kinds)
    written: list[int] | list[None] = [None] * count
    if data.written is not None:
        written = (np.diff(np.searchsorted(data.written.nonzero()[0], data.bounds)) * page).tolist()
    accessed: list[int] | list[None] = [None] * count
    if data.referenced is not None:
        accessed = [data.referenced.get(fixed["start"], 0) for fixed in layout.fixed]
    keys = list(zip(zip(*metrics.values(), strict=True), written, accessed, strict=True))
    last = layout.last
    if last is not None and last[0] == keys:  # the whole process counts the same
        return last[1]
    last_keys: Sequence[_RegionKey | None] = last[0] if last is not None else [None] * count
    last_regions: Sequence[Region | None] = last[1] if last is not None else [None] * count
    names = tuple(metrics)
    new = object.__new__
    regions: list[Region] = []
    for key, fixed, last_key, last_region in zip(keys, layout.fixed, last_keys, last_regions, strict=True):
        if key == last_key and last_region is not None:
            regions.append(last_region)
            continue
        values, written_bytes, accessed_bytes = key
        # Region's generated __init__ stores its 20 fields through object.__setattr__, as the class is frozen:
        # several times slower than filling the instance dict, for every mapping of every snapshot.
        region: Region = new(Region)
        instance = region.__dict__
        instance.update(fixed)
        instance.update(zip(names, values, strict=False))  # as long: one value per metric
        instance["written"] = written_bytes
        instance["accessed"] = accessed_bytes
        # smaps tells Referenced per mapping only: an anonymous mapping's pages are this process's alone, a file
        # mapping's page cache is marked by any process reading the file.
        instance["accessed_anon"] = (
            None if accessed_bytes is None else (accessed_bytes if fixed["kind"] in ANON_KINDS else 0)
        )
        regions.append(region)
    result = tuple(regions)
    if count <= _REUSED_MAPPINGS_MAX:
        layout.last = (keys, result)
    return result


# What _regions relies on: the metrics and the keywords there set every field, and nothing else runs.
assert {f.name for f in fields(Region)} == {f.name for f in fields(Totals)} | {
    "start", "end", "perms", "offset", "dev", "inode", "name", "kind", "written", "accessed", "accessed_anon"
}  # fmt: skip
assert not hasattr(Region, "__slots__") and not hasattr(Region, "__post_init__")


def _build(
    pid: int,
    command: str,
    taken_at: float,
    was_frozen: bool,
    layout: _Layout,
    data: PageData,
    caps: Capabilities,
    *,
    identity: tuple[int | None, str | None, int | None],  # start time, program, pidfd inode
    peak: tuple[int | None, bool],
) -> Snapshot:
    arrays = data.arrays
    page = caps.page_size
    metrics, totals = _accounting.region_metrics(data, layout.kinds, page)
    regions = _regions(layout, metrics, data, page)
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
        pidfd_inode=identity[2],
        peak_rss=peak[0],
        peak_reset=peak[1],
    )
