"""The PAGEMAP_SCAN ioctl (Linux 6.7+): ranges of pages by category, without reading every entry."""

from __future__ import annotations

import errno
import os
import struct

import numpy as np
import numpy.typing as npt

__all__ = ["PAGEMAP_SCAN", "ScanUnsupported", "pagemap_scan"]

PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
_VEC_SLOTS = 1024  # rows per ioctl call: 24 KiB, and a few calls even for tens of thousands of ranges

# struct pm_scan_arg: twelve u64 fields, in this order.
_FIELDS = (
    "size",
    "flags",
    "start",
    "end",
    "walk_end",
    "vec",
    "vec_len",
    "max_pages",
    "category_inverted",
    "category_mask",
    "category_anyof_mask",
    "return_mask",
)
_ARG = struct.Struct(f"={len(_FIELDS)}Q")
_START = _FIELDS.index("start")
_WALK_END = _FIELDS.index("walk_end")


class ScanUnsupported(OSError):
    """The kernel has no PAGEMAP_SCAN, or does not know a category asked for (ENOTTY / EINVAL)."""


def pagemap_scan(
    fd: int,
    start: int,
    end: int,
    *,
    category_mask: int = 0,
    category_inverted: int = 0,
    category_anyof_mask: int = 0,
    return_mask: int = 0,
) -> npt.NDArray[np.uint64]:
    """Scan `[start, end)` of the address space behind the pagemap `fd`.

    Returns an `(n, 3)` uint64 array of `(start, end, categories)` rows, in address order, with
    `categories` masked by `return_mask`. Raises `ScanUnsupported` on kernels without the ioctl or the
    categories, and `OSError` for anything else (ESRCH when the process is gone).
    """
    import fcntl  # here, not at import: the module must import on platforms without fcntl

    # A range holds at most one row per page: small scans (probes) get a small vector.
    slots = max(1, min(_VEC_SLOTS, (end - start) // os.sysconf("SC_PAGE_SIZE")))
    vec = np.empty((slots, 3), dtype=np.uint64)
    fields = dict.fromkeys(_FIELDS, 0) | {
        "size": _ARG.size,
        "start": start,
        "end": end,
        "vec": vec.ctypes.data,
        "vec_len": slots,
        "category_inverted": category_inverted,
        "category_mask": category_mask,
        "category_anyof_mask": category_anyof_mask,
        "return_mask": return_mask,
    }
    # A mutable buffer: the kernel writes walk_end back into it, and fcntl.ioctl returns the ioctl's result.
    arg = bytearray(_ARG.pack(*fields.values()))
    batches: list[npt.NDArray[np.uint64]] = []
    while True:
        try:
            count = fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                raise ScanUnsupported(exc.errno, os.strerror(exc.errno)) from None
            raise
        if count:
            batches.append(vec[:count].copy())
        # The walk is over unless the vector filled up. Linux (seen on 6.18) leaves walk_end where an internal
        # 512-range batch stopped once more than 512 ranges are found, though the walk went on to the end:
        # resuming there would return those ranges twice.
        walk_end = _ARG.unpack(arg)[_WALK_END]
        if count < slots or walk_end >= end or walk_end == 0:
            break
        resume = max(walk_end, int(vec[count - 1, 1]))
        struct.pack_into("=Q", arg, _START * 8, resume)
    if not batches:
        return np.empty((0, 3), dtype=np.uint64)
    rows = batches[0] if len(batches) == 1 else np.concatenate(batches)
    return _merge_adjacent(rows)


def _merge_adjacent(rows: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # A full vec splits one region across two ioctl calls; join rows that touch and share categories.
    if len(rows) < 2:
        return rows
    joins = (rows[1:, 0] == rows[:-1, 1]) & (rows[1:, 2] == rows[:-1, 2])
    if not joins.any():
        return rows
    keep_start = np.concatenate(([True], ~joins))
    starts = rows[keep_start, 0]
    cats = rows[keep_start, 2]
    keep_end = np.concatenate((~joins, [True]))
    ends = rows[keep_end, 1]
    return np.stack([starts, ends, cats], axis=1)
