"""Tracking what a workload touches: pages written (soft-dirty), pages accessed (referenced bits), peak RSS.

Tracking starts by writing to `/proc/PID/clear_refs`: `4` clears the soft-dirty bits (and write-protects
the pages, so the next write sets the bit again), `1` clears the accessed bits, `5` resets the RSS
high-water mark to the current RSS. Writes are then read from pagemap bit 55, or as ranges from
PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY (6.8+); accesses from each region's `Referenced` line in
`/proc/PID/smaps`; the peak from `VmHWM` in `/proc/PID/status`.
"""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from . import bits, procfs, reader
from .capabilities import Capabilities, capabilities
from .errors import AccessDenied, Unsupported
from .scan import pagemap_scan

__all__ = [
    "CLEAR_ACCESSED",
    "CLEAR_PEAK",
    "CLEAR_SOFT_DIRTY",
    "TRACKABLE",
    "clear_refs",
    "start_tracking",
]

CLEAR_ACCESSED = 1  # CLEAR_REFS_ALL: clear the accessed bits of every mapping
CLEAR_SOFT_DIRTY = 4  # CLEAR_REFS_SOFT_DIRTY
CLEAR_PEAK = 5  # CLEAR_REFS_MM_HIWATER_RSS: the high-water mark becomes the current RSS
TRACKABLE = ("writes", "accessed", "peak")


def require_soft_dirty(pid: int | None, caps: Capabilities | None = None) -> None:
    """Raise `Unsupported` naming CONFIG_MEM_SOFT_DIRTY when this kernel cannot track writes."""
    missing = (caps or capabilities()).missing_for_soft_dirty()
    if missing:
        raise Unsupported(f"cannot track pages written: {missing}", pid)


def check_tracking(track: tuple[str, ...] | list[str], pid: int) -> None:
    unknown = [name for name in track if name not in TRACKABLE]
    if unknown:
        raise ValueError(f"cannot track {', '.join(map(repr, unknown))}; choose from {', '.join(TRACKABLE)}")
    if "writes" in track:
        require_soft_dirty(pid)


def clear_refs(pid: int, value: int) -> None:
    """Write `value` to `/proc/PID/clear_refs`."""
    fd = procfs.open_proc(pid, "clear_refs", os.O_WRONLY)
    try:
        procfs.call(pid, f"/proc/{pid}/clear_refs", lambda: os.write(fd, str(value).encode()))
    finally:
        os.close(fd)


def start_tracking(pid: int, *, writes: bool = True, accessed: bool = False) -> None:
    """Begin tracking pages written (soft-dirty) and/or accessed by `pid` from now on.

    Prefer `snapshot(pid, track=...)`, which starts tracking while the process is still stopped.
    """
    pid = procfs.check_pid(pid)
    track = [name for name, wanted in (("writes", writes), ("accessed", accessed)) if wanted]
    check_tracking(track, pid)
    apply_tracking(pid, tuple(track))


def apply_tracking(pid: int, track: tuple[str, ...]) -> str | None:
    """Start tracking what `track` names. Peak tracking is best effort: when the high-water mark cannot be
    reset, the reason is returned (the peak is then unknown, never the process's lifetime peak)."""
    if "writes" in track:
        clear_refs(pid, CLEAR_SOFT_DIRTY)
    if "accessed" in track:
        clear_refs(pid, CLEAR_ACCESSED)
    if "peak" in track:
        try:
            clear_refs(pid, CLEAR_PEAK)
        except AccessDenied:
            # clear_refs is writable by the process's owner only (mode 0200): CAP_SYS_PTRACE lets a user read
            # another user's page tables, but not write this file.
            return (
                f"peak RSS is unknown: /proc/{pid}/clear_refs is not writable by this user, so the high-water "
                "mark cannot be reset (run as the process's owner or as root)"
            )
    return None


def written_mask(
    fd: int, arrays: reader.EntryArrays, caps: Capabilities, method: str, span: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """True for the present or swapped pages written since tracking started (soft-dirty set).

    PAGE_IS_SOFT_DIRTY ranges from PAGEMAP_SCAN are used where the kernel has them (6.8+) unless
    `method` is "read"; otherwise bit 55 of the entries. Guard and userfaultfd markers never count.
    """
    entry = arrays.entry
    markers = (entry < np.uint64(bits.PM_PRESENT)) & ((entry & np.uint64(bits.PM_GUARD | bits.PM_UFFD_WP)) != 0)
    if method != "read" and "SOFT_DIRTY" in caps.scan_categories:
        mask = bits.PAGE_IS_SOFT_DIRTY
        inverted = 0
        if "GUARD" in caps.scan_categories:  # require "not a guard marker" too
            mask |= bits.PAGE_IS_GUARD
            inverted = bits.PAGE_IS_GUARD
        rows = pagemap_scan(
            fd,
            span[0],
            span[1],
            category_mask=mask,
            category_inverted=inverted,
            category_anyof_mask=bits.PAGE_IS_PRESENT | bits.PAGE_IS_SWAPPED,
        )
        shift = np.uint64(caps.page_size.bit_length() - 1)
        written = reader.mark_ranges(arrays.vpn, rows[:, 0] >> shift, rows[:, 1] >> shift)
    else:
        written = (entry & np.uint64(bits.PM_SOFT_DIRTY)) != 0
    result: npt.NDArray[np.bool_] = written & ~markers
    return result


def referenced_by_region(pid: int) -> dict[int, int]:
    """Bytes referenced since the accessed bits were cleared, per region start, from `/proc/PID/smaps`."""
    referenced: dict[int, int] = {}
    start = None
    for line in procfs.read_proc_text(pid, "smaps").splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            start = int(head.split("-", 1)[0], 16)
        elif head == "Referenced:" and start is not None:
            referenced[start] = int(line.split()[1]) * 1024
    return referenced
