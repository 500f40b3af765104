"""Snapshots of a process and all its descendants, stopped together.

A `TreeSnapshot` has the totals of a single-process snapshot, summed over the processes, so a delta of two
tree snapshots and every limit work unchanged; `.processes` holds each process's own snapshot. USS is the
tree's: frames no process outside the tree maps, each counted once, and `uss_file` the part of them in page
cache and shared memory. With visible PFNs and page counts a frame is the tree's own when its map count
(`/proc/kpagecount`) equals the number of times the tree maps it; without them the sums of the processes'
own are reported, lower bounds, and `notes` say so.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from . import bits, procfs, reader
from .capabilities import capabilities
from .errors import NoAddressSpace, PagewalkError, ProcessGone, Unsupported
from .freeze import frozen
from .snapshot import Method, Region, Snapshot, snapshot, sum_totals

__all__ = ["TreeSnapshot", "descendants", "descendants_rss", "snapshot_tree"]

U64 = npt.NDArray[np.uint64]
# In a tree's per-page arrays a page is keyed by pid and virtual page number: pid << 42 | vpn. Pids are below
# 2**22 (PID_MAX_LIMIT); virtual page numbers below 2**42 cover 16 PiB, beyond 4-level paging's 128 TiB.
_VPN_BITS = 42
_RELIST_LIMIT = 50  # listings of a tree whose processes keep forking and exiting before giving up


@dataclass(frozen=True)
class TreeSnapshot(Snapshot):
    """A process and its descendants at one moment: summed totals (`uss` is the tree's own, see the module),
    regions named `PID:NAME`, and each process's snapshot in `processes`.

    `peak_rss` is the sum of the processes' peaks, an upper bound for the tree: they need not peak together.
    """

    processes: Mapping[int, Snapshot] = field(default_factory=lambda: MappingProxyType({}))
    parents: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))  # pid -> parent pid
    # pid -> bytes of its resident frames its parent maps too (copy-on-write not yet broken, shared files);
    # None without visible PFNs. The root has no parent in the tree and no entry.
    shared_with_parent: Mapping[int, int] | None = None

    def uss_note(self) -> str:
        """How `uss` was counted: exactly, or as a lower bound."""
        if self.shared_with_parent is None:
            return "uss: the sum of each process's own USS (a lower bound for the tree: PFNs hidden)"
        return "uss: frames only this tree maps, each counted once"

    def to_dict(self, *, regions: bool = True) -> dict[str, Any]:
        data = super().to_dict(regions=regions)
        data["processes"] = {
            str(pid): {
                "pid": pid,
                "ppid": self.parents.get(pid),
                "command": snap.command,
                **snap.metrics(),
                "peak_rss": snap.peak_rss,
                "shared_with_parent": None if self.shared_with_parent is None else self.shared_with_parent.get(pid),
                "notes": list(snap.notes),
            }
            for pid, snap in self.processes.items()
        }
        return data


# --- the processes of a tree ------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """The descendants of `pid` now, parents before their children."""
    children: dict[int, list[int]] = {}
    for child, parent in procfs.parent_pids().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    pending = sorted(children.get(pid, []))
    while pending:
        child = pending.pop(0)
        found.append(child)
        pending.extend(sorted(children.get(child, [])))
    return found


def descendants_rss(pid: int) -> tuple[int, list[int]]:
    """The summed RSS (VmRSS) of the descendants of `pid` and their pids; processes gone meanwhile count nothing."""
    total = 0
    pids = descendants(pid)
    for child in pids:
        with contextlib.suppress(PagewalkError, ValueError):
            total += int((procfs.status_field(child, "VmRSS") or "0 kB").split()[0]) * 1024
    return total, pids


@contextlib.contextmanager
def _stopped_tree(root: int, *, freeze: bool) -> Iterator[tuple[list[int], bool, list[str]]]:
    """Stop `root` and every descendant for the block, and resume all of them however it ends.

    Yields the pids (parents first), whether every thread of every process stopped, and the freeze's notes.
    Descendants are listed again after stopping until no new one appears: a process forked between the
    listing and its parent's stop is caught, and stopped processes cannot fork.
    """
    with contextlib.ExitStack() as stack:
        held: set[int] = set()
        complete, notes = True, list[str]()
        for _ in range(_RELIST_LIMIT):
            pids = [root, *descendants(root)]
            new = [pid for pid in pids if pid not in held]
            if not freeze or not new:
                break
            try:
                result = stack.enter_context(frozen(new))
            except ProcessGone:
                procfs.check_address_space(root)  # raises when the root itself is gone
                continue  # a descendant exited between listing and stopping: list again
            held.update(new)
            complete = complete and result.complete
            notes.extend(note for note in result.notes if note not in notes)
        else:
            raise PagewalkError(
                f"the descendants of process {root} kept changing while being stopped ({_RELIST_LIMIT} listings): "
                "snapshot the tree when it is steadier, or each process alone",
                root,
            )
        yield pids, freeze and complete, notes


# --- taking a tree snapshot -------------------------------------------------------------------------------


def snapshot_tree(
    pid: int,
    *,
    flags: bool = False,
    counts: bool = False,
    freeze: bool = True,
    method: Method = "auto",
    writes: bool = False,
    accessed: bool = False,
    track: Iterable[str] = (),
) -> TreeSnapshot:
    """Snapshot process `pid` and all its descendants, stopped together (see `snapshot(tree=True)`)."""
    procfs.check_platform()
    pid = procfs.check_pid(pid)
    track = tuple(track)
    caps = capabilities()
    # The tree's own frames need PFNs and their map counts: read them whenever this user can.
    exact_uss = caps.pfn_visible and caps.missing_for_pss() is None
    options: dict[str, Any] = {"flags": flags, "counts": counts, "method": method}
    frames: _Frames | None = None
    snaps: dict[int, Snapshot] = {}
    parents: dict[int, int] = {}
    with _stopped_tree(pid, freeze=freeze) as (pids, all_stopped, freeze_notes):
        for member in pids:
            try:
                parents[member] = procfs.parent_pid(member)
                snaps[member] = snapshot(member, freeze=False, writes=writes, accessed=accessed, track=track, **options)
            except (ProcessGone, NoAddressSpace):
                if member == pid:
                    raise
                parents.pop(member, None)  # exited, or a zombie: it holds no memory
        if exact_uss:  # map counts read while the tree is still stopped
            frames = _tree_frames(snaps)
    notes = [*freeze_notes, *(f"{member}: {note}" for member, snap in snaps.items() for note in snap.notes)]
    return _combine(pid, snaps, parents, frozen=all_stopped, frames=frames, notes=notes)


def _combine(
    root: int,
    snaps: Mapping[int, Snapshot],
    parents: Mapping[int, int],
    *,
    frozen: bool,
    frames: _Frames | None,
    notes: list[str],
) -> TreeSnapshot:
    ordered = sorted(snaps)  # ascending pids keep the keyed page numbers ascending
    members = [snaps[pid] for pid in ordered]
    totals = sum_totals(members).metrics()
    page = members[0].page_size
    shared = None
    if frames is not None:
        totals["uss"] = frames.own * page
        totals["uss_file"] = frames.own_file * page
        shared = {
            pid: frames.shared(pid, parent) * page for pid, parent in parents.items() if pid != root and parent in snaps
        }
    else:
        notes.append(
            "PFNs or page counts are hidden from this user: uss is the sum of each process's own USS, a lower "
            "bound for the tree (pages the processes share only among themselves are left out)"
        )
    peaks = [snap.peak_rss for snap in members]
    root_snap = snaps[root]
    return TreeSnapshot(
        **totals,  # type: ignore[arg-type]
        pid=root,
        command=root_snap.command,
        taken_at=min(snap.taken_at for snap in members),
        frozen=frozen,
        method=root_snap.method,
        page_size=root_snap.page_size,
        pfn_visible=root_snap.pfn_visible,
        start_time=root_snap.start_time,
        pidfd_inode=root_snap.pidfd_inode,
        exe=root_snap.exe,
        regions=tuple(_named_regions(snaps)),
        flag_counts=_summed_counts([snap.flag_counts for snap in members]),
        vpn_runs=_keyed_runs(ordered, members),
        entries=_joined([snap.entries for snap in members], np.uint64),
        page_flags=_joined_or_none([snap.page_flags for snap in members], np.uint64),
        mapcounts=_joined_or_none([snap.mapcounts for snap in members], np.uint32),
        written=_sum_or_none([snap.written for snap in members]),
        accessed=_sum_or_none([snap.accessed for snap in members]),
        notes=tuple(notes),
        peak_rss=_sum_or_none(peaks),
        peak_reset=all(snap.peak_reset for snap in members),
        processes=MappingProxyType({pid: snaps[pid] for pid in snaps}),
        parents=MappingProxyType({pid: parents[pid] for pid in snaps}),
        shared_with_parent=None if shared is None else MappingProxyType(shared),
    )


@dataclass(frozen=True)
class _Frames:
    """The frames the processes of a tree map."""

    own: int  # distinct frames mapped as often as the kernel counts mappings of them: the tree's own
    own_file: int  # those of them in page cache or shared memory (the FILE bit)
    sorted_frames: Mapping[int, U64]  # pid -> the frames of its resident pages, sorted

    def shared(self, pid: int, parent: int) -> int:
        """How many of `pid`'s resident pages map a frame `parent` maps too."""
        mine, theirs = self.sorted_frames[pid], self.sorted_frames[parent]
        if not len(mine) or not len(theirs):
            return 0
        where = np.minimum(np.searchsorted(theirs, mine), len(theirs) - 1)
        return int(np.count_nonzero(theirs[where] == mine))


def _tree_frames(snaps: Mapping[int, Snapshot]) -> _Frames:
    """Find the tree's frames and each distinct frame's map count: taken from the snapshots when they read
    their pages' counts (`counts=True`), else read once per distinct frame (not once per process mapping it).

    Sorting does the counting: numpy's unique() hashes 64-bit keys, several times slower than a sort here. A
    frame is keyed by its PFN and, in the lowest bit, its FILE bit, so the sort also tells the tree's own page
    cache and shared memory apart (a frame is one or the other wherever it is mapped)."""
    resident = {pid: _resident(snap.entries) for pid, snap in snaps.items()}
    keys = {pid: _frame_keys(snap.entries[resident[pid]]) for pid, snap in snaps.items()}
    frames = {pid: np.sort(each >> np.uint64(1)) for pid, each in keys.items()}
    if not any(len(each) for each in frames.values()):
        return _Frames(0, 0, MappingProxyType(frames))
    known = {pid: snap.mapcounts for pid, snap in snaps.items() if snap.mapcounts is not None}
    if len(known) == len(snaps):  # every page's map count is in hand
        every = np.concatenate(list(keys.values()))
        order = np.argsort(every, kind="stable")
        every = every[order]
        page_counts = np.concatenate([known[pid][resident[pid]] for pid in snaps])[order]
        starts = _first_of_each(every)
        mapcounts = page_counts[starts]
    else:
        every = np.sort(np.concatenate(list(keys.values())))
        starts = _first_of_each(every)
        (mapcounts,) = reader.lookup_pfns(["/proc/kpagecount"], every[starts] >> np.uint64(1))
    occurrences = np.diff(np.append(starts, len(every)))
    own = mapcounts.astype(np.int64) == occurrences
    own_file = own & ((every[starts] & np.uint64(1)) != 0)
    return _Frames(int(np.count_nonzero(own)), int(np.count_nonzero(own_file)), MappingProxyType(frames))


def _frame_keys(entries: U64) -> U64:
    """`PFN << 1 | FILE` of each entry."""
    pfns = entries & np.uint64(bits.PM_PFN_MASK)
    keys: U64 = (pfns << np.uint64(1)) | ((entries >> np.uint64(bits.PM_FILE.bit_length() - 1)) & np.uint64(1))
    return keys


def _first_of_each(ordered: U64) -> npt.NDArray[np.intp]:
    """Where each distinct value of a sorted array first occurs."""
    return np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))


