"""What changed between two snapshots of one process: growth, pages written, frames and flags that changed."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import bits
from ._accounting import count_flags
from .errors import PagewalkError, ProcessGone
from .reader import PageRuns, intersect_ranges
from .snapshot import Region, Snapshot, Totals
from .tree import TreeSnapshot

__all__ = ["Delta", "RegionDelta", "diff"]

U64 = npt.NDArray[np.uint64]
# Where pages sit in a snapshot's arrays: indexes, or every page in order.
Selector = npt.NDArray[np.int64] | slice
_GROWTH_METRICS = tuple(f.name for f in fields(Totals))


def _growth(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


class RegionDelta(NamedTuple):
    """One region's change. `status` is added, removed, grown, shrunk or kept.

    A named tuple, as psutil's records are: a process may have tens of thousands of regions, and a tuple is
    built several times faster than a class instance and is one object for the garbage collector, not two.
    """

    name: str
    kind: str
    start: int
    end: int
    status: str
    size_growth: int
    uss_growth: int
    rss_growth: int
    swap_growth: int
    pss_growth: int | None
    anon_growth: int
    written: int | None  # bytes written in this region while tracking (None when not tracked)
    accessed: int | None

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True)
class Delta:
    """The difference `after - before` of two snapshots of the same process (bytes unless named pages).

    `written` is the bytes written while tracking in regions that existed, unchanged in size, when tracking
    started; `written_new_regions` the bytes present in regions created or grown since, every page of which
    the kernel marks written. `frames_changed` is None when PFNs are hidden (no CAP_SYS_ADMIN): unknown, not zero.
    """

    before: Snapshot
    after: Snapshot
    uss_growth: int
    uss_file_growth: int  # the part of the USS change in page cache and shared memory
    rss_growth: int
    pss_growth: int | None
    swap_growth: int
    anon_growth: int
    file_growth: int
    shmem_growth: int
    thp_growth: int | None
    zero_growth: int | None
    hugetlb_growth: int
    pages_appeared: int
    pages_disappeared: int
    frames_changed: int | None
    flags_gained: Mapping[str, int] | None
    flags_lost: Mapping[str, int] | None
    written: int | None
    written_new_regions: int | None
    accessed: int | None
    accessed_anon: int | None  # accessed in anonymous regions: pages no other process can mark
    regions: tuple[RegionDelta, ...]
    peak_rss: int | None = None  # the highest RSS between the snapshots; None when the peak could not be reset
    peak_rss_growth: int | None = None  # peak_rss minus RSS at `before`

    @property
    def processes_started(self) -> dict[int, str]:
        """Processes of a tree that are in `after` but were not in `before`: pid -> command."""
        return _new_processes(self.before, self.after)

    @property
    def processes_exited(self) -> dict[int, str]:
        """Processes of a tree that were in `before` and are gone from `after`: pid -> command."""
        return _new_processes(self.after, self.before)

    @property
    def regions_added(self) -> tuple[RegionDelta, ...]:
        return tuple(r for r in self.regions if r.status == "added")

    @property
    def regions_removed(self) -> tuple[RegionDelta, ...]:
        return tuple(r for r in self.regions if r.status == "removed")

    @property
    def regions_grown(self) -> tuple[RegionDelta, ...]:
        return tuple(r for r in self.regions if r.status == "grown")

    @property
    def regions_shrunk(self) -> tuple[RegionDelta, ...]:
        return tuple(r for r in self.regions if r.status == "shrunk")

    @property
    def program_changed(self) -> bool:
        """The process called exec between the snapshots: the delta compares two programs, and limits fail."""
        return None not in (self.before.exe, self.after.exe) and self.before.exe != self.after.exe

    @property
    def notes(self) -> tuple[str, ...]:
        """What makes this delta less than a plain comparison (an exec between the snapshots, a partial freeze)."""
        notes = []
        if self.program_changed:
            notes.append(
                f"process {self.after.pid} called exec between the snapshots ({self.before.exe} -> "
                f"{self.after.exe}): the delta compares two programs, so every limit checked on it fails"
            )
        return (*notes, *self.after.notes)

    @property
    def seconds(self) -> float:
        return self.after.taken_at - self.before.taken_at

    def top_regions(self, metric: str = "uss_growth", limit: int = 5) -> list[RegionDelta]:
        """The regions that contributed most to `metric` (largest absolute change first)."""
        ranked = sorted(self.regions, key=lambda r: abs(getattr(r, metric) or 0), reverse=True)
        return [r for r in ranked[:limit] if getattr(r, metric)]

    def to_dict(self, *, regions: bool = True) -> dict[str, Any]:
        """A JSON-ready dict: the keys documented in the README."""
        data: dict[str, Any] = {
            "pid": self.after.pid,
            "seconds": self.seconds,
            **{f"{name}_growth": getattr(self, f"{name}_growth") for name in _GROWTH_METRICS},
            "pages_appeared": self.pages_appeared,
            "pages_disappeared": self.pages_disappeared,
            "frames_changed": self.frames_changed,
            "written": self.written,
            "written_new_regions": self.written_new_regions,
            "accessed": self.accessed,
            "accessed_anon": self.accessed_anon,
            "peak_rss": self.peak_rss,
            "peak_rss_growth": self.peak_rss_growth,
            "flags_gained": None if self.flags_gained is None else _nonzero(self.flags_gained),
            "flags_lost": None if self.flags_lost is None else _nonzero(self.flags_lost),
            "before": self.before.to_dict(regions=False),
            "after": self.after.to_dict(regions=False),
            "notes": list(self.notes),
        }
        if isinstance(self.after, TreeSnapshot):
            data["processes_started"] = {str(pid): command for pid, command in self.processes_started.items()}
            data["processes_exited"] = {str(pid): command for pid, command in self.processes_exited.items()}
        if regions:
            data["regions"] = [r.to_dict() for r in self.regions if r.status != "kept" or _changed(r)]
        return data


def _new_processes(old: Snapshot, new: Snapshot) -> dict[int, str]:
    """The processes of tree snapshot `new` that `old` did not have (a reused pid is a new process)."""
    if not isinstance(new, TreeSnapshot):
        return {}
    known = old.processes if isinstance(old, TreeSnapshot) else {}
    return {pid: snap.command for pid, snap in new.processes.items() if pid not in known or _reused(known[pid], snap)}


def _peak(before: Snapshot, after: Snapshot) -> tuple[int | None, int | None]:
    """The peak RSS between two snapshots and its growth over `before`'s RSS. The high-water mark is read from
    the kernel's batched counters, so it is never taken below the RSS either snapshot walked."""
    if not before.peak_reset or after.peak_rss is None:
        return None, None
    peak = max(after.peak_rss, before.rss, after.rss)
    return peak, peak - before.rss


