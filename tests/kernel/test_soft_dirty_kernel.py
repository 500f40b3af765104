"""Kernel-level checks for soft-dirty tracking and PAGEMAP_SCAN.

These tests exercise the kernel itself, not pagewalk, using only the standard
library. They are meant to run inside the kernel matrix (``scripts/kernel-matrix``),
which boots Debian kernels built with CONFIG_MEM_SOFT_DIRTY and sets
``PAGEMAP_KERNEL_MATRIX`` to the leg's name (``6.1``, ``6.12``, ...).

Outside the matrix they are skipped when the running kernel lacks soft-dirty
support; inside the matrix they always run, so a kernel without working
soft-dirty tracking fails them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import re
import struct
from collections.abc import Callable

import pytest

PAGE_SIZE = mmap.PAGESIZE
NPAGES = 64
WRITTEN = (0, 5, 7, 13, 21, 34, 40, 51, 62, 63)  # 10 of the 64 pages

PROT_NONE = 0  # not exported by the mmap module
PM_PRESENT = 1 << 63
PM_SOFT_DIRTY = 1 << 55

# PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg), sizeof(struct pm_scan_arg) == 96
PAGEMAP_SCAN = 0xC0606610
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SOFT_DIRTY = 1 << 7

RecordProperty = Callable[[str, object], None]

LEG = os.environ.get("PAGEMAP_KERNEL_MATRIX")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class PmScanArg(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
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
    ]


class PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


assert ctypes.sizeof(PmScanArg) == 96 and ctypes.sizeof(PageRegion) == 24


class Region:
    """NPAGES private anonymous pages, fenced by PROT_NONE guard pages.

    The guards keep the region's VMA from merging with mappings the interpreter
    creates meanwhile: a merge re-marks the whole VMA soft-dirty and would make
    the counts below meaningless.
    """

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self._map = mmap.mmap(
            -1,
            (npages + 2) * PAGE_SIZE,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        anchor = ctypes.c_char.from_buffer(self._map)
        base = ctypes.addressof(anchor)
        del anchor
        for guard in (base, base + (npages + 1) * PAGE_SIZE):
            if _libc.mprotect(guard, PAGE_SIZE, PROT_NONE) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mprotect: {os.strerror(err)}")
        self.addr = base + PAGE_SIZE

    def write(self, page: int, value: int = 1) -> None:
        self._map[(page + 1) * PAGE_SIZE] = value

    def close(self) -> None:
        self._map.close()


def pagemap_entries(addr: int, npages: int) -> list[int]:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        data = os.pread(fd, npages * 8, (addr // PAGE_SIZE) * 8)
    finally:
        os.close(fd)
    assert len(data) == npages * 8
    return list(struct.unpack(f"<{npages}Q", data))


def soft_dirty_pages(addr: int, npages: int) -> set[int]:
    return {i for i, entry in enumerate(pagemap_entries(addr, npages)) if entry & PM_SOFT_DIRTY}


def clear_soft_dirty() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("4")


def soft_dirty_works() -> bool:
    """Round trip on one fresh page: dirty after a write, clean after clear_refs."""
    region = Region(1)
    try:
        region.write(0)
        if not soft_dirty_pages(region.addr, 1):
            return False
        clear_soft_dirty()
        if soft_dirty_pages(region.addr, 1):
            return False
        region.write(0, 2)
        return bool(soft_dirty_pages(region.addr, 1))
    finally:
        region.close()


def kernel_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    assert match, os.uname().release
    return int(match.group(1)), int(match.group(2))


def pagemap_scan(fd: int, arg: PmScanArg) -> int:
    """Run the ioctl; return its result or raise OSError."""
    ret = _libc.ioctl(fd, PAGEMAP_SCAN, ctypes.byref(arg))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


@pytest.fixture(autouse=True, scope="module")
def _require_soft_dirty() -> None:
    if LEG is None and not soft_dirty_works():
        pytest.skip("kernel lacks soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY); run scripts/kernel-matrix")


@pytest.fixture
def region():
    r = Region(NPAGES)
    yield r
    r.close()


def test_matrix_leg_boots_expected_kernel(record_testsuite_property: RecordProperty) -> None:
    release = os.uname().release
    record_testsuite_property("kernel_release", release)
    if LEG is None or not re.fullmatch(r"\d+\.\d+", LEG):
        pytest.skip("not in a versioned kernel-matrix leg")
    assert release.startswith(LEG + "."), f"leg {LEG} booted kernel {release}"


def test_soft_dirty_tracks_exactly_the_written_pages(region: Region) -> None:
    for page in range(NPAGES):
        region.write(page)
    entries = pagemap_entries(region.addr, NPAGES)
    assert all(e & PM_PRESENT for e in entries), "touched pages must be present"
    assert all(e & PM_SOFT_DIRTY for e in entries), "freshly written pages must read soft-dirty"

    clear_soft_dirty()
    entries = pagemap_entries(region.addr, NPAGES)
    assert all(e & PM_PRESENT for e in entries), "clear_refs must not unmap pages"
    assert soft_dirty_pages(region.addr, NPAGES) == set(), "clear_refs 4 must clear bit 55 on every page"

    for page in WRITTEN:
        region.write(page, 2)
    assert soft_dirty_pages(region.addr, NPAGES) == set(WRITTEN)

    clear_soft_dirty()
    assert soft_dirty_pages(region.addr, NPAGES) == set()


def test_pagemap_scan_availability(region: Region, record_testsuite_property: RecordProperty) -> None:
    if LEG is None:
        pytest.skip("PAGEMAP_SCAN expectations are pinned per kernel-matrix leg")
    expected = kernel_version() >= (6, 7)
    for page in range(NPAGES):
        region.write(page)

    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        # An empty range with a valid return mask is the cheapest probe.
        arg = PmScanArg(size=ctypes.sizeof(PmScanArg), return_mask=PAGE_IS_PRESENT)
        try:
            ret = pagemap_scan(fd, arg)
        except OSError as exc:
            record_testsuite_property("pagemap_scan", errno.errorcode.get(exc.errno, str(exc.errno)))
            assert not expected, f"PAGEMAP_SCAN failed on {os.uname().release}: {exc}"
            assert exc.errno == errno.ENOTTY, f"expected ENOTTY before 6.7, got {exc}"
            return
        record_testsuite_property("pagemap_scan", "available")
        assert expected, f"PAGEMAP_SCAN unexpectedly works on {os.uname().release}"
        assert ret == 0

        # A real scan: all 64 pages are present and form one region.
        vec = (PageRegion * 8)()
        arg = PmScanArg(
            size=ctypes.sizeof(PmScanArg),
            start=region.addr,
            end=region.addr + NPAGES * PAGE_SIZE,
            vec=ctypes.addressof(vec),
            vec_len=len(vec),
            category_mask=PAGE_IS_PRESENT,
            return_mask=PAGE_IS_PRESENT,
        )
        assert pagemap_scan(fd, arg) == 1
        assert (vec[0].start, vec[0].end) == (region.addr, region.addr + NPAGES * PAGE_SIZE)
        assert arg.walk_end == region.addr + NPAGES * PAGE_SIZE
    finally:
        os.close(fd)


def test_pagemap_scan_reports_soft_dirty(region: Region) -> None:
    if kernel_version() < (6, 8):
        pytest.skip("PAGE_IS_SOFT_DIRTY needs Linux 6.8+")
    for page in range(NPAGES):
        region.write(page)
    clear_soft_dirty()
    for page in WRITTEN:
        region.write(page, 2)

    vec = (PageRegion * NPAGES)()
    arg = PmScanArg(
        size=ctypes.sizeof(PmScanArg),
        start=region.addr,
        end=region.addr + NPAGES * PAGE_SIZE,
        vec=ctypes.addressof(vec),
        vec_len=len(vec),
        category_mask=PAGE_IS_SOFT_DIRTY,
        return_mask=PAGE_IS_SOFT_DIRTY,
    )
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        n = pagemap_scan(fd, arg)
    finally:
        os.close(fd)

    pages = set()
    for r in vec[:n]:
        assert r.categories == PAGE_IS_SOFT_DIRTY
        pages.update(range((r.start - region.addr) // PAGE_SIZE, (r.end - region.addr) // PAGE_SIZE))
    assert pages == set(WRITTEN)
    assert soft_dirty_pages(region.addr, NPAGES) == set(WRITTEN), "pagemap and PAGEMAP_SCAN disagree"