def _resident(entries: U64) -> npt.NDArray[np.bool_]:
    """Which entries map a resident page other than the zero page."""
    resident: npt.NDArray[np.bool_] = (entries >= np.uint64(bits.PM_PRESENT)) & (
        (entries & np.uint64(bits.MARK_ZERO)) == 0
    )
    return resident


def _named_regions(snaps: Mapping[int, Snapshot]) -> Iterator[Region]:
    for pid in sorted(snaps):
        for region in snaps[pid].regions:
            named = copy.copy(region)
            object.__setattr__(named, "name", f"{pid}:{region.name}")
            yield named


def _keyed_runs(pids: Sequence[int], members: Sequence[Snapshot]) -> reader.PageRuns:
    firsts, starts, offset = [], [], 0
    for pid, snap in zip(pids, members, strict=True):
        runs = snap.vpn_runs
        if len(runs.first) and int(runs.first[-1]) + int(runs.lengths[-1]) > 1 << _VPN_BITS:
            raise Unsupported(
                f"process {pid} maps memory above 16 PiB (5-level paging): a tree snapshot cannot key its pages; "
                "snapshot it alone",
                pid,
            )
        firsts.append(runs.first + np.uint64(pid << _VPN_BITS))
        starts.append(runs.start[:-1] + offset)
        offset += len(runs)
    first = np.concatenate(firsts) if firsts else np.zeros(0, dtype=np.uint64)
    start = np.append(np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64), offset).astype(np.int64)
    return reader.PageRuns(first, start)


def _joined(arrays: Sequence[npt.NDArray[Any]], dtype: type[np.generic]) -> npt.NDArray[Any]:
    joined = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    joined.flags.writeable = False
    return joined


def _joined_or_none(arrays: Sequence[npt.NDArray[Any] | None], dtype: type[np.generic]) -> npt.NDArray[Any] | None:
    if any(array is None for array in arrays):
        return None
    return _joined([array for array in arrays if array is not None], dtype)


def _sum_or_none(values: Sequence[int | None]) -> int | None:
    return None if any(value is None for value in values) else sum(value or 0 for value in values)


def _summed_counts(counts: Sequence[Mapping[str, int] | None]) -> Mapping[str, int] | None:
    if not counts or any(count is None for count in counts):
        return None
    known = set.intersection(*(set(count or ()) for count in counts))
    return MappingProxyType({name: sum((count or {})[name] for count in counts) for name in known})