def _nonzero(counts: Mapping[str, int]) -> dict[str, int]:
    return {name: pages for name, pages in counts.items() if pages}


def _changed(region: RegionDelta) -> bool:
    return bool(
        region.uss_growth
        or region.rss_growth
        or region.swap_growth
        or region.anon_growth
        or region.written
        or region.accessed
    )


def _differ(before: int | None, after: int | None) -> bool:
    """Whether an identity both snapshots know (a start time, a pidfd inode) names two processes."""
    return before is not None and after is not None and before != after


def _reused(before: Snapshot, after: Snapshot) -> bool:
    """Whether two snapshots of one pid are of two processes: start times count clock ticks, so a pid reused
    within a tick is told apart by the pidfd inodes (Linux 6.9+)."""
    return _differ(before.start_time, after.start_time) or _differ(before.pidfd_inode, after.pidfd_inode)


def diff(before: Snapshot, after: Snapshot) -> Delta:
    """The change from `before` to `after`, two snapshots of the same process (also `after - before`)."""
    if before.pid != after.pid:
        raise PagewalkError(f"cannot diff snapshots of different processes ({before.pid} and {after.pid})")
    if after.taken_at < before.taken_at:
        raise PagewalkError("the 'after' snapshot is older than the 'before' one: call diff(before, after)")
    if _reused(before, after):
        raise ProcessGone(
            f"process {before.pid} ({before.command}) exited between the snapshots and its pid was reused by "
            f"another process ({after.command}): there is no delta between two different processes",
            before.pid,
        )
    common_before, common_after, common = _match_pages(before.vpn_runs, after.vpn_runs)
    appeared = len(after.vpn_runs) - common
    disappeared = len(before.vpn_runs) - common
    frames_changed = _frames_changed(before, after, common_before, common_after)
    flags_gained, flags_lost = _flag_transitions(before, after, common_before, common_after)
    region_deltas, written_new = _region_deltas(before.regions, after.regions)
    written = None
    if after.written is not None:
        written = after.written - (written_new or 0)
    values = {f"{name}_growth": _growth(getattr(before, name), getattr(after, name)) for name in _GROWTH_METRICS}
    peak_rss, peak_rss_growth = _peak(before, after)
    return Delta(
        before=before,
        after=after,
        **values,  # type: ignore[arg-type]
        pages_appeared=appeared,
        pages_disappeared=disappeared,
        frames_changed=frames_changed,
        flags_gained=flags_gained,
        flags_lost=flags_lost,
        written=written,
        written_new_regions=written_new if after.written is not None else None,
        accessed=after.accessed,
        accessed_anon=after.accessed_anon,
        regions=tuple(region_deltas),
        peak_rss=peak_rss,
        peak_rss_growth=peak_rss_growth,
    )


def _match_pages(before: PageRuns, after: PageRuns) -> tuple[Selector, Selector, int]:
    """Where the virtual pages present (or swapped) in both snapshots sit in each, and how many there are.

    Matched run by run, never page by page; when both hold the same pages, as a steady process does, the
    selectors are plain slices and the arrays are compared in place.
    """
    if before.same_pages(after):
        return slice(None), slice(None), len(before)
    first, end = intersect_ranges(before.first, before.first + before.lengths, after.first, after.first + after.lengths)
    return before.indexes(first, end), after.indexes(first, end), int((end - first).sum())


def _frames_changed(before: Snapshot, after: Snapshot, in_before: Selector, in_after: Selector) -> int | None:
    if not (before.pfn_visible and after.pfn_visible):
        return None
    present = np.uint64(bits.PM_PRESENT)
    old = before.entries[in_before]
    new = after.entries[in_after]
    both = (old >= present) & (new >= present)
    mask = np.uint64(bits.PM_PFN_MASK)
    return int(np.count_nonzero((old[both] & mask) != (new[both] & mask)))


def _flag_transitions(
    before: Snapshot, after: Snapshot, in_before: Selector, in_after: Selector
) -> tuple[Mapping[str, int] | None, Mapping[str, int] | None]:
    """Pages that gained and lost each flag, matched by virtual page; a page that appeared gains all its
    flags and one that disappeared loses all of them."""
    if before.page_flags is None or after.page_flags is None:
        return None, None
    old_common = before.page_flags[in_before]
    new_common = after.page_flags[in_after]
    only_after = np.ones(len(after.page_flags), dtype=bool)
    only_after[in_after] = False
    only_before = np.ones(len(before.page_flags), dtype=bool)
    only_before[in_before] = False
    gained = np.concatenate((new_common & ~old_common, after.page_flags[only_after]))
    lost = np.concatenate((old_common & ~new_common, before.page_flags[only_before]))
    # A flag either snapshot could not report is left out of both: unknown, not zero.
    known = set(before.flag_counts or ()) & set(after.flag_counts or ())
    withheld = [name for name in bits.FLAG_BITS if name not in known]
    return count_flags(gained, withheld), count_flags(lost, withheld)


def _match_regions(
    before: tuple[Region, ...], after: tuple[Region, ...]
) -> tuple[list[tuple[Region, Region]], list[Region], list[Region]]:
    """Pair regions by start address and name, then by overlap and name (a stack grows down); the rest are
    added or removed. Each region of `after` left over takes the lowest unmatched region of its name that
    overlaps it. Both sides are in address order and the regions of one snapshot never overlap, so one sweep
    per name finds them: an old region that ends before a new one starts can overlap no later new one.

    Returns the pairs (old, new), the regions added and the regions removed."""
    unmatched = {(r.start, r.name): r for r in before}  # no two regions start at one address
    pairs: list[tuple[Region, Region]] = []
    pending: list[Region] = []
    for region in after:
        old = unmatched.pop((region.start, region.name), None)
        if old is None:
            pending.append(region)
        else:
            pairs.append((old, region))
    if not (pending and unmatched):
        return pairs, pending, list(unmatched.values())
    olds_by_name: dict[str, list[Region]] = {}
    for old in unmatched.values():  # in address order, as `before` is
        olds_by_name.setdefault(old.name, []).append(old)
    next_old = dict.fromkeys(olds_by_name, 0)
    added: list[Region] = []
    removed: list[Region] = []
    for region in pending:
        olds = olds_by_name.get(region.name)
        if olds is None:
            added.append(region)
            continue
        index = next_old[region.name]
        while index < len(olds) and olds[index].end <= region.start:
            removed.append(olds[index])
            index += 1
        if index < len(olds) and olds[index].start < region.end:
            pairs.append((olds[index], region))
            index += 1
        else:
            added.append(region)
        next_old[region.name] = index
    for name, olds in olds_by_name.items():
        removed.extend(olds[next_old[name] :])
    return pairs, added, removed


def _region_deltas(before: tuple[Region, ...], after: tuple[Region, ...]) -> tuple[list[RegionDelta], int | None]:
    """Every region's change in address order, and the bytes written in regions added or grown (the kernel
    marks every page of a new or expanded mapping soft-dirty, so those are counted apart)."""
    pairs, added, removed = _match_regions(before, after)
    # Fields read by one C call each: a process may have tens of thousands of regions.
    deltas = [
        RegionDelta(name, kind, start, end, "added", end - start, uss, rss, swap, pss, anon, written, accessed)
        for name, kind, start, end, uss, rss, swap, pss, anon, written, accessed in map(_REGION_VALUES, added)
    ]
    written_new = _sum_known(region.written for region in added)
    deltas += [
        RegionDelta(
            name,
            kind,
            start,
            end,
            "removed",
            start - end,
            -uss,
            -rss,
            -swap,
            None if pss is None else -pss,
            -anon,
            None,
            None,
        )
        for name, kind, start, end, uss, rss, swap, pss, anon, _, _ in map(_REGION_VALUES, removed)
    ]
    for old, new in pairs:
        name, kind, start, end, uss, rss, swap, pss, anon, written, accessed = _REGION_VALUES(new)
        _, _, old_start, old_end, old_uss, old_rss, old_swap, old_pss, old_anon, _, _ = _REGION_VALUES(old)
        growth = (end - start) - (old_end - old_start)
        status = "grown" if growth > 0 else "shrunk" if growth < 0 else "kept"
        pss = _growth(old_pss, pss)
        deltas.append(
            RegionDelta(
                name,
                kind,
                start,
                end,
                status,
                growth,
                uss - old_uss,
                rss - old_rss,
                swap - old_swap,
                pss,
                anon - old_anon,
                written,
                accessed,
            )
        )
        if growth > 0 and written is not None:
            written_new = (written_new or 0) + written
    deltas.sort(key=_START)
    return deltas, written_new


def _sum_known(values: Iterable[int | None]) -> int | None:
    """The sum of the values that are not None, or None when all are."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None


_REGION_VALUES = operator.attrgetter(
    "name", "kind", "start", "end", "uss", "rss", "swap", "pss", "anon", "written", "accessed"
)
_START = operator.attrgetter("start")
